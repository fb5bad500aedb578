"""The Sync server's Prometheus metrics under Typha's exact names, types and labels
(typha/pkg/syncserver/sync_server.go; docs/calico/typha.md §1), plus extensions in Typha's style.

Typha's per-syncer summaries carry a constant `syncer` label; here they are one labelled summary each,
which exports the same series. Counters Typha names without `_total` are PlainCounters, summaries are
QuantileSummaries (both in typha.snapcache.metrics, which says why).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge

from typha.snapcache.cache import Breadcrumb
from typha.snapcache.metrics import PlainCounter, QuantileSummary

_SYNCER = ["syncer"]
_ACCEPTED = PlainCounter("typha_connections_accepted", "Total number of connections accepted over time.")
_DROPPED = PlainCounter("typha_connections_dropped", "Total number of connections dropped due to rebalancing.")
_ACTIVE = Gauge("typha_connections_active",
                "Number of open client connections, including connections that are still in the handshake.",
                multiprocess_mode="livesum")
_STREAMING = Gauge("typha_connections_streaming",
                   "Number of client connections that completed the handshake and are streaming data.", _SYNCER,
                   multiprocess_mode="livesum")
_GRACE_USED = PlainCounter("typha_connections_grace_used",
                           "Total number of connections that made use of the grace period to catch up after sending "
                           "the initial snapshot.", _SYNCER)
_SNAPSHOT_SECS = QuantileSummary("typha_client_snapshot_send_secs",
                                 "How long it took to send the initial snapshot to each client.", _SYNCER)
# Typha shortens this one's window so that it recovers quickly after a spike.
_LATENCY = QuantileSummary("typha_client_latency_secs",
                           "Per-client latency.  I.e. how far behind the current state is each client.", _SYNCER,
                           max_age_secs=60.0, age_buckets=2)
_WRITE_LATENCY = QuantileSummary("typha_client_write_latency_secs",
                                 "Per-client write.  How long each write call is taking.", _SYNCER)
_NEXT_CRUMB = QuantileSummary("typha_next_breadcrumb_latency_secs",
                              "Time to retrieve next breadcrumb when already behind.", _SYNCER)
_PING = QuantileSummary("typha_ping_latency", "Round-trip ping latency to client.", _SYNCER)
_KVS_PER_MSG = QuantileSummary("typha_kvs_per_msg", "Number of KV pairs sent in each message.", _SYNCER)

# Extensions: not in Typha, named in its style; counters are ordinary prometheus counters (`_total`).
_AWAITING_HELLO = Gauge("typha_connections_awaiting_hello",
                        "Streams accepted that have not completed the handshake (they count toward the limit).",
                        multiprocess_mode="livesum")
_SNAPSHOTS_SENT = Counter("typha_client_snapshots_sent", "Snapshots sent to clients.")
_RESUMES = Counter("typha_client_resumes", "Clients that resumed from their sequence number.")
_DIGEST_RESYNCS = Counter("typha_client_digest_resyncs",
                          "Clients resynced by sending only the buckets that differed.")
# The reasons are fixed words chosen by the server, never client-supplied text. A PlainCounter: tests and
# dashboards already read it under this name.
_CLIENT_ERRORS = PlainCounter("typha_client_stream_errors",
                              "Client streams that ended badly by reason: a protocol error or limit (the drop reason), "
                              "ended_before_hello, or disconnected (the client went away mid-stream).",
                              ["reason"])
_FELL_BEHIND = Counter("typha_client_fell_behind", "Clients dropped for falling behind.")


class ServerMetrics:
    def __init__(self, syncer_types: Iterable[str] = ()) -> None:
        self.connections_accepted = _ACCEPTED
        self.connections_dropped = _DROPPED
        self.connections_active = _ACTIVE
        self.connections_streaming = _STREAMING
        self.connections_grace_used = _GRACE_USED
        self.connections_awaiting_hello = _AWAITING_HELLO
        self.snapshot_send_secs = _SNAPSHOT_SECS
        self.client_latency = _LATENCY
        self.client_write_latency = _WRITE_LATENCY
        self.next_breadcrumb_latency = _NEXT_CRUMB
        self.ping_latency = _PING
        self.kvs_per_msg = _KVS_PER_MSG
        self.snapshots_sent = _SNAPSHOTS_SENT
        self.resumes = _RESUMES
        self.fell_behind = _FELL_BEHIND
        self.digest_resyncs = _DIGEST_RESYNCS
        self.client_errors = _CLIENT_ERRORS
        # Every per-syncer series exists from the start, as Typha's PreCreate…PerSyncer and
        # makePerSyncerConnMetrics make them.
        for syncer in syncer_types:
            for metric in (_STREAMING, _GRACE_USED, _SNAPSHOT_SECS, _LATENCY, _WRITE_LATENCY, _NEXT_CRUMB, _PING,
                           _KVS_PER_MSG):
                metric.labels(syncer)


def run_kv_count(first: Breadcrumb, last: Breadcrumb) -> int:
    """KVs in the message that carries crumbs first..last (one write of a run of crumbs)."""
    count, crumb = first.kv_count, first
    while crumb is not last and crumb.next is not None:
        crumb = crumb.next
        count += crumb.kv_count
    return count
