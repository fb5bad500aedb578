"""The /metrics endpoint: Prometheus text format under Typha's exact names, from a bounded asyncio server.

prometheus_client's own server runs a thread per connection with a backlog of 5 and no timeouts: 1,000
concurrent scrapes timed out by the hundreds and idle connections held threads. This one runs on the
daemon's event loop (typha.daemon.httpd: a deep backlog, a cap on open connections, a deadline for the
request and for the response, one request per connection), and one rendering is shared by the scrapes of
the same instant.

The exposition is our own because prometheus_client's renames every counter to `<name>_total`, while
Typha's Go counters keep their names (`typha_connections_accepted`; typha.snapcache.metrics.PlainCounter).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from typha.daemon.httpd import BoundedHTTPServer, Response
from typha.daemon.ports import bind_error
from typha.logs import LogCounts

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
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
        self._http = BoundedHTTPServer({"/metrics": self._metrics, "/": self._metrics}, not_found="see /metrics\n")
        self._body = b""
        self._rendered_at = float("-inf")

    @property
    def port(self) -> int:
        return self._http.port

    async def start(self, host: str, port: int, setting: str = "PrometheusMetricsPort") -> int:
        address = host or "0.0.0.0"
        try:
            await self._http.start(address, port)
        except OSError as exc:
            raise bind_error(setting, address, port, exc) from None
        log.info("Serving /metrics on %s:%d", address, self.port)
        return self.port

    async def stop(self) -> None:
        await self._http.stop()

    def _metrics(self) -> Response:
        now = time.monotonic()
        if now - self._rendered_at > RENDER_REUSE_SECS:
            self._body = render(self.registry)
            self._rendered_at = now
        return Response(200, self._body, CONTENT_TYPE)
