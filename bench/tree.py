"""Tree: one ingest typha, relays that follow it (`--upstream`), N clients spread over the relays.

The API emulator should see exactly one watch per kind the felix syncer reads, whatever the number
of relays and clients: only the ingest talks to the API. Every client must converge (receive every
write), and the end-to-end latency (API write → client, through two typhas) is reported.
Nothing is pinned: 1 + R typha processes, the emulator and the clients share the machine's cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

from bench.apiproc import EmulatorProcess
from bench.fanout import Clients, percentile, quantiles, start_typha
from bench.output import report
from typha.source.datastore import converters_for
from typha.testing.procs import free_port, stop_process, wait_ready


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--relays", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3000, help="spread evenly over the relays")
    parser.add_argument("--rate", type=float, default=200.0, help="pod writes per second during churn")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of churn")
    parser.add_argument("--keys", type=int, default=1000, help="pods in the cluster")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--probe-every", type=int, default=50, help="every Nth client records latencies")
    parser.add_argument("--catch-up", type=float, default=60.0, help="seconds to wait for every delivery")
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")


def start_relay(upstream: str, port: int, health_port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([
        sys.executable, "-m", "typha.cli", "serve", "--workers", "1", "--log-severity-screen", "WARNING",
        "--upstream", upstream, "--server-host", "127.0.0.1", "--server-port", str(port),
        "--health-enabled", "true", "--health-host", "127.0.0.1", "--health-port", str(health_port),
        "--syncers", "felix", "--max-connections-upper-limit", "100000",
    ])


def run(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"benchmark": "tree", "relays": args.relays, "clients": args.clients,
                               "rate": args.rate, "duration": args.duration, "keys": args.keys}
    api = EmulatorProcess(args.keys, args.nodes)
    processes: list[subprocess.Popen[bytes]] = []
    groups: list[Clients] = []
    try:
        hello = api.start()
        port, health_port = free_port(), free_port()
        processes.append(start_typha(hello["kubeconfig"], port, health_port, pin=False))
        wait_ready(health_port, timeout=300)
        relay_ports = []
        for _ in range(args.relays):
            relay_port, relay_health = free_port(), free_port()
            processes.append(start_relay(f"127.0.0.1:{port}", relay_port, relay_health))
            relay_ports.append((relay_port, relay_health))
        for _, relay_health in relay_ports:
            wait_ready(relay_health, timeout=300)
        started = time.perf_counter()
        relays = max(args.relays, 1)
        for index, (relay_port, _) in enumerate(relay_ports):
            count = args.clients // relays + (1 if index < args.clients % relays else 0)
            if count:
                groups.append(Clients(f"127.0.0.1:{relay_port}", count, 1, args.probe_every, None,
                                      first_index=index * 10**6))
        ready = [group.wait_ready(600) for group in groups]
        results["connect_all_secs"] = time.perf_counter() - started
        results["clients_in_sync"] = sum(r[0] for r in ready)
        results["connect_errors"] = [e for r in ready for e in r[2]][:3]
        stats = api.stats()
        results["api_open_watches"] = stats["open_watches"]
        results["api_watch_requests"] = stats["requests"].get("watch", 0)
        results["felix_kinds"] = len(converters_for("felix"))
        for group in groups:
            group.latencies()  # drop the initial sync's
        kvs0 = sum(group.sample()[0] for group in groups)
        writes = int(args.rate * args.duration)
        t0 = time.perf_counter()
        api.start_churn(writes, rate=args.rate)
        api.wait_churn(args.duration * 10 + 60)
        expected = kvs0 + writes * args.clients
        deadline = time.perf_counter() + args.catch_up
        kvs = sum(group.sample()[0] for group in groups)
        while kvs < expected and time.perf_counter() < deadline:
            time.sleep(0.1)
            kvs = sum(group.sample()[0] for group in groups)
        latencies_ms = [ns / 1e6 for group in groups for ns in group.latencies()]
        results.update({
            "writes": writes,
            "deliveries": kvs - kvs0,
            "deliveries_expected": writes * args.clients,
            "converged": kvs >= expected,
            "converge_secs": time.perf_counter() - t0,
            "latency_samples": len(latencies_ms),
            "latency_ms_p50": percentile(latencies_ms, 0.50),
            "latency_ms_p99": percentile(latencies_ms, 0.99),
            "latency_ms_max": max(latencies_ms) if latencies_ms else float("nan"),
            "latency_ms_quantiles": quantiles(latencies_ms),
        })
        results["stream_errors"] = [e for group in groups for e in group.stop()][:3]
        groups = []
    finally:
        for group in groups:
            group.stop()
        for process in reversed(processes):
            stop_process(process, grace=10, kill_wait=10)
        api.stop()
    report(table_rows(results), results, args.json)
    return 0


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("tree", f"1 ingest typha, {r['relays']} relays, {r['clients']} clients spread over the relays"),
        ("clients in sync", f"{r['clients_in_sync']}/{r['clients']} in {r['connect_all_secs']:.2f} s"),
        ("API watches", f"{r['api_open_watches']} open ({r['felix_kinds']} kinds in the felix syncer), "
                        f"{r['api_watch_requests']} watch requests so far"),
        ("churn", f"{r['writes']} pod writes at {r['rate']:g}/s, {r['keys']} pods"),
        ("converged", f"{'yes' if r['converged'] else 'NO'}: {r['deliveries']:,} of {r['deliveries_expected']:,} "
                      f"deliveries, {r['converge_secs']:.2f} s from the first write"),
        ("latency API write → client", f"p50 {r['latency_ms_p50']:.1f} ms, p99 {r['latency_ms_p99']:.1f} ms, "
                                        f"max {r['latency_ms_max']:.1f} ms ({r['latency_samples']} samples)"),
    ]
