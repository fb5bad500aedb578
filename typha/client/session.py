"""One Sync stream's protocol state, as an explicit transition table (the way h11 and h2 keep theirs).

A session moves between `SessionState`s on `Event`s, the kinds of server message that depend on
where the stream stands. `Session.advance` looks the pair up in the session's table and raises
`ProtocolError` for any pair the table lacks, so every order of messages the protocol allows is
written down in one place below, and everything else is refused before it can touch the mirror.

Two tables: an agent's mirror goes live at the end of a snapshot (a status that arrives meanwhile is
held until then), and a replica (typha.client.replica) waits after a snapshot, a repair or a resume
for the status that tells it where the upstream stands, because the replica's cache is reset with it.
Messages that mean the same in every state (ping, reconnect, kinds newer than the client) are not
events: they never change the state.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from typha.proto import sync_pb2 as pb

if TYPE_CHECKING:
    from typha.client.mirror import Entry
    from typha.model.kv import SyncStatus


class ProtocolError(Exception):
    """The server broke the Sync protocol; the session must be dropped (the mirror is untouched)."""


@dataclass(frozen=True, slots=True)
class ResumePoint:
    epoch: str
    sequence: int


class SessionState(enum.Enum):
    AWAITING_HELLO = "awaiting-hello"
    SNAPSHOT = "snapshot"  # receiving SnapshotChunks
    REPAIR = "repair"  # receiving BucketChunks (digest-resync)
    SETTLING = "settling"  # replica only: a complete state waits for the status that goes with it
    LIVE = "live"
    CLOSED = "closed"


class Event(enum.Enum):
    SNAPSHOT_HELLO = "ServerHello announcing a snapshot"
    RESUMED_HELLO = "ServerHello resuming"
    REPAIR_HELLO = "ServerHello announcing bucket chunks"
    CHUNK = "snapshot chunk"
    LAST_CHUNK = "last snapshot chunk"
    BUCKETS = "bucket chunk"
    LAST_BUCKETS = "last bucket chunk"
    STATUS = "status"
    DELTAS = "deltas"
    CHECKSUM = "Checksum"


_S, _E = SessionState, Event
Transitions = dict[tuple[SessionState, Event], SessionState]


def _with_checksums(table: Transitions) -> Transitions:
    """A checksum is legal in every state a table uses (it is only compared where comparable)."""
    states = {state for state, _ in table} | set(table.values())
    return {**{(state, _E.CHECKSUM): state for state in states}, **table}


MIRROR_TRANSITIONS: Transitions = _with_checksums({
    (_S.AWAITING_HELLO, _E.SNAPSHOT_HELLO): _S.SNAPSHOT,
    (_S.AWAITING_HELLO, _E.RESUMED_HELLO): _S.LIVE,
    (_S.AWAITING_HELLO, _E.REPAIR_HELLO): _S.REPAIR,
    (_S.SNAPSHOT, _E.CHUNK): _S.SNAPSHOT,
    (_S.SNAPSHOT, _E.LAST_CHUNK): _S.LIVE,
    # Reporting IN_SYNC before the snapshot is applied would let an agent act on a partial view: a
    # status during a snapshot or repair is held until the session goes live.
    (_S.SNAPSHOT, _E.STATUS): _S.SNAPSHOT,
    (_S.REPAIR, _E.BUCKETS): _S.REPAIR,
    (_S.REPAIR, _E.LAST_BUCKETS): _S.LIVE,
    (_S.REPAIR, _E.STATUS): _S.REPAIR,
    (_S.LIVE, _E.DELTAS): _S.LIVE,
    (_S.LIVE, _E.STATUS): _S.LIVE,
})

# A replica asks for exact crumbs: after its hello the server sends the snapshot, the bucket chunks or
# nothing (resumed), then one status saying where that state stands, then breadcrumbs only.
REPLICA_TRANSITIONS: Transitions = _with_checksums({
    (_S.AWAITING_HELLO, _E.SNAPSHOT_HELLO): _S.SNAPSHOT,
    (_S.AWAITING_HELLO, _E.RESUMED_HELLO): _S.SETTLING,
    (_S.AWAITING_HELLO, _E.REPAIR_HELLO): _S.REPAIR,
    (_S.SNAPSHOT, _E.CHUNK): _S.SNAPSHOT,
    (_S.SNAPSHOT, _E.LAST_CHUNK): _S.SETTLING,
    (_S.REPAIR, _E.BUCKETS): _S.REPAIR,
    (_S.REPAIR, _E.LAST_BUCKETS): _S.SETTLING,
    (_S.SETTLING, _E.STATUS): _S.LIVE,
    (_S.LIVE, _E.DELTAS): _S.LIVE,
    (_S.LIVE, _E.STATUS): _S.LIVE,
})

_session_ids = itertools.count(1)


class Session:
    """One stream's protocol state. Created by `SyncClientCore.open_session`; opaque to transports
    except for `hello` (send it first), `state` and the server's identity once known."""

    __slots__ = (
        "_transitions",
        "count",
        "deferred_status",
        "epoch",
        "hello",
        "id",
        "last_sequence",
        "next_index",
        "repair_buckets",
        "repair_check",
        "resume_sent",
        "server_id",
        "server_version",
        "skip_through",
        "snapshot_sequence",
        "staged",
        "state",
        "summary_count",
    )

    def __init__(self, hello: pb.ClientMessage, resume_sent: ResumePoint | None, transitions: Transitions) -> None:
        self.id = next(_session_ids)
        self.hello = hello
        self.resume_sent = resume_sent
        self._transitions = transitions
        self.state = SessionState.AWAITING_HELLO
        self.epoch = ""
        self.server_id = ""
        self.server_version = ""
        self.last_sequence = 0
        # Deltas up to here were applied by the stream this one replaces (make-before-break resume).
        self.skip_through = -1
        # Chunks: the sequence the snapshot (or repair) stands at, the next index, how many in all.
        self.snapshot_sequence = 0
        self.next_index = 0
        self.count = 0
        self.staged: dict[str, Entry] = {}
        self.deferred_status: SyncStatus | None = None
        # digest-resync: the bucket count of the summary in `hello` (0: none sent), the buckets the
        # server's chunks replaced so far, and its (digest, key count) the repaired set must match.
        self.summary_count = 0
        self.repair_buckets: set[int] = set()
        self.repair_check = (0, 0)

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.state.value} server={self.server_id or '?'}>"

    def check(self, event: Event) -> SessionState:
        """The state `event` leads to from here; ProtocolError if the protocol forbids it here."""
        after = self._transitions.get((self.state, event))
        if after is None:
            raise ProtocolError(_refusal(self, event))
        return after

    def advance(self, event: Event) -> SessionState:
        """Take `event`: called once the message is validated, so a refused one leaves the state as it was."""
        self.state = self.check(event)
        return self.state

    def close(self) -> None:
        """Any state may end (stream closed, retired by a newer live session); nothing follows."""
        self.state = SessionState.CLOSED
        self.staged = {}


_HELLOS = frozenset({Event.SNAPSHOT_HELLO, Event.RESUMED_HELLO, Event.REPAIR_HELLO})


def _refusal(session: Session, event: Event) -> str:
    if event in _HELLOS:
        return f"second ServerHello on session {session.id}"
    if session.state is SessionState.AWAITING_HELLO and event is not Event.DELTAS:
        return f"{event.value} before ServerHello"
    return f"{event.value} on a session in state {session.state.value}"
