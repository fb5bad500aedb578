"""The raw-HTTP/2 bench sink against a real grpc.aio SyncServer on loopback.

If this interop breaks, `python -m bench fanout` silently measures nothing, so these tests pin what
the benchmark relies on: snapshot, in-sync, exact KV counts, latency probes and ping answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing as mp
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from bench import h2sink
from bench.h2sink import StreamStats, run_stream
from typha.model.kv import SyncStatus, Update
from typha.snapcache.cache import SnapshotCache
from typha.syncserver.server import ServerSettings, SyncServer
from typha.testing.wait import wait_until_async

WAIT_SECS = 10.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


@contextlib.asynccontextmanager
async def serving(settings: ServerSettings) -> AsyncIterator[tuple[SyncServer, SnapshotCache]]:
    cache = SnapshotCache("felix")
    server = SyncServer({"felix": cache}, settings)
    await server.start("127.0.0.1", 0)
    try:
        yield server, cache
    finally:
        await server.stop(0)


def pod(i: int, stamp_ns: int | None = None) -> Update:
    labels = {"app": "x"}
    if stamp_ns is not None:
        labels[h2sink.TIMESTAMP_LABEL] = str(stamp_ns)
    return Update(f"/calico/v1/host/n1/workload/k8s/ns%2fp{i}/endpoint/eth0", {"labels": labels, "i": i}, str(i))


until = functools.partial(wait_until_async, timeout=WAIT_SECS, interval=0.01)


def test_snapshot_in_sync_exact_deltas_latency_and_pings():
    async def scenario() -> None:
        # Pings every 0.1 s and a 1 s pong timeout: a sink that did not answer would be dropped.
        settings = ServerSettings(ping_interval_secs=0.1, pong_timeout_secs=1.0, handshake_timeout_secs=2)
        async with serving(settings) as (server, cache):
            cache.apply([pod(i) for i in range(500)])
            cache.set_status(SyncStatus.IN_SYNC)
            address = f"127.0.0.1:{server.port}"
            stats = [StreamStats() for _ in range(4)]
            readies = [asyncio.Event() for _ in stats]
            tasks = [asyncio.create_task(run_stream(address, "felix", i, i == 0, s, r))
                     for i, (s, r) in enumerate(zip(stats, readies, strict=True))]
            try:
                async with asyncio.timeout(WAIT_SECS):
                    await asyncio.gather(*(r.wait() for r in readies))
                assert [(s.in_sync, s.error) for s in stats] == [(True, "")] * 4
                assert [s.snapshot_kvs for s in stats] == [500] * 4

                sent = 0
                for batch in range(20):  # new keys and changed values, batches of different sizes
                    sent += cache.apply([pod(1000 * batch + i, time.time_ns()) for i in range(batch * 7 + 1)])
                await until(lambda: all(s.kvs == sent for s in stats), "every delta at every stream")
                assert len(stats[0].latencies_ns) == sent
                assert all(0 <= ns < 30 * 10**9 for ns in stats[0].latencies_ns)
                assert not any(s.latencies_ns for s in stats[1:]), "only probes decode values"

                await asyncio.sleep(1.5)  # past the pong timeout: still connected only if pongs got through
                assert all(s.pings >= 5 for s in stats), [s.pings for s in stats]
                assert [s.error for s in stats] == [""] * 4
                assert all(not t.done() for t in tasks)
                cache.apply([pod(99_999)])
                await until(lambda: all(s.kvs == sent + 1 for s in stats), "a delta after the pings")
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            assert [s.error for s in stats] == [""] * 4, "stopping the sink is not a stream error"

    run(scenario)


def test_a_server_that_stops_ends_the_stream_with_an_error():
    async def scenario() -> None:
        settings = ServerSettings(handshake_timeout_secs=2)
        cache = SnapshotCache("felix")
        cache.set_status(SyncStatus.IN_SYNC)
        server = SyncServer({"felix": cache}, settings)
        await server.start("127.0.0.1", 0)
        stats, ready = StreamStats(), asyncio.Event()
        task = asyncio.create_task(run_stream(f"127.0.0.1:{server.port}", "felix", 0, False, stats, ready))
        try:
            async with asyncio.timeout(WAIT_SECS):
                await ready.wait()
            assert stats.in_sync
            await server.stop(0)
            async with asyncio.timeout(WAIT_SECS):
                await task
            assert stats.error
        finally:
            task.cancel()
            await server.stop(0)

    run(scenario)


def test_a_refused_call_reports_the_servers_grpc_status_and_message():
    async def scenario() -> None:
        async with serving(ServerSettings(handshake_timeout_secs=2)) as (server, _):
            stats, ready = StreamStats(), asyncio.Event()
            async with asyncio.timeout(WAIT_SECS):
                await run_stream(f"127.0.0.1:{server.port}", "no-such-syncer", 0, False, stats, ready)
        assert stats.error.startswith("server ended the stream: grpc-status 3 unknown syncer type 'no-such-syncer'")
        assert not stats.in_sync

    run(scenario)


def test_refused_connection_is_an_error_not_a_hang():
    async def scenario() -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # bound, not listening: connects are refused
            stats, ready = StreamStats(), asyncio.Event()
            async with asyncio.timeout(WAIT_SECS):
                await run_stream(f"127.0.0.1:{port}", "felix", 0, False, stats, ready)
        assert stats.error.startswith("connect:")
        assert ready.is_set()
        assert not stats.in_sync

    run(scenario)


def test_client_process_pipe_protocol():
    """The process entry point that bench/fanout.py spawns, spoken to over its pipe."""

    async def scenario() -> None:
        async with serving(ServerSettings(handshake_timeout_secs=2)) as (server, cache):
            cache.apply([pod(i) for i in range(50)])
            cache.set_status(SyncStatus.IN_SYNC)
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=h2sink.client_process,
                               args=(f"127.0.0.1:{server.port}", "felix", [0, 1, 2], 2, child, None), daemon=True)
            proc.start()
            loop = asyncio.get_running_loop()

            async def ask(command: str | None) -> tuple:
                if command is not None:
                    parent.send(command)
                # The server runs on this loop, so wait for the answer off it.
                assert await loop.run_in_executor(None, parent.poll, 30), f"no answer to {command!r}"
                return parent.recv()

            try:
                tag, in_sync, slowest, errors = await ask(None)
                assert (tag, in_sync, errors) == ("ready", 3, [])
                assert 0 < slowest < 30
                cache.apply([pod(100 + i, time.time_ns()) for i in range(10)])
                deadline = time.monotonic() + WAIT_SECS
                while (sample := await ask("sample"))[1] < 30:
                    assert time.monotonic() < deadline, sample
                    await asyncio.sleep(0.05)
                tag, kvs, messages, nbytes = sample
                assert (tag, kvs) == ("sample", 30)
                assert messages >= 3 * 4
                assert nbytes > 0
                tag, latencies = await ask("latencies")
                assert tag == "latencies"
                assert len(latencies) == 20
                assert await ask("latencies") == ("latencies", [])
                assert await ask("stop") == ("stopped", [])
                await loop.run_in_executor(None, proc.join, 10)
                assert proc.exitcode == 0
            finally:
                if proc.is_alive():
                    proc.kill()

    run(scenario)
