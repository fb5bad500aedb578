"""What a transport hands to the agent (events, or calls on SyncCallbacks, which the datastore source feeds
too), and the counters both transports keep."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

from typha.model.kv import SyncStatus, Update


@dataclass(frozen=True, slots=True)
class UpdateBatch:
    """Updates in stream order, already deduplicated against the client's mirror."""

    updates: list[Update]


@dataclass(frozen=True, slots=True)
class StatusChange:
    status: SyncStatus


SyncEvent = UpdateBatch | StatusChange


class SyncCallbacks(Protocol):
    """Receives a syncer's output: from a client transport (an agent), or from a Source feeding a cache
    (the datastore's ingest thread). Called from the producer's own thread; must not block for long."""

    def on_updates(self, updates: list[Update]) -> None: ...

    def on_status(self, status: SyncStatus) -> None: ...


@dataclass(slots=True)
class ClientCounters:
    """Plain integers for tests and the benchmark; written by the transport's event loop only."""

    connections: int = 0  # streams opened
    failed_connections: int = 0  # streams that ended before they were in sync
    snapshots: int = 0  # snapshots received completely
    resumes: int = 0  # streams the server resumed
    digest_resyncs: int = 0  # streams that sent only the buckets differing from the mirror's summary
    moves: int = 0  # make-before-break switches to a new stream
    bytes_received: int = 0  # serialized ServerMessage bytes
    messages_received: int = 0
    updates_delivered: int = 0
    reconnect_hints: int = 0
    resyncs: int = 0  # full snapshots forced by checksum mismatch, falling behind or a protocol error
    protocol_errors: int = 0
    checksum_matches: int = 0
    checksum_mismatches: int = 0
    pongs_sent: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
