"""The Sync server's Prometheus metrics, under Typha's names (see cache_metrics for why some are Gauges)."""

from __future__ import annotations

from prometheus_client import Gauge, Summary

_ACCEPTED = Gauge("typha_connections_accepted", "Connections accepted (monotonic).")
_DROPPED = Gauge("typha_connections_dropped", "Connections dropped by the server (monotonic).")
_ACTIVE = Gauge("typha_connections_active", "Connections that completed the handshake and are open.")
_AWAITING_HELLO = Gauge("typha_connections_awaiting_hello",
                        "Streams accepted that have not completed the handshake (they count toward the limit).")
_STREAMING = Gauge("typha_connections_streaming", "Connections past their snapshot, streaming deltas.")
_SNAPSHOT_SECS = Summary("typha_client_snapshot_send_secs", "Time to send a client its snapshot.")
_LATENCY = Summary("typha_client_latency_secs", "Age of a breadcrumb when its write to a client completed.")
_PING = Summary("typha_ping_latency", "Round trip of a ping.")
# Extensions: not in Typha, named in its style.
_SNAPSHOTS_SENT = Gauge("typha_client_snapshots_sent", "Snapshots sent to clients (monotonic).")
_RESUMES = Gauge("typha_client_resumes", "Clients that resumed from their sequence number (monotonic).")
_DIGEST_RESYNCS = Gauge("typha_client_digest_resyncs",
                        "Clients resynced by sending only the buckets that differed (monotonic).")
# The reasons are fixed words chosen by the server, never client-supplied text.
_CLIENT_ERRORS = Gauge("typha_client_stream_errors",
                       "Client streams ended for a protocol error, or before their hello, by reason (monotonic).",
                       ["reason"])
_FELL_BEHIND = Gauge("typha_client_fell_behind", "Clients dropped for falling behind (monotonic).")


class ServerMetrics:
    def __init__(self) -> None:
        self.connections_accepted = _ACCEPTED
        self.connections_dropped = _DROPPED
        self.connections_active = _ACTIVE
        self.connections_streaming = _STREAMING
        self.connections_awaiting_hello = _AWAITING_HELLO
        self.snapshot_send_secs = _SNAPSHOT_SECS
        self.client_latency = _LATENCY
        self.ping_latency = _PING
        self.snapshots_sent = _SNAPSHOTS_SENT
        self.resumes = _RESUMES
        self.fell_behind = _FELL_BEHIND
        self.digest_resyncs = _DIGEST_RESYNCS
        self.client_errors = _CLIENT_ERRORS
