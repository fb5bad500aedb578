"""Fault-matrix cases for hostile peers (issue 17): each probe against a `typha serve` process while
honest clients follow churn, judged by the guarantee checker, with the process's RSS back within 10 %
of its baseline afterwards.

- a client that sends its hello and stops reading before its snapshot has been sent;
- one socket that opens thousands of Sync streams;
- thousands of sockets that never send the HTTP/2 preface.

RSS: the baseline is taken after a warm-up wave of the same peers, because the first wave of any
peer raises high-water marks once (gRPC core's thread pool, allocator arenas) that later waves reuse
(measured: three waves of 4,000 silent sockets settled at 142.7, 143.4 and 143.5 MB); what must not
happen is a wave leaving memory behind. A measurement is the lowest of a bounded number
of samples (attacks.settled_rss_mb). Every wait is bounded in count and time; the assertions are on
outcomes (drops logged, streams refused, sockets closed), never on how long something took.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import h2sink
from typha.syncserver.limits import MAX_STREAMS_PER_CONNECTION

from . import attacks
from .harness import CONVERGE_SECS, Rig, ServeProcess, churn, emulator, run, seed_bulk

RSS_TOLERANCE = 1.10
STALLED = 10
STREAM_FLOOD = 2000
SILENT_SOCKETS = 1000


async def bounded(predicate: Callable[[], bool], what: str, timeout: float = CONVERGE_SECS) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def hostile_case(tmp_path: Path, name: str, serve_flags: list[str],
                 attack: Callable[[Rig, ServeProcess, random.Random, bool], Awaitable[None]],
                 *, bulk: bool = False) -> None:
    """Honest clients in sync → a warm-up wave → baseline RSS → the measured wave → churn → verdict and
    RSS. `attack(rig, serve, rng, measured)` runs one wave and returns once its outcome is asserted."""
    rng = random.Random(name)
    h2sink.raise_fd_limit()

    async def scenario(rig: Rig, serve: ServeProcess) -> None:
        await asyncio.to_thread(serve.wait_ready)
        assert serve.process is not None
        pid = serve.process.pid
        rig.add_clients(f"127.0.0.1:{serve.port}", per_syncer=1)
        try:
            await rig.wait_in_sync()
            await churn(rig.api, rng, 10)
            await attack(rig, serve, rng, False)
            baseline = await attacks.settled_rss_mb(pid, 0.0, samples=4)
            await attack(rig, serve, rng, True)
            await churn(rig.api, rng, 20)
            await rig.judge(server_digests=False)
            after = await attacks.settled_rss_mb(pid, baseline * RSS_TOLERANCE, samples=40)
            print(f"{name}: typha RSS baseline {baseline:.1f} MB, after the wave {after:.1f} MB")  # shown with -s
            assert after <= baseline * RSS_TOLERANCE, (
                f"typha's RSS did not come back: {after:.1f} MB after the wave, baseline {baseline:.1f} MB")
        finally:
            await rig.close()

    with emulator(tmp_path, rng) as rig:
        if bulk:
            seed_bulk(rig.api, rng)
        serve = ServeProcess(rig.kubeconfig, tmp_path / "typha.log", *serve_flags)
        serve.start()
        try:
            run(scenario(rig, serve), timeout=300)
        finally:
            serve.kill()


def test_clients_that_stall_before_their_snapshot_are_dropped_and_release_it(tmp_path):
    """Each stalled client holds a different snapshot version (churn in between): before issue 17 none was
    ever dropped, since the write timeout and fall-behind checks skipped clients without a position."""

    async def wave(rig: Rig, serve: ServeProcess, rng: random.Random, measured: bool) -> None:
        count = STALLED if measured else 2
        before = serve.log.read_text(errors="replace").count("client is not reading")
        stalled = []
        try:
            for index in range(count):
                stalled.append(await attacks.open_stalled("127.0.0.1", serve.port, index))
                await churn(rig.api, rng, 3)
                await asyncio.sleep(0.3)  # lets the cache build the next client a snapshot of its own
            await bounded(
                lambda: serve.log.read_text(errors="replace").count("client is not reading") - before >= count,
                f"{count} stalled clients to be dropped")
        finally:
            for stream in stalled:
                stream.close()

    hostile_case(tmp_path, "stall", ["--server-write-timeout-secs", "1", "--server-ping-interval-secs", "0.5",
                                     "--server-pong-timeout-secs", "3"], wave, bulk=True)


def test_one_socket_cannot_open_more_than_a_few_streams(tmp_path):
    """One connection opens thousands of Sync streams at once: gRPC core refuses all but
    MAX_STREAMS_PER_CONNECTION before any handler runs (before issue 17: all were accepted, each
    holding a slot of the connection limit until its handshake timeout)."""

    async def wave(rig: Rig, serve: ServeProcess, rng: random.Random, measured: bool) -> None:
        streams = STREAM_FLOOD if measured else 50
        result = await attacks.stream_flood("127.0.0.1", serve.port, streams)
        # Else `refused` may be short (the accepted streams end at the handshake timeout, 10 s).
        assert result.all_answered or result.connection_closed, result
        accepted = result.opened - result.refused
        assert accepted <= MAX_STREAMS_PER_CONNECTION, result
        if measured:
            # Newcomers are still served under the low connection limit.
            late = rig.add_clients(f"127.0.0.1:{serve.port}", per_syncer=1, prefix="late")
            await rig.wait_in_sync(late)

    hostile_case(tmp_path, "stream-flood", ["--max-connections-upper-limit", "40"], wave)


def test_sockets_that_never_start_http2_are_closed_after_the_handshake_timeout(tmp_path):
    """Before issue 17 only gRPC core's SETTINGS timeout (60 s) closed them; now the server's handshake
    and idle timeouts (ServerHandshakeTimeoutSecs) do. Which one closed a socket is in its GOAWAY."""

    async def wave(rig: Rig, serve: ServeProcess, rng: random.Random, measured: bool) -> None:
        count = SILENT_SOCKETS  # the warm-up too: gRPC core's high-water marks grow with a wave's size
        sockets = await asyncio.to_thread(attacks.silent_sockets, "127.0.0.1", serve.port, count)
        try:
            await churn(rig.api, rng, 10)  # honest traffic meanwhile
            open_now = count
            deadline = time.monotonic() + CONVERGE_SECS
            while open_now and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                open_now = await asyncio.to_thread(attacks.still_open, sockets)
            assert open_now == 0, f"{open_now} of {count} preface-less sockets are still open"
            reasons = {sock.goaway_debug() for sock in sockets}
            assert "settings_timeout" not in reasons, f"closed by gRPC's own SETTINGS timeout: {reasons}"
        finally:
            attacks.close_all(sockets)

    hostile_case(tmp_path, "silent", ["--server-handshake-timeout-secs", "2"], wave)
