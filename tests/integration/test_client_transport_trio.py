"""The trio transport against scripted fake servers on 127.0.0.1: the same scenarios as asyncio,
plus the hand-off bound and cancellation closing the stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from tests.integration.test_client_transport_support import (
    STATE,
    FakeCluster,
    Stream,
    deltas,
    exhausted_script,
    in_sync,
    kv,
    ping,
    reconnect,
    resume_script,
    server_hello,
    snapshot,
)
from typha.client import Backoff, StatusChange, SyncEvent, TrioSyncClient, UpdateBatch, open_trio_sync_client
from typha.model.kv import SyncStatus, Update

FAST = Backoff(initial=0.05, maximum=0.2)


def run(fn: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        with trio.fail_after(timeout):
            return await fn()

    return trio.run(bounded)


def updates_of(events: list[SyncEvent]) -> list[Update]:
    return [u for e in events if isinstance(e, UpdateBatch) for u in e.updates]


async def collect_until(
    client: TrioSyncClient, key: str, *, delete: bool = False, timeout: float = 10.0
) -> list[SyncEvent]:
    events: list[SyncEvent] = []
    with trio.fail_after(timeout):
        async for event in client:
            events.append(event)
            if any(u.key == key and u.is_delete == delete for u in updates_of([event])):
                return events
    raise AssertionError(f"client stopped early: {events}")


def test_snapshot_deltas_status_and_pong():
    async def script(stream: Stream) -> None:
        await stream.send(server_hello("e1", 5), *snapshot(STATE, 5, chunks=3), in_sync(6), ping(7))
        await stream.wait_pongs(1)
        await stream.send(deltas(8, kv("/calico/v1/d", {"v": 4}, "8")))
        await stream.hold()

    with FakeCluster(script) as cluster:
        async def main() -> None:
            async with open_trio_sync_client(cluster.addresses, "felix", hostname="n1", backoff=FAST) as client:
                events = await collect_until(client, "/calico/v1/d")
                assert updates_of(events) == [
                    *(Update(k, v, "1") for k, v in sorted(STATE.items())), Update("/calico/v1/d", {"v": 4}, "8"),
                ]
                assert StatusChange(SyncStatus.IN_SYNC) in events
                assert client.in_sync
                assert client.endpoint == cluster.addresses[0]
                c = client.counters
                assert (c.connections, c.snapshots, c.pongs_sent) == (1, 1, 1)

        run(main)
        assert cluster.wait_logged(0, "closed", 0)


def test_cut_connection_resumes():
    with FakeCluster(resume_script) as cluster:
        async def main() -> None:
            async with open_trio_sync_client(cluster.addresses, "felix", hostname="n1", backoff=FAST) as client:
                events = await collect_until(client, "/y")
                assert [u.key for u in updates_of(events)][-2:] == ["/x", "/y"]
                c = client.counters
                assert (c.connections, c.snapshots, c.resumes) == (2, 1, 1)

        run(main)
    assert [h.HasField("resume") for h in cluster.hellos[0]] == [False, True]


def test_resource_exhausted_resyncs_by_snapshot():
    with FakeCluster(exhausted_script) as cluster:
        async def main() -> None:
            async with open_trio_sync_client(cluster.addresses, "felix", hostname="n1", backoff=FAST) as client:
                events = await collect_until(client, "/x", delete=True)  # deleted at IN_SYNC
                assert [(u.key, u.is_delete) for u in updates_of(events)[4:]] == [
                    ("/calico/v1/a", False), ("/calico/v1/n", False), ("/calico/v1/b", True), ("/x", True),
                ]
                assert client.counters.snapshots == 2
                assert client.counters.resyncs == 1

        run(main)


def test_reconnect_hint_moves_make_before_break():
    async def old(stream: Stream) -> None:
        cluster = stream.cluster
        await stream.send(server_hello("a", 5), *snapshot(STATE, 5), in_sync(6))
        await stream.send(reconnect("rebalance", cluster.addresses[1], 20))
        await asyncio.wait_for(cluster.gate("b-hello").wait(), 10)
        await stream.send(deltas(7, kv("/during-move", 1)))
        cluster.gate("a-sent").set()
        await stream.hold()

    async def new(stream: Stream) -> None:
        cluster = stream.cluster
        cluster.gate("b-hello").set()
        await asyncio.wait_for(cluster.gate("a-sent").wait(), 10)
        await asyncio.sleep(0.1)
        cluster.record(1, "snapshot-start", stream.number)
        await stream.send(server_hello("b", 50), *snapshot({**STATE, "/on-b": 1}, 50), in_sync(51))
        await stream.send(deltas(52, kv("/after-move", 1)))
        await stream.hold()

    with FakeCluster(old, new) as cluster:
        async def main() -> None:
            async with open_trio_sync_client(cluster.addresses, "felix", hostname="n1", backoff=FAST) as client:
                events = await collect_until(client, "/after-move")
                assert [u.key for u in updates_of(events)][3:] == ["/during-move", "/on-b", "/during-move",
                                                                   "/after-move"]
                assert client.endpoint == cluster.addresses[1]
                assert client.counters.moves == 1

        run(main)
        assert cluster.wait_logged(0, "closed", 0)
    assert cluster.index(1, "hello", 0) < cluster.index(1, "snapshot-start", 0) < cluster.index(0, "closed", 0)


def test_cancellation_closes_the_stream_and_a_slow_agent_backpressures():
    many = {f"/k{i:04d}": {"i": i} for i in range(200)}

    async def script(stream: Stream) -> None:
        await stream.send(server_hello("e1", 1), *snapshot(many, 1), in_sync(2))
        # One message per key: far more events than the hand-off buffer holds.
        for seq, key in enumerate(sorted(many), start=3):
            await stream.send(deltas(seq, kv(key, {"i": -1})))
        await stream.hold()

    with FakeCluster(script) as cluster:
        async def main() -> None:
            with trio.move_on_after(10) as scope:
                async with open_trio_sync_client(
                    cluster.addresses, "felix", hostname="n1", buffer=2, backoff=FAST
                ) as client:
                    first = await client.receive()
                    assert isinstance(first, UpdateBatch)
                    assert len(first.updates) == 200
                    await trio.sleep(0.5)  # a stalled agent: the worker must stop, not buffer
                    delivered = client.counters.updates_delivered
                    assert delivered <= 200 + 5, delivered  # the snapshot plus a few credited deltas
                    scope.cancel()  # cancellation from outside closes the stream
                    await trio.sleep_forever()
            assert scope.cancelled_caught

        run(main)
        assert cluster.wait_logged(0, "closed", 0)
