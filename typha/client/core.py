"""Sans-IO core of the Sync client: dispatch of server messages, without I/O.

The transports (asyncio, trio, the upstream follower) own sockets, timers and backoff; this package
owns every decision that depends on the protocol. The core is fed one `ServerMessage` at a time and
answers with a `Step` saying what happened: updates to apply, a status change, messages to send back,
a checksum verdict, a reconnect hint, or a request to resync. Keeping it free of I/O lets the unit
tests drive it with hand-built messages and lets every transport share exactly the same semantics.

Three parts, as h11 and h2 split theirs: `session` (each stream's state and the table of which
message may come when), `mirror` (the agent's KV set: reconcile, journal, repair) and this module,
which validates and decodes each message, advances the session and tells the mirror what to do.

Sessions. Each stream is a `Session`. Several may exist at once, because a move to another server
is make-before-break: the old session keeps feeding deltas into the mirror while the new one
receives its snapshot into a staging area. The new session becomes *live* when it is in sync (a
resumed hello, or the last snapshot chunk, which is reconciled against the mirror); the previous
live session is then retired and its later messages are ignored. Only the live session mutates the
mirror, so the mirror always follows one server's sequence.

Digest resync. A hello that offers a resume point also carries per-bucket digests of the mirror
(typha.syncproto.digests) when the mirror is large enough. A server of another epoch (a different
replica) may answer with BucketChunks: its full contents of just the buckets that differ, which must
then match the server's checksum or the mirror is left alone (typha.client.mirror).

Replica mode (`replica=` a cache, typha.client.replica): the same protocol for a Typha that follows
another. It asks for exact crumbs, keeps no mirror of its own, and passes each breadcrumb through to
the cache as the exact bytes received (`receive_frames`); snapshots and repairs reset the cache.

Atomicity. A message is validated and decoded completely before anything changes, so a protocol
error (undecodable value, chunk out of order, ...) raises `ProtocolError` and leaves the mirror as
it was after the last good message; the transport then resyncs by snapshot and reconciles.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zstandard
from google.protobuf.message import DecodeError

import typha
from typha.client.mirror import Entry, Mirror
from typha.client.replica import Replica, ReplicaTarget
from typha.client.session import (
    MIRROR_TRANSITIONS,
    REPLICA_TRANSITIONS,
    Event,
    ProtocolError,
    ResumePoint,
    Session,
    SessionState,
)
from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.syncproto.digests import MIN_BUCKETS, bucket_count_for, bucket_hash
from typha.syncproto.frames import FrameError, split_frames
from typha.syncproto.names import (
    DEFAULT_SYNCER,
    FEATURE_CHECKSUM,
    FEATURE_CRUMB_RUNS,
    FEATURE_DIGEST_RESYNC,
    FEATURE_EXACT_CRUMBS,
    FEATURE_RECONNECT,
)
from typha.syncproto.status import status_maps

_, _STATUS_FROM_PB = status_maps(SyncStatus)

# A decompressed snapshot or bucket chunk may be no bigger than a raw one can be: the transports'
# receive limit. The server cuts chunks at ~1 MiB; one KV is at most a few MB (etcd's object limit).
MAX_CHUNK_BYTES = 64 * 1024 * 1024
_ZSTD_FEED_BYTES = 1024


# How errors name the KVs of one chunk and of all chunks so far, per chunk kind.
_HOLDS = {"snapshot": ("snapshot holds", "snapshot holds"), "bucket": ("bucket chunk holds", "bucket chunks hold")}


@dataclass(frozen=True, slots=True)
class ReconnectHint:
    """The server asks the client to move (drain, rebalance): make-before-break."""

    reason: str
    endpoint: str  # "" means any other endpoint
    after_ms: int  # wait a random time up to this before connecting, to spread the herd


class ChecksumOutcome(enum.Enum):
    MATCH = "match"
    MISMATCH = "mismatch"
    SKIPPED = "skipped"  # not comparable: another sequence, mid-snapshot, or not the live session


@dataclass(frozen=True, slots=True)
class ChecksumVerdict:
    sequence: int
    outcome: ChecksumOutcome
    server_digest: int
    server_count: int
    local_digest: int
    local_count: int
    consecutive_mismatches: int


@dataclass(slots=True)
class Step:
    """What one ServerMessage caused. Transports act on every non-empty field, in this order:
    write `send` on the same stream, close `retired` streams, deliver `updates` then `status`,
    then honour `resync` (close this stream, reconnect for a snapshot) or `reconnect` (move)."""

    updates: list[Update] = field(default_factory=list)
    status: SyncStatus | None = None
    send: list[pb.ClientMessage] = field(default_factory=list)
    checksum: ChecksumVerdict | None = None
    reconnect: ReconnectHint | None = None
    resync: str | None = None  # reason; the core has already dropped its resume point
    promoted: bool = False  # this session became the live one (resumed, snapshot complete, replica settled)
    resumed: bool = False
    snapshot_complete: bool = False
    repaired: bool = False  # only the differing buckets were received (digest-resync)
    retired: list[Session] = field(default_factory=list)

    def merge(self, later: Step) -> None:
        """Fold the step of a later frame of the same message into this one (receive_frames)."""
        self.updates += later.updates
        self.send += later.send
        self.retired += later.retired
        self.status = later.status or self.status
        self.checksum = later.checksum or self.checksum
        self.reconnect = later.reconnect or self.reconnect
        self.resync = later.resync or self.resync
        self.promoted |= later.promoted
        self.resumed |= later.resumed
        self.snapshot_complete |= later.snapshot_complete
        self.repaired |= later.repaired


class SyncClientCore:
    """The client side of one syncer's stream(s) and the mirror of that syncer's KV set.

    With `replica`, the KV set is that cache's instead (replica mode, see the module docstring): the
    mirror-reading methods then see nothing. Not thread-safe: a transport calls it from one thread.
    """

    def __init__(
        self,
        syncer_type: str,
        *,
        hostname: str,
        info: str = "",
        version: str = typha.__version__,
        client_id: str | None = None,
        compressions: tuple[str, ...] = ("zstd",),
        verify_checksums: bool = True,
        checksum_mismatch_limit: int = 2,
        digest_resync: bool = True,
        replica: ReplicaTarget | None = None,
    ) -> None:
        if checksum_mismatch_limit < 1:
            raise ValueError("checksum_mismatch_limit must be at least 1")
        unknown = set(compressions) - {"zstd"}
        if unknown:
            raise ValueError(f"unsupported compressions {sorted(unknown)}")
        self.syncer_type = syncer_type or DEFAULT_SYNCER
        self.hostname = hostname
        self.info = info
        self.version = version
        self.client_id = client_id or uuid.uuid4().hex
        self.compressions = tuple(compressions)
        self.verify_checksums = verify_checksums or replica is not None
        self.checksum_mismatch_limit = checksum_mismatch_limit
        self._mirror = Mirror(self.verify_checksums and replica is None)
        self._replica = Replica(replica) if replica is not None else None
        self._transitions = REPLICA_TRANSITIONS if replica is not None else MIRROR_TRANSITIONS
        # Where the mirror stands in some server's history; None until the first snapshot (a replica's
        # is its cache's, once the cache holds a replica).
        self._position: ResumePoint | None = None
        # False after anything that makes the mirror untrustworthy for resuming (checksum mismatch,
        # fell behind, protocol error) until the next snapshot has been reconciled.
        self._resume_ok = False
        self._status: SyncStatus | None = None
        self._live: Session | None = None
        self._mismatches = 0
        self._dctx = zstandard.ZstdDecompressor()
        # Offer bucket digests in hellos: needs the digest that checksum verification keeps.
        self.digest_resync = digest_resync and self.verify_checksums
        # Cleared by a repair that failed its check, until a snapshot lands.
        self._repair_trusted = True

    # -- reading the mirror ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._mirror)

    def __contains__(self, key: object) -> bool:
        return key in self._mirror.entries

    def get(self, key: str) -> Any:
        """The decoded value of `key`, or None if absent."""
        entry = self._mirror.entries.get(key)
        return None if entry is None else entry[1]

    def entry(self, key: str) -> Entry | None:
        return self._mirror.entries.get(key)

    def items(self) -> Iterator[tuple[str, Any]]:
        return self._mirror.items()

    def to_dict(self) -> dict[str, Any]:
        return dict(self._mirror.items())

    @property
    def digest(self) -> int:
        """The mirror's checksum digest (0 when checksums are not verified)."""
        return self._mirror.digest

    @property
    def status(self) -> SyncStatus | None:
        return self._status

    @property
    def in_sync(self) -> bool:
        return self._status is SyncStatus.IN_SYNC and self._live is not None

    @property
    def position(self) -> ResumePoint | None:
        """The server state the mirror equals, whether or not it may be resumed from."""
        if self._replica is not None and self._position is not None:
            return self._replica.position
        return self._position

    @property
    def resume_point(self) -> ResumePoint | None:
        """What the next hello offers; None asks for a full snapshot."""
        return self.position if self._resume_ok else None

    @property
    def unconfirmed_keys(self) -> frozenset[str]:
        """Mirror keys a reconciling snapshot lacked, to be deleted when the server says IN_SYNC."""
        return frozenset(self._mirror.unconfirmed)

    @property
    def live_session(self) -> Session | None:
        return self._live

    # -- session lifecycle -------------------------------------------------------------------------

    def open_session(self) -> Session:
        """A new stream: send `session.hello` first. With a live session, this is the standby side of
        a make-before-break move."""
        resume = self.resume_point
        replica = self._replica
        if replica is not None:
            replica.pending = None  # a state received by an earlier stream is not this one's to settle
            # Exact crumbs (run-length: several per message) rather than the agents' reconnect hints.
            features = [FEATURE_EXACT_CRUMBS, FEATURE_CRUMB_RUNS, FEATURE_CHECKSUM]
            size = len(replica.target)
        else:
            features = [FEATURE_CHECKSUM, FEATURE_RECONNECT] if self.verify_checksums else [FEATURE_RECONNECT]
            size = len(self._mirror)
        hello = pb.ClientHello(
            hostname=self.hostname,
            info=self.info,
            version=self.version,
            syncer_type=self.syncer_type,
            compressions=list(self.compressions),
            features=features,
            client_id=self.client_id,
        )
        if replica is not None and self.digest_resync:
            hello.features.append(FEATURE_DIGEST_RESYNC)
        if resume is not None:
            hello.resume.epoch = resume.epoch
            hello.resume.sequence = resume.sequence
        count = 0
        if resume is not None and self.digest_resync and self._repair_trusted and size >= MIN_BUCKETS:
            # Worth it only for a set of some size: below that (4 bytes a bucket) a snapshot is about as small.
            count = bucket_count_for(size)
            if FEATURE_DIGEST_RESYNC not in hello.features:
                hello.features.append(FEATURE_DIGEST_RESYNC)
            hello.digests.count = count
            hello.digests.digests.extend(
                replica.summary(count) if replica is not None else self._mirror.summary(count)
            )
        session = Session(pb.ClientMessage(hello=hello), resume, self._transitions)
        if count:
            session.summary_count = count
            if replica is None:
                self._mirror.start_journal(session)
        return session

    def close_session(self, session: Session, *, resync: bool = False) -> None:
        """The stream ended (or the transport gave up on it). `resync=True` when the server said the
        client fell behind (RESOURCE_EXHAUSTED) or the stream broke the protocol: do not resume."""
        session.close()
        self._mirror.end_journal(session)
        if session is self._live:
            self._live = None
        if resync:
            self._resume_ok = False

    def request_resync(self) -> None:
        """Make the next session ask for a full snapshot (reconciled against the mirror)."""
        self._resume_ok = False

    # -- the protocol ------------------------------------------------------------------------------

    def receive(self, session: Session, message: pb.ServerMessage, frame: bytes = b"") -> Step:
        """Consume one message of `session`'s stream. Raises ProtocolError; the mirror is unchanged
        then, and the caller should `close_session(session, resync=True)`. In replica mode `frame`
        is the message's exact bytes (receive_frames passes them)."""
        return self._receive(session, message, frame) or Step()

    def _receive(self, session: Session, message: pb.ServerMessage, frame: bytes) -> Step | None:
        """receive(), with None for a breadcrumb a replica appended (its hot path: no Step to build)."""
        if session.state is SessionState.CLOSED:
            # Already retired or closed: messages still queued for it must not touch the mirror.
            return Step()
        kind = message.WhichOneof("payload")
        if kind == "deltas":
            return self._on_deltas(session, message, frame)
        if kind == "snapshot":
            return self._on_chunk(session, message.snapshot)
        if kind == "ping":
            return Step(send=[pb.ClientMessage(pong=pb.Pong(ping_timestamp_ns=message.ping.timestamp_ns))])
        if kind == "status":
            return self._on_status(session, message, frame)
        if kind == "checksum":
            return self._on_checksum(session, message.checksum)
        if kind == "hello":
            return self._on_hello(session, message.hello)
        if kind == "buckets":
            return self._on_buckets(session, message.buckets)
        if kind == "reconnect":
            hint = message.reconnect
            return Step(reconnect=ReconnectHint(hint.reason, hint.endpoint, hint.after_ms))
        # A kind newer than this client (the contract says unknown fields are ignored).
        return Step()

    def receive_frames(self, session: Session, data: bytes) -> Step:
        """Consume one message as received: one frame, or (crumb-runs) several back to back, each
        handed on as its exact bytes. Stops at a frame that asks for a resync or a move."""
        try:
            frames = split_frames(data)
        except FrameError as exc:
            raise ProtocolError(f"{exc} in a message from the server") from exc
        step = Step()
        for frame in frames:
            try:
                message = pb.ServerMessage.FromString(frame)
            except DecodeError as exc:
                raise ProtocolError(f"undecodable ServerMessage: {exc}") from exc
            result = self._receive(session, message, frame)
            if result is not None:
                step.merge(result)
                if step.resync is not None or step.reconnect is not None:
                    break
        return step

    def _on_hello(self, session: Session, hello: pb.ServerHello) -> Step:
        if hello.bucket_count:
            event = Event.REPAIR_HELLO
        else:
            event = Event.RESUMED_HELLO if hello.resumed else Event.SNAPSHOT_HELLO
        session.check(event)
        echoed = hello.syncer_type or DEFAULT_SYNCER
        if echoed != self.syncer_type:
            raise ProtocolError(f"server answered for syncer {echoed!r}, asked for {self.syncer_type!r}")
        if event is Event.REPAIR_HELLO:
            if hello.resumed or hello.bucket_count != session.summary_count:
                raise ProtocolError(
                    f"server answered {hello.bucket_count} buckets (resumed={hello.resumed}) to a summary of "
                    f"{session.summary_count}"
                )
            self._identify(session, hello)
            session.snapshot_sequence = hello.sequence
            session.advance(event)
            return Step()
        if event is Event.SNAPSHOT_HELLO:
            self._identify(session, hello)
            self._mirror.end_journal(session)
            session.advance(event)
            return Step()
        sent = session.resume_sent
        if sent is None:
            raise ProtocolError("server resumed a session that offered no resume point")
        if hello.epoch != sent.epoch or hello.sequence != sent.sequence:
            raise ProtocolError(
                f"server resumed at {hello.epoch}/{hello.sequence}, client offered {sent.epoch}/{sent.sequence}"
            )
        position = self.position
        if not self._resume_ok or position is None or position.epoch != sent.epoch:
            # The mirror moved to another server or was declared untrustworthy since the hello.
            raise ProtocolError("resumed from a point the client has since abandoned")
        self._identify(session, hello)
        self._mirror.end_journal(session)
        # During a make-before-break move the old session kept applying deltas after this hello was
        # sent; whatever this stream replays up to the mirror's position is already applied.
        session.skip_through = position.sequence
        session.last_sequence = position.sequence
        if session.advance(event) is not SessionState.LIVE:
            return Step(resumed=True)  # a replica goes live with the status that follows
        step = Step(resumed=True)
        self._promote(session, step)
        return step

    @staticmethod
    def _identify(session: Session, hello: pb.ServerHello) -> None:
        session.epoch = hello.epoch
        session.server_id = hello.server_id
        session.server_version = hello.version

    def _on_chunk(self, session: Session, chunk: pb.SnapshotChunk) -> Step:
        session.check(Event.CHUNK)
        if chunk.index != session.next_index:
            raise ProtocolError(f"snapshot chunk {chunk.index} out of order, expected {session.next_index}")
        if chunk.index == 0:
            if chunk.count == 0:
                raise ProtocolError("snapshot with zero chunks")
            count, sequence = chunk.count, chunk.sequence
        else:
            count, sequence = session.count, session.snapshot_sequence
            if chunk.count != count or chunk.sequence != sequence:
                raise ProtocolError(
                    f"snapshot chunk {chunk.index} is of {chunk.sequence}/{chunk.count} chunks, "
                    f"started as {sequence}/{count}"
                )
        staged = session.staged
        fresh = self._fresh_entries("snapshot", chunk, staged)
        last = chunk.index + 1 == count
        if last and chunk.total_kvs and chunk.total_kvs != len(staged) + len(fresh):
            raise ProtocolError(f"snapshot announced {chunk.total_kvs} KVs, carried {len(staged) + len(fresh)}")
        session.count, session.snapshot_sequence = count, sequence
        staged.update(fresh)
        session.next_index += 1
        if not last:
            session.advance(Event.CHUNK)
            return Step()
        session.staged = {}
        if self._replica is not None:
            self._replica.stage_snapshot(session.epoch, sequence, staged)
            self._repair_trusted = True
            session.advance(Event.LAST_CHUNK)
            return Step(snapshot_complete=True)
        updates = self._mirror.reconcile(staged, delete_now=session.deferred_status is SyncStatus.IN_SYNC)
        self._repair_trusted = True
        session.advance(Event.LAST_CHUNK)
        return self._live_at_snapshot(session, Step(updates=updates, snapshot_complete=True))

    def _live_at_snapshot(self, session: Session, step: Step) -> Step:
        """The mirror now is the server's set at the snapshot's sequence: resume from there and go live."""
        self._position = ResumePoint(session.epoch, session.snapshot_sequence)
        self._resume_ok = True
        self._mismatches = 0
        session.last_sequence = session.snapshot_sequence
        self._promote(session, step)
        return step

    def _fresh_entries(
        self, kind: str, chunk: pb.SnapshotChunk | pb.BucketChunk, staged: dict[str, Entry],
        check_key: Callable[[str], None] | None = None,
    ) -> dict[str, Entry]:
        """The chunk's KVs as mirror entries, in a dict of their own: a bad KV must not leave half a
        chunk staged. `kind` ("snapshot" or "bucket") names the chunk in errors; `check_key` may
        refuse a key before it is decoded. A replica passes values through undecoded."""
        raw = self._decompress(chunk.compression, chunk.data)
        try:
            kvs = pb.Deltas.FromString(raw).kvs
        except DecodeError as exc:
            raise ProtocolError(f"{kind} chunk {chunk.index} is not a Deltas message: {exc}") from exc
        one, all_ = _HOLDS[kind]
        entry_for = self._mirror.entry_for if self._replica is None else None
        fresh: dict[str, Entry] = {}
        for kv in kvs:
            key, value = kv.key, kv.value
            if not value:
                raise ProtocolError(f"{one} a deletion of {key!r}")
            if check_key is not None:
                check_key(key)
            if key in staged or key in fresh:
                raise ProtocolError(f"{all_} {key!r} twice")
            fresh[key] = entry_for(key, value, kv.revision) if entry_for is not None else (value, None, kv.revision)
        return fresh

    def _on_buckets(self, session: Session, chunk: pb.BucketChunk) -> Step:
        """digest-resync: the server's contents of the buckets where its digests differ from the summary."""
        session.check(Event.BUCKETS)
        if chunk.index != session.next_index:
            raise ProtocolError(f"bucket chunk {chunk.index} out of order, expected {session.next_index}")
        check = (chunk.digest, chunk.key_count)
        if chunk.index == 0:
            if chunk.count == 0 or chunk.sequence != session.snapshot_sequence:
                raise ProtocolError(f"bucket chunks ({chunk.count}) of sequence {chunk.sequence} after a hello "
                                    f"at {session.snapshot_sequence}")
        elif (chunk.count, chunk.sequence, check) != (session.count, session.snapshot_sequence, session.repair_check):
            raise ProtocolError(f"bucket chunk {chunk.index} disagrees with the first chunk")
        mask = session.summary_count - 1
        replaced = session.repair_buckets
        buckets = set(chunk.buckets)
        if len(buckets) != len(chunk.buckets) or buckets & replaced or any(b > mask for b in buckets):
            raise ProtocolError(f"bucket chunk {chunk.index} lists buckets twice or out of range")
        staged = session.staged

        def in_buckets(key: str) -> None:
            if bucket_hash(key) & mask not in buckets:
                raise ProtocolError(f"bucket chunk holds {key!r}, which is in none of its buckets")

        fresh = self._fresh_entries("bucket", chunk, staged, in_buckets)
        session.count, session.repair_check = chunk.count, check
        staged.update(fresh)
        replaced |= buckets
        session.next_index += 1
        if session.next_index < session.count:
            session.advance(Event.BUCKETS)
            return Step()
        updates: list[Update] = []
        try:
            if self._replica is not None:
                self._replica.stage_repair(session.epoch, session.snapshot_sequence, staged, replaced,
                                           session.summary_count, session.repair_check)
                session.staged = {}
            else:
                updates = self._mirror.repair(session)
        except ProtocolError:
            # Something other than a stale summary (which the journal handles): do not try again by
            # digest before a snapshot has re-established the set.
            self._repair_trusted = False
            raise
        if session.advance(Event.LAST_BUCKETS) is not SessionState.LIVE:
            return Step(repaired=True)  # a replica goes live with the status that follows
        return self._live_at_snapshot(session, Step(updates=updates, repaired=True))

    def _decompress(self, compression: str, data: bytes) -> bytes:
        if compression == "":
            return data
        if compression != "zstd" or "zstd" not in self.compressions:
            raise ProtocolError(f"snapshot compression {compression!r} was not offered")
        # A few KB of zstd can claim, or expand to, gigabytes: refuse a chunk beyond the bound before
        # allocating it, by its declared size, and else by feeding the input in slices (one slice can
        # expand by ~32 MiB at most: 4-byte RLE blocks of 128 KiB).
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError:
            declared = -1  # no readable frame header: decompressing below says what is wrong
        if declared > MAX_CHUNK_BYTES:
            raise ProtocolError(f"snapshot chunk declares {declared} bytes, over the {MAX_CHUNK_BYTES} limit")
        # A decompression object copes with frames that do not record their content size.
        dobj = self._dctx.decompressobj()
        view = memoryview(data)
        parts: list[bytes] = []
        size = 0
        try:
            for start in range(0, len(view), _ZSTD_FEED_BYTES):
                part = dobj.decompress(view[start : start + _ZSTD_FEED_BYTES])
                size += len(part)
                if size > MAX_CHUNK_BYTES:
                    raise ProtocolError(f"snapshot chunk expands beyond the {MAX_CHUNK_BYTES} byte limit")
                parts.append(part)
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"snapshot chunk is not valid zstd: {exc}") from exc
        if not dobj.eof or dobj.unused_data:
            raise ProtocolError("snapshot chunk is a truncated or trailing-garbage zstd frame")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _promote(self, session: Session, step: Step) -> None:
        old = self._live
        if old is not None and old is not session:
            old.close()
            step.retired.append(old)
        self._live = session
        step.promoted = True
        deferred, session.deferred_status = session.deferred_status, None
        if deferred is not None and deferred is not self._status:
            self._status = deferred
            step.status = deferred

    def _on_deltas(self, session: Session, message: pb.ServerMessage, frame: bytes) -> Step | None:
        session.check(Event.DELTAS)
        deltas = message.deltas
        sequence = deltas.sequence
        if self._replica is not None:
            self._replica.replicate(frame, message, sequence)
            return None
        if sequence <= session.last_sequence:
            if sequence <= session.skip_through:
                return Step()  # overlap replayed after a make-before-break resume: already applied
            raise ProtocolError(f"deltas sequence {sequence} does not follow {session.last_sequence}")
        updates = self._mirror.apply_deltas(deltas.kvs)
        session.last_sequence = sequence
        self._position = ResumePoint(session.epoch, sequence)
        return Step(updates=updates)

    def _on_status(self, session: Session, message: pb.ServerMessage, frame: bytes) -> Step | None:
        after = session.check(Event.STATUS)
        wire = message.status
        status = _STATUS_FROM_PB.get(wire.status)
        replica = self._replica
        if replica is not None:
            if session.state is SessionState.SETTLING:
                # Where the state just received (or resumed) stands: the cache is reset to it with this
                # status; a replica does not append it, its own crumbs already say it.
                replica.settle(status)
                session.advance(Event.STATUS)
                self._position = replica.position
                self._resume_ok = True
                self._mismatches = 0
                session.last_sequence = self._position.sequence
                step = Step()
                self._promote(session, step)
                return step
            if status is None:
                # The replica must append every crumb to keep the upstream's numbering, and cannot hold
                # a state it does not know: start over rather than skip it.
                raise ProtocolError(f"status {wire.status} is not one this replica can hold")
            replica.replicate(frame, message, wire.sequence)
            return None
        if status is None:
            return Step()  # UNKNOWN or newer than this client: nothing an agent can act on
        if after is SessionState.SNAPSHOT or after is SessionState.REPAIR:
            session.deferred_status = status
            return Step()
        # Status changes are breadcrumbs too; following their sequence lets a Checksum sent right
        # after IN_SYNC be compared, and a resume start after them.
        if wire.sequence > session.last_sequence:
            session.last_sequence = wire.sequence
            self._position = ResumePoint(session.epoch, wire.sequence)
        step = Step()
        if status is SyncStatus.IN_SYNC and self._mirror.unconfirmed and session is self._live:
            step.updates = self._mirror.delete_unconfirmed()
        if status is not self._status:
            self._status = status
            step.status = status
        return step

    def _on_checksum(self, session: Session, message: pb.Checksum) -> Step:
        session.check(Event.CHECKSUM)
        position = self.position
        replica = self._replica
        digest, count = (replica.target.digest, len(replica.target)) if replica is not None else (
            self._mirror.digest, len(self._mirror))

        def verdict(outcome: ChecksumOutcome) -> ChecksumVerdict:
            return ChecksumVerdict(
                message.sequence, outcome, message.digest, message.count, digest, count, self._mismatches,
            )

        if (
            not self.verify_checksums
            or session is not self._live
            or position is None
            or message.sequence != position.sequence
        ):
            return Step(checksum=verdict(ChecksumOutcome.SKIPPED))
        if message.digest == digest and message.count == count:
            self._mismatches = 0
            self._mirror.unconfirmed = set()  # the server's set includes them: they are confirmed
            return Step(checksum=verdict(ChecksumOutcome.MATCH))
        if self._mirror.unconfirmed:
            updates = self._mirror.settle_by_checksum(message.digest, message.count)
            if updates is not None:
                self._mismatches = 0
                return Step(updates=updates, checksum=verdict(ChecksumOutcome.MATCH))
        # A single mismatch may be a race on the server between digest and stream position (Typha's
        # synccheck PR waits for N in a row too); act only when it persists.
        self._mismatches += 1
        step = Step(checksum=verdict(ChecksumOutcome.MISMATCH))
        if self._mismatches >= self.checksum_mismatch_limit:
            self._resume_ok = False
            self._mismatches = 0
            step.resync = (
                f"checksum mismatch at sequence {message.sequence} {self.checksum_mismatch_limit} times in a row"
            )
        return step
