"""split_frames (typha.syncproto.frames): a run of crumbs sent as one message comes apart into the very same frames."""

from __future__ import annotations

import pytest

from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import SnapshotCache
from typha.syncproto.frames import FrameError, split_frames


def test_a_run_of_crumbs_splits_into_the_same_frames():
    cache = SnapshotCache("felix")
    cache.apply([Update(f"/k/{i}", {"v": "x" * i}, str(i)) for i in range(300)])  # a long frame (2-byte length)
    cache.apply([Update("/k/1", None, "301")])
    cache.set_status(SyncStatus.IN_SYNC)
    crumbs, crumb = [], cache.oldest.next
    while crumb is not None:
        crumbs.append(crumb.frame)
        crumb = crumb.next
    assert len(crumbs) == 3
    run, _ = cache.oldest.next.run_to_newest()  # the deltas segment, as the server sends it to a lagging replica
    assert split_frames(run + crumbs[2]) == crumbs
    kinds = [pb.ServerMessage.FromString(frame).WhichOneof("payload") for frame in split_frames(run + crumbs[2])]
    assert kinds == ["deltas", "deltas", "status"]


@pytest.mark.parametrize("data", [b"\x0a\x05abc", b"\x08\x01", b"\x0a\xff"])
def test_truncated_or_unexpected_bytes_are_a_protocol_error(data):
    with pytest.raises(FrameError):
        split_frames(data)
