"""The Sync client library: a sans-IO protocol core plus asyncio and trio transports.

Agents import from here (and typha.model) only, never from the server (docs/architecture.md §1).

asyncio (fan-out workers, tools), with `SyncCallbacks` (typha.client.events)::

    client = AsyncSyncClient(["typha-0:5473", "typha-1:5473"], "felix", hostname=node, callbacks=cb)
    client.start(); await client.wait_in_sync(30); ...; await client.close()

or as an async iterator of UpdateBatch / StatusChange events (``async with`` starts and closes it)::

    async with AsyncSyncClient(endpoints, "bgp", hostname=node) as client:
        async for event in client: ...

trio (agents); the gRPC stream runs on a worker thread::

    async with open_trio_sync_client(endpoints, "felix", hostname=node) as client:
        async for event in client: ...

mTLS as Typha's clients do it, with Felix's settings (`FELIX_TYPHACAFILE`, …; typha.client.tls)::

    AsyncSyncClient(endpoints, "felix", hostname=node, **ClientTLS.from_env().client_options())

`SyncClientCore` is the protocol itself, without I/O, for other transports and for tests: `session`
(each stream's state and transition table), `mirror` (the agent's KV set) and `core` (dispatch); with
`replica=` a cache it is the protocol of a Typha following another (typha.source.upstream).
"""

import importlib
from typing import TYPE_CHECKING

from typha.backoff import Backoff
from typha.client.core import ChecksumOutcome, ChecksumVerdict, ReconnectHint, Step, SyncClientCore
from typha.client.events import ClientCounters, StatusChange, SyncCallbacks, SyncEvent, UpdateBatch
from typha.client.mirror import Entry
from typha.client.replica import ReplicaTarget
from typha.client.session import ProtocolError, ResumePoint, Session, SessionState
from typha.client.tls import ClientTLS, ServerIdentityError, TLSConfigError

if TYPE_CHECKING:
    from typha.client.aio import AsyncSyncClient
    from typha.client.trio_transport import TrioSyncClient, open_trio_sync_client

# The transports on first use only: `typha serve` imports this package for the replica protocol and never
# runs trio, and its configuration check needs neither gRPC nor trio (docs/memory.md).
_TRANSPORTS = {"AsyncSyncClient": "typha.client.aio", "TrioSyncClient": "typha.client.trio_transport",
               "open_trio_sync_client": "typha.client.trio_transport"}


def __getattr__(name: str) -> object:
    module = _TRANSPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AsyncSyncClient",
    "Backoff",
    "ChecksumOutcome",
    "ChecksumVerdict",
    "ClientCounters",
    "ClientTLS",
    "Entry",
    "ProtocolError",
    "ReconnectHint",
    "ReplicaTarget",
    "ResumePoint",
    "ServerIdentityError",
    "Session",
    "SessionState",
    "StatusChange",
    "Step",
    "SyncCallbacks",
    "SyncClientCore",
    "SyncEvent",
    "TLSConfigError",
    "TrioSyncClient",
    "UpdateBatch",
    "open_trio_sync_client",
]
