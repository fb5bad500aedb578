"""The Sync client library: a sans-IO protocol core plus asyncio and trio transports.

Agents import from here (and typha.model) only, never from the server (DESIGN §1).
"""

from typha.client.aio import SYNC_METHOD, AsyncSyncClient
from typha.client.checksum import digest_of, kv_hash
from typha.client.core import (
    ChecksumOutcome,
    ChecksumVerdict,
    Entry,
    ProtocolError,
    ReconnectHint,
    ResumePoint,
    Session,
    SessionState,
    Step,
    SyncClientCore,
)
from typha.client.events import Backoff, ClientCounters, StatusChange, SyncCallbacks, SyncEvent, UpdateBatch
from typha.client.trio_transport import TrioSyncClient, open_trio_sync_client

__all__ = [
    "SYNC_METHOD",
    "AsyncSyncClient",
    "Backoff",
    "ChecksumOutcome",
    "ChecksumVerdict",
    "ClientCounters",
    "Entry",
    "ProtocolError",
    "ReconnectHint",
    "ResumePoint",
    "Session",
    "SessionState",
    "StatusChange",
    "Step",
    "SyncCallbacks",
    "SyncClientCore",
    "SyncEvent",
    "TrioSyncClient",
    "UpdateBatch",
    "digest_of",
    "kv_hash",
    "open_trio_sync_client",
]
