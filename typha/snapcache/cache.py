"""SnapshotCache: one syncer's KV set, deduplicated, as a chain of pre-encoded breadcrumbs.

Every batch of updates that changes something becomes a Breadcrumb holding the batch already
serialised as a `ServerMessage(deltas=…)` frame: the server writes those same bytes to every client,
and a client that is behind gets several consecutive frames concatenated into one message (the
protobuf merge appends their KVs, see proto/typha/v1/sync.proto). Status changes are breadcrumbs
too, so a client sees IN_SYNC exactly after the deltas that preceded it.

Snapshots are built on demand from the current KV set, compressed with zstd in ~1 MiB chunks, and
shared by every client that joins while they are fresh. The cache keeps a bounded window of recent
breadcrumbs (count, bytes, age) for resuming clients; older ones are dropped from the window and
freed once no client's stream references them.

Threading: all methods run on the server's event loop. `LoopFeeder` is the thread-safe door
through which a Source (the datastore's ingest thread) hands in updates, with back-pressure.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import zstandard

from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.snapcache.metrics import CacheMetrics
from typha.syncproto.checksum import kv_hash
from typha.syncproto.digests import BucketDigests
from typha.syncproto.frames import encode_varint
from typha.syncproto.status import status_maps
from typha.syncproto.values import pack_value

STATUS_TO_PB, PB_TO_STATUS = status_maps(SyncStatus)


class Segment:
    """Consecutive delta frames stored back to back, so that any run of them is one slice.

    A client that is behind by k breadcrumbs gets `data[first.start:last.end]`: one copy, whatever k,
    instead of a Python loop over k frames. A status frame gets a segment of its own, because a
    status and deltas must not be merged into one message.
    """

    __slots__ = ("_last", "data", "is_deltas", "open", "run")

    def __init__(self, is_deltas: bool) -> None:
        self.data = bytearray()
        self.is_deltas = is_deltas
        self._last: weakref.ref[Breadcrumb] | None = None
        self.open = is_deltas  # frames may still be appended
        # The last run handed out, (start, end, bytes): the streams woken by one crumb mostly stand at the
        # same position, and without it each would copy the same slice (most of a worker's CPU under churn).
        # Only the open segment keeps one, so the memo costs at most one segment's bytes per cache.
        self.run: tuple[int, int, bytes] | None = None

    # The newest crumb stored in this segment, held weakly: every crumb points at its segment, so a strong
    # reference back would make a cycle that only the cyclic collector frees, and the cycle's crumb holds,
    # through `next`, the whole chain after it. A cycle that gc.freeze() caught (the daemon freezes the heap
    # once in sync, docs/architecture.md §8) is never freed: the chain then grew for the life of the
    # process (issue 17, item 9). Whenever an older crumb of this segment is alive, its `next` chain keeps
    # this one alive too, so the weak reference never dangles for a reader positioned in the segment.
    @property
    def last(self) -> Breadcrumb | None:
        return None if self._last is None else self._last()

    @last.setter
    def last(self, crumb: Breadcrumb) -> None:
        self._last = weakref.ref(crumb)


@dataclass(slots=True, eq=False, weakref_slot=True)
class Breadcrumb:
    """One step of the cache's history. Immutable once linked, except for `next`."""

    sequence: int
    timestamp: float  # time.monotonic() when minted
    segment: Segment | None  # where its frame lives; None for the root
    start: int
    end: int
    kv_count: int  # KVs in the frame (0 for status and root crumbs)
    status: SyncStatus  # the cache's status after this crumb
    digest: int  # checksum of the KV set after this crumb
    key_count: int
    is_deltas: bool
    next: Breadcrumb | None = None

    @property
    def frame(self) -> bytes:
        """The encoded ServerMessage (deltas or a status change); b"" for the root."""
        if self.segment is None:
            return b""
        with memoryview(self.segment.data) as view:
            return bytes(view[self.start : self.end])

    @property
    def size(self) -> int:
        return self.end - self.start

    def run_to_newest(self) -> tuple[bytes, Breadcrumb]:
        """This crumb's frame concatenated with every later one in its segment, and the last of them."""
        segment = self.segment
        assert segment is not None
        assert segment.last is not None
        last = segment.last
        run = segment.run
        if run is not None and run[0] == self.start and run[1] == last.end:
            return run[2], last
        with memoryview(segment.data) as view:
            data = bytes(view[self.start : last.end])
        if segment.open:
            segment.run = (self.start, last.end, data)
        return data, last


