"""The Sync client library: a sans-IO protocol core plus asyncio and trio transports.

Agents import from here (and typha.model) only, never from the server (DESIGN §1).
"""

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

__all__ = [
    "ChecksumOutcome",
    "ChecksumVerdict",
    "Entry",
    "ProtocolError",
    "ReconnectHint",
    "ResumePoint",
    "Session",
    "SessionState",
    "Step",
    "SyncClientCore",
    "digest_of",
    "kv_hash",
]
