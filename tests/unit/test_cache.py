"""SnapshotCache: dedupe, breadcrumb frames, concatenation, snapshots, checksum, resume window."""

from __future__ import annotations

import asyncio
import itertools

import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import CacheLimits, ResumeUnavailable, SnapshotCache
from typha.syncproto.checksum import kv_hash

_names = itertools.count()


def new_cache(**limits) -> SnapshotCache:
    # A fresh syncer label per cache keeps metric assertions independent between tests.
    return SnapshotCache(f"test{next(_names)}", limits=CacheLimits(**limits))


def decode_frames(frames: list[bytes]) -> pb.ServerMessage:
    return pb.ServerMessage.FromString(b"".join(frames))


def crumbs_after(cache: SnapshotCache, sequence: int):
    crumb = cache.crumb_after(cache.epoch, sequence)
    while crumb.next is not None:
        crumb = crumb.next
        yield crumb


def replay(state: dict[str, bytes], message: pb.ServerMessage) -> None:
    for kv in message.deltas.kvs:
        if kv.value:
            state[kv.key] = kv.value
        else:
            state.pop(kv.key, None)


def cache_state(cache: SnapshotCache) -> dict[str, bytes]:
    return {key: value for key, value, _ in cache.items()}


def snapshot_state(cache: SnapshotCache) -> tuple[int, dict[str, bytes], list[str]]:
    snapshot = cache.snapshot()
    state: dict[str, bytes] = {}
    order: list[str] = []
    decompressor = zstandard.ZstdDecompressor()
    for index, frame in enumerate(snapshot.frames):
        chunk = pb.ServerMessage.FromString(frame).snapshot
        assert (chunk.index, chunk.count, chunk.sequence) == (index, len(snapshot.frames), snapshot.sequence)
        deltas = pb.Deltas.FromString(decompressor.decompress(chunk.data))
        for kv in deltas.kvs:
            state[kv.key] = kv.value
            order.append(kv.key)
    return snapshot.sequence, state, order


def test_value_identical_update_makes_no_breadcrumb_and_counts_as_skipped():
    cache = new_cache()
    assert cache.apply([Update("/a", {"x": 1}, "1")]) == 1
    sequence = cache.newest.sequence
    assert cache.apply([Update("/a", {"x": 1}, "2"), Update("/gone", None, "3")]) == 0
    assert cache.newest.sequence == sequence
    skipped = REGISTRY.get_sample_value("typha_updates_skipped", {"syncer": cache.syncer_type})
    total = REGISTRY.get_sample_value("typha_updates_total", {"syncer": cache.syncer_type})
    assert (skipped, total) == (2, 3)


def test_breadcrumb_frame_is_the_encoded_batch():
    cache = new_cache()
    cache.apply([Update("/a", {"x": 1}, "10"), Update("/b", "plain", "11")])
    cache.apply([Update("/a", None, "12")])
    first, second = list(crumbs_after(cache, 0))
    message = pb.ServerMessage.FromString(first.frame)
    assert [(kv.key, msgpack.unpackb(kv.value), kv.revision) for kv in message.deltas.kvs] == [
        ("/a", {"x": 1}, "10"), ("/b", "plain", "11"),
    ]
    assert message.deltas.sequence == first.sequence
    merged = decode_frames([first.frame, second.frame])
    assert [kv.key for kv in merged.deltas.kvs] == ["/a", "/b", "/a"]
    assert merged.deltas.kvs[2].value == b""
    assert merged.deltas.sequence == second.sequence


def test_large_batch_is_split_into_bounded_crumbs():
    cache = new_cache(max_crumb_kvs=10)
    cache.apply([Update(f"/k{i}", i, "1") for i in range(25)])
    assert [crumb.kv_count for crumb in crumbs_after(cache, 0)] == [10, 10, 5]


