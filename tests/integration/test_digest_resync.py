"""digest-resync over real gRPC on loopback: a client moving between two independent replicas (each its
own cache and epoch, fed the same data, as two Typhas watching one API server) gets only the buckets
that differ, not a snapshot; and the fallbacks to a snapshot.

Bytes are what the client's stream delivered (serialized ServerMessage sizes, `bytes_received`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from typha.client import AsyncSyncClient, Backoff
from typha.model.kv import SyncStatus, Update
from typha.snapcache.cache import SnapshotCache
from typha.syncserver.server import ServerSettings, SyncServer
from typha.testing.wait import wait_until_async

from .test_fanout_e2e import Ignore

FAST = Backoff(initial=0.05, maximum=0.2)
SETTINGS = ServerSettings(ping_interval_secs=0.5, checksum_interval_secs=0.2, drain_reconnect_grace_secs=5.0)


def run(scenario: Callable[[], Awaitable[Any]], timeout: float = 40.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await scenario()

    return asyncio.run(bounded())


def cluster_kvs() -> dict[str, Any]:
    """The felix syncer's KV set of a generated 100-node cluster: ~10,300 realistic Calico KVs."""
    from typha.demo.cluster import Cluster, ClusterSpec
    from typha.source.datastore import convert_objects

    return convert_objects("felix", Cluster(ClusterSpec(nodes=100, pods_per_node=96, policies=50)).initial_objects())


def replica(kvs: dict[str, Any]) -> SnapshotCache:
    cache = SnapshotCache("felix")
    cache.apply([Update(key, value, "1") for key, value in kvs.items()])
    cache.set_status(SyncStatus.IN_SYNC)
    return cache


def contents(cache: SnapshotCache) -> dict[str, Any]:
    return {key: msgpack.unpackb(value) for key, value, _ in cache.items()}


def edited(value: Any, tag: str) -> Any:
    return {**value, "edit": tag} if isinstance(value, dict) else [value, tag]


