"""The Sync server over real gRPC on loopback, driven by a raw stream client.

The client here is deliberately minimal (raw frames in, ServerMessages out) so that these tests pin
the server's wire behaviour independently of typha.client.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import msgpack
import pytest
from prometheus_client import REGISTRY

from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import CacheLimits, SnapshotCache
from typha.syncserver.server import ServerSettings, SyncServer

from .sync_raw import RawClient


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


@contextlib.asynccontextmanager
async def serving(settings: ServerSettings | None = None, **limits) -> AsyncIterator[tuple[SyncServer, dict]]:
    caches = {name: SnapshotCache(name, limits=CacheLimits(**limits)) for name in ("felix", "bgp")}
    server = SyncServer(caches, settings or ServerSettings(handshake_timeout_secs=2))
    await server.start("127.0.0.1", 0)
    try:
        yield server, caches
    finally:
        await server.stop(0)


def put(key: str, value, revision: str = "1") -> Update:
    return Update(key, value, revision)


def test_snapshot_then_deltas_then_checksum():
    async def scenario() -> None:
        async with serving() as (server, caches):
            felix = caches["felix"]
            felix.apply([put("/a", {"x": 1}), put("/b", "two")])
            felix.set_status(SyncStatus.IN_SYNC)
            client = RawClient(server.port)
            await client.hello()
            hello, state = await client.read_snapshot()
            assert hello.epoch == felix.epoch
            assert not hello.resumed
            assert hello.syncer_type == "felix"
            assert {k: msgpack.unpackb(v) for k, v in state.items()} == {"/a": {"x": 1}, "/b": "two"}
            checksum = (await client.read_kind("checksum")).checksum
            assert (checksum.digest, checksum.count) == (felix.digest, 2)
            felix.apply([put("/c", 3, "7"), put("/a", None, "8")])
            deltas = (await client.read_kind("deltas")).deltas
            assert [(kv.key, kv.value, kv.revision) for kv in deltas.kvs] == [
                ("/c", msgpack.packb(3), "7"), ("/a", b"", "8"),
            ]
            assert deltas.sequence == felix.newest.sequence
            await client.close()

    run(scenario)


def test_value_identical_update_reaches_no_client_and_is_counted():
    async def scenario() -> None:
        async with serving() as (server, caches):
            felix = caches["felix"]
            felix.apply([put("/a", {"x": 1})])
            clients = [RawClient(server.port) for _ in range(3)]
            for client in clients:
                await client.hello(features=())
                await client.read_snapshot()
            skipped_before = REGISTRY.get_sample_value("typha_updates_skipped", {"syncer": "felix"}) or 0
            felix.apply([put("/a", {"x": 1}, "99")])  # same value, new revision: a no-op
            felix.apply([put("/marker", 1)])
            for client in clients:
                deltas = (await client.read_kind("deltas")).deltas
                assert [kv.key for kv in deltas.kvs] == ["/marker"], "the no-op update must not be sent"
                await client.close()
            skipped = REGISTRY.get_sample_value("typha_updates_skipped", {"syncer": "felix"})
            assert skipped == skipped_before + 1

    run(scenario)


def test_lagging_client_gets_breadcrumbs_concatenated_in_order():
    async def scenario() -> None:
        async with serving() as (server, caches):
            felix = caches["felix"]
            client = RawClient(server.port)
            await client.hello(features=())
            await client.read_snapshot()
            for i in range(50):  # all minted before the stream task runs again: one catch-up message
                felix.apply([put(f"/k{i % 7}", i, str(i))])
            received: list[tuple[str, bytes]] = []
            while len(received) < 50:
                deltas = (await client.read_kind("deltas")).deltas
                received.extend((kv.key, kv.value) for kv in deltas.kvs)
            assert received == [(f"/k{i % 7}", msgpack.packb(i)) for i in range(50)]
            assert deltas.sequence == felix.newest.sequence
            await client.close()

    run(scenario)


def test_resume_sends_only_the_deltas_since_the_clients_sequence():
    async def scenario() -> None:
        async with serving() as (server, caches):
            felix = caches["felix"]
            felix.apply([put("/a", 1)])
            first = RawClient(server.port)
            await first.hello(features=())
            hello, _ = await first.read_snapshot()
            await first.close()
            felix.apply([put("/b", 2, "5")])
            second = RawClient(server.port)
            await second.hello(resume=pb.ResumePoint(epoch=hello.epoch, sequence=hello.sequence), features=())
            resumed = (await second.read()).hello
            assert resumed.resumed
            assert resumed.sequence == hello.sequence
            assert (await second.read()).WhichOneof("payload") == "status"  # where the client now stands
            message = await second.read()
            assert message.WhichOneof("payload") == "deltas", "no snapshot may precede a resumed stream"
            assert [kv.key for kv in message.deltas.kvs] == ["/b"]
            await second.close()
            # An unknown epoch (another server, or a restart) falls back to a snapshot.
            third = RawClient(server.port)
            await third.hello(resume=pb.ResumePoint(epoch="stale", sequence=1), features=())
            hello3, state = await third.read_snapshot()
            assert not hello3.resumed
            # A snapshot a moment old is shared; the deltas after it complete the picture.
            state = await third.catch_up(state, hello3.sequence, felix.newest.sequence)
            assert set(state) == {"/a", "/b"}
            await third.close()

    run(scenario)


@pytest.mark.parametrize(
    ("send", "code", "reason"),
    [
        (b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "malformed ClientMessage"),
        (pb.ClientMessage(hello=pb.ClientHello(syncer_type="tunnel")), grpc.StatusCode.INVALID_ARGUMENT,
         "unknown syncer type 'tunnel'"),
        (pb.ClientMessage(pong=pb.Pong()), grpc.StatusCode.INVALID_ARGUMENT, "must be a ClientHello"),
        (pb.ClientMessage(hello=pb.ClientHello(info="x" * (2 * 1024 * 1024))), grpc.StatusCode.RESOURCE_EXHAUSTED,
         "larger than max"),
        (None, grpc.StatusCode.DEADLINE_EXCEEDED, "no ClientHello within"),
    ],
    ids=["garbage", "unknown-syncer", "no-hello-first", "oversized", "silent"],
)
def test_bad_clients_get_a_status_with_a_reason_and_others_keep_being_served(send, code, reason):
    async def scenario() -> None:
        async with serving(ServerSettings(handshake_timeout_secs=0.5)) as (server, caches):
            good = RawClient(server.port)
            await good.hello(features=())
            await good.read_snapshot()
            bad = RawClient(server.port)
            if send is not None:
                await bad.send(send)
            got_code, details = await bad.status()
            assert got_code == code
            assert reason in details
            await bad.close()
            caches["felix"].apply([put("/after", 1)])
            assert [kv.key for kv in (await good.read_kind("deltas")).deltas.kvs] == ["/after"]
            await good.close()

    run(scenario)


def test_a_client_ahead_of_this_replica_resumes_once_it_catches_up():
    """The clients of a dead fan-out worker may be ahead of the worker they land on (same epoch)."""

    async def scenario() -> None:
        async with serving(ServerSettings(handshake_timeout_secs=2, resume_catch_up_secs=1.0)) as (server, caches):
            felix = caches["felix"]
            felix.apply([put("/a", 1)])
            ahead = felix.newest.sequence + 2
            client = RawClient(server.port)
            await client.hello(resume=pb.ResumePoint(epoch=felix.epoch, sequence=ahead), features=())
            await asyncio.sleep(0.1)
            felix.apply([put("/b", 2)])
            felix.apply([put("/c", 3)])
            felix.apply([put("/d", 4)])
            hello = (await client.read()).hello
            assert hello.resumed
            assert hello.sequence == ahead
            assert (await client.read()).WhichOneof("payload") == "status"
            message = await client.read()
            assert [kv.key for kv in message.deltas.kvs] == ["/d"], "only what follows the client's position"
            await client.close()
            # A replica that does not get there in time answers with a snapshot.
            late = RawClient(server.port)
            await late.hello(resume=pb.ResumePoint(epoch=felix.epoch, sequence=felix.newest.sequence + 5),
                             features=())
            snapshot_hello, state = await late.read_snapshot()
            assert not snapshot_hello.resumed
            assert set(state) == {"/a", "/b", "/c", "/d"}
            await late.close()

    run(scenario)


def test_second_hello_is_a_protocol_error():
    async def scenario() -> None:
        # Client messages are read after each ping (an idle stream keeps no read pending), so a
        # violation is caught within one ping interval.
        async with serving(ServerSettings(ping_interval_secs=0.1)) as (server, _):
            client = RawClient(server.port)
            await client.hello(features=())
            await client.read_snapshot()
            await client.hello()
            code, details = await client.status()
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "unexpected hello" in details
            await client.close()

    run(scenario)


def test_stalled_client_is_dropped_at_the_window_while_others_keep_receiving():
    async def scenario() -> None:
        settings = ServerSettings(watchdog_interval_secs=0.05)
        async with serving(settings, max_window_crumbs=50, segment_bytes=64 * 1024) as (server, caches):
            felix = caches["felix"]
            # Without BDP probing the client's HTTP/2 window stays small, so not reading really stalls.
            stalled = RawClient(server.port, options=[("grpc.http2.bdp_probe", 0)])
            await stalled.hello(features=())
            await stalled.read_snapshot()
            reader = RawClient(server.port)
            await reader.hello(features=())
            hello, state = await reader.read_snapshot()
            sequence = hello.sequence
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                produced = 0
                for round_ in range(100):  # 2,000 crumbs of 8 KiB: 16 MB, far beyond any socket buffer
                    for i in range(20):
                        value = f"{round_:04}{i:02}" + "x" * 8192
                        felix.apply([put(f"/k{i}", value, str(round_))])
                        produced += len(value)
                    # The healthy client keeps up all along.
                    state = await reader.catch_up(state, sequence, felix.newest.sequence)
                    sequence = felix.newest.sequence
                code, details = await stalled.status()
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "fell behind" in details
                assert stalled.call.done()
                assert not reader.call.done()
                gc.collect()
                retained = tracemalloc.get_traced_memory()[0] - baseline
            finally:
                tracemalloc.stop()
            # Had the stalled stream pinned its breadcrumbs, all 16 MB would still be reachable.
            assert produced > 16_000_000 and retained < 4 * 1024 * 1024, f"{retained} bytes retained"
            await stalled.close()
            await reader.close()

    run(scenario)


def test_connections_beyond_the_limit_are_refused_with_a_reconnect_hint():
    async def scenario() -> None:
        async with serving(ServerSettings(max_connections=2)) as (server, _):
            clients = [RawClient(server.port) for _ in range(2)]
            for client in clients:
                await client.hello()
                await client.read_snapshot()
            extra = RawClient(server.port)
            await extra.hello()
            hint = (await extra.read()).reconnect
            assert "too many connections" in hint.reason
            code, details = await extra.status()
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "too many connections" in details
            for client in [*clients, extra]:
                await client.close()

    run(scenario)


def test_pings_are_sent_and_a_client_that_never_pongs_is_dropped():
    async def scenario() -> None:
        settings = ServerSettings(ping_interval_secs=0.05, pong_timeout_secs=0.3)
        async with serving(settings) as (server, _):
            polite = RawClient(server.port)
            await polite.hello(features=())
            await polite.read_snapshot()
            rude = RawClient(server.port)
            await rude.hello(features=())
            await rude.read_snapshot()
            for _ in range(10):  # answered pings keep the polite client alive past the timeout
                await polite.read_kind("ping")
            code, details = await rude.status()
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no pong" in details
            assert not polite.call.done()
            await polite.close()
            await rude.close()

    run(scenario)


def test_drain_sends_reconnect_hints_then_closes():
    async def scenario() -> None:
        settings = ServerSettings(drain_reconnect_grace_secs=0.5)
        async with serving(settings) as (server, _):
            movers = [RawClient(server.port) for _ in range(3)]
            for client in movers:
                await client.hello()
                await client.read_snapshot()
            old = RawClient(server.port)  # a client without the reconnect feature is just closed
            await old.hello(features=())
            await old.read_snapshot()
            drain = asyncio.create_task(server.drain(0.2))
            for client in movers:
                hint = (await client.read_kind("reconnect")).reconnect
                assert "shutting down" in hint.reason
                await client.close()  # make-before-break: the client closes once it has moved
            code, details = await old.status()
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in details
            await drain
            assert not server.connections
            late = RawClient(server.port)
            await late.hello()
            code, _ = await late.status()
            assert code == grpc.StatusCode.UNAVAILABLE
            await old.close()
            await late.close()

    run(scenario)


def _summary_count(name: str, syncer: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_count", {"syncer": syncer}) or 0.0


def test_per_delivery_summaries_are_observed_on_the_watchdogs_tick():
    """Latency, write latency and KVs per message are batched per delivery and folded in per tick: every
    delivery is still counted once, with Typha's syncer label."""
    names = ("typha_client_latency_secs", "typha_client_write_latency_secs", "typha_kvs_per_msg")

    async def scenario() -> None:
        async with serving(ServerSettings(handshake_timeout_secs=2, watchdog_interval_secs=0.05)) as (server, caches):
            felix = caches["felix"]
            felix.apply([put("/a", 1)])
            felix.set_status(SyncStatus.IN_SYNC)
            before = {name: _summary_count(name, "felix") for name in names}
            client = RawClient(server.port)
            await client.hello(features=())
            await client.read_snapshot()
            deliveries = 5
            for n in range(deliveries):
                felix.apply([put(f"/d{n}", n, str(n + 2))])
                await client.read_kind("deltas")
            await asyncio.sleep(server.tick_secs * 3)
            counted = {name: _summary_count(name, "felix") - before[name] for name in names}
            assert counted["typha_client_latency_secs"] == deliveries
            assert counted["typha_kvs_per_msg"] == deliveries
            # Every write is timed: the deltas, and the hello, snapshot and status before them.
            assert counted["typha_client_write_latency_secs"] >= deliveries + 3
            await client.close()

    run(scenario)