def test_status_changes_are_ordered_crumbs():
    cache = new_cache()
    cache.set_status(SyncStatus.RESYNC)
    cache.apply([Update("/a", 1, "1")])
    cache.set_status(SyncStatus.IN_SYNC)
    cache.set_status(SyncStatus.IN_SYNC)  # no-op
    kinds = [pb.ServerMessage.FromString(c.frame).WhichOneof("payload") for c in crumbs_after(cache, 0)]
    assert kinds == ["status", "deltas", "status"]
    assert cache.newest.status is SyncStatus.IN_SYNC
    assert not cache.newest.is_deltas


def test_snapshot_is_sorted_chunked_and_shared_while_fresh():
    cache = new_cache(snapshot_chunk_bytes=200)
    cache.apply([Update(f"/k{i:03}", {"i": i, "pad": "x" * 20}, str(i)) for i in range(40)])
    sequence, state, order = snapshot_state(cache)
    assert sequence == cache.newest.sequence
    assert state == cache_state(cache)
    assert order == sorted(order)
    assert len(cache.snapshot().frames) > 1
    assert cache.snapshot() is cache.snapshot(), "joiners at the same crumb share one snapshot"


def test_empty_snapshot_is_one_empty_chunk():
    sequence, state, _ = snapshot_state(new_cache())
    assert (sequence, state) == (0, {})


def test_checksum_tracks_the_kv_set():
    cache = new_cache()
    cache.apply([Update("/a", 1, "1"), Update("/b", 2, "1")])
    cache.apply([Update("/a", 3, "2"), Update("/b", None, "2"), Update("/c", 4, "2")])
    expected = 0
    for key, value, _ in cache.items():
        expected ^= kv_hash(key, value)
    assert cache.digest == expected == cache.newest.digest
    assert cache.newest.key_count == 2


def test_resume_window_is_bounded_by_count_and_epoch():
    cache = new_cache(max_window_crumbs=5)
    for i in range(20):
        cache.apply([Update("/k", i, str(i))])
    assert cache.oldest.sequence == cache.newest.sequence - 4
    assert cache.crumb_after(cache.epoch, cache.newest.sequence - 2).sequence == cache.newest.sequence - 2
    with pytest.raises(ResumeUnavailable, match="outside the resume window"):
        cache.crumb_after(cache.epoch, 3)
    with pytest.raises(ResumeUnavailable, match="epoch"):
        cache.crumb_after("other-epoch", cache.newest.sequence)
    with pytest.raises(ResumeUnavailable):
        cache.crumb_after(cache.epoch, cache.newest.sequence + 1)


