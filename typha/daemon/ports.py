"""Ports the daemon binds: a free loopback port for a child's private endpoint, and the checks that turn
"address in use" into one line naming the setting and port instead of a traceback from deep inside gRPC
or aiohttp."""

from __future__ import annotations

import errno
import socket

from typha.config import ConfigError, TyphaConfig


def free_port() -> int:
    """A loopback TCP port nobody holds right now (the caller binds it soon after; a race is possible)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def ensure_bindable(setting: str, host: str, port: int) -> None:
    """Bind (host, port) once without SO_REUSEPORT and let go: raise ConfigError naming `setting` if any
    socket holds it, including listeners that share it with SO_REUSEPORT, such as another supervisor's
    workers, which a second SO_REUSEPORT bind would silently join. Port 0 (any port) always succeeds."""
    if port == 0 or host.startswith("unix:"):
        return
    address = host or "0.0.0.0"
    try:
        with socket.socket(_family(address), socket.SOCK_STREAM) as sock:
            # As the real listeners do (aiohttp, gRPC): a restarted child must not be refused for its
            # predecessor's connections in TIME_WAIT. A socket listening on the port still refuses the bind.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
    except OSError as exc:
        raise bind_error(setting, address, port, exc) from None


def bind_error(setting: str, host: str, port: int, exc: BaseException) -> ConfigError:
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        reason = "port already in use (another typha, or another process, listens on it)"
    elif isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        reason = f"address {host} is not on this host"
    elif isinstance(exc, OSError) and exc.errno == errno.EACCES:
        reason = "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"
    else:
        reason = " ".join(str(exc).split()) or type(exc).__name__
    return ConfigError(f"{setting}={port}: cannot listen on {host}:{port}: {reason}")


def check_ports(config: TyphaConfig) -> None:
    """Every port this typha will listen on is free, before anything starts (one line naming the port,
    not a datastore torn down half-way)."""
    if not config.server_reuse_port and not config.server_host.startswith("unix:"):
        ensure_bindable("ServerPort", config.server_host or "0.0.0.0", config.effective_server_port)
    if config.health_enabled:
        ensure_bindable("HealthPort", config.health_host, config.health_port)
    if config.prometheus_metrics_enabled:
        ensure_bindable("PrometheusMetricsPort", config.prometheus_metrics_host, config.prometheus_metrics_port)
