"""/metrics: Typha's 24 metrics exactly (names, types, labels, quantiles) from a live `typha serve`, and a
server that answers 1,000 concurrent scrapes."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from typha.daemon.metrics_http import MetricsServer
from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import free_port, stop_process, wait_ready

from .sync_raw import RawClient

# Typha's metrics, as facts from its source (typha/pkg/syncserver/sync_server.go, snap_precalc.go,
# typha/pkg/snapcache/cache.go, typha/pkg/logging/logutils.go): name -> (type, labels besides quantile).
TYPHA_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "typha_connections_accepted": ("counter", ()),
    "typha_connections_dropped": ("counter", ()),
    "typha_connections_active": ("gauge", ()),
    "typha_connections_streaming": ("gauge", ("syncer",)),
    "typha_connections_grace_used": ("counter", ("syncer",)),
    "typha_cache_size": ("gauge", ("syncer",)),
    "typha_breadcrumb_seq_number": ("gauge", ("syncer",)),
    "typha_breadcrumb_size": ("summary", ("syncer",)),
    "typha_breadcrumb_block": ("counter", ("syncer",)),
    "typha_breadcrumb_non_block": ("counter", ("syncer",)),
    "typha_updates_total": ("counter", ("syncer",)),
    "typha_updates_skipped": ("counter", ("syncer",)),
    "typha_snapshots_generated": ("counter", ("syncer",)),
    "typha_snapshots_reused": ("counter", ("syncer",)),
    "typha_snapshot_raw_bytes": ("gauge", ("syncer",)),
    "typha_snapshot_compressed_bytes": ("gauge", ("syncer",)),
    "typha_client_snapshot_send_secs": ("summary", ("syncer",)),
    "typha_client_latency_secs": ("summary", ("syncer",)),
    "typha_client_write_latency_secs": ("summary", ("syncer",)),
    "typha_next_breadcrumb_latency_secs": ("summary", ("syncer",)),
    "typha_ping_latency": ("summary", ("syncer",)),
    "typha_kvs_per_msg": ("summary", ("syncer",)),
    "typha_log_errors": ("counter", ()),
    "typha_logs_dropped": ("counter", ()),
}
QUANTILES = {"0.5", "0.9", "0.99"}  # libcalico-go's DefObjectives
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$')


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], str]]]:
    """(family -> TYPE, [(sample name, labels, value)]) of a Prometheus text exposition."""
    types: dict[str, str] = {}
    samples = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"unparseable line {line!r}"
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
            samples.append((match["name"], labels, match["value"]))
    return types, samples


@pytest.fixture
def serving(tmp_path) -> Iterator[tuple[int, int]]:
    """`typha serve` as a process with /metrics on loopback: (sync port, metrics port)."""
    yield from _serve(tmp_path, workers=1)


@pytest.fixture
def serving_workers(tmp_path) -> Iterator[tuple[int, int]]:
    """The same with `--workers 2`: the supervisor serves its children's merged metrics."""
    yield from _serve(tmp_path, workers=2)


def _serve(tmp_path, workers: int) -> Iterator[tuple[int, int]]:
    with KubeAPIEmulator().start() as api:
        api.create(objects.node("node-1", ipv4="192.168.56.11/24"))
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        port, health_port, metrics_port = free_port(), free_port(), free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "typha.cli", "serve", "--workers", str(workers), "--kubeconfig", str(kubeconfig),
             "--server-host", "127.0.0.1", "--server-port", str(port), "--health-enabled", "true",
             "--health-host", "127.0.0.1", "--health-port", str(health_port),
             "--prometheus-metrics-enabled", "true", "--prometheus-metrics-host", "127.0.0.1",
             "--prometheus-metrics-port", str(metrics_port), "--shutdown-timeout-secs", "0"],
            stderr=subprocess.DEVNULL)
        try:
            wait_ready(health_port, process)  # type: ignore[arg-type]
            yield port, metrics_port
        finally:
            stop_process(process)