def test_initial_load_crumbs_are_kept_only_up_to_a_fraction_of_the_kv_set_once_in_sync():
    cache = new_cache(max_window_kv_fraction=0.1, min_window_bytes=500, max_crumb_kvs=1)
    cache.set_status(SyncStatus.RESYNC)
    cache.apply([Update(f"/load/{i}", {"v": "x" * 40}, str(i)) for i in range(200)])
    loaded = cache.newest.sequence
    kv_bytes = sum(len(key) + len(value) for key, value, _ in cache.items())
    # Still loading: nothing beyond the floor or the fraction is kept either.
    assert cache._window_bytes <= max(500, kv_bytes // 10)
    assert cache.oldest.sequence > 10
    cache.set_status(SyncStatus.IN_SYNC)
    in_sync = cache.newest.sequence
    # Crumbs minted in sync are bounded by the ordinary limits only: a lagging stream stands on them.
    for i in range(200):
        cache.apply([Update(f"/load/{i}", {"v": "y" * 40}, str(1000 + i))])
    assert cache.oldest.sequence <= in_sync
    assert cache.crumb_after(cache.epoch, in_sync).sequence == in_sync
    assert cache.oldest.sequence > loaded - 200


def test_resume_window_is_bounded_by_age():
    now = [100.0]
    cache = SnapshotCache("age", limits=CacheLimits(max_window_age_secs=10), clock=lambda: now[0])
    cache.apply([Update("/k", 1, "1")])
    now[0] += 11
    cache.apply([Update("/k", 2, "2")])
    assert cache.oldest is cache.newest


def test_wait_after_wakes_on_a_new_crumb():
    async def scenario() -> int:
        cache = new_cache()
        start = cache.newest
        waiter = asyncio.ensure_future(cache.wait_after(start))
        await asyncio.sleep(0)
        assert not waiter.done()
        cache.apply([Update("/a", 1, "1")])
        return (await asyncio.wait_for(waiter, 5)).sequence

    assert asyncio.run(scenario()) == 1


updates = st.lists(
    st.lists(
        st.tuples(st.sampled_from([f"/k{i}" for i in range(8)]), st.one_of(st.none(), st.integers(0, 3))),
        min_size=1, max_size=6,
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(batches=updates, join_at=st.integers(0, 25))
def test_snapshot_plus_following_deltas_equals_final_state(batches, join_at):
    cache = new_cache(max_crumb_kvs=3)
    snapshot_seq, from_snapshot = 0, {}
    for index, batch in enumerate(batches):
        if index == join_at:
            snapshot_seq, from_snapshot, _ = snapshot_state(cache)
        cache.apply([Update(key, value, str(index)) for key, value in batch])
    if join_at >= len(batches):
        snapshot_seq, from_snapshot, _ = snapshot_state(cache)
    frames = [crumb.frame for crumb in crumbs_after(cache, snapshot_seq)]
    if frames:
        replay(from_snapshot, decode_frames(frames))
    assert from_snapshot == cache_state(cache)


def test_a_kept_snapshot_is_released_once_its_crumb_leaves_the_window():
    # The snapshot references its crumb, and through `next` every later one: keeping it would pin
    # the whole history.
    cache = new_cache(max_window_crumbs=5)
    cache.apply([Update("/a", 1, "1")])
    first = cache.snapshot()
    assert cache.snapshot() is first
    for i in range(10):
        cache.apply([Update("/a", i + 2, str(i + 2))])
    assert cache._snapshot is None
    assert cache.snapshot() is not first


def test_a_snapshot_is_shared_only_while_the_catch_up_after_it_stays_small():
    # A restarted server's first joiner arrives mid-list: sharing its 10-key snapshot with a joiner that
    # comes 1,000 keys later would send those 1,000 keys as uncompressed deltas instead.
    cache = new_cache(snapshot_reuse_max_lag_kvs=5, snapshot_reuse_max_lag_fraction=0.1)
    cache.apply([Update(f"/k{i}", i, "1") for i in range(10)])
    first = cache.snapshot()
    cache.apply([Update("/late-0", 0, "2")])
    assert cache.snapshot() is first, "a lag of one KV is cheaper than a new snapshot"
    cache.apply([Update(f"/late-{i}", i, "2") for i in range(1, 1000)])
    second = cache.snapshot()
    assert second is not first
    assert second.key_count == 1010
    # The allowance grows with the snapshot: 10% of 1,010 keys covers a 50-key lag.
    cache.apply([Update(f"/later-{i}", i, "3") for i in range(50)])
    assert cache.snapshot() is second


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.lists(st.integers(0, 30), max_size=4)), min_size=1, max_size=25))
def test_runs_handed_out_are_the_frames_from_that_crumb_on_and_shared_by_equal_positions(steps):
    # A small segment so runs cross segment ends; positions are asked again after more crumbs arrive.
    cache = SnapshotCache("felix", limits=CacheLimits(segment_bytes=200))
    crumbs = []
    for round_, (writes, asks) in enumerate(steps):
        for i in range(writes):
            cache.apply([Update(f"/k{round_}-{i}", {"pad": "x" * (i * 7)}, str(round_))])
            crumbs.append(cache.newest)
        for ask in asks:
            first = crumbs[ask % len(crumbs)]
            data, last = first.run_to_newest()
            assert last is first.segment.last
            expected, crumb = b"", first
            while True:
                expected += crumb.frame
                if crumb is last:
                    break
                crumb = crumb.next
            assert data == expected
            again, _ = first.run_to_newest()
            if first.segment.open:
                assert again is data  # the streams at one position share one copy
            else:
                assert first.segment.run is None  # a full segment keeps no extra copy
