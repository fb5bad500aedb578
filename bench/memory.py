"""Memory: typha's RSS once in sync with K pods, for several K in one run, and where it goes.

For each size the emulator is populated with K pods, `typha serve` (one process, felix syncer) starts
against it, and its RSS is read once it is ready (in sync) and has settled. Size 0 is the empty
process (imports, threads, the server), so per-pod figures are above that, in the same run.

`--tracemalloc` adds, for the largest size, a run of the same daemon in a child process with
tracemalloc on: the live Python allocations once in sync, grouped by the line that made them, and
the traced peak. Tracing inflates RSS (its own bookkeeping), so the RSS figures come from the
untraced runs only. `--imports` splits the empty process: a fresh interpreter imports what `typha serve`
imports, a group at a time in the order serve needs them, and reports the RSS each group adds (a group
shared with an earlier one is counted there). docs/memory.md is written from this output.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import multiprocessing as mp
import subprocess
import sys
import time
from typing import Any

import psutil

from bench.apiproc import EmulatorProcess
from bench.fanout import free_port, start_typha
from bench.output import report
from typha.testing.procs import stop_process, wait_ready


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", default="0,10000,50000,100000",
                        help="comma-separated pod counts; 0 measures the empty process")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between ready and reading RSS")
    parser.add_argument("--workers", type=int, default=1,
                        help="typha serve --workers N: above 1, RSS is reported per process (ingest, workers)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also trace the largest size's live allocations (a separate, slower run)")
    parser.add_argument("--top", type=int, default=15, help="allocation sites listed with --tracemalloc")
    parser.add_argument("--imports", action="store_true",
                        help="also report the RSS each group of serve's imports adds in a fresh interpreter")
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")


# What TyphaDaemon.start imports (typha.daemon.serve itself imports them only there).
DAEMON_MODULES = ("typha.kube.client", "typha.ops.rebalance", "typha.snapcache.cache", "typha.source.datastore",
                  "typha.source.upstream", "typha.syncserver.server", "typha.syncserver.tls", "typha.syncserver.heap")

# What `typha serve` imports, grouped by the library that brings it (first: the one that needs it first).
IMPORT_GROUPS: list[tuple[str, list[str]]] = [
    ("asyncio (with ssl, concurrent.futures)", ["asyncio"]),
    ("typha.config, typha.logs (yaml, argparse, logging)", ["typha.config"]),
    ("prometheus_client", ["prometheus_client"]),
    ("urllib3", ["urllib3"]),
    ("pydantic (kubernetes.client's ApiClient needs it)", ["pydantic"]),
    ("requests, oauthlib (kubernetes.config's kubeconfig loader)", ["requests_oauthlib", "oauthlib.oauth2"]),
    ("kubernetes.client, kubernetes.config (typha.kube.client), pydantic models", ["typha.kube.client"]),
    ("grpc", ["grpc", "grpc.aio"]),
    ("cryptography (TLS identities)", ["cryptography.x509"]),
    ("protobuf, zstandard, msgpack", ["google.protobuf.message", "typha.proto.sync_pb2", "zstandard", "msgpack"]),
    ("typha's own modules, grpc_health, grpc_reflection", ["typha.cli", "typha.daemon.serve", *DAEMON_MODULES]),
]

_IMPORT_PROBE = """
import importlib, json, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
steps = [("the interpreter", rss())]
for name, modules in json.loads(sys.argv[1]):
    for module in modules:
        importlib.import_module(module)
    steps.append((name, rss()))
