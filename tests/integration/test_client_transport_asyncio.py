"""AsyncSyncClient against scripted fake servers on 127.0.0.1: snapshot, resume, resync, moves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from tests.integration.test_client_transport_support import (
    STATE,
    FakeCluster,
    Stream,
    checksum_of,
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
from typha.client import AsyncSyncClient, Backoff, StatusChange, SyncEvent, UpdateBatch
from typha.model.kv import SyncStatus, Update

FAST = Backoff(initial=0.05, maximum=0.2)


def run(coro_fn: Callable[[], Any], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro_fn()

    return asyncio.run(bounded())


async def collect_until(
    client: AsyncSyncClient, done: Callable[[list[SyncEvent]], bool], timeout: float = 10.0
) -> list[SyncEvent]:
    events: list[SyncEvent] = []
    async with asyncio.timeout(timeout):
        async for event in client:
            events.append(event)
            if done(events):
                return events
    raise AssertionError(f"client stopped early: {events}")


def updates_of(events: list[SyncEvent]) -> list[Update]:
    return [u for e in events if isinstance(e, UpdateBatch) for u in e.updates]


def has_update(key: str, value: Any = ...) -> Callable[[list[SyncEvent]], bool]:
    def done(events: list[SyncEvent]) -> bool:
        return any(u.key == key and (value is ... or u.value == value) for u in updates_of(events))

    return done


def client_for(cluster: FakeCluster, **options: Any) -> AsyncSyncClient:
    return AsyncSyncClient(cluster.addresses, "felix", hostname="node-1", backoff=FAST, **options)


def test_snapshot_status_deltas_and_pings():
    async def script(stream: Stream) -> None:
        await stream.send(server_hello("e1", 5), *snapshot(STATE, 5, chunks=3), in_sync(6))
        await stream.send(ping(111), deltas(7, kv("/calico/v1/d", {"v": 4}, "7"), kv("/calico/v1/a", None, "7")))
        await stream.wait_pongs(1)
        await stream.hold()

    with FakeCluster(script) as cluster:
        async def main() -> None:
            async with client_for(cluster) as client:
                events = await collect_until(client, has_update("/calico/v1/d"))
                assert updates_of(events)[:3] == [Update(k, v, "1") for k, v in sorted(STATE.items())]
                assert StatusChange(SyncStatus.IN_SYNC) in events
                assert updates_of(events)[3:] == [
                    Update("/calico/v1/d", {"v": 4}, "7"), Update("/calico/v1/a", None, "7"),
                ]
                assert client.in_sync
                assert client.endpoint == cluster.addresses[0]
                assert client.core.to_dict() == {"/calico/v1/b": {"v": 2}, "/calico/v1/c": {"v": 3},
                                                 "/calico/v1/d": {"v": 4}}
                c = client.counters
                assert (c.connections, c.snapshots, c.resumes) == (1, 1, 0)
                assert c.bytes_received > 0
                assert c.messages_received == 7

        run(main)
        hello = cluster.hellos[0][0]
        assert hello.hostname == "node-1"
        assert list(hello.compressions) == ["zstd"]
        assert not hello.HasField("resume")
        assert cluster.wait_logged(0, "closed", 0)


def test_pong_answers_ping():
    pongs: list[int] = []

    async def script(stream: Stream) -> None:
        await stream.send(server_hello("e1", 1), *snapshot({}, 1, chunks=1), in_sync(2), ping(42))
        await stream.wait_pongs(1)
        pongs.extend(stream.pongs)
        await stream.send(deltas(3, kv("/done", 1)))
        await stream.hold()

    with FakeCluster(script) as cluster:
        async def main() -> None:
            async with client_for(cluster) as client:
                await collect_until(client, has_update("/done"))
                assert client.counters.pongs_sent == 1

        run(main)
    assert pongs == [42]


def test_cut_connection_reconnects_and_resumes():
    with FakeCluster(resume_script) as cluster:
        async def main() -> None:
            async with client_for(cluster) as client:
                events = await collect_until(client, has_update("/y"))
                assert [u.key for u in updates_of(events)][-2:] == ["/x", "/y"]
                c = client.counters
                assert (c.connections, c.snapshots, c.resumes) == (2, 1, 1)
                assert client.core.resume_point.sequence == 8

        run(main)
    assert [h.HasField("resume") for h in cluster.hellos[0]] == [False, True]


def test_resource_exhausted_leads_to_a_fresh_snapshot_reconciled_against_the_mirror():
    with FakeCluster(exhausted_script) as cluster:
        async def main() -> None:
            async with client_for(cluster) as client:
                # The deletions come with the IN_SYNC that follows the snapshot.
                events = await collect_until(client, has_update("/x", None))
                tail = updates_of(events)[4:]  # after the first snapshot and /x
                assert tail == [
                    Update("/calico/v1/a", {"v": 10}, "1"), Update("/calico/v1/n", {"v": 5}, "1"),
                    Update("/calico/v1/b", None, ""), Update("/x", None, ""),
                ]
                c = client.counters
                assert (c.connections, c.snapshots, c.resumes, c.resyncs) == (2, 2, 0, 1)

        run(main)


def test_checksum_mismatch_twice_resyncs_by_snapshot():
    async def script(stream: Stream) -> None:
        if stream.number == 0:
            await stream.send(server_hello("e1", 5), *snapshot(STATE, 5), in_sync(6), checksum_of(STATE, 6))
            wrong = {**STATE, "/calico/v1/a": {"v": 99}}
            await stream.send(checksum_of(wrong, 6), checksum_of(wrong, 6))
            await stream.hold()
        assert stream.resume is None
        await stream.send(server_hello("e1", 9), *snapshot({**STATE, "/z": 1}, 9), in_sync(10))
        await stream.hold()

    with FakeCluster(script) as cluster:
        async def main() -> None:
            async with client_for(cluster) as client:
                await collect_until(client, has_update("/z"))
                c = client.counters
                assert (c.checksum_matches, c.checksum_mismatches, c.resyncs, c.snapshots) == (1, 2, 1, 2)

        run(main)
        assert cluster.wait_logged(0, "closed", 0)


def test_reconnect_hint_moves_to_the_second_endpoint_make_before_break():
    async def old(stream: Stream) -> None:
        cluster = stream.cluster
        await stream.send(server_hello("a", 5), *snapshot(STATE, 5), in_sync(6))
        await stream.send(reconnect("drain", cluster.addresses[1], 50))
        # The old stream keeps serving while the client gets in sync on the new one.
        await asyncio.wait_for(cluster.gate("b-hello").wait(), 10)
        await stream.send(deltas(7, kv("/during-move", 1)))
        cluster.gate("a-sent").set()
        await stream.hold()

    async def new(stream: Stream) -> None:
        cluster = stream.cluster
        cluster.gate("b-hello").set()
        await asyncio.wait_for(cluster.gate("a-sent").wait(), 10)
        await asyncio.sleep(0.1)  # let the client apply the old stream's delta first
        cluster.record(1, "snapshot-start", stream.number)
        await stream.send(server_hello("b", 50), *snapshot({**STATE, "/on-b": 1}, 50, chunks=2), in_sync(51))
        await stream.send(deltas(52, kv("/after-move", 1)))
        await stream.hold()

    with FakeCluster(old, new) as cluster:
        async def main() -> None:
            async with client_for(cluster) as client:
                events = await collect_until(client, has_update("/after-move"))
                keys = [u.key for u in updates_of(events)]
                assert keys[3:] == ["/during-move", "/on-b", "/during-move", "/after-move"]
                assert updates_of(events)[5].is_delete  # B's snapshot lacks what only A sent
                assert client.endpoint == cluster.addresses[1]
                c = client.counters
                assert (c.connections, c.moves, c.reconnect_hints, c.snapshots) == (2, 1, 1, 2)

        run(main)
        assert cluster.wait_logged(0, "closed", 0)
    # Make-before-break: A was still open when B received the hello and started its snapshot (the
    # client closes A only once B's last chunk is in, which is written after that record).
    assert cluster.index(1, "hello", 0) < cluster.index(1, "snapshot-start", 0) < cluster.index(0, "closed", 0)
    assert cluster.hellos[1][0].resume.epoch == "a"  # offered, but B is another epoch: snapshot


def test_unavailable_and_dead_endpoints_are_skipped():
    async def refusing(stream: Stream) -> None:
        await stream.send(reconnect("too many connections", "", 0))
        await stream.abort(grpc.StatusCode.UNAVAILABLE, "too many connections")

    async def serving(stream: Stream) -> None:
        await stream.send(server_hello("e1", 1), *snapshot(STATE, 1), in_sync(2))
        await stream.hold()

    with FakeCluster(refusing, serving) as cluster:
        async def main() -> None:
            dead = "127.0.0.1:1"  # nothing listens on port 1
            client = AsyncSyncClient([dead, *cluster.addresses], "felix", hostname="n", backoff=FAST)
            async with client:
                assert await client.wait_in_sync(10)
                assert client.endpoint == cluster.addresses[1]
                assert client.counters.failed_connections == 2

        run(main)


def test_callbacks_api_and_clean_close():
    from typha.testing.mirror import KVMirror

    async def script(stream: Stream) -> None:
        await stream.send(server_hello("e1", 1), *snapshot(STATE, 1), in_sync(2))
        await stream.hold()

    with FakeCluster(script) as cluster:
        mirror = KVMirror()

        async def main() -> None:
            client = AsyncSyncClient(cluster.addresses, "felix", hostname="n", callbacks=mirror, backoff=FAST)
            client.start()
            assert await client.wait_in_sync(10)
            await client.close()
            await client.close()  # idempotent
            assert [e async for e in client] == []

        run(main)
        assert mirror.snapshot() == STATE
        assert mirror.statuses == [SyncStatus.IN_SYNC]
        assert cluster.wait_logged(0, "closed", 0)


def test_a_failing_callback_stops_the_client_and_closes_its_stream():
    class Broken:
        def on_updates(self, updates: list[Update]) -> None:
            raise RuntimeError("agent bug")

        def on_status(self, status: SyncStatus) -> None:
            pass

    async def script(stream: Stream) -> None:
        await stream.send(server_hello("e1", 1), *snapshot(STATE, 1), in_sync(2))
        await stream.hold()

    with FakeCluster(script) as cluster:
        async def main() -> None:
            client = AsyncSyncClient(cluster.addresses, "felix", hostname="n", callbacks=Broken(), backoff=FAST)
            try:
                with pytest.raises(RuntimeError, match=r"^agent bug$"):
                    await client.wait()
            finally:
                await client.close()

        run(main)
        assert cluster.wait_logged(0, "closed", 0)


def test_tls_with_the_servers_ca():
    from typha.testing.apiserver.tls import generate

    creds = generate()

    async def script(stream: Stream) -> None:
        await stream.send(server_hello("e1", 1), *snapshot(STATE, 1), in_sync(2))
        await stream.hold()

    with FakeCluster(script, tls=(creds.key_pem, creds.cert_pem + creds.ca_pem)) as cluster:
        async def main() -> None:
            client = client_for(cluster, credentials=grpc.ssl_channel_credentials(root_certificates=creds.ca_pem))
            async with client:
                assert await client.wait_in_sync(10)
                assert client.core.to_dict() == STATE

        run(main)


def test_gives_up_after_the_configured_number_of_failures():
    async def main() -> None:
        client = AsyncSyncClient(["127.0.0.1:1"], "felix", hostname="n", backoff=FAST, max_consecutive_failures=2)
        async with client:
            with pytest.raises(ConnectionError, match="gave up after 2") as info:
                async for _ in client:
                    pass
            assert "UNAVAILABLE" in str(info.value)
            assert client.counters.connections == 3

    run(main)


def test_a_move_to_a_dead_endpoint_leaves_the_client_on_its_old_stream():
    async def script(stream: Stream) -> None:
        await stream.send(server_hello("e1", 1), *snapshot(STATE, 1), in_sync(2))
        await stream.send(reconnect("rebalance", "127.0.0.1:1", 0))
        await asyncio.sleep(0.5)  # the client tries 127.0.0.1:1, fails, and stays
        await stream.send(deltas(3, kv("/still-here", 1)))
        await stream.hold()

    with FakeCluster(script) as cluster:
        async def main() -> None:
            async with client_for(cluster) as client:
                await collect_until(client, has_update("/still-here"))
                c = client.counters
                assert (c.connections, c.failed_connections, c.moves) == (2, 1, 0)
                assert client.endpoint == cluster.addresses[0]
                assert client.in_sync

        run(main)


def test_a_protocol_error_drops_the_stream_and_resyncs_without_touching_the_mirror():
    from typha.proto import sync_pb2 as pb

    async def script(stream: Stream) -> None:
        if stream.number == 0:
            await stream.send(server_hello("e1", 1), *snapshot(STATE, 1), in_sync(2))
            bad = pb.KV(key="/calico/v1/a", value=b"\xc1", revision="3")  # not msgpack
            await stream.send(deltas(3, kv("/calico/v1/b", {"v": 20}), bad))
            await stream.hold()
        assert stream.resume is None, "after a protocol error the client must not resume"
        await stream.send(server_hello("e1", 5), in_sync(5), *snapshot({**STATE, "/fixed": 1}, 5))
        await stream.hold()

    with FakeCluster(script) as cluster:
        async def main() -> None:
            async with client_for(cluster) as client:
                events = await collect_until(client, has_update("/fixed"))
                # Nothing of the bad message was applied: the only later update is the snapshot's.
                assert updates_of(events)[3:] == [Update("/fixed", 1, "1")]
                assert client.counters.protocol_errors == 1
                assert client.counters.snapshots == 2

        run(main)
        assert cluster.wait_logged(0, "closed", 0)


def test_rediscovers_typha_before_reconnecting_and_survives_a_failed_discovery():
    async def script(stream: Stream) -> None:
        await stream.send(server_hello("e1", 1), *snapshot(STATE, 1), in_sync(2))
        await stream.hold()

    with FakeCluster(script) as cluster:
        calls: list[int] = []

        def rediscover() -> list[str]:
            calls.append(1)
            if len(calls) == 1:
                raise OSError("API unreachable")  # the client keeps its list and tries it
            return list(cluster.addresses)

        async def main() -> None:
            client = AsyncSyncClient(["127.0.0.1:1"], "felix", hostname="n", backoff=FAST, rediscover=rediscover)
            async with client:
                assert await client.wait_in_sync(timeout=10)
                assert client.endpoint == cluster.addresses[0]
                assert client.endpoints == cluster.addresses
                assert (client.counters.failed_connections, len(calls)) == (1, 2)

        run(main)