@dataclass(slots=True)
class Snapshot:
    """The KV set at `sequence`, encoded as ready-to-send SnapshotChunk frames."""

    sequence: int
    crumb: Breadcrumb
    frames: list[bytes]
    key_count: int
    raw_bytes: int
    compressed_bytes: int
    built_at: float
    build_secs: float


@dataclass(frozen=True, slots=True)
class CacheLimits:
    max_window_crumbs: int = 100_000
    max_window_bytes: int = 256 * 1024 * 1024
    max_window_age_secs: float = 300.0
    # Crumbs minted before the cache was first in sync (the initial load: every KV once, as frames)
    # serve only a client that joined mid-load and still lags; everyone else gets a snapshot. Keeping
    # them all for `max_window_age_secs` held every KV a second time (~0.4 KB each, docs/memory.md), so
    # they are kept only up to this fraction of the KV set's encoded size, never below
    # `min_window_bytes`. Crumbs minted in sync stay under the limits above: a lagging stream is
    # positioned on them, and leaving the window drops it.
    max_window_kv_fraction: float = 0.1
    min_window_bytes: int = 1024 * 1024
    snapshot_chunk_bytes: int = 1024 * 1024
    snapshot_reuse_secs: float = 1.0  # Typha's BinarySnapshotTimeout
    # A joiner given a reused snapshot then receives every KV written since as deltas, uncompressed:
    # share a snapshot only while that catch-up is small next to the snapshot itself (this matters
    # when a restarted server's first joiners arrive mid-list, with the cache still filling).
    snapshot_reuse_max_lag_kvs: int = 256
    snapshot_reuse_max_lag_fraction: float = 0.1
    zstd_level: int = 3
    max_crumb_kvs: int = 1000  # keeps frames well under gRPC's message limit
    # Bounds one catch-up message for a lagging client, and what a trimmed window still pins: a segment
    # lives while any crumb in it is in the window or on a stream (docs/memory.md).
    segment_bytes: int = 1024 * 1024


@dataclass(slots=True)
class _Entry:
    value: bytes
    revision: str


class ReplicaGap(ValueError):
    """An upstream breadcrumb does not follow the replica's newest one: the replica must resync."""


class ResumeUnavailable(LookupError):
    """The client's resume point is not in the window (other epoch, too old or in the future)."""


