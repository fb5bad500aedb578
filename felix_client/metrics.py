"""felix-client's metrics, and Felix's Prometheus endpoint that serves them.

felix-client's own counters say what it refused to program, and why: Felix logs and skips what it
cannot render; so does felix_client, and these count it so an operator sees a refused rule without
reading logs. Beside them, a few of Felix's own metrics under Felix's names (felix/calc and
felix/dataplane/linux), so dashboards built for Felix read felix-client too. prometheus_client
appends `_total` to a counter's samples where Felix's Go client does not
(`felix_int_dataplane_failures_total`). They live in prometheus_client's default registry.

`serve_metrics` serves that registry on `GET /metrics`, as Felix does on PrometheusMetricsPort (9091)
when PrometheusMetricsEnabled is true (off by default in both).
"""

from __future__ import annotations

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Summary,
    disable_created_metrics,
    generate_latest,
)

from felix_client.httpd import serve_http
from typha.model.kv import SyncStatus

DEFAULT_METRICS_PORT = 9091  # FELIX_PROMETHEUSMETRICSPORT's default

# Felix's Go client exports no `*_created` series; neither do we (as typha, typha/snapcache/metrics.py).
disable_created_metrics()

RULES_REJECTED = Counter(
    "felix_client_rules_rejected",
    "Policy or profile rules not rendered (invalid value, unsupported match, or not for this IP family)",
    ["reason"],
)
OBJECTS_REJECTED = Counter(
    "felix_client_objects_rejected",
    "KV updates treated as deletions because a value failed validation",
    ["kind"],
)
RENDER_GUARD_TRIPPED = Counter(
    "felix_client_render_guard_tripped",
    "Rendered iptables rules or IP-set lines that failed the last grammar check before the kernel",
    ["what"],
)

# Felix's names and help texts.
RESYNC_STATE = Gauge("felix_resync_state", "Current datastore state.")
ACTIVE_LOCAL_ENDPOINTS = Gauge("felix_active_local_endpoints", "Number of active endpoints on this host.")
ACTIVE_LOCAL_POLICIES = Gauge("felix_active_local_policies", "Number of active policies on this host.")
DATAPLANE_APPLY_TIME = Summary(
    "felix_int_dataplane_apply_time_seconds",
    "Time in seconds for each incremental update to the dataplane (after the initial resync).",
)
DATAPLANE_FAILURES = Counter("felix_int_dataplane_failures",
                             "Number of times dataplane updates failed and will be retried.")
# async_calc_graph.go statusToGaugeValue.
_RESYNC_STATE_VALUES = {SyncStatus.WAIT_FOR_READY: 1, SyncStatus.RESYNC: 2, SyncStatus.IN_SYNC: 3}


def set_resync_state(status: SyncStatus) -> None:
    RESYNC_STATE.set(_RESYNC_STATE_VALUES[status])


def _scrape(method: bytes, path: bytes) -> tuple[str, str, bytes]:
    if method == b"GET" and path == b"/metrics":
        return "200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
    return "404 Not Found", "text/plain", b"not found\n"


async def serve_metrics(host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `/metrics` until cancelled; `task_status.started` gets the bound port (useful with port 0)."""
    await serve_http(host, port, _scrape, task_status=task_status)
