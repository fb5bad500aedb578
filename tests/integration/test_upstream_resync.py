"""A typha following an upstream whose epoch changed (the upstream restarted) repairs its cache by
digest-resync: it receives only the buckets that differ, not a snapshot, and ends an exact replica.

The upstream is an in-process SyncServer restarted on the same port with a new cache (a new epoch)
holding the same ~10,300 KVs of a generated cluster with 1% of them changed. Bytes are the serialized
messages the follower read (`bytes_received`).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from typha.backoff import Backoff
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import SnapshotCache
from typha.source.upstream import UpstreamFollower
from typha.syncserver.resync import BucketRepair
from typha.syncserver.server import SyncServer
from typha.testing.wait import wait_until_async

from .test_digest_resync import SETTINGS, cluster_kvs, one_percent_changed, replica, run

FAST = Backoff(initial=0.05, maximum=0.2)


def exact(copy: SnapshotCache, source: SnapshotCache) -> bool:
    return (copy.epoch == source.epoch and copy.newest.sequence == source.newest.sequence
            and copy.digest == source.digest and len(copy) == len(source)
            and sorted(copy.items()) == sorted(source.items()))


def test_follower_repairs_by_digest_after_the_upstream_restarts_and_is_exact():
    kvs = cluster_kvs()
    assert len(kvs) > 10_000

    async def scenario() -> None:
        first = replica(kvs)
        upstream = SyncServer({"felix": first}, SETTINGS)
        port = await upstream.start("127.0.0.1", 0)
        follower = UpstreamFollower(f"127.0.0.1:{port}", "felix", SnapshotCache("felix"), backoff=FAST)
        follower.start()
        try:
            await wait_until_async(lambda: follower.connected and exact(follower.cache, first),
                                   "the follower connected, exact at the first state", timeout=15)
            snapshot_bytes = follower.bytes_received
            assert follower.snapshots == 1

            # The upstream restarts: a new epoch, and 1% of the keys changed while it was away.
            second = replica(kvs)
            second.apply(one_percent_changed(kvs, random.Random(4)))
            await upstream.stop(0)
            before = follower.bytes_received
            upstream = SyncServer({"felix": second}, SETTINGS)
            assert await upstream.start("127.0.0.1", port) == port
            await wait_until_async(lambda: follower.connected and follower.cache.epoch == second.epoch,
                                   "the follower connected at the second epoch", timeout=15)
            repair_bytes = follower.bytes_received - before
            assert exact(follower.cache, second)
            assert follower.digest_resyncs == 1 and follower.snapshots == 1, (follower.digest_resyncs,
                                                                                follower.snapshots)
            print(f"upstream restart: {repair_bytes} B received vs a snapshot of {snapshot_bytes} B "
                  f"({repair_bytes / snapshot_bytes:.2%})")
            assert repair_bytes <= 0.05 * snapshot_bytes

            # It keeps following the new epoch: later deltas are replicated as they are.
            second.apply(one_percent_changed(kvs, random.Random(5)))
            await wait_until_async(lambda: exact(follower.cache, second),
                                   "the follower exact at the second state", timeout=15)

            # Everything differs: the upstream answers with a snapshot, and the replica is exact again.
            third = replica({f"{key}-other": value for key, value in kvs.items()})
            await upstream.stop(0)
            upstream = SyncServer({"felix": third}, SETTINGS)
            assert await upstream.start("127.0.0.1", port) == port
            await wait_until_async(lambda: follower.connected and follower.cache.epoch == third.epoch,
                                   "the follower connected at the third epoch", timeout=15)
            assert exact(follower.cache, third)
            assert follower.snapshots == 2
            assert follower.digest_resyncs == 1
        finally:
            await follower.stop()
            await upstream.stop(0)

    run(scenario, timeout=60)


def test_a_repair_that_does_not_add_up_leaves_the_cache_alone_and_the_next_session_takes_a_snapshot():
    """The upstream's bucket chunks claim a checksum the repaired set does not have: the follower refuses
    the repair before touching its cache, then starts over with a snapshot and is exact."""
    kvs = cluster_kvs()

    async def scenario() -> None:
        first = replica(kvs)
        upstream = SyncServer({"felix": first}, SETTINGS)
        port = await upstream.start("127.0.0.1", 0)
        cache = SnapshotCache("felix")
        resets: list[str] = []  # the epoch of each replacement of the cache's contents
        reset = cache.replicate_reset

        def recording_reset(epoch: str, *args: Any) -> None:
            resets.append(epoch)
            reset(epoch, *args)

        cache.replicate_reset = recording_reset  # type: ignore[method-assign]
        follower = UpstreamFollower(f"127.0.0.1:{port}", "felix", cache, backoff=FAST)
        follower.start()
        try:
            await wait_until_async(lambda: follower.connected and exact(follower.cache, first),
                                   "the follower connected, exact at the first state", timeout=15)

            second = replica(kvs)
            second.apply(one_percent_changed(kvs, random.Random(6)))
            await upstream.stop(0)
            upstream = SyncServer({"felix": second}, SETTINGS)
            planner = upstream.repairs["felix"]
            honest_plan, lies = planner.plan, []

            def lying_plan(summary: pb.BucketDigests) -> BucketRepair:
                repair = honest_plan(summary)
                frames = [pb.ServerMessage.FromString(frame) for frame in repair.frames]
                for frame in frames:
                    frame.buckets.digest ^= 1
                lies.append(summary.count)
                return dataclasses.replace(repair, frames=[frame.SerializeToString() for frame in frames])

            planner.plan = lying_plan  # type: ignore[method-assign]
            assert await upstream.start("127.0.0.1", port) == port
            await wait_until_async(lambda: follower.connected and follower.cache.epoch == second.epoch,
                                   "the follower connected at the second epoch", timeout=15)
            assert len(lies) == 1, "after a refused repair the follower asks for a snapshot, sending no summary"
            assert resets == [first.epoch, second.epoch], "only the two snapshots may replace the cache"
            assert "does not match the upstream's checksum" in follower.last_error, follower.last_error
            assert exact(follower.cache, second)
            assert follower.digest_resyncs == 0
            assert follower.snapshots == 2
        finally:
            await follower.stop()
            await upstream.stop(0)

    run(scenario, timeout=60)


def test_follower_resumes_on_the_same_upstream_without_a_snapshot_and_keeps_its_crumbs():
    """The stream breaks but the upstream lives on (same epoch): the follower's next hello offers its
    cache's position, the upstream resumes it, and the replica goes on appending the very same crumbs."""
    kvs = cluster_kvs()

    async def scenario() -> None:
        source = replica(kvs)
        upstream = SyncServer({"felix": source}, SETTINGS)
        port = await upstream.start("127.0.0.1", 0)
        follower = UpstreamFollower(f"127.0.0.1:{port}", "felix", SnapshotCache("felix"), backoff=FAST)
        follower.start()
        try:
            await wait_until_async(lambda: follower.connected and exact(follower.cache, source),
                                   "the follower in sync", timeout=15)
            assert (follower.snapshots, follower.resumes, follower.sessions) == (1, 0, 1)
            await upstream.stop(0)
            source.apply(one_percent_changed(kvs, random.Random(7)))  # crumbs the follower missed meanwhile
            upstream = SyncServer({"felix": source}, SETTINGS)
            assert await upstream.start("127.0.0.1", port) == port
            await wait_until_async(lambda: follower.connected and exact(follower.cache, source),
                                   "the follower resumed in sync", timeout=15)
            assert (follower.snapshots, follower.resumes) == (1, 1), (follower.snapshots, follower.resumes)
            assert follower.cache.newest.frame == source.newest.frame, "the very bytes of the upstream's crumb"
        finally:
            await follower.stop()
            await upstream.stop(0)

    run(scenario, timeout=60)
