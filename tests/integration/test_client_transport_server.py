"""The client against the real SyncServer and SnapshotCache on 127.0.0.1 (end to end).

The fake-server tests pin the client's reaction to each wire event; these check that the client
and the server actually agree: snapshot, deltas, checksums, resume across a server restart on the
same caches, and a drain moving the client to another server make-before-break.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from typha.client import AsyncSyncClient, Backoff, StatusChange, UpdateBatch, open_trio_sync_client
from typha.model.kv import SyncStatus, Update
from typha.snapcache.cache import SnapshotCache
from typha.syncserver.server import ServerSettings, SyncServer
from typha.testing.wait import wait_until_async, wait_until_trio

FAST = Backoff(initial=0.05, maximum=0.2)
SETTINGS = ServerSettings(ping_interval_secs=0.2, checksum_interval_secs=0.2, drain_reconnect_grace_secs=5.0)


def run(scenario: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await scenario()

    return asyncio.run(bounded())


def expected(cache: SnapshotCache) -> dict[str, Any]:
    import msgpack

    return {key: msgpack.unpackb(value) for key, value, _ in cache.items()}


def state(n: int, generation: int = 0) -> list[Update]:
    return [Update(f"/calico/v1/k{i:04d}", {"i": i, "g": generation}, str(generation)) for i in range(n)]


def test_snapshot_deltas_checksums_and_in_sync_end_to_end():
    async def scenario() -> None:
        cache = SnapshotCache("felix")
        cache.apply(state(300))
        server = SyncServer({"felix": cache}, SETTINGS)
        port = await server.start("127.0.0.1", 0)
        try:
            async with AsyncSyncClient([f"127.0.0.1:{port}"], "felix", hostname="n1", backoff=FAST) as client:
                await wait_until_async(lambda: len(client.core) == 300, "300 keys")
                cache.apply([Update("/calico/v1/k0001", None, "9"), Update("/new", {"n": 1}, "9")])
                cache.set_status(SyncStatus.IN_SYNC)
                assert await client.wait_in_sync(10)
                await wait_until_async(
                    lambda: client.counters.checksum_matches >= 2 and client.counters.pongs_sent >= 1,
                    "two checksum matches and a pong")
                assert client.core.to_dict() == expected(cache)
                assert client.counters.checksum_mismatches == 0
                assert client.counters.snapshots == 1
        finally:
            await server.stop(0)

    run(scenario)


def test_resume_across_a_server_restart_on_the_same_caches():
    async def scenario() -> None:
        cache = SnapshotCache("felix")
        cache.apply(state(50))
        cache.set_status(SyncStatus.IN_SYNC)
        first = SyncServer({"felix": cache}, SETTINGS)
        port = await first.start("127.0.0.1", 0)
        async with AsyncSyncClient([f"127.0.0.1:{port}"], "felix", hostname="n1", backoff=FAST) as client:
            await wait_until_async(lambda: len(client.core) == 50, "50 keys")
            await first.stop(0)
            cache.apply([Update("/calico/v1/k0003", {"changed": True}, "7")])
            second = SyncServer({"felix": cache}, SETTINGS)
            try:
                await second.start("127.0.0.1", port)
                await wait_until_async(lambda: client.core.get("/calico/v1/k0003") == {"changed": True},
                                       "k0003 changed")
                assert client.counters.resumes == 1
                assert client.counters.snapshots == 1
                assert client.core.to_dict() == expected(cache)
            finally:
                await second.stop(0)

    run(scenario)


def test_drain_moves_the_client_to_the_other_server_make_before_break():
    async def scenario() -> None:
        caches = [SnapshotCache("felix"), SnapshotCache("felix")]
        servers = [SyncServer({"felix": c}, SETTINGS, server_id=f"s{i}") for i, c in enumerate(caches)]
        for cache in caches:
            cache.apply(state(100))
            cache.set_status(SyncStatus.IN_SYNC)
        ports = [await s.start("127.0.0.1", 0) for s in servers]
        events: list[Any] = []
        try:
            client = AsyncSyncClient([f"127.0.0.1:{p}" for p in ports], "felix", hostname="n1", backoff=FAST)
            async with client:
                async def consume() -> None:
                    async for event in client:
                        events.append(event)  # noqa: PERF401 - read while the stream is still open

                consumer = asyncio.get_running_loop().create_task(consume())
                await wait_until_async(lambda: len(client.core) == 100, "100 keys")
                assert client.endpoint.endswith(str(ports[0]))
                # The second server has seen one more change than the first when the client arrives.
                caches[1].apply([Update("/only-on-b", 1, "5")])
                await servers[0].drain(duration_secs=1.0)
                assert client.endpoint.endswith(str(ports[1]))
                assert not servers[0].connections, "the drained server's stream must be closed by the client"
                assert client.counters.moves == 1
                assert client.counters.snapshots == 2
                await wait_until_async(lambda: client.core.to_dict() == expected(caches[1]), "the second cache's state")
                consumer.cancel()
        finally:
            for server in servers:
                await server.stop(0)
        # Reconciling an identical KV set emits only the difference, not 100 updates again.
        after_first = [u for e in events if isinstance(e, UpdateBatch) for u in e.updates][100:]
        assert after_first == [Update("/only-on-b", 1, "5")]
        # IN_SYNC once, when joining the first server: the second one's repeat is not a change.
        assert events.count(StatusChange(SyncStatus.IN_SYNC)) == 1

    run(scenario)


def test_a_client_joining_an_in_sync_server_is_told_so():
    # The IN_SYNC crumb is older than the snapshot: the server repeats the status after it.
    async def scenario() -> None:
        cache = SnapshotCache("felix")
        cache.apply(state(10))
        cache.set_status(SyncStatus.IN_SYNC)
        server = SyncServer({"felix": cache}, SETTINGS)
        port = await server.start("127.0.0.1", 0)
        try:
            async with AsyncSyncClient([f"127.0.0.1:{port}"], "felix", hostname="n1", backoff=FAST) as client:
                assert await client.wait_in_sync(3)
        finally:
            await server.stop(0)

    run(scenario)


def test_trio_client_end_to_end():
    import threading

    ready: list[int] = []
    stop = threading.Event()
    cache_box: list[SnapshotCache] = []

    def serve() -> None:
        async def main() -> None:
            cache = SnapshotCache("bgp")
            cache.apply(state(20))
            cache_box.append(cache)
            server = SyncServer({"bgp": cache}, SETTINGS)
            ready.append(await server.start("127.0.0.1", 0))
            while not stop.is_set():
                await asyncio.sleep(0.02)
                if len(ready) == 1 and cache.status is not SyncStatus.IN_SYNC and server.connections:
                    cache.apply([Update("/late", 1, "3")])
                    cache.set_status(SyncStatus.IN_SYNC)
            await server.stop(0)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        async def main() -> None:
            with trio.fail_after(20):
                await wait_until_trio(lambda: bool(ready), "the server thread's port", timeout=20, interval=0.01)
                async with open_trio_sync_client([f"127.0.0.1:{ready[0]}"], "bgp", hostname="n1",
                                                 backoff=FAST) as client:
                    seen: dict[str, Any] = {}
                    async for event in client:
                        if isinstance(event, UpdateBatch):
                            seen.update((u.key, u.value) for u in event.updates)
                        elif event.status is SyncStatus.IN_SYNC:
                            break
                    assert len(seen) == 21
                    assert seen["/late"] == 1

        trio.run(main)
    finally:
        stop.set()
        thread.join(10)


def test_a_restarted_server_with_a_new_cache_is_reconciled_without_restarting_the_client():
    async def scenario() -> None:
        old = SnapshotCache("felix")
        old.apply(state(30))
        old.set_status(SyncStatus.IN_SYNC)
        first = SyncServer({"felix": old}, SETTINGS)
        port = await first.start("127.0.0.1", 0)
        events: list[Any] = []
        client = AsyncSyncClient([f"127.0.0.1:{port}"], "felix", hostname="n1", backoff=FAST)
        async with client:
            async def consume() -> None:
                async for event in client:
                    events.append(event)  # noqa: PERF401 - read while the stream is still open

            consumer = asyncio.get_running_loop().create_task(consume())
            await wait_until_async(lambda: len(client.core) == 30 and client.in_sync, "30 keys, in sync")
            await first.stop(0)
            # A new process: new epoch, and the datastore lost two keys and changed one meanwhile.
            new = SnapshotCache("felix")
            new.apply([u for u in state(30) if u.key not in ("/calico/v1/k0007", "/calico/v1/k0008")])
            new.apply([Update("/calico/v1/k0009", {"changed": 1}, "40")])
            new.set_status(SyncStatus.IN_SYNC)
            second = SyncServer({"felix": new}, SETTINGS)
            try:
                await second.start("127.0.0.1", port)
                await wait_until_async(lambda: client.core.to_dict() == expected(new) and client.in_sync,
                                       "the new state, in sync")
            finally:
                await second.stop(0)
            consumer.cancel()
        after_first = [u for e in events if isinstance(e, UpdateBatch) for u in e.updates][30:]
        assert after_first == [
            Update("/calico/v1/k0009", {"changed": 1}, "40"),
            Update("/calico/v1/k0007", None, ""), Update("/calico/v1/k0008", None, ""),
        ]
        assert client.counters.snapshots == 2
        assert client.counters.resumes == 0

    run(scenario)
