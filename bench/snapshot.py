"""Snapshot: M clients join a K-key cluster at once; time to first in-sync per client and in total.

`typha serve` is in sync with the emulator's K pods before anyone joins. Each round starts M fresh
clients (`bench.resume_sink` streams, which count snapshot chunks without decompressing them) and
waits until all are in sync. Per client, the time runs from its own first connection attempt to its
IN_SYNC; the total from the first client's attempt to the last one's IN_SYNC (connects are spread
by 10 ms per 50 clients, as `bench.sink` does). The server's CPU is what it used during the round.
Round 1 usually builds the snapshot; later rounds share it (no writes in between).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import psutil

from bench.apiproc import EmulatorProcess
from bench.fanout import free_port, percentile, quantiles, start_typha
from bench.output import report
from bench.storm import StormClients, wait_initial
from typha.testing.procs import stop_process, wait_ready


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keys", type=int, default=50_000, help="pods in the cluster (felix KVs ≈ pods + extras)")
    parser.add_argument("--clients", type=int, default=100, help="clients joining at once in each round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server to core 0")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")


def join_round(address: str, args: argparse.Namespace, first_index: int, server: psutil.Process,
               others: set[int] | None, description: str) -> dict[str, Any]:
    cpu0 = sum(server.cpu_times()[:2])
    clients = StormClients(address, args.clients, args.client_processes, others, first_index=first_index)
    try:
        initial = wait_initial(clients, args.clients, args.timeout, description, not args.no_progress)
        cpu = sum(server.cpu_times()[:2]) - cpu0
        rows = clients.first_syncs()
    finally:
        clients.stop()
    synced = [r for r in rows if r[1] is not None]
    per_client = [r[1] - r[0] for r in synced]
    return {
        "clients": len(rows),
        "in_sync": len(synced),
        "errors": initial["errors"],
        "total_secs": (max(r[1] for r in synced) - min(r[0] for r in rows)) if synced else None,
        "secs_p50": percentile(per_client, 0.50),
        "secs_p99": percentile(per_client, 0.99),
        "secs_max": max(per_client) if per_client else float("nan"),
        "secs_quantiles": quantiles(per_client),
        "snapshot_kvs": max((r[3] for r in rows), default=0),
        "bytes_per_client": sum(r[2] for r in rows) / max(len(rows), 1),
        "server_cpu_secs": cpu,
    }


def run(args: argparse.Namespace) -> int:
    pin = bool(not args.no_pin and (os.cpu_count() or 1) >= 2)
    others = {1} if pin else None
    results: dict[str, Any] = {"benchmark": "snapshot", "keys": args.keys, "clients": args.clients,
                               "pinned": pin, "rounds": []}
    api = EmulatorProcess(args.keys, args.nodes, cpus=others)
    typha = None
    try:
        hello = api.start()
        port, health_port = free_port(), free_port()
        typha = start_typha(hello["kubeconfig"], port, health_port, pin)
        started = time.perf_counter()
        wait_ready(health_port, timeout=600)
        results["server_initial_sync_secs"] = time.perf_counter() - started  # includes its start-up
        server = psutil.Process(typha.pid)
        results["server_rss_mb"] = server.memory_info().rss / 2**20
        for number in range(args.rounds):
            results["rounds"].append(join_round(f"127.0.0.1:{port}", args, number * args.clients, server, others,
                                                f"round {number + 1}: {args.clients} clients joining"))
    finally:
        if typha is not None:
            stop_process(typha, grace=10, kill_wait=10)
        api.stop()
    report(table_rows(results), results, args.json)
    return 0


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("setup", f"{r['keys']:,} pods, {r['clients']} clients joining at once per round; server in sync "
                      f"{r['server_initial_sync_secs']:.2f} s after start, RSS {r['server_rss_mb']:.0f} MB")]
    for number, p in enumerate(r["rounds"], 1):
        total = "n/a" if p["total_secs"] is None else f"{p['total_secs']:.2f} s"
        rows += [
            (f"round {number}: in sync", f"{p['in_sync']}/{p['clients']}, all within {total}"
                                         + (f"; {p['errors'][0]}" if p["errors"] else "")),
            (f"round {number}: per client", f"p50 {p['secs_p50'] * 1000:.0f} ms, p99 {p['secs_p99'] * 1000:.0f} ms, "
                                            f"max {p['secs_max'] * 1000:.0f} ms"),
            (f"round {number}: snapshot", f"{p['snapshot_kvs']:,} KVs, {p['bytes_per_client'] / 1024:.1f} KiB "
                                          f"received per client"),
            (f"round {number}: server CPU", f"{p['server_cpu_secs']:.2f} s"),
        ]
    return rows