class SnapshotCache:
    def __init__(
        self,
        syncer_type: str,
        *,
        limits: CacheLimits | None = None,
        metrics: CacheMetrics | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.syncer_type = syncer_type
        self.limits = limits or CacheLimits()
        self.metrics = metrics or CacheMetrics(syncer_type)
        self._clock = clock
        self.epoch = uuid.uuid4().hex
        self._kvs: dict[str, _Entry] = {}
        self._digest = 0
        self._kv_bytes = 0  # encoded keys and values, sizing the resume window
        # The checksum cut into buckets, for clients that resync by digest (typha.syncproto.digests).
        self.buckets = BucketDigests()
        self.status = SyncStatus.WAIT_FOR_READY
        root = Breadcrumb(0, clock(), None, 0, 0, 0, self.status, 0, 0, is_deltas=False)
        self._newest = root
        self._window: deque[Breadcrumb] = deque([root])
        self._window_bytes = 0
        self._new_crumb = asyncio.Event()
        self._snapshot: Snapshot | None = None
        self._segment: Segment | None = None  # the deltas segment being filled
        # Bumped when the chain is replaced (a replica starting over): streams on the old chain must resync.
        self.generation = 0
        self._compressor = zstandard.ZstdCompressor(level=self.limits.zstd_level)
        self.status_listeners: list[Callable[[SyncStatus], None]] = []

    # -- reading -----------------------------------------------------------------------------------

    @property
    def newest(self) -> Breadcrumb:
        return self._newest

    @property
    def oldest(self) -> Breadcrumb:
        return self._window[0]

    def __len__(self) -> int:
        return len(self._kvs)

    def get(self, key: str) -> tuple[bytes, str] | None:
        entry = self._kvs.get(key)
        return None if entry is None else (entry.value, entry.revision)

    def items(self) -> Iterable[tuple[str, bytes, str]]:
        return ((key, entry.value, entry.revision) for key, entry in self._kvs.items())

    @property
    def digest(self) -> int:
        return self._digest

    @property
    def new_crumb_event(self) -> asyncio.Event:
        """Set (and replaced) when the next crumb is minted; waiters re-check their own position."""
        return self._new_crumb

    def wake_all(self) -> None:
        """Wake every waiting stream without a new crumb, e.g. so one of them sees a Reconnect request."""
        event, self._new_crumb = self._new_crumb, asyncio.Event()
        event.set()

    async def wait_after(self, crumb: Breadcrumb) -> Breadcrumb:
        """The crumb after `crumb`, waiting for it to be minted."""
        while crumb.next is None:
            event = self._new_crumb
            await event.wait()
        return crumb.next

    def crumb_after(self, epoch: str, sequence: int) -> Breadcrumb:
        """The crumb a client that has applied `sequence` of `epoch` continues from (resume)."""
        if epoch != self.epoch:
            raise ResumeUnavailable(f"epoch {epoch!r} is not this server's {self.epoch!r}")
        oldest = self._window[0].sequence
        if not oldest <= sequence <= self._newest.sequence:
            raise ResumeUnavailable(
                f"sequence {sequence} is outside the resume window {oldest}..{self._newest.sequence}"
            )
        return self._window[sequence - oldest]

    def in_window(self, crumb: Breadcrumb) -> bool:
        """Whether a client positioned at `crumb` is still within the bounded window."""
        return crumb.sequence >= self._window[0].sequence

    # -- writing -----------------------------------------------------------------------------------

    def apply(self, updates: Iterable[Update]) -> int:
        """Apply a batch; returns the number of updates that changed something."""
        kvs: list[pb.KV] = []
        skipped = 0
        total = 0
        table = self._kvs
        for update in updates:
            total += 1
            old = table.get(update.key)
            if update.value is None:
                if old is None:
                    skipped += 1
                    continue
                del table[update.key]
                self._removed(update.key, old.value)
                kvs.append(pb.KV(key=update.key, revision=update.revision))
                continue
            value = pack_value(update.value)
            if old is not None:
                if old.value == value:
                    skipped += 1
                    continue
                self._changed(update.key, old.value, value)
                old.value, old.revision = value, update.revision
            else:
                table[update.key] = _Entry(value, update.revision)
                self._added(update.key, value)
            kvs.append(pb.KV(key=update.key, value=value, revision=update.revision))
        self.metrics.updates_total.inc(total)
        if skipped:
            self.metrics.updates_skipped.inc(skipped)
        step = self.limits.max_crumb_kvs
        for start in range(0, len(kvs), step):
            part = kvs[start : start + step]
            sequence = self._newest.sequence + 1
            frame = pb.ServerMessage(deltas=pb.Deltas(kvs=part, sequence=sequence)).SerializeToString()
            self._link(frame, len(part), is_deltas=True)
        self.metrics.cache_size.set(len(table))
        return len(kvs)

    # The checksum and its per-bucket parts (with their key index) follow every change.

    def _added(self, key: str, value: bytes) -> None:
        value_hash = kv_hash(key, value)
        self._digest ^= value_hash
        self._kv_bytes += len(key) + len(value)
        self.buckets.add(key, value_hash)

    def _removed(self, key: str, value: bytes) -> None:
        value_hash = kv_hash(key, value)
        self._digest ^= value_hash
        self._kv_bytes -= len(key) + len(value)
        self.buckets.discard(key, value_hash)

    def _changed(self, key: str, old: bytes, new: bytes) -> None:
        old_hash, new_hash = kv_hash(key, old), kv_hash(key, new)
        self._digest ^= old_hash ^ new_hash
        self._kv_bytes += len(new) - len(old)
        self.buckets.change(key, old_hash, new_hash)

    def set_status(self, status: SyncStatus) -> None:
        if status is self.status:
            return
        self.status = status
        sequence = self._newest.sequence + 1
        frame = pb.ServerMessage(
            status=pb.SyncStatus(status=STATUS_TO_PB[status], sequence=sequence)
        ).SerializeToString()
        self._link(frame, 0, is_deltas=False)
        for listener in self.status_listeners:
            listener(status)

    def _link(self, frame: bytes, kv_count: int, *, is_deltas: bool) -> None:
        segment = self._segment
        if not is_deltas or segment is None or len(segment.data) + len(frame) > self.limits.segment_bytes:
            if segment is not None:
                segment.open, segment.run = False, None
            segment = Segment(is_deltas)
            self._segment = segment if is_deltas else None
        start = len(segment.data)
        segment.data += frame
        crumb = Breadcrumb(
            self._newest.sequence + 1, self._clock(), segment, start, start + len(frame), kv_count, self.status,
            self._digest, len(self._kvs), is_deltas,
        )
        segment.last = crumb
        self._newest.next = crumb
        self._newest = crumb
        self._window.append(crumb)
        self._window_bytes += len(frame)
        self._trim_window()
        snapshot = self._snapshot
        # A kept snapshot pins the whole chain after its crumb: let it go once no joiner may share it.
        if snapshot is not None and (
            crumb.timestamp - snapshot.built_at >= self.limits.snapshot_reuse_secs
            or not self.in_window(snapshot.crumb)
        ):
            self._snapshot = None
        self.metrics.breadcrumb_seq_number.set(crumb.sequence)
        self.metrics.breadcrumb_size.observe(kv_count)
        # Wake every waiting stream at once; each re-reads the chain from its own position.
        self.wake_all()

    def _trim_window(self) -> None:
        limits = self.limits
        window = self._window
        horizon = self._clock() - limits.max_window_age_secs
        load_bytes = max(limits.min_window_bytes, int(self._kv_bytes * limits.max_window_kv_fraction))
        while len(window) > 1 and (
            len(window) > limits.max_window_crumbs
            or self._window_bytes > limits.max_window_bytes
            or window[0].timestamp < horizon
            or (window[0].status is not SyncStatus.IN_SYNC and self._window_bytes > load_bytes)
        ):
            self._window_bytes -= window.popleft().size

    # -- following an upstream typha (replica mode) -----------------------------------------------

    def replicate_reset(
        self, epoch: str, sequence: int, kvs: Iterable[tuple[str, bytes, str]], status: SyncStatus
    ) -> None:
        """Start over as an exact copy of an upstream cache at `sequence`: its epoch and KV set.

        Keeping the upstream's epoch and sequence numbers is what lets a client resume on any replica
        that follows the same upstream (a fan-out worker that died, another Typha of the hierarchy).
        """
        # One pass, no list of (key, hash) beside the table: a worker builds this from a whole snapshot,
        # and whatever is alive at that peak stays in its RSS (docs/memory.md).
        table: dict[str, _Entry] = {}
        buckets = BucketDigests()
        digest = kv_bytes = 0
        for key, value, revision in kvs:
            old = table.get(key)
            if old is not None:  # a repeated key: the last one wins, as the dict comprehension did
                value_hash = kv_hash(key, old.value)
                digest ^= value_hash
                kv_bytes -= len(key) + len(old.value)
                buckets.discard(key, value_hash)
            table[key] = _Entry(value, revision)
            value_hash = kv_hash(key, value)
            digest ^= value_hash
            kv_bytes += len(key) + len(value)
            buckets.add(key, value_hash)
        self.epoch = epoch
        self._kvs = table
        self._digest = digest
        self._kv_bytes = kv_bytes
        self.buckets = buckets
        self.status = status
        root = Breadcrumb(sequence, self._clock(), None, 0, 0, 0, status, digest, len(table), is_deltas=False)
        self._newest = root
        self._window = deque([root])
        self._window_bytes = 0
        self._segment = None
        self._snapshot = None
        self.generation += 1
        self.metrics.cache_size.set(len(table))
        self.metrics.breadcrumb_seq_number.set(sequence)
        self.wake_all()

    def replicate(self, frame: bytes, message: pb.ServerMessage) -> None:
        """Append one upstream breadcrumb as it is: the same bytes under the same sequence number."""
        kind = message.WhichOneof("payload")
        if kind == "deltas":
            sequence = message.deltas.sequence
        elif kind == "status":
            sequence = message.status.sequence
        else:
            raise ValueError(f"a {kind} message is not a breadcrumb")
        if sequence != self._newest.sequence + 1:
            raise ReplicaGap(f"upstream sent sequence {sequence} after {self._newest.sequence}")
        if kind == "status":
            status = PB_TO_STATUS[message.status.status]
            self.status = status
            self._link(frame, 0, is_deltas=False)
            for listener in self.status_listeners:
                listener(status)
            return
        table = self._kvs
        kvs = message.deltas.kvs
        for kv in kvs:
            old = table.get(kv.key)
            if kv.value:
                if old is not None:
                    self._changed(kv.key, old.value, kv.value)
                    old.value, old.revision = kv.value, kv.revision
                else:
                    table[kv.key] = _Entry(kv.value, kv.revision)
                    self._added(kv.key, kv.value)
            elif old is not None:
                del table[kv.key]
                self._removed(kv.key, old.value)
        self.metrics.updates_total.inc(len(kvs))
        self._link(frame, len(kvs), is_deltas=True)
        self.metrics.cache_size.set(len(table))

    # -- snapshots ---------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """A snapshot of the current state, reused while fresh (shared by concurrent joiners)."""
        current = self._snapshot
        now = self._clock()
        if current is not None and self._shareable(current, now):
            self.metrics.snapshots_reused.inc()
            return current
        started = time.perf_counter()
        snapshot = self._build_snapshot(now)
        snapshot.build_secs = time.perf_counter() - started
        self._snapshot = snapshot
        self.metrics.snapshots_generated.inc()
        self.metrics.snapshot_raw_bytes.set(snapshot.raw_bytes)
        self.metrics.snapshot_compressed_bytes.set(snapshot.compressed_bytes)
        return snapshot

    def _shareable(self, snapshot: Snapshot, now: float) -> bool:
        if snapshot.crumb is self._newest:
            return True
        if now - snapshot.built_at >= self.limits.snapshot_reuse_secs:
            return False
        budget = max(self.limits.snapshot_reuse_max_lag_kvs,
                     int(snapshot.key_count * self.limits.snapshot_reuse_max_lag_fraction))
        lag = 0
        crumb = snapshot.crumb.next
        while crumb is not None:  # bounded: stops as soon as the lag exceeds the budget
            lag += crumb.kv_count
            if lag > budget:
                return False
            crumb = crumb.next
        return True

    def _build_snapshot(self, now: float) -> Snapshot:
        crumb = self._newest
        sequence = crumb.sequence
        chunk_limit = self.limits.snapshot_chunk_bytes
        raw_chunks: list[bytes] = []
        pending: list[bytes] = []
        pending_size = 0
        for key in sorted(self._kvs):
            entry = self._kvs[key]
            # Each element is one encoded `kvs` field of Deltas: tag 1, length, KV bytes.
            kv = pb.KV(key=key, value=entry.value, revision=entry.revision).SerializeToString()
            element = b"\x0a" + encode_varint(len(kv)) + kv
            pending.append(element)
            pending_size += len(element)
            if pending_size >= chunk_limit:
                raw_chunks.append(b"".join(pending))
                pending, pending_size = [], 0
        if pending or not raw_chunks:
            raw_chunks.append(b"".join(pending))
        frames = []
        compressed_total = 0
        count = len(raw_chunks)
        for index, raw in enumerate(raw_chunks):
            data = self._compressor.compress(raw)
            compressed_total += len(data)
            chunk = pb.SnapshotChunk(
                sequence=sequence, index=index, count=count, compression="zstd", data=data,
                total_kvs=len(self._kvs),
            )
            frames.append(pb.ServerMessage(snapshot=chunk).SerializeToString())
        return Snapshot(
            sequence=sequence, crumb=crumb, frames=frames, key_count=len(self._kvs),
            raw_bytes=sum(map(len, raw_chunks)), compressed_bytes=compressed_total,
            built_at=now, build_secs=0.0,
        )


class LoopFeeder:
    """Hands a Source's output (on its own thread) to a SnapshotCache on the event loop.

    At most `max_in_flight` batches wait on the loop; beyond that the source's thread blocks, which
    back-pressures the reflectors instead of queueing without bound.

    Batches that arrive while the loop is busy are applied together, in order, by one callback: one
    crumb (and one wake-up of every waiting stream) for all of them instead of one each. Under churn
    the loop is busy writing to clients, so a watch event at a time (1,000 writes/s) would otherwise
    mint a crumb per write, wake every idle stream per write, and cross threads per write.
    """

    def __init__(self, cache: SnapshotCache, loop: asyncio.AbstractEventLoop, max_in_flight: int = 8) -> None:
        self.cache = cache
        self.loop = loop
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._pending: list[tuple[bool, Any]] = []  # (is_status, updates or status), in arrival order
        self._scheduled = False

    def _drain(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
            self._scheduled = False
        try:
            updates: list[Update] = []
            for is_status, arg in items:
                if not is_status:
                    updates.extend(arg)
                    continue
                if updates:  # a status change comes after the updates that preceded it, never merged
                    self.cache.apply(updates)
                    updates = []
                self.cache.set_status(arg)
            if updates:
                self.cache.apply(updates)
        finally:
            self._slots.release(len(items))

    def _submit(self, is_status: bool, arg: Any) -> None:
        # Wake now and then to notice a loop that closed under us (shutdown): drop, never hang.
        while not self._slots.acquire(timeout=1.0):
            if self.loop.is_closed():
                return
        with self._lock:
            self._pending.append((is_status, arg))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # loop closed
            with self._lock:
                self._slots.release(len(self._pending))
                self._pending = []
                self._scheduled = False

    def on_updates(self, updates: list[Update]) -> None:
        self._submit(False, updates)

    def on_status(self, status: SyncStatus) -> None:
        self._submit(True, status)
