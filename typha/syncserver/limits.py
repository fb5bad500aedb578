"""Per-peer bounds of the Sync server that gRPC core enforces before our handler runs, and the optional
per-IP stream cap that we enforce ourselves.

gRPC core sees every TCP connection from its accept on; our handler sees only streams. So:

- a connection that opens no stream is closed (GOAWAY) after `grpc.max_connection_idle_ms`, which we
  set to ServerHandshakeTimeoutSecs, as Typha closes a connection that sends no hello within it
  (docs/calico/typha.md §1). That includes a socket that never sends the HTTP/2 preface: left to gRPC's
  defaults it is closed only by the SETTINGS-acknowledgement timeout, after 60 s (GOAWAY
  "settings_timeout"; issue 17 saw 4,000 still open after 40 s). A client between two streams just
  redials. `grpc.server_handshake_timeout_ms` (default 120 s) gets the same value: it bounds a TLS
  handshake that stalls;
- a peer that stops reading its socket is found by gRPC's transport keepalive: a ping every
  ServerPingIntervalSecs, and no acknowledgement within ServerPongTimeoutSecs closes the connection
  (gRPC clients acknowledge in their transport; our pings and pongs ride inside the stream and so
  cannot free what gRPC core still holds for a stream we ended: its unsent data and final status);
- at most `max_incoming_connections(limit)` TCP connections at once (`grpc.max_allowed_incoming_connections`:
  gRPC core closes any beyond it at accept), so a flood of silent sockets is bounded in count as well
  as in time; the headroom over MaxConnectionsUpperLimit lets clients beyond the limit connect to hear
  their Reconnect hint, and keeps handshakes in flight from shutting out returning clients;
- one connection may carry at most MAX_STREAMS_PER_CONNECTION concurrent streams (HTTP/2
  SETTINGS_MAX_CONCURRENT_STREAMS; gRPC core resets further ones, ENHANCE_YOUR_CALM even from a peer that
  ignores the setting, before any handler runs, so they never count toward MaxConnectionsUpperLimit).
- The per-IP cap counts Sync streams per client address. gRPC has no per-address hook at accept time,
  so raw sockets (the preface-less ones above) are bounded by the idle timeout and the quota, not by
  this cap; capping them per address would take a front before gRPC (a listening socket of our own, or
  the node's firewall, e.g. iptables `connlimit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Felix and confd hold one Sync stream per connection; a replica (downstream typha, fan-out worker)
# follows each syncer type over one shared connection, and a health check may ride along. Far below
# gRPC's default (unbounded), so one socket cannot hold thousands of slots of the connection limit.
MAX_STREAMS_PER_CONNECTION = 8
# Floor of the TCP connection quota, so that a small connection limit (tests, a tiny cluster) does not
# make the quota the first limit an honest client meets.
MIN_INCOMING_CONNECTIONS = 1024


def _ms(secs: float) -> int:
    return max(1, round(secs * 1000))


def max_incoming_connections(max_connections: int) -> int:
    return max(2 * max_connections, MIN_INCOMING_CONNECTIONS)


def grpc_server_options(handshake_timeout_secs: float, ping_interval_secs: float, pong_timeout_secs: float,
                        max_connections: int) -> Sequence[tuple[str, Any]]:
    """The gRPC core options that bound a peer outside our handler's sight (module docstring)."""
    return [
        ("grpc.max_allowed_incoming_connections", max_incoming_connections(max_connections)),
        ("grpc.server_handshake_timeout_ms", _ms(handshake_timeout_secs)),
        ("grpc.max_connection_idle_ms", _ms(handshake_timeout_secs)),
        ("grpc.keepalive_time_ms", _ms(ping_interval_secs)),
        ("grpc.keepalive_timeout_ms", _ms(pong_timeout_secs)),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    ]


def peer_ip(peer: str) -> str:
    """The address part of a gRPC peer string: `ipv4:10.0.0.1:5473` → `10.0.0.1`, `ipv6:[::1]:5473` → `::1`.
    Unix-socket peers (`unix:…`) are all one local peer."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] or rest
        return host.removeprefix("[").removesuffix("]")
    return kind or peer


class PeerCounts:
    """Streams open per client IP, against an optional cap (0: no cap, and nothing is counted)."""

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def acquire(self, ip: str) -> bool:
        """Count one more stream from `ip`; False (and nothing counted) when that would pass the cap."""
        if self.limit <= 0:
            return True
        count = self._counts.get(ip, 0)
        if count >= self.limit:
            return False
        self._counts[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        if self.limit <= 0:
            return
        count = self._counts.get(ip, 0) - 1
        if count > 0:
            self._counts[ip] = count
        else:
            self._counts.pop(ip, None)  # the table holds only addresses with open streams

    def count(self, ip: str) -> int:
        return self._counts.get(ip, 0)
