"""SnapshotCache memory: breadcrumbs that leave the resume window are freed by reference counting alone.

The daemon freezes the heap once in sync (gc.freeze, docs/architecture.md §8), so anything the cache
frees only through the cyclic collector may never be freed: a reference cycle through one crumb held,
through `next`, every crumb minted after it, and typha's RSS grew for as long as updates flowed
(issue 17, item 9).
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from typha.model.kv import SyncStatus, Update
from typha.snapcache.cache import Breadcrumb, CacheLimits, Segment, SnapshotCache

_names = itertools.count()
WINDOW = 20


@contextmanager
def collector_off() -> Iterator[None]:
    """As for objects gc.freeze() has caught: only reference counting frees anything."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def alive(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


@pytest.mark.parametrize("segment_bytes", [200, 4 * 1024 * 1024], ids=["many-segments", "one-segment"])
def test_crumbs_and_segments_out_of_the_window_are_freed_without_the_collector(segment_bytes):
    with collector_off():
        crumbs_before, segments_before = alive(Breadcrumb), alive(Segment)
        cache = SnapshotCache(f"mem{next(_names)}", limits=CacheLimits(max_window_crumbs=WINDOW,
                                                                        segment_bytes=segment_bytes))
        # Status crumbs get a segment of their own, as after a start (and a re-list) in the daemon.
        cache.set_status(SyncStatus.RESYNC)
        cache.apply([Update(f"/pod-{i}", {"ip": i}, "1") for i in range(50)])
        cache.set_status(SyncStatus.IN_SYNC)
        # Steady churn: as many keys deleted as created, for many times the window.
        for i in range(50, 50 + 20 * WINDOW):
            cache.apply([Update(f"/pod-{i}", {"ip": i}, str(i)), Update(f"/pod-{i - 50}", None, str(i))])
        assert len(cache) == 50
        # The window, plus the crumb a closed segment's memo may still name: nothing older.
        assert alive(Breadcrumb) - crumbs_before <= WINDOW + 1
        segments = alive(Segment) - segments_before
        # A crumb keeps its segment alive: at most one segment per crumb in the window.
        assert segments <= WINDOW + 1
        if segment_bytes > 1024 * 1024:
            assert segments == 1  # the status segments left with their crumbs
        del cache


def test_a_segments_last_crumb_is_the_newest_stored_in_it_while_any_of_its_crumbs_lives():
    cache = SnapshotCache(f"mem{next(_names)}", limits=CacheLimits(max_window_crumbs=3, segment_bytes=200))
    cache.apply([Update("/a", 1, "1")])
    first = cache.newest
    for i in range(40):
        cache.apply([Update(f"/k{i}", "x" * 20, str(i))])
    # `first` left the window long ago but a reader holds it: its segment still names its last crumb.
    assert first.segment is not None
    last = first.segment.last
    assert last is not None
    assert last.segment is first.segment
    assert last.next is None or last.next.segment is not first.segment
    data, end = first.run_to_newest()
    assert end is last
    assert data.startswith(first.frame)
