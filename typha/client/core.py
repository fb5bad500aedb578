"""Sans-IO core of the Sync client: the protocol state machine and the local mirror, without I/O.

The transports (asyncio, trio) own sockets, timers and backoff; this module owns every decision that
depends on the protocol. It is fed one `ServerMessage` at a time and answers with a `Step` saying
what happened: updates to apply, a status change, messages to send back, a checksum verdict, a
reconnect hint, or a request to resync. Keeping it free of I/O lets the unit tests drive it with
hand-built messages and lets both transports share exactly the same semantics.

Sessions. Each stream is a `Session`. Several may exist at once, because a move to another server
is make-before-break: the old session keeps feeding deltas into the mirror while the new one
receives its snapshot into a staging area. The new session becomes *live* when it is in sync (a
resumed hello, or the last snapshot chunk, which is reconciled against the mirror); the previous
live session is then retired and its later messages are ignored. Only the live session mutates the
mirror, so the mirror always follows one server's sequence.

Digest resync. A hello that offers a resume point also carries per-bucket digests of the mirror
(typha.syncproto.digests) when the mirror is large enough. A server of another epoch (a different replica)
may answer with BucketChunks: its full contents of just the buckets that differ. The session
journals mirror changes made after its hello (the old stream of a make-before-break move keeps
applying deltas), so the repair is applied to the state the digests described, and it must then
match the server's checksum or the mirror is left alone.

Atomicity. A message is validated and decoded completely before the mirror changes, so a protocol
error (undecodable value, chunk out of order, ...) raises `ProtocolError` and leaves the mirror as
it was after the last good message; the transport then resyncs by snapshot and reconciles.
"""

from __future__ import annotations

import enum
import itertools
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zstandard
from google.protobuf.message import DecodeError

import typha
from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.syncproto.checksum import kv_hash
from typha.syncproto.digests import FEATURE_DIGEST_RESYNC, MIN_BUCKETS, bucket_count_for, bucket_hash, summarise

# The mirror's entry: value bytes as received (for dedupe and the checksum, and to compare snapshots
# without decoding), the decoded value handed to the agent, and the revision.
Entry = tuple[bytes, Any, str]

_STATUS_FROM_PB = {
    pb.SyncStatus.WAIT_FOR_READY: SyncStatus.WAIT_FOR_READY,
    pb.SyncStatus.RESYNC: SyncStatus.RESYNC,
    pb.SyncStatus.IN_SYNC: SyncStatus.IN_SYNC,
}

DEFAULT_SYNCER = "felix"  # an empty syncer_type means felix, as in Typha
# A decompressed snapshot or bucket chunk may be no bigger than a raw one can be: the transports'
# receive limit. The server cuts chunks at ~1 MiB; one KV is at most a few MB (etcd's object limit).
MAX_CHUNK_BYTES = 64 * 1024 * 1024
_ZSTD_FEED_BYTES = 1024


# How errors name the KVs of one chunk and of all chunks so far, per chunk kind.
_HOLDS = {"snapshot": ("snapshot holds", "snapshot holds"), "bucket": ("bucket chunk holds", "bucket chunks hold")}


class ProtocolError(Exception):
    """The server broke the Sync protocol; the session must be dropped (the mirror is untouched)."""


@dataclass(frozen=True, slots=True)
class ResumePoint:
    epoch: str
    sequence: int


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


class SessionState(enum.Enum):
    AWAITING_HELLO = "awaiting-hello"
    SNAPSHOT = "snapshot"
    LIVE = "live"
    CLOSED = "closed"


_session_ids = itertools.count(1)