print(json.dumps(steps))
"""


def measure_imports() -> list[tuple[str, float]]:
    """[(group, RSS it adds in MB)], the interpreter first; Linux only (/proc)."""
    out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, json.dumps(IMPORT_GROUPS)],
                         capture_output=True, text=True, check=True, timeout=300)
    steps = json.loads(out.stdout)
    added = [(steps[0][0], steps[0][1] / 2**20)]
    added += [(name, (rss - steps[i][1]) / 2**20) for i, (name, rss) in enumerate(steps[1:])]
    return added


def measure_rss(keys: int, nodes: int, settle: float, workers: int = 1) -> dict[str, Any]:
    api = EmulatorProcess(keys, nodes)
    typha = None
    try:
        hello = api.start()
        port, health_port = free_port(), free_port()
        typha = start_typha(hello["kubeconfig"], port, health_port, pin=False, workers=workers)
        started = time.perf_counter()
        wait_ready(health_port, timeout=900)
        sync_secs = time.perf_counter() - started
        time.sleep(settle)
        process = psutil.Process(typha.pid)
        rss = process.memory_info().rss
        # Under --workers the first process supervises; the ingest and the workers are its children.
        children = [child.memory_info().rss / 2**20 for child in process.children()]
    finally:
        if typha is not None:
            stop_process(typha, grace=10, kill_wait=10)
        api.stop()
    return {"keys": keys, "rss_mb": rss / 2**20, "children_rss_mb": children,
            "total_rss_mb": rss / 2**20 + sum(children), "sync_secs": sync_secs}


def _traced_child(kubeconfig: str, top: int, conn: Any) -> None:
    """The daemon `typha serve` runs, in this process with tracemalloc on; sends back the statistics."""
    import gc
    import tracemalloc

    from typha import config as typha_config
    from typha.daemon.serve import TyphaDaemon
    from typha.model.kv import SyncStatus

    for module in DAEMON_MODULES:  # before tracing starts: the modules are not the data
        importlib.import_module(module)

    async def main() -> dict[str, Any]:
        parser = argparse.ArgumentParser()
        typha_config.add_arguments(parser)
        config = typha_config.load(parser.parse_args([
            "--kubeconfig", kubeconfig, "--server-host", "127.0.0.1", "--server-port", str(free_port()),
            "--syncers", "felix", "--workers", "1", "--log-severity-screen", "WARNING"]))
        tracemalloc.start()
        daemon = TyphaDaemon(config)
        in_sync = asyncio.Event()
        await daemon.start()

        def check(_status: SyncStatus | None = None) -> None:
            if all(c.status is SyncStatus.IN_SYNC for c in daemon.caches.values()):
                in_sync.set()

        for cache in daemon.caches.values():
            cache.status_listeners.append(check)
        check()
        try:
            await in_sync.wait()
            gc.collect()
            current, peak = tracemalloc.get_traced_memory()
            snapshot = tracemalloc.take_snapshot()
            sites = [(s.traceback[0].filename, s.traceback[0].lineno, s.size, s.count)
                     for s in snapshot.statistics("lineno")[:top]]
            return {"traced_mb": current / 2**20, "traced_peak_mb": peak / 2**20, "sites": sites}
        finally:
            await daemon.stop()

    conn.send(asyncio.run(main()))


def measure_traced(keys: int, nodes: int, top: int) -> dict[str, Any]:
    api = EmulatorProcess(keys, nodes)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = None
    try:
        hello = api.start()
        proc = ctx.Process(target=_traced_child, args=(hello["kubeconfig"], top, child), daemon=True)
        proc.start()
        if not parent.poll(1800):
            raise TimeoutError("the traced typha did not get in sync")
        result: dict[str, Any] = parent.recv()
    finally:
        if proc is not None:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        api.stop()
    result["keys"] = keys
    return result


def run(args: argparse.Namespace) -> int:
    sizes = sorted({int(k) for k in args.keys.split(",") if k.strip()})
    results: dict[str, Any] = {"benchmark": "memory", "workers": args.workers, "sizes": []}
    for keys in sizes:
        results["sizes"].append(measure_rss(keys, args.nodes, args.settle, args.workers))
    empty = next((s["total_rss_mb"] for s in results["sizes"] if s["keys"] == 0), None)
    results["empty_rss_mb"] = empty
    if args.tracemalloc and sizes:
        results["traced"] = measure_traced(max(sizes), args.nodes, args.top)
    if args.imports:
        results["imports"] = measure_imports()
    report(table_rows(results), results, args.json)
    return 0


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    empty = r["empty_rss_mb"]
    rows = []
    for s in r["sizes"]:
        extra = ""
        if empty is not None and s["keys"]:
            extra = f", {(s['total_rss_mb'] - empty) * 2**20 / s['keys']:,.0f} B per pod above the empty process"
        rows.append((f"RSS, {s['keys']:,} pods", f"{s['rss_mb']:.1f} MB (in sync after {s['sync_secs']:.1f} s{extra})"))
        if s.get("children_rss_mb"):
            rows.append(("  its child processes", ", ".join(f"{mb:.1f} MB" for mb in s["children_rss_mb"])
                         + f" (all processes: {s['total_rss_mb']:.1f} MB)"))
    if r.get("imports"):
        total = sum(mb for _, mb in r["imports"])
        rows.append(("imports of typha serve", f"{total:.1f} MB RSS in a fresh interpreter, of which:"))
        rows.extend((f"  {name}", f"{mb:.1f} MB") for name, mb in r["imports"])
    traced = r.get("traced")
    if traced:
        rows.append((f"traced, {traced['keys']:,} pods",
                     f"{traced['traced_mb']:.1f} MB live, peak {traced['traced_peak_mb']:.1f} MB"))
        for filename, lineno, size, count in traced["sites"]:
            where = "/".join(filename.split("/")[-2:])
            rows.append((f"  {where}:{lineno}", f"{size / 2**20:.2f} MB in {count:,} blocks"))
    return rows
