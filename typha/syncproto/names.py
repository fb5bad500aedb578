"""The Sync service's names on the wire: the method path, the feature flags and the syncer types.

Every side of the protocol (server, client core and transports, the upstream follower, the benchmark
sinks) takes these from here, so a rename or a new feature is one edit (docs/architecture.md §4).
"""

from __future__ import annotations

SERVICE_NAME = "typha.v1.Sync"
METHOD_NAME = "Sync"
SYNC_METHOD = "/typha.v1.Sync/Sync"  # the gRPC path: "/" + SERVICE_NAME + "/" + METHOD_NAME

# Features a ClientHello may list; the server acts on those it knows and ignores the rest.
FEATURE_CHECKSUM = "checksum"  # send a Checksum of the KV set after in-sync batches
FEATURE_RECONNECT = "reconnect"  # the client follows ReconnectHints (make-before-break moves)
# A replica (fan-out worker, downstream Typha) asks for every breadcrumb as its own message, with its
# own sequence number, so that it can mint identical crumbs (same bytes, same numbers).
FEATURE_EXACT_CRUMBS = "exact-crumbs"
# With exact-crumbs: a run of crumbs may come as one message, their frames back to back (each frame is
# one top-level field, so the replica can split them again: typha.syncproto.frames). A replica that
# lags gets the run in one write instead of one write (and one event-loop turn on its side) per crumb.
FEATURE_CRUMB_RUNS = "crumb-runs"
# A resuming client may send per-bucket digests of its mirror (typha.syncproto.digests) and receive only
# the buckets that differ when the server cannot resume it.
FEATURE_DIGEST_RESYNC = "digest-resync"
# Only these are kept of a client's feature list: the server shares one frozenset per distinct set, and
# clients sending made-up names must not grow that table.
KNOWN_FEATURES = frozenset(
    {FEATURE_CHECKSUM, FEATURE_RECONNECT, FEATURE_EXACT_CRUMBS, FEATURE_CRUMB_RUNS, FEATURE_DIGEST_RESYNC}
)

# Calico's syncers a Typha serves: Felix's and confd's (BGP). An empty syncer_type means felix, as in Typha.
SYNCER_TYPES = ("felix", "bgp")
DEFAULT_SYNCER = "felix"