class Session:
    """One stream's protocol state. Created by `SyncClientCore.open_session`; opaque to transports
    except for `hello` (send it first), `state` and the server's identity once known."""

    __slots__ = (
        "_count",
        "_deferred_status",
        "_next_index",
        "_repair_buckets",
        "_repair_check",
        "_skip_through",
        "_snapshot_sequence",
        "_staged",
        "_summary_count",
        "_undo",
        "epoch",
        "hello",
        "id",
        "last_sequence",
        "resume_sent",
        "server_id",
        "server_version",
        "state",
    )

    def __init__(self, hello: pb.ClientMessage, resume_sent: ResumePoint | None) -> None:
        self.id = next(_session_ids)
        self.hello = hello
        self.resume_sent = resume_sent
        self.state = SessionState.AWAITING_HELLO
        self.epoch = ""
        self.server_id = ""
        self.server_version = ""
        self.last_sequence = 0
        self._skip_through = -1
        self._snapshot_sequence = 0
        self._next_index = 0
        self._count = 0
        self._staged: dict[str, Entry] = {}
        self._deferred_status: SyncStatus | None = None
        # digest-resync: the bucket count of the summary in `hello` (0: none sent), and each mirror
        # key's entry as it was when the summary was taken, for keys changed since (None: absent).
        self._summary_count = 0
        self._undo: dict[str, Entry | None] = {}
        self._repair_buckets: set[int] | None = None  # set while BucketChunks are expected
        self._repair_check = (0, 0)  # the server's (digest, key count) the repaired mirror must match

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.state.value} server={self.server_id or '?'}>"


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
    promoted: bool = False  # this session became the live one (resumed, or snapshot complete)
    resumed: bool = False
    snapshot_complete: bool = False
    repaired: bool = False  # only the differing buckets were received (digest-resync)
    retired: list[Session] = field(default_factory=list)


