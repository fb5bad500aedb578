"""Fan-out benchmark: API emulator → `typha serve` → N streaming clients.

Layout on a 2-core machine, as docs/architecture.md §3 intends production to look: the typha server process is
pinned to core 0; the API emulator and the load clients share core 1. Reports deliveries/s
(KVs received summed over clients), end-to-end latency from the API write to a client's receipt
(probe clients decode each pod's write timestamp), the time for all clients to get in sync, a
late joiner's snapshot time, server CPU, and server RSS per idle client.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from bench import h2sink, sink
from bench.apiproc import EmulatorProcess
from bench.ceiling import measure as measure_ceiling
from bench.ceiling import table_rows as ceiling_table_rows
from bench.output import report
from typha.testing.procs import free_port, wait_ready

# --sink: which load client runs the streams. h2 (raw HTTP/2) costs a fraction of grpc.aio per message, so
# the load side stops being the bottleneck; grpc stays for comparison and as an interop check.
SINKS = {"h2": h2sink.client_process, "grpc": sink.client_process}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000.0, help="pod writes per second during churn")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of churn")
    parser.add_argument("--keys", type=int, default=1000, help="pods in the cluster (felix KVs ≈ pods + extras)")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--probe-every", type=int, default=50, help="every Nth client records latencies")
    parser.add_argument("--sink", choices=sorted(SINKS), default="h2", help="load client implementation")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server to core 0")
    parser.add_argument("--ceiling", action="store_true",
                        help="then run `bench ceiling` at this run's clients, message rate and size, and print "
                             "typha's CPU per delivery as a ratio to it")
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")




def start_typha(kubeconfig: str, port: int, health_port: int, pin: bool, workers: int = 1) -> subprocess.Popen[bytes]:
    # One process unless asked: `typha serve` defaults to a worker per CPU, and these numbers are per core.
    command = [
        sys.executable, "-m", "typha.cli", "serve", "--workers", str(workers), "--log-severity-screen", "WARNING",
        "--kubeconfig", kubeconfig, "--server-host", "127.0.0.1", "--server-port", str(port),
        "--health-enabled", "true", "--health-host", "127.0.0.1", "--health-port", str(health_port),
        "--syncers", "felix", "--max-connections-upper-limit", "100000",
    ]
    preexec = (lambda: os.sched_setaffinity(0, {0})) if pin else None
    return subprocess.Popen(command, preexec_fn=preexec)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def quantiles(values: list[float]) -> list[float]:
    return [percentile(values, q / 100) for q in range(101)] if values else []


class Clients:
    """Client processes, each running a share of the streams."""

    def __init__(self, address: str, count: int, processes: int, probe_every: int, cpus: set[int] | None,
                 first_index: int = 0, sink: str = "h2", target: Callable[..., None] | None = None) -> None:
        """`target` is the client process's entry point if not one of SINKS (bench.resume_sink's)."""
        ctx = mp.get_context("spawn")
        self.conns = []
        self.procs = []
        for p in range(processes):
            indexes = list(range(first_index + p, first_index + count, processes))
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target or SINKS[sink], args=(address, "felix", indexes, probe_every, child, cpus),
                               daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def _ask(self, command: str | tuple[Any, ...] | None, timeout: float) -> list[tuple[Any, ...]]:
        if command is not None:
            for conn in self.conns:
                conn.send(command)
        answers = []
        for conn in self.conns:
            if not conn.poll(timeout):
                raise TimeoutError(f"client process did not answer {command!r} within {timeout} s")
            answers.append(conn.recv())
        return answers

    def wait_ready(self, timeout: float) -> tuple[int, float, list[str]]:
        answers = self._ask(None, timeout)
        errors = [e for a in answers for e in a[3]]
        return sum(a[1] for a in answers), max(a[2] for a in answers), errors

    def sample(self) -> tuple[int, int, int]:
        answers = self._ask("sample", 60)
        return sum(a[1] for a in answers), sum(a[2] for a in answers), sum(a[3] for a in answers)

    def latencies(self) -> list[int]:
        return [ns for a in self._ask("latencies", 60) for ns in a[1]]

    def stop(self) -> list[str]:
        try:
            return [e for a in self._ask("stop", 60) for e in a[1]]
        finally:
            for proc in self.procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()


def churn_until_delivered(api: EmulatorProcess, clients: Clients, args: argparse.Namespace, kvs0: int,
                          catch_up_secs: float) -> tuple[int, float, float, tuple[int, int, int]]:
    """Write args.rate pods/s for args.duration s, then wait (bounded) until every client has every write.

    Returns the writes, the emulator's seconds writing them, the seconds from the first write until the
    clients had them all (or the wait ran out) and the clients' last sample (kvs, messages, bytes).
    """
    t0 = time.perf_counter()
    writes = int(args.rate * args.duration)
    api.start_churn(writes, rate=args.rate)
    churn = api.wait_churn(args.duration * 10 + 60)
    expected = kvs0 + writes * args.clients
    deadline = time.perf_counter() + catch_up_secs
    sample = clients.sample()
    while sample[0] < expected and time.perf_counter() < deadline:
        time.sleep(0.05)
        sample = clients.sample()
    return writes, churn["secs"], time.perf_counter() - t0, sample


def run(args: argparse.Namespace) -> int:
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    others = {1} if pin else None
    results: dict[str, Any] = {"benchmark": "fanout", "sink": args.sink, "clients": args.clients, "rate": args.rate,
                               "duration": args.duration, "keys": args.keys, "pinned": bool(pin)}
    api = EmulatorProcess(args.keys, args.nodes, cpus=others)
    hello = api.start()
    port, health_port = free_port(), free_port()
    typha = start_typha(hello["kubeconfig"], port, health_port, bool(pin))
    clients: Clients | None = None
    try:
        wait_ready(health_port, timeout=300)
        server = psutil.Process(typha.pid)
        rss_before = server.memory_info().rss
        started = time.perf_counter()
        clients = Clients(f"127.0.0.1:{port}", args.clients, args.client_processes, args.probe_every, others,
                          sink=args.sink)
        in_sync, slowest, errors = clients.wait_ready(600)
        results["connect_all_secs"] = time.perf_counter() - started
        results["clients_in_sync"] = in_sync
        results["slowest_initial_sync_secs"] = slowest
        if errors:
            results["connect_errors"] = errors
        time.sleep(2.0)  # let the server settle before measuring idle memory
        rss_idle = server.memory_info().rss
        results["server_rss_mb_before_clients"] = rss_before / 2**20
        results["server_rss_mb_idle_clients"] = rss_idle / 2**20
        results["server_rss_kb_per_idle_client"] = (rss_idle - rss_before) / 1024 / max(args.clients, 1)

        clients.latencies()  # discard anything from the initial sync
        kvs0, msgs0, bytes0 = clients.sample()
        helpers = [psutil.Process(pid) for pid in [api.pid, *(p.pid for p in clients.procs)] if pid]
        helper_cpu0 = [sum(h.cpu_times()[:2]) for h in helpers]
        cpu0 = server.cpu_times()
        writes, write_secs, elapsed, (kvs1, msgs1, bytes1) = churn_until_delivered(api, clients, args, kvs0, 30)
        cpu1 = server.cpu_times()
        helper_cpu = [sum(h.cpu_times()[:2]) - c0 for h, c0 in zip(helpers, helper_cpu0, strict=True)]
        results["emulator_cpu_util"] = helper_cpu[0] / elapsed
        results["clients_cpu_util"] = sum(helper_cpu[1:]) / elapsed
        latencies_ms = [ns / 1e6 for ns in clients.latencies()]
        cpu_secs = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        deliveries = kvs1 - kvs0
        results.update({
            "writes": writes,
            "write_secs": write_secs,
            "deliveries": deliveries,
            "deliveries_expected": writes * args.clients,
            "elapsed_secs": elapsed,
            "deliveries_per_sec": deliveries / elapsed,
            "messages_per_sec": (msgs1 - msgs0) / elapsed,
            "kvs_per_message": deliveries / max(msgs1 - msgs0, 1),
            "mbytes_per_sec": (bytes1 - bytes0) / elapsed / 2**20,
            "server_cpu_secs": cpu_secs,
            "server_cpu_util": cpu_secs / elapsed,
            "server_cpu_usec_per_delivery": cpu_secs / max(deliveries, 1) * 1e6,
            "latency_samples": len(latencies_ms),
            "latency_ms_p50": percentile(latencies_ms, 0.50),
            "latency_ms_p99": percentile(latencies_ms, 0.99),
            "latency_ms_max": max(latencies_ms) if latencies_ms else float("nan"),
            # p0..p100 in steps of 1: enough for `bench report` to draw the CDF without every sample.
            "latency_ms_quantiles": quantiles(latencies_ms),
            "server_rss_mb_after_churn": server.memory_info().rss / 2**20,
        })
        joiner_secs = []
        for attempt in range(3):
            joiner = Clients(f"127.0.0.1:{port}", 1, 1, 10**9, others, first_index=10**6 + attempt,
                             sink=args.sink)
            joined, secs, join_errors = joiner.wait_ready(120)
            joiner.stop()
            if joined and not join_errors:
                joiner_secs.append(secs)
        # The first joiner after churn usually builds a fresh snapshot; the next ones share it.
        results["joiner_snapshot_secs"] = joiner_secs
        results["joiner_snapshot_secs_median"] = statistics.median(joiner_secs) if joiner_secs else float("nan")
        stop_errors = clients.stop()
        clients = None
        if stop_errors:
            results["stream_errors"] = stop_errors
    finally:
        if clients is not None:
            clients.stop()
        typha.terminate()
        try:
            typha.wait(10)
        except subprocess.TimeoutExpired:
            typha.kill()
        api.stop()
    if args.ceiling:
        run_ceiling(results, args)
    report(table_rows(results), results, args.json)
    return 0


def run_ceiling(results: dict[str, Any], args: argparse.Namespace) -> None:
    """The same fan-out (clients, messages/s each, KVs and bytes per message) from a bare grpc.aio server."""
    messages = results["messages_per_sec"] * results["elapsed_secs"]
    ceiling = measure_ceiling(
        args.clients, rate=results["messages_per_sec"] / max(args.clients, 1), duration=args.duration,
        kvs_per_message=max(1, round(results["kvs_per_message"])),
        message_bytes=int(results["mbytes_per_sec"] * results["elapsed_secs"] * 2**20 / max(messages, 1)),
        client_processes=args.client_processes, pin=not args.no_pin)
    results["ceiling"] = ceiling
    results["ceiling_ratio"] = (results["server_cpu_usec_per_delivery"]
                                / max(ceiling["server_cpu_usec_per_delivery"], 1e-9))


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        *ceiling_rows(r),
        ("clients in sync", f"{r['clients_in_sync']}/{r['clients']} in {r['connect_all_secs']:.2f} s"),
        ("churn", f"{r['writes']} pod writes at {r['rate']:.0f}/s over {r['write_secs']:.2f} s, {r['keys']} pods"),
        ("deliveries", f"{r['deliveries']:,} of {r['deliveries_expected']:,}"),
        ("deliveries/s", f"{r['deliveries_per_sec']:,.0f}  ({r['messages_per_sec']:,.0f} msgs/s, "
                         f"{r['kvs_per_message']:.1f} KVs/msg, {r['mbytes_per_sec']:.1f} MiB/s)"),
        ("latency API write → client", f"p50 {r['latency_ms_p50']:.1f} ms, p99 {r['latency_ms_p99']:.1f} ms, "
                                        f"max {r['latency_ms_max']:.1f} ms ({r['latency_samples']} samples)"),
        ("server CPU", f"{r['server_cpu_util'] * 100:.0f}% of a core, "
                       f"{r['server_cpu_usec_per_delivery']:.2f} µs/delivery"),
        ("load side CPU", f"emulator {r['emulator_cpu_util'] * 100:.0f}%, clients {r['clients_cpu_util'] * 100:.0f}%"),
        ("server RSS per idle client", f"{r['server_rss_kb_per_idle_client']:.1f} KB "
                                       f"({r['server_rss_mb_before_clients']:.0f} → "
                                       f"{r['server_rss_mb_idle_clients']:.0f} MB)"),
        ("late joiner snapshot", "connect to in-sync: "
                                 + ", ".join(f"{secs * 1000:.0f} ms" for secs in r["joiner_snapshot_secs"])
                                 + " (first builds the snapshot, later ones share it)"),
    ]


def ceiling_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    if "ceiling" not in r:
        return []
    c = r["ceiling"]
    ratio = (f"{r['ceiling_ratio']:.2f} (typha {r['server_cpu_usec_per_delivery']:.3f} µs/delivery, "
             f"bare grpc.aio {c['server_cpu_usec_per_delivery']:.3f} µs/delivery, same run)")
    return [("typha / ceiling CPU per delivery", ratio), *ceiling_table_rows(c)]
