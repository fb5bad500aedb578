"""Bucket digests (digest-resync): the shared math, the cache's incremental digests, the server's repair
plan and the client core applying it, without the network (tests/integration/test_digest_resync.py has
the wire)."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from typha.client import ProtocolError, SessionState, SyncClientCore
from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import SnapshotCache
from typha.syncproto.checksum import digest_of, kv_hash
from typha.syncproto.digests import (
    MAX_BUCKETS,
    MIN_BUCKETS,
    WIRE_MASK,
    BucketDigests,
    bucket_count_for,
    bucket_hash,
    summarise,
)
from typha.syncproto.names import FEATURE_DIGEST_RESYNC
from typha.syncserver.resync import RepairDeclined, plan_repair


def updates(n: int, generation: int = 0) -> list[Update]:
    return [Update(f"/calico/v1/host/n{i % 7}/k{i:05d}", {"i": i, "g": generation}, str(generation))
            for i in range(n)]


def cache_with(batch: list[Update]) -> SnapshotCache:
    cache = SnapshotCache("felix")
    cache.apply(batch)
    cache.set_status(SyncStatus.IN_SYNC)
    return cache


def hashes(cache: SnapshotCache) -> list[tuple[str, int]]:
    return [(key, kv_hash(key, value)) for key, value, _ in cache.items()]


def messages(frames: list[bytes]) -> list[pb.ServerMessage]:
    return [pb.ServerMessage.FromString(frame) for frame in frames]


def synced_client(cache: SnapshotCache, **options) -> SyncClientCore:
    core = SyncClientCore("felix", hostname="n1", **options)
    session = core.open_session()
    snap = cache.snapshot()
    hello = pb.ServerMessage(hello=pb.ServerHello(epoch=cache.epoch, sequence=snap.sequence, syncer_type="felix"))
    for message in [hello, *messages(snap.frames),
                    pb.ServerMessage(status=pb.SyncStatus(status=pb.SyncStatus.IN_SYNC, sequence=snap.sequence))]:
        core.receive(session, message)
    assert core.in_sync
    assert len(core) == len(cache)
    return core


def answer(cache: SnapshotCache, session, max_fraction: float = 0.25) -> list[pb.ServerMessage]:
    """What SyncServer sends after a digest-resync hello: ServerHello, BucketChunks, status."""
    repair = plan_repair(cache, session.hello.hello.digests, max_fraction)
    hello = pb.ServerHello(epoch=cache.epoch, sequence=repair.crumb.sequence, syncer_type="felix",
                           bucket_count=repair.bucket_count)
    status = pb.SyncStatus(status=pb.SyncStatus.IN_SYNC, sequence=repair.crumb.sequence)
    return [pb.ServerMessage(hello=hello), *messages(repair.frames), pb.ServerMessage(status=status)]


def as_dict(cache: SnapshotCache) -> dict:
    return {key: msgpack.unpackb(value) for key, value, _ in cache.items()}


# -- the shared math -------------------------------------------------------------------------------


def test_bucket_count_is_a_power_of_two_sized_to_the_keys():
    assert bucket_count_for(0) == MIN_BUCKETS == 1024
    assert bucket_count_for(4096) == 1024
    assert bucket_count_for(4097) == 2048
    assert bucket_count_for(10_000) == 4096
    assert bucket_count_for(10**7) == MAX_BUCKETS == 4096


def test_folding_equals_summarising_at_the_smaller_count_and_xor_is_the_checksum():
    rng = random.Random(5)
    items = [(f"/k/{rng.random()}", rng.getrandbits(64)) for _ in range(3000)]
    digests = BucketDigests.of(items)
    for count in (1, 2, 1024, 2048, 4096):
        assert digests.folded(count) == summarise(items, count)
    total = 0
    for _, value_hash in items:
        total ^= value_hash
    assert digests.folded(1) == [total & WIRE_MASK]
    with pytest.raises(ValueError, match="power of two"):
        digests.folded(3000)
    with pytest.raises(ValueError, match="power of two"):
        digests.folded(8192)


def test_differing_names_exactly_the_changed_buckets():
    items = [(f"/k{i}", i * 7919 + 1) for i in range(5000)]
    digests = BucketDigests.of(items)
    theirs = summarise(items, 2048)
    assert digests.differing(theirs) == []
    changed = ["/k10", "/k4000"]
    digests.discard("/k10", 10 * 7919 + 1)  # deleted on our side
    digests.change("/k4000", 4000 * 7919 + 1, 12345)  # the value changed
    assert digests.differing(theirs) == sorted({bucket_hash(key) & 2047 for key in changed})


# -- the cache keeps them incrementally ------------------------------------------------------------

ops = st.lists(
    st.tuples(st.integers(0, 40), st.one_of(st.none(), st.integers(0, 3))), min_size=1, max_size=60
)


@settings(max_examples=60)
@given(st.lists(ops, min_size=1, max_size=5))
def test_cache_bucket_digests_follow_every_change(batches):
    cache = SnapshotCache("felix")
    replica = SnapshotCache("felix")
    replica.replicate_reset(cache.epoch, 0, [], SyncStatus.WAIT_FOR_READY)
    for batch in batches:
        before = cache.newest
        cache.apply(Update(f"/k{key}", None if value is None else {"v": value}, "1") for key, value in batch)
        crumb = before.next
        while crumb is not None:
            replica.replicate(crumb.frame, pb.ServerMessage.FromString(crumb.frame))
            crumb = crumb.next
        for each in (cache, replica):
            assert each.buckets.folded(1024) == summarise(hashes(each), 1024)
            whole = digest_of((k, v) for k, v, _ in each.items())
            assert whole == each.digest
            assert each.buckets.folded(1) == [whole & WIRE_MASK]
            for bucket in (0, 5, 1023):  # the key index agrees with the digests
                assert set(each.buckets.keys_in(bucket, 1024)) == {k for k, _ in hashes(each)
                                                                   if bucket_hash(k) & 1023 == bucket}
    reset = SnapshotCache("felix")
    reset.replicate_reset("e", 9, list(cache.items()), SyncStatus.IN_SYNC)
    assert reset.buckets.folded(4096) == cache.buckets.folded(4096)


# -- the server's plan -----------------------------------------------------------------------------


def test_plan_sends_the_differing_buckets_whole_and_declines_when_a_snapshot_is_better():
    old = cache_with(updates(3000))
    new = cache_with(updates(3000))
    new.apply([Update("/calico/v1/host/n0/k00007", None, "2"), Update("/new/key", {"n": 1}, "2"),
               Update("/calico/v1/host/n1/k00015", {"changed": True}, "2")])
    summary = pb.BucketDigests(count=1024, digests=old.buckets.folded(1024))
    repair = plan_repair(new, summary, 0.25)
    expected = sorted({bucket_hash(k) & 1023 for k in ("/calico/v1/host/n0/k00007", "/new/key",
                                                      "/calico/v1/host/n1/k00015")})
    chunks = [m.buckets for m in messages(repair.frames)]
    assert sorted(b for c in chunks for b in c.buckets) == expected
    assert repair.crumb is new.newest
    assert all(c.digest == new.digest and c.key_count == len(new) for c in chunks)
    sent = {kv.key for c in chunks for kv in pb.Deltas.FromString(_unzstd(c.data)).kvs}
    assert sent == {k for k, _, _ in new.items() if bucket_hash(k) & 1023 in expected}
    assert "/calico/v1/host/n0/k00007" not in sent
    assert "/new/key" in sent

    with pytest.raises(RepairDeclined, match="buckets differ"):
        plan_repair(new, pb.BucketDigests(count=1024, digests=[1] * 1024), 0.25)
    with pytest.raises(RepairDeclined, match="unusable"):
        plan_repair(new, pb.BucketDigests(count=1000, digests=[0] * 1000), 0.25)
    with pytest.raises(RepairDeclined, match="unusable"):
        plan_repair(new, pb.BucketDigests(count=1024, digests=[0] * 10), 0.25)
    syncing = SnapshotCache("felix")
    syncing.apply(updates(3000))
    with pytest.raises(RepairDeclined, match="not in sync"):
        plan_repair(syncing, summary, 0.25)


def _unzstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def test_plan_splits_large_answers_into_chunks_of_whole_buckets():
    from typha.snapcache.cache import CacheLimits

    new = SnapshotCache("felix", limits=CacheLimits(snapshot_chunk_bytes=4096))
    new.apply(updates(3000))
    new.set_status(SyncStatus.IN_SYNC)
    summary = pb.BucketDigests(count=1024, digests=[0] * 1024)  # an empty mirror: everything differs
    chunks = [m.buckets for m in messages(plan_repair(new, summary, 1.0).frames)]
    assert len(chunks) > 10
    assert {c.count for c in chunks} == {len(chunks)}
    assert sorted(b for c in chunks for b in c.buckets) == sorted(set(new.buckets.differing([0] * 1024)))
    for c in chunks:
        keys = [kv.key for kv in pb.Deltas.FromString(_unzstd(c.data)).kvs]
        assert {bucket_hash(k) & 1023 for k in keys} <= set(c.buckets)


# -- the client ------------------------------------------------------------------------------------


def test_hello_carries_a_summary_only_with_a_resumable_mirror_of_some_size():
    first = SyncClientCore("felix", hostname="n1").open_session().hello.hello
    assert not first.HasField("digests")
    assert FEATURE_DIGEST_RESYNC not in first.features
    small = synced_client(cache_with(updates(MIN_BUCKETS - 1))).open_session().hello.hello
    assert not small.HasField("digests")
    cache = cache_with(updates(5000))
    hello = synced_client(cache).open_session().hello.hello
    assert FEATURE_DIGEST_RESYNC in hello.features
    assert hello.HasField("resume")
    assert hello.digests.count == 2048
    assert list(hello.digests.digests) == cache.buckets.folded(2048)
    for options in ({"digest_resync": False}, {"verify_checksums": False}):
        assert not synced_client(cache, **options).open_session().hello.hello.HasField("digests")
    core = synced_client(cache)
    core.request_resync()  # an untrusted mirror asks for a snapshot, not a repair
    assert not core.open_session().hello.hello.HasField("digests")


def test_repair_from_another_replica_makes_the_mirror_exact():
    batch = updates(5000)
    old = cache_with(batch)
    new = cache_with(batch)  # an independent replica: other epoch, same data
    rng = random.Random(1)
    changes = [Update(batch[i].key, None if rng.random() < 0.3 else {"changed": i}, "2")
               for i in rng.sample(range(5000), 50)]
    new.apply([*changes, Update("/calico/v1/added", {"a": 1}, "2")])
    core = synced_client(old)
    session = core.open_session()
    steps = [core.receive(session, m) for m in answer(new, session)]
    assert session.state is SessionState.LIVE
    assert core.live_session is session
    assert core.in_sync
    assert core.to_dict() == as_dict(new)
    assert core.digest == new.digest
    assert core.position.epoch == new.epoch
    assert core.position.sequence == new.newest.sequence
    repaired = [s for s in steps if s.repaired]
    assert len(repaired) == 1
    assert repaired[0].promoted
    assert not repaired[0].snapshot_complete
    delivered = {u.key: u.value for s in steps for u in s.updates}
    assert delivered == {u.key: u.value for u in [*changes, Update("/calico/v1/added", {"a": 1}, "2")]}
    # Then deltas as usual, with their checksum.
    new.apply([Update("/calico/v1/after", {"x": 1}, "3")])
    step = core.receive(session, pb.ServerMessage.FromString(new.newest.frame))
    assert [u.key for u in step.updates] == ["/calico/v1/after"]
    assert core.digest == new.digest


def test_repair_during_a_make_before_break_move_undoes_what_the_old_stream_applied_since_the_hello():
    batch = updates(4000)
    old, new = cache_with(batch), cache_with(batch)
    core = synced_client(old)
    live = core.live_session
    session = core.open_session()  # summary of the mirror now
    # Both servers keep moving; the old stream keeps feeding the mirror while the new one answers.
    moving = [Update(batch[i].key, {"moved": i}, "3") for i in range(0, 4000, 97)]
    moving.append(Update(batch[5].key, None, "3"))
    for part in (moving[:20], moving[20:]):
        for cache in (old, new):
            cache.apply(part)
        core.receive(live, pb.ServerMessage.FromString(old.newest.frame))
    # The old server is further along than the new one's answer: the repair must go back to it.
    old.apply([Update(batch[1].key, {"only-old": True}, "4")])
    core.receive(live, pb.ServerMessage.FromString(old.newest.frame))
    assert core.get(batch[1].key) == {"only-old": True}
    for message in answer(new, session):
        core.receive(session, message)
    assert core.live_session is session
    assert live.state is SessionState.CLOSED
    assert core.to_dict() == as_dict(new)
    assert core.digest == new.digest


def test_a_repair_that_misses_the_checksum_changes_nothing_and_the_next_hello_asks_for_a_snapshot():
    batch = updates(3000)
    old, new = cache_with(batch), cache_with(batch)
    new.apply([Update(batch[3].key, {"changed": True}, "2")])
    core = synced_client(old)
    before = core.to_dict()
    session = core.open_session()
    messages_ = answer(new, session)
    chunk = messages_[1].buckets
    chunk.digest ^= 1  # a server whose repair would not produce its own checksum
    core.receive(session, messages_[0])
    with pytest.raises(ProtocolError, match="checksum"):
        core.receive(session, messages_[1])
    assert core.to_dict() == before
    core.close_session(session, resync=False)
    assert not core.open_session().hello.hello.HasField("digests")


def test_bucket_chunks_are_refused_unless_a_summary_was_sent_and_named_the_right_buckets():
    batch = updates(2000)
    old, new = cache_with(batch), cache_with(batch)
    new.apply([Update(batch[3].key, {"changed": True}, "2")])
    core = synced_client(old)
    session = core.open_session()
    replies = answer(new, session)
    plain = SyncClientCore("felix", hostname="n2")
    other = plain.open_session()
    plain.receive(other, pb.ServerMessage(hello=pb.ServerHello(epoch="e", syncer_type="felix")))
    with pytest.raises(ProtocolError):
        plain.receive(other, replies[1])  # no summary was sent: a BucketChunk is a protocol error
    wrong = pb.ServerMessage()
    wrong.CopyFrom(replies[1])
    wrong.buckets.buckets[:] = [(wrong.buckets.buckets[0] + 1) % 2048]
    core.receive(session, replies[0])
    with pytest.raises(ProtocolError, match="none of its buckets"):
        core.receive(session, wrong)


def test_planner_shares_one_answer_among_identical_summaries_while_fresh():
    from typha.syncserver.resync import RepairPlanner

    old, new = cache_with(updates(3000)), cache_with(updates(3000))
    new.apply([Update("/calico/v1/host/n0/k00007", {"changed": True}, "2")])
    now = [100.0]
    planner = RepairPlanner(new, 0.25, clock=lambda: now[0])
    summary = pb.BucketDigests(count=1024, digests=old.buckets.folded(1024))
    first = planner.plan(summary)
    assert planner.plan(pb.BucketDigests.FromString(summary.SerializeToString())) is first
    other = pb.BucketDigests(count=2048, digests=old.buckets.folded(2048))
    assert planner.plan(other) is not first
    assert (planner.built, planner.shared) == (2, 1)
    new.apply([Update("/calico/v1/host/n0/k00008", {"changed": True}, "3")])
    shared = planner.plan(summary)  # still fresh: the client continues from the answer's crumb
    assert shared is first
    assert shared.crumb is not new.newest
    now[0] += new.limits.snapshot_reuse_secs
    rebuilt = planner.plan(summary)
    assert rebuilt is not first
    assert rebuilt.crumb is new.newest
    assert rebuilt.buckets == 2