class SyncClientCore:
    """The client side of one syncer's stream(s) and the mirror of that syncer's KV set.

    Not thread-safe: a transport calls it from one thread (its event loop).
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
        self.verify_checksums = verify_checksums
        self.checksum_mismatch_limit = checksum_mismatch_limit
        self._mirror: dict[str, Entry] = {}
        self._digest = 0
        # Where the mirror stands in some server's history; None until the first snapshot.
        self._position: ResumePoint | None = None
        # False after anything that makes the mirror untrustworthy for resuming (checksum mismatch,
        # fell behind, protocol error) until the next snapshot has been reconciled.
        self._resume_ok = False
        self._status: SyncStatus | None = None
        self._live: Session | None = None
        self._mismatches = 0
        # Keys kept after a reconcile against a server not yet in sync (see _reconcile).
        self._unconfirmed: set[str] = set()
        self._dctx = zstandard.ZstdDecompressor()
        # Offer bucket digests in hellos: needs the digest that checksum verification keeps.
        self.digest_resync = digest_resync and verify_checksums
        # Cleared by a repair that failed its check, until a snapshot lands.
        self._repair_trusted = True
        # Sessions whose hello carries a summary, still waiting for their answer: mirror changes
        # are journalled into their `_undo`.
        self._journals: list[Session] = []

    # -- reading the mirror ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._mirror)

    def __contains__(self, key: object) -> bool:
        return key in self._mirror

    def get(self, key: str) -> Any:
        """The decoded value of `key`, or None if absent."""
        entry = self._mirror.get(key)
        return None if entry is None else entry[1]

    def entry(self, key: str) -> Entry | None:
        return self._mirror.get(key)

    def items(self) -> Iterator[tuple[str, Any]]:
        return ((key, entry[1]) for key, entry in self._mirror.items())

    def to_dict(self) -> dict[str, Any]:
        return {key: entry[1] for key, entry in self._mirror.items()}

    @property
    def digest(self) -> int:
        """The mirror's checksum digest (0 when checksums are not verified)."""
        return self._digest

    @property
    def status(self) -> SyncStatus | None:
        return self._status

    @property
    def in_sync(self) -> bool:
        return self._status is SyncStatus.IN_SYNC and self._live is not None

    @property
    def position(self) -> ResumePoint | None:
        """The server state the mirror equals, whether or not it may be resumed from."""
        return self._position

    @property
    def resume_point(self) -> ResumePoint | None:
        """What the next hello offers; None asks for a full snapshot."""
        return self._position if self._resume_ok else None

    @property
    def unconfirmed_keys(self) -> frozenset[str]:
        """Mirror keys a reconciling snapshot lacked, to be deleted when the server says IN_SYNC."""
        return frozenset(self._unconfirmed)

    @property
    def live_session(self) -> Session | None:
        return self._live

    # -- session lifecycle -------------------------------------------------------------------------

    def open_session(self) -> Session:
        """A new stream: send `session.hello` first. With a live session, this is the standby side of
        a make-before-break move."""
        resume = self.resume_point
        hello = pb.ClientHello(
            hostname=self.hostname,
            info=self.info,
            version=self.version,
            syncer_type=self.syncer_type,
            compressions=list(self.compressions),
            features=["checksum", "reconnect"] if self.verify_checksums else ["reconnect"],
            client_id=self.client_id,
        )
        if resume is not None:
            hello.resume.epoch = resume.epoch
            hello.resume.sequence = resume.sequence
        count = 0
        if resume is not None and self.digest_resync and self._repair_trusted and len(self._mirror) >= MIN_BUCKETS:
            # Worth it only for a mirror of some size: below that a snapshot is about as small.
            count = bucket_count_for(len(self._mirror))
            hashes = ((key, kv_hash(key, entry[0])) for key, entry in self._mirror.items())
            hello.features.append(FEATURE_DIGEST_RESYNC)
            hello.digests.count = count
            hello.digests.digests.extend(summarise(hashes, count))
        session = Session(pb.ClientMessage(hello=hello), resume)
        if count:
            session._summary_count = count
            self._journals.append(session)
        return session

    def close_session(self, session: Session, *, resync: bool = False) -> None:
        """The stream ended (or the transport gave up on it). `resync=True` when the server said the
        client fell behind (RESOURCE_EXHAUSTED) or the stream broke the protocol: do not resume."""
        session.state = SessionState.CLOSED
        session._staged = {}
        self._end_journal(session)
        if session is self._live:
            self._live = None
        if resync:
            self._resume_ok = False

    def request_resync(self) -> None:
        """Make the next session ask for a full snapshot (reconciled against the mirror)."""
        self._resume_ok = False

    # -- the protocol ------------------------------------------------------------------------------

    def receive(self, session: Session, message: pb.ServerMessage) -> Step:
        """Consume one message of `session`'s stream. Raises ProtocolError; the mirror is unchanged
        then, and the caller should `close_session(session, resync=True)`."""
        if session.state is SessionState.CLOSED:
            # Already retired or closed: messages still queued for it must not touch the mirror.
            return Step()
        kind = message.WhichOneof("payload")
        if kind == "deltas":
            return self._on_deltas(session, message.deltas)
        if kind == "snapshot":
            return self._on_chunk(session, message.snapshot)
        if kind == "ping":
            return Step(send=[pb.ClientMessage(pong=pb.Pong(ping_timestamp_ns=message.ping.timestamp_ns))])
        if kind == "status":
            return self._on_status(session, message.status)
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

    def _on_hello(self, session: Session, hello: pb.ServerHello) -> Step:
        if session.state is not SessionState.AWAITING_HELLO:
            raise ProtocolError(f"second ServerHello on session {session.id}")
        echoed = hello.syncer_type or DEFAULT_SYNCER
        if echoed != self.syncer_type:
            raise ProtocolError(f"server answered for syncer {echoed!r}, asked for {self.syncer_type!r}")
        session.epoch = hello.epoch
        session.server_id = hello.server_id
        session.server_version = hello.version
        if hello.bucket_count:
            if hello.resumed or hello.bucket_count != session._summary_count:
                raise ProtocolError(
                    f"server answered {hello.bucket_count} buckets (resumed={hello.resumed}) to a summary of "
                    f"{session._summary_count}"
                )
            session._repair_buckets = set()
            session._snapshot_sequence = hello.sequence
            session.state = SessionState.SNAPSHOT
            return Step()
        self._end_journal(session)
        if not hello.resumed:
            session.state = SessionState.SNAPSHOT
            return Step()
        sent = session.resume_sent
        if sent is None:
            raise ProtocolError("server resumed a session that offered no resume point")
        if hello.epoch != sent.epoch or hello.sequence != sent.sequence:
            raise ProtocolError(
                f"server resumed at {hello.epoch}/{hello.sequence}, client offered {sent.epoch}/{sent.sequence}"
            )
        position = self._position
        if not self._resume_ok or position is None or position.epoch != sent.epoch:
            # The mirror moved to another server or was declared untrustworthy since the hello.
            raise ProtocolError("resumed from a point the client has since abandoned")
        # During a make-before-break move the old session kept applying deltas after this hello was
        # sent; whatever this stream replays up to the mirror's position is already applied.
        session._skip_through = position.sequence
        session.last_sequence = position.sequence
        session.state = SessionState.LIVE
        step = Step(resumed=True)
        self._promote(session, step)
        return step

    def _on_chunk(self, session: Session, chunk: pb.SnapshotChunk) -> Step:
        if session.state is not SessionState.SNAPSHOT or session._repair_buckets is not None:
            raise ProtocolError(f"snapshot chunk on a session in state {session.state.value}")
        if chunk.index != session._next_index:
            raise ProtocolError(f"snapshot chunk {chunk.index} out of order, expected {session._next_index}")
        if chunk.index == 0:
            if chunk.count == 0:
                raise ProtocolError("snapshot with zero chunks")
            session._count = chunk.count
            session._snapshot_sequence = chunk.sequence
        elif chunk.count != session._count or chunk.sequence != session._snapshot_sequence:
            raise ProtocolError(
                f"snapshot chunk {chunk.index} is of {chunk.sequence}/{chunk.count} chunks, "
                f"started as {session._snapshot_sequence}/{session._count}"
            )
        staged = session._staged
        fresh = self._fresh_entries("snapshot", chunk, staged)
        last = chunk.index + 1 == session._count
        if last and chunk.total_kvs and chunk.total_kvs != len(staged) + len(fresh):
            raise ProtocolError(f"snapshot announced {chunk.total_kvs} KVs, carried {len(staged) + len(fresh)}")
        staged.update(fresh)
        session._next_index += 1
        if not last:
            return Step()
        session._staged = {}
        updates = self._reconcile(staged, delete_now=session._deferred_status is SyncStatus.IN_SYNC)
        self._repair_trusted = True
        return self._live_at_snapshot(session, Step(updates=updates, snapshot_complete=True))

    def _live_at_snapshot(self, session: Session, step: Step) -> Step:
        """The mirror now is the server's set at the snapshot's sequence: resume from there and go live."""
        self._position = ResumePoint(session.epoch, session._snapshot_sequence)
        self._resume_ok = True
        self._mismatches = 0
        session.last_sequence = session._snapshot_sequence
        session.state = SessionState.LIVE
        self._promote(session, step)
        return step

    def _fresh_entries(
        self, kind: str, chunk: pb.SnapshotChunk | pb.BucketChunk, staged: dict[str, Entry],
        check_key: Callable[[str], None] | None = None,
    ) -> dict[str, Entry]:
        """The chunk's KVs as mirror entries, in a dict of their own: a bad KV must not leave half a
        chunk staged. `kind` ("snapshot" or "bucket") names the chunk in errors; `check_key` may
        refuse a key before it is decoded."""
        raw = self._decompress(chunk.compression, chunk.data)
        try:
            kvs = pb.Deltas.FromString(raw).kvs
        except DecodeError as exc:
            raise ProtocolError(f"{kind} chunk {chunk.index} is not a Deltas message: {exc}") from exc
        one, all_ = _HOLDS[kind]
        mirror = self._mirror
        fresh: dict[str, Entry] = {}
        for kv in kvs:
            key, value = kv.key, kv.value
            if not value:
                raise ProtocolError(f"{one} a deletion of {key!r}")
            if check_key is not None:
                check_key(key)
            if key in staged or key in fresh:
                raise ProtocolError(f"{all_} {key!r} twice")
            current = mirror.get(key)
            # Reuse the decoded object when the bytes are unchanged: saves the decode on a reconcile.
            decoded = current[1] if current is not None and current[0] == value else _decode(key, value)
            fresh[key] = (value, decoded, kv.revision)
        return fresh

    def _on_buckets(self, session: Session, chunk: pb.BucketChunk) -> Step:
        """digest-resync: the server's contents of the buckets where its digests differ from the summary."""
        replaced = session._repair_buckets
        if session.state is not SessionState.SNAPSHOT or replaced is None:
            raise ProtocolError(f"bucket chunk on a session in state {session.state.value} without a summary")
        if chunk.index != session._next_index:
            raise ProtocolError(f"bucket chunk {chunk.index} out of order, expected {session._next_index}")
        if chunk.index == 0:
            if chunk.count == 0 or chunk.sequence != session._snapshot_sequence:
                raise ProtocolError(f"bucket chunks ({chunk.count}) of sequence {chunk.sequence} after a hello "
                                    f"at {session._snapshot_sequence}")
            session._count = chunk.count
            session._repair_check = (chunk.digest, chunk.key_count)
        elif (chunk.count, chunk.sequence, (chunk.digest, chunk.key_count)) != (
            session._count, session._snapshot_sequence, session._repair_check
        ):
            raise ProtocolError(f"bucket chunk {chunk.index} disagrees with the first chunk")
        mask = session._summary_count - 1
        buckets = set(chunk.buckets)
        if len(buckets) != len(chunk.buckets) or buckets & replaced or any(b > mask for b in buckets):
            raise ProtocolError(f"bucket chunk {chunk.index} lists buckets twice or out of range")
        staged = session._staged

        def in_buckets(key: str) -> None:
            if bucket_hash(key) & mask not in buckets:
                raise ProtocolError(f"bucket chunk holds {key!r}, which is in none of its buckets")

        staged.update(self._fresh_entries("bucket", chunk, staged, in_buckets))
        replaced |= buckets
        session._next_index += 1
        if session._next_index < session._count:
            return Step()
        return self._live_at_snapshot(session, Step(updates=self._repair(session), repaired=True))

    def _repair(self, session: Session) -> list[Update]:
        """Make the mirror the server's set: the summarised mirror with the listed buckets replaced.

        Keys changed since the summary (a make-before-break move keeps the old stream applying
        deltas) are first taken back to their summarised entries: only that state is what the
        server compared with. The result must match the server's checksum, else nothing changes.
        """
        mask = session._summary_count - 1
        replaced = session._repair_buckets or set()
        staged, undo, mirror = session._staged, session._undo, self._mirror
        targets: dict[str, Entry | None] = {key: undo[key] for key in undo if bucket_hash(key) & mask not in replaced}
        if replaced:
            for key in mirror:
                if bucket_hash(key) & mask in replaced:
                    targets[key] = staged.get(key)
            targets.update(staged)
        digest, count = self._digest, len(mirror)
        changes: list[tuple[str, Entry | None, Entry | None]] = []
        for key, target in targets.items():
            old = mirror.get(key)
            if old is target or (old is not None and target is not None and old[0] == target[0]):
                continue  # as a snapshot's reconcile: equal bytes keep the mirror's entry
            changes.append((key, old, target))
            if old is not None:
                digest ^= kv_hash(key, old[0])
                count -= 1
            if target is not None:
                digest ^= kv_hash(key, target[0])
                count += 1
        if (digest, count) != session._repair_check:
            # Something other than a stale summary (which the undo journal handles): do not try again
            # by digest before a snapshot has re-established the mirror.
            self._repair_trusted = False
            raise ProtocolError(f"mirror after replacing {len(replaced)} buckets does not match the server's "
                                f"checksum ({count} keys, server {session._repair_check[1]})")
        self._end_journal(session)
        session._staged = {}
        updates = []
        journal = bool(self._journals)
        for key, old, target in sorted(changes, key=lambda change: change[0]):
            if journal:
                self._journal(key, old)
            if target is None:
                del mirror[key]
                updates.append(Update(key, None, ""))  # the deleting revision is not known
            else:
                mirror[key] = target
                updates.append(Update(key, target[1], target[2]))
        self._digest = digest
        self._unconfirmed = set()  # the checksum says the mirror is exactly the in-sync server's set
        return updates

    def _journal(self, key: str, old: Entry | None) -> None:
        """Record a mirror key's entry before its first change since each pending summary was taken."""
        for session in self._journals:
            session._undo.setdefault(key, old)

    def _end_journal(self, session: Session) -> None:
        if session in self._journals:
            self._journals.remove(session)
        session._undo = {}

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

    def _reconcile(self, snapshot: dict[str, Entry], *, delete_now: bool) -> list[Update]:
        """Replace the mirror by `snapshot`, returning the updates that turn the old into the new.

        Keys the mirror has and the snapshot lacks are deleted only if the server is known to be in
        sync. A server that has not finished its initial list sends a partial snapshot; deleting on
        it would make an agent tear down state that is still there. Like Calico's restart-aware
        clients, such keys stay (unconfirmed) until the stream mentions them, says IN_SYNC, or sends a
        Checksum that settles them (see _on_checksum).
        """
        mirror = self._mirror
        verify = self.verify_checksums
        digest = self._digest
        updates: list[Update] = []
        new_keys = 0
        for key, entry in snapshot.items():
            old = mirror.get(key)
            if old is None:
                new_keys += 1
            elif old[0] == entry[0]:
                continue
            updates.append(Update(key, entry[1], entry[2]))
            if verify:
                if old is not None:
                    digest ^= kv_hash(key, old[0])
                digest ^= kv_hash(key, entry[0])
        self._unconfirmed = set()
        if len(mirror) > len(snapshot) - new_keys:  # some mirror keys are not in the snapshot
            missing = sorted(mirror.keys() - snapshot.keys())
            if delete_now:
                for key in missing:
                    updates.append(Update(key, None, ""))  # the deleting revision is not known
                    if verify:
                        digest ^= kv_hash(key, mirror[key][0])
            else:
                for key in missing:
                    snapshot[key] = mirror[key]
                self._unconfirmed = set(missing)
        if self._journals:
            for update in updates:
                self._journal(update.key, mirror.get(update.key))
        self._mirror = snapshot
        self._digest = digest
        return updates

    def _delete_unconfirmed(self) -> list[Update]:
        mirror = self._mirror
        digest = self._digest
        updates = []
        for key in sorted(self._unconfirmed):
            entry = mirror.pop(key, None)
            if entry is None:
                continue
            if self._journals:
                self._journal(key, entry)
            updates.append(Update(key, None, ""))
            if self.verify_checksums:
                digest ^= kv_hash(key, entry[0])
        self._digest = digest
        self._unconfirmed = set()
        return updates

    def _promote(self, session: Session, step: Step) -> None:
        old = self._live
        if old is not None and old is not session:
            old.state = SessionState.CLOSED
            old._staged = {}
            step.retired.append(old)
        self._live = session
        step.promoted = True
        deferred, session._deferred_status = session._deferred_status, None
        if deferred is not None and deferred is not self._status:
            self._status = deferred
            step.status = deferred

    def _on_deltas(self, session: Session, deltas: pb.Deltas) -> Step:
        if session.state is not SessionState.LIVE:
            raise ProtocolError(f"deltas on a session in state {session.state.value}")
        sequence = deltas.sequence
        if sequence <= session.last_sequence:
            if sequence <= session._skip_through:
                return Step()  # overlap replayed after a make-before-break resume: already applied
            raise ProtocolError(f"deltas sequence {sequence} does not follow {session.last_sequence}")
        mirror = self._mirror
        updates: list[Update] = []
        # Changes of this message by key, so repeated keys (concatenated batches) dedupe against
        # the value the earlier part set; applied only once the whole message has decoded.
        changed: dict[str, Entry | None] = {}
        for kv in deltas.kvs:
            key, value = kv.key, kv.value
            current = changed[key] if key in changed else mirror.get(key)
            if not value:
                if current is None:
                    continue  # delete of an absent key
                changed[key] = None
                updates.append(Update(key, None, kv.revision))
                continue
            if current is not None and current[0] == value:
                continue
            decoded = _decode(key, value)
            changed[key] = (value, decoded, kv.revision)
            updates.append(Update(key, decoded, kv.revision))
        if changed:
            digest = self._digest
            verify = self.verify_checksums
            journal = bool(self._journals)
            for key, entry in changed.items():
                if entry is None:
                    old = mirror.pop(key, None)
                else:
                    old = mirror.get(key)
                    mirror[key] = entry
                if journal:
                    self._journal(key, old)
                if verify:
                    if old is not None:
                        digest ^= kv_hash(key, old[0])
                    if entry is not None:
                        digest ^= kv_hash(key, entry[0])
            self._digest = digest
        if self._unconfirmed:
            # The server's stream mentioned these keys, so their fate is now the stream's.
            self._unconfirmed.difference_update(kv.key for kv in deltas.kvs)
        session.last_sequence = sequence
        self._position = ResumePoint(session.epoch, sequence)
        return Step(updates=updates)

    def _on_status(self, session: Session, message: pb.SyncStatus) -> Step:
        status = _STATUS_FROM_PB.get(message.status)
        if session.state is SessionState.AWAITING_HELLO:
            raise ProtocolError("status before ServerHello")
        if status is None:
            return Step()  # UNKNOWN or newer than this client: nothing an agent can act on
        if session.state is SessionState.SNAPSHOT:
            # Reporting IN_SYNC before the snapshot is applied would let an agent act on a partial
            # view (e.g. delete what it has not heard of yet): hold it until the session goes live.
            session._deferred_status = status
            return Step()
        # Status changes are breadcrumbs too; following their sequence lets a Checksum sent right
        # after IN_SYNC be compared, and a resume start after them.
        if message.sequence > session.last_sequence:
            session.last_sequence = message.sequence
            self._position = ResumePoint(session.epoch, message.sequence)
        step = Step()
        if status is SyncStatus.IN_SYNC and self._unconfirmed and session is self._live:
            step.updates = self._delete_unconfirmed()
        if status is not self._status:
            self._status = status
            step.status = status
        return step

    def _on_checksum(self, session: Session, message: pb.Checksum) -> Step:
        position = self._position

        def verdict(outcome: ChecksumOutcome) -> ChecksumVerdict:
            return ChecksumVerdict(
                message.sequence, outcome, message.digest, message.count, self._digest, len(self._mirror),
                self._mismatches,
            )

        if (
            not self.verify_checksums
            or session is not self._live
            or position is None
            or message.sequence != position.sequence
        ):
            return Step(checksum=verdict(ChecksumOutcome.SKIPPED))
        if message.digest == self._digest and message.count == len(self._mirror):
            self._mismatches = 0
            self._unconfirmed = set()  # the server's set includes them: they are confirmed
            return Step(checksum=verdict(ChecksumOutcome.MATCH))
        if self._unconfirmed:
            # Checksums are only sent by a server in sync; if its set is exactly the mirror without
            # the unconfirmed keys, deleting them is what a later IN_SYNC would have done. This
            # also covers a server that never repeats IN_SYNC to a client joining after it.
            mirror = self._mirror
            without = self._digest
            for key in self._unconfirmed:
                without ^= kv_hash(key, mirror[key][0])
            if message.digest == without and message.count == len(mirror) - len(self._unconfirmed):
                self._mismatches = 0
                updates = self._delete_unconfirmed()
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


def _decode(key: str, value: bytes) -> Any:
    try:
        decoded = msgpack.unpackb(value, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        # Some msgpack errors have an empty message: name the type so the log line says something.
        raise ProtocolError(f"value of {key!r} is not valid msgpack: {exc!r}") from exc
    if decoded is None:
        # None means "deleted" to every consumer of Update; a deletion is sent as empty bytes.
        raise ProtocolError(f"value of {key!r} is msgpack nil")
    return decoded