def one_percent_changed(kvs: dict[str, Any], rng: random.Random) -> list[Update]:
    """1% of the keys: most values changed, some deleted, as many new keys as deleted."""
    keys = sorted(kvs)
    chosen = rng.sample(keys, len(keys) // 100)
    changes = []
    for i, key in enumerate(chosen):
        if i % 5 == 0:
            changes.append(Update(key, None, "2"))
            changes.append(Update(f"{key}-new", edited(kvs[key], "renamed"), "2"))
        else:
            changes.append(Update(key, edited(kvs[key], str(i)), "2"))
    return changes


async def snapshot_bytes(port: int) -> int:
    """What a fresh client (no mirror) receives from the replica until it is in sync."""
    fresh = AsyncSyncClient([f"127.0.0.1:{port}"], "felix", hostname="fresh", backoff=FAST, callbacks=Ignore())
    async with fresh:
        assert await fresh.wait_in_sync(15)
        assert fresh.counters.snapshots == 1
        return fresh.counters.bytes_received


def test_switching_replica_after_one_percent_changed_sends_under_five_percent_of_a_snapshot():
    kvs = cluster_kvs()
    assert len(kvs) > 10_000

    async def scenario() -> None:
        first, second = replica(kvs), replica(kvs)
        assert first.epoch != second.epoch
        server_a, server_b = SyncServer({"felix": first}, SETTINGS), SyncServer({"felix": second}, SETTINGS)
        port_a, port_b = await server_a.start("127.0.0.1", 0), await server_b.start("127.0.0.1", 0)
        try:
            endpoints = [f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"]
            async with AsyncSyncClient(endpoints, "felix", hostname="n1", backoff=FAST, callbacks=Ignore()) as client:
                assert await client.wait_in_sync(15)
                assert client.endpoint == endpoints[0]
                # While the client still follows A, B (not A) sees 1% of the keys change; then A dies.
                second.apply(one_percent_changed(kvs, random.Random(8)))
                before = client.counters.bytes_received
                probe = client.core.open_session()  # the hello the move will send
                hello_bytes = probe.hello.ByteSize()
                client.core.close_session(probe)
                await server_a.stop(0)
                await wait_until_async(lambda: client.endpoint == endpoints[1] and client.in_sync,
                                       "in sync at the second endpoint", timeout=15)
                moved_bytes = client.counters.bytes_received - before
                matches = client.counters.checksum_matches
                await wait_until_async(lambda: client.counters.checksum_matches > matches,
                                       "a new checksum match", timeout=15)
                assert client.core.to_dict() == contents(second)
                assert client.core.digest == second.digest
                assert client.counters.digest_resyncs == 1
                assert client.counters.snapshots == 1
                assert client.counters.checksum_mismatches == 0
            full = await snapshot_bytes(port_b)
            print(f"replica switch: {moved_bytes} B received vs a full snapshot of {full} B "
                  f"({moved_bytes / full:.2%}); "
                  f"the hello with the summary was {hello_bytes} B")
            assert moved_bytes <= 0.05 * full
        finally:
            await server_a.stop(0)
            await server_b.stop(0)

    run(scenario)


def synthetic(n: int, generation: int = 0) -> dict[str, Any]:
    return {f"/calico/v1/host/n{i % 13}/workload/k8s/ns%2fpod-{i:05d}/endpoint/eth0":
            {"name": f"cali{i:011d}", "ipNetworks": [f"10.0.{i // 250}.{i % 250}/32"], "g": generation}
            for i in range(n)}


def test_fallback_to_a_snapshot_for_old_clients_and_when_too_much_differs():
    kvs = synthetic(3000)

    async def switch(changes: list[Update], **client_options: Any) -> AsyncSyncClient:
        first, second = replica(kvs), replica(kvs)
        server_a, server_b = SyncServer({"felix": first}, SETTINGS), SyncServer({"felix": second}, SETTINGS)
        port_a, port_b = await server_a.start("127.0.0.1", 0), await server_b.start("127.0.0.1", 0)
        try:
            endpoints = [f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"]
            async with AsyncSyncClient(endpoints, "felix", hostname="n1", backoff=FAST, callbacks=Ignore(),
                                       **client_options) as client:
                assert await client.wait_in_sync(15)
                second.apply(changes)
                await server_a.stop(0)
                await wait_until_async(lambda: client.endpoint == endpoints[1] and client.in_sync,
                                       "in sync at the second endpoint", timeout=15)
                assert client.core.to_dict() == contents(second)
                return client
        finally:
            await server_a.stop(0)
            await server_b.stop(0)

    async def scenario() -> None:
        few = [Update(key, {"changed": True}, "2") for key in sorted(kvs)[:30]]
        old = await switch(few, digest_resync=False)  # a client without the feature: as before
        assert (old.counters.snapshots, old.counters.digest_resyncs) == (2, 0)
        new = await switch(few)
        assert (new.counters.snapshots, new.counters.digest_resyncs) == (1, 1)
        many = [Update(key, {"changed": True}, "2") for key in sorted(kvs)[::3]]  # 1,000 keys: most buckets
        flooded = await switch(many)
        assert (flooded.counters.snapshots, flooded.counters.digest_resyncs) == (2, 0)

    run(scenario)


def test_drain_move_under_churn_repairs_by_digest_and_ends_exact():
    """Make-before-break: the old stream keeps applying deltas while the new one answers the summary."""
    kvs = synthetic(4000)

    async def scenario() -> None:
        first, second = replica(kvs), replica(kvs)
        server_a, server_b = SyncServer({"felix": first}, SETTINGS), SyncServer({"felix": second}, SETTINGS)
        port_a, port_b = await server_a.start("127.0.0.1", 0), await server_b.start("127.0.0.1", 0)
        rng = random.Random(3)
        keys = sorted(kvs)

        async def churn(batches: int) -> None:
            for n in range(batches):
                batch = [Update(key, None if rng.random() < 0.2 else {"churn": n}, str(n + 2))
                         for key in rng.sample(keys, 5)]
                for cache in (first, second):
                    cache.apply(batch)
                await asyncio.sleep(0.005)

        try:
            endpoints = [f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"]
            async with AsyncSyncClient(endpoints, "felix", hostname="n1", backoff=FAST, callbacks=Ignore()) as client:
                assert await client.wait_in_sync(15)
                assert client.endpoint == endpoints[0]
                second.apply([Update(key, {"only-b": True}, "1") for key in keys[:20]])
                churner = asyncio.create_task(churn(200))
                await server_a.drain(0.1)
                await churner
                assert client.endpoint == endpoints[1]
                assert client.counters.moves == 1
                matches = client.counters.checksum_matches
                await wait_until_async(lambda: client.counters.checksum_matches > matches,
                                       "a new checksum match", timeout=15)
                assert client.core.to_dict() == contents(second)
                assert client.counters.digest_resyncs == 1
                assert client.counters.snapshots == 1
                assert client.counters.checksum_mismatches == 0
                assert client.counters.protocol_errors == 0
        finally:
            await server_a.stop(0)
            await server_b.stop(0)

    run(scenario)
