"""Replica mode's store: a cache that holds an exact replica of an upstream Typha's (no agent mirror).

A replica (a fan-out worker, a downstream Typha: typha.source.upstream) asks for `exact-crumbs` and
appends the upstream's breadcrumbs to its own cache as the very same bytes under the very same
sequence numbers, so nothing is decoded or re-encoded on the way. The core (typha.client.core) runs
the protocol for it exactly as for an agent (handshake, snapshot chunks, bucket repair, checksums)
and hands the result to a `ReplicaTarget`, which typha.snapcache.cache.SnapshotCache is. The target is
described here rather than imported, because the client library never imports the server side.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from typha.client.mirror import Entry
from typha.client.session import ProtocolError, ResumePoint
from typha.model.kv import SyncStatus
from typha.proto import sync_pb2 as pb
from typha.syncproto.checksum import kv_hash


class _Crumb(Protocol):
    @property
    def sequence(self) -> int: ...


class _Buckets(Protocol):
    def folded(self, count: int) -> list[int]: ...

    def keys_in(self, bucket: int, count: int) -> Iterable[str]: ...


class ReplicaTarget(Protocol):
    """What a replica's cache offers the core (typha.snapcache.cache.SnapshotCache)."""

    epoch: str
    status: SyncStatus

    @property
    def newest(self) -> _Crumb: ...

    @property
    def digest(self) -> int: ...

    @property
    def buckets(self) -> _Buckets: ...

    def __len__(self) -> int: ...

    def get(self, key: str) -> tuple[bytes, str] | None: ...

    def items(self) -> Iterable[tuple[str, bytes, str]]: ...

    def replicate(self, frame: bytes, message: pb.ServerMessage) -> None: ...

    def replicate_reset(self, epoch: str, sequence: int, kvs: Iterable[tuple[str, bytes, str]],
                        status: SyncStatus) -> None: ...


class Replica:
    """The core's view of a ReplicaTarget: where it stands, and the state a session received for it."""

    __slots__ = ("pending", "target")

    def __init__(self, target: ReplicaTarget) -> None:
        self.target = target
        # A complete state (snapshot, or the cache with repaired buckets) waiting for the status that
        # goes with it: (epoch, sequence, kvs). None after a resume: the cache already is that state.
        self.pending: tuple[str, int, list[tuple[str, bytes, str]]] | None = None

    @property
    def position(self) -> ResumePoint:
        return ResumePoint(self.target.epoch, self.target.newest.sequence)

    def summary(self, count: int) -> list[int]:
        return self.target.buckets.folded(count)

    def stage_snapshot(self, epoch: str, sequence: int, staged: dict[str, Entry]) -> None:
        self.pending = (epoch, sequence, [(key, entry[0], entry[2]) for key, entry in staged.items()])

    def stage_repair(self, epoch: str, sequence: int, staged: dict[str, Entry],
                     replaced: set[int], count: int, check: tuple[int, int]) -> None:
        """The cache with the replaced buckets' keys swapped for the received ones, if that matches the
        upstream's checksum. The new digest follows from the keys that leave and arrive: no pass over
        the whole set to check it."""
        cache = self.target
        digest, size = cache.digest, len(cache)
        gone = {key for bucket in replaced for key in cache.buckets.keys_in(bucket, count)}
        for key in gone:
            entry = cache.get(key)
            if entry is None:
                raise ProtocolError(f"the replica's bucket index has {key!r}, its cache does not")
            digest ^= kv_hash(key, entry[0])
        for key, (value, _, _) in staged.items():
            digest ^= kv_hash(key, value)
        size += len(staged) - len(gone)
        if (digest, size) != check:
            raise ProtocolError(f"replica repaired from {len(replaced)} buckets does not match the upstream's "
                                f"checksum ({size} keys, upstream {check[1]})")
        kvs = [(key, value, revision) for key, value, revision in cache.items() if key not in gone]
        kvs.extend((key, entry[0], entry[2]) for key, entry in staged.items())
        self.pending = (epoch, sequence, kvs)

    def settle(self, status: SyncStatus | None) -> None:
        """The status that follows a snapshot, repair or resume: reset the cache to the pending state."""
        pending, self.pending = self.pending, None
        if pending is not None:
            epoch, sequence, kvs = pending
            self.target.replicate_reset(epoch, sequence, kvs, status or self.target.status)

    def replicate(self, frame: bytes, message: pb.ServerMessage, sequence: int) -> None:
        """Append one breadcrumb; exact crumbs follow each other one sequence number apart."""
        newest = self.target.newest.sequence
        if sequence != newest + 1:
            raise ProtocolError(f"upstream sent sequence {sequence} after {newest}")
        self.target.replicate(frame, message)