def test_metrics_are_typhas_names_types_labels_and_quantiles(serving):
    port, metrics_port = serving

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return str(response.read().decode())

    async def scrape_with_a_client() -> str:
        client = RawClient(port)
        try:
            await client.hello("felix")
            await client.read_snapshot()
            # Scrape while the client is connected: closing it could cut the server short of its observations.
            for _ in range(50):
                text = await asyncio.to_thread(scrape)
                if re.search(r'^typha_client_snapshot_send_secs_count\{syncer="felix"\} [1-9]', text, re.M):
                    return text
                await asyncio.sleep(0.6)  # past the server's rendering reuse
            return text
        finally:
            await client.close()

    types, samples = parse(asyncio.run(asyncio.wait_for(scrape_with_a_client(), 60)))

    assert not [name for name, _, _ in samples if name.endswith("_created")], "no *_created series, as Typha"
    for name, (kind, labels) in TYPHA_METRICS.items():
        assert types.get(name) == kind, f"{name}: TYPE {types.get(name)}, Typha's is {kind}"
        series = [(sample, found) for sample, found, _ in samples
                  if sample == name or (kind == "summary" and sample in (f"{name}_sum", f"{name}_count"))]
        assert series, f"{name}: no series"
        for sample, found in series:
            expected = set(labels) | ({"quantile"} if kind == "summary" and sample == name else set())
            assert set(found) == expected, f"{sample}: labels {sorted(found)}, Typha's {sorted(expected)}"
        if kind == "summary":
            felix = {found["quantile"] for sample, found in series if sample == name and found["syncer"] == "felix"}
            assert felix == QUANTILES, f"{name}: quantiles {sorted(felix)}"
    # The client above was served: its snapshot time and the snapshot's size are real observations.
    values = {(name, labels.get("syncer"), labels.get("quantile")): value for name, labels, value in samples}
    assert float(values["typha_client_snapshot_send_secs_count", "felix", None]) >= 1
    assert values["typha_client_snapshot_send_secs", "felix", "0.5"] != "NaN"
    assert float(values["typha_connections_accepted", None, None]) >= 1


def test_workers_supervisor_exports_typhas_names_merged(serving_workers):
    """Under --workers the children's values are merged: the same names, types and labels (no per-process
    `pid` label, no `_total` twin of a plain counter). Quantiles cannot be merged across processes, so
    summaries carry `_count` and `_sum` there (typha.snapcache.metrics.QuantileSummary)."""
    port, metrics_port = serving_workers

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    async def with_a_client() -> str:
        client = RawClient(port)
        try:
            await client.hello("felix")
            await client.read_snapshot()
            return await asyncio.to_thread(scrape)
        finally:
            await client.close()

    types, samples = parse(asyncio.run(asyncio.wait_for(with_a_client(), 60)))
    names = {name for name, _, _ in samples}
    for name, (kind, labels) in TYPHA_METRICS.items():
        assert types.get(name) == kind, f"{name}: TYPE {types.get(name)}, Typha's is {kind}"
        series = [found for sample, found, _ in samples
                  if sample == (f"{name}_count" if kind == "summary" else name)]
        assert series, f"{name}: no series"
        assert all(set(found) == set(labels) for found in series), f"{name}: {series}"
        assert f"{name}_total" not in names or name == "typha_updates_total"
    connections = [value for name, _, value in samples if name == "typha_connections_active"]
    assert connections and float(connections[0]) >= 1  # the workers' connections added up


def test_a_thousand_concurrent_scrapes_all_succeed():
    """Issue 17.4: prometheus_client's threaded server timed out 741 of 1,000; every one must succeed."""
    ready = threading.Event()
    stop: list[asyncio.AbstractEventLoop] = []
    server = MetricsServer()

    def serve() -> None:
        async def main() -> None:
            await server.start("127.0.0.1", 0)
            stop.append(asyncio.get_running_loop())
            ready.set()
            await asyncio.Event().wait()

        with pytest.raises(asyncio.CancelledError):
            asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)

    async def scrape() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        response = await reader.read()
        writer.close()
        return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0

    async def burst() -> list[int | BaseException]:
        return await asyncio.gather(*(asyncio.wait_for(scrape(), 60) for _ in range(1000)), return_exceptions=True)

    try:
        statuses = asyncio.run(burst())
    finally:
        for task in asyncio.all_tasks(stop[0]):
            stop[0].call_soon_threadsafe(task.cancel)
        thread.join(10)
    failed = [status for status in statuses if status != 200]
    assert not failed, f"{len(failed)} of 1000 scrapes failed: {failed[:5]}"
