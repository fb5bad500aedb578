"""The /metrics endpoint: Prometheus text format under Typha's exact names, from a bounded asyncio server.

prometheus_client's own server runs a thread per connection with a backlog of 5 and no timeouts: 1,000
concurrent scrapes timed out by the hundreds and idle connections held threads. This one runs on the
daemon's event loop with a deep backlog, a cap on open connections, a deadline for the request and for
the response, one request per connection, and one rendering shared by the scrapes of the same instant.

The exposition is our own because prometheus_client's renames every counter to `<name>_total`, while
Typha's Go counters keep their names (`typha_connections_accepted`; typha.snapcache.metrics.PlainCounter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from typha.daemon.ports import bind_error
from typha.logs import LogCounts

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
MAX_OPEN = 2048  # connections beyond this are closed at once (each costs an fd and a task)
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_SECS = 5.0
WRITE_TIMEOUT_SECS = 10.0
# Scrapes within this long of a rendering share it: a burst of scrapers costs one collection.
RENDER_REUSE_SECS = 0.5


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else f"{int(value)}"


def _sample_line(sample: Sample) -> str:
    labels = ""
    if sample.labels:
        labels = "{" + ",".join(f'{key}="{_escape_label(str(value))}"'
                                for key, value in sorted(sample.labels.items())) + "}"
    return f"{sample.name}{labels} {_number(sample.value)}\n"


def _header_name(metric: Metric) -> tuple[str, str]:
    kind = metric.type
    if kind == "counter":
        # A PlainCounter's series carries the family's name; an ordinary counter's is `<name>_total`.
        if any(sample.name == metric.name for sample in metric.samples):
            return metric.name, "counter"
        return metric.name + "_total", "counter"
    if kind == "info":
        return metric.name + "_info", "gauge"
    if kind in ("stateset", "gaugehistogram"):
        return metric.name, "gauge" if kind == "stateset" else "histogram"
    return metric.name, "untyped" if kind == "unknown" else kind


def render(registry: Collector = REGISTRY) -> bytes:
    """The Prometheus text exposition (format 0.0.4), as Typha's Go client writes it."""
    output: list[str] = []
    for metric in registry.collect():
        name, kind = _header_name(metric)
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        output.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        output.extend(_sample_line(sample) for sample in metric.samples
                      if not sample.name.endswith(("_created", "_gsum", "_gcount")))
    return "".join(output).encode()


class LogCountsCollector(Collector):
    """Typha's log metrics (typha/pkg/logging): lines dropped while stderr was blocked, logging errors."""

    def collect(self) -> Iterator[Metric]:
        for name, doc, value in (
            ("typha_log_errors", "Number of errors encountered while logging.", LogCounts.errors),
            ("typha_logs_dropped", "Number of logs dropped because the output stream was blocked.", LogCounts.dropped),
        ):
            metric = Metric(name, doc, "counter")
            metric.add_sample(name, {}, float(value))
            yield metric


_log_counts_registered = False


def register_log_counts(registry: CollectorRegistry = REGISTRY) -> None:
    global _log_counts_registered
    if registry is REGISTRY:
        if _log_counts_registered:
            return
        _log_counts_registered = True
    registry.register(LogCountsCollector())


class MetricsServer:
    """Serves GET /metrics from `registry` on the running event loop."""

    def __init__(self, registry: Collector = REGISTRY) -> None:
        self.registry = registry
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open = 0
        self._body = b""
        self._rendered_at = float("-inf")
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, setting: str = "PrometheusMetricsPort") -> int:
        address = host or "0.0.0.0"
        try:
            self._server = await asyncio.start_server(self._accept, address, port, backlog=BACKLOG,
                                                      limit=MAX_REQUEST_BYTES, reuse_address=True)
        except OSError as exc:
            raise bind_error(setting, address, port, exc) from None
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("Serving /metrics on %s:%d", address, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    def _body_now(self) -> bytes:
        now = time.monotonic()
        if now - self._rendered_at > RENDER_REUSE_SECS:
            self._body = render(self.registry)
            self._rendered_at = now
        return self._body

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._open += 1
        try:
            if self._open > MAX_OPEN:
                return
            await self._serve_one(reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a slow, silent or vanished scraper: its connection is simply closed
        finally:
            self._open -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(REQUEST_TIMEOUT_SECS):
            head = await reader.readuntil(b"\r\n\r\n")
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, body, kind = "405 Method Not Allowed", b"only GET\n", "text/plain"
        elif path not in ("/metrics", "/"):
            status, body, kind = "404 Not Found", b"see /metrics\n", "text/plain"
        else:
            status, body, kind = "200 OK", self._body_now(), CONTENT_TYPE
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        if method != "HEAD":
            writer.write(body)
        async with asyncio.timeout(WRITE_TIMEOUT_SECS):
            await writer.drain()
