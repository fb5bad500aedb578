"""Fan-out throughput by worker count: the same churn against `typha serve --workers N` for each N, in one run.

For each N in `--workers` (default 1,2): a fresh `typha serve --workers N` on the same API emulator,
N clients' streams (`bench.fanout.Clients`, the cheap h2 sink by default) in sync, then
`--rate` pod writes/s for `--duration` s, waiting (bounded) until every client has every write.
Deliveries/s is KVs received summed over clients divided by that time; the ratio is against the
first N. Nothing is pinned: the workers need every core, and so does the load side on a small
machine, so the process-tree CPU of typha and of the load side are reported beside each number.
Issue 7 asks deliveries/s at N=2 ≥ 1.6 x N=1 with 2,000 clients; on a 2-core machine that also
runs the emulator and the clients, the load side takes most of a core and caps what N=2 can show.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import psutil

from bench.apiproc import EmulatorProcess
from bench.fanout import SINKS, Clients, churn_until_delivered, free_port, percentile, start_typha
from bench.output import report
from typha.testing.procs import wait_ready


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to compare")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1500.0, help="pod writes per second during churn")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of churn")
    parser.add_argument("--keys", type=int, default=1000, help="pods in the cluster")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--probe-every", type=int, default=50, help="every Nth client records latencies")
    parser.add_argument("--sink", choices=sorted(SINKS), default="h2", help="load client implementation")
    parser.add_argument("--catch-up-secs", type=float, default=120.0,
                        help="after the churn, wait at most this long for the clients to receive every write")
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")


# Loopback TCP trouble that stalls single streams for seconds with the CPU idle: segments dropped because
# a client's receive queue was over its buffer (RcvQDrop, OFODrop), then retransmission timeouts with
# exponential backoff. Machine-wide counters (/proc/net): anything else running shares them.
TCP_COUNTERS = ("TcpExt:TCPMemoryPressures", "TcpExt:TCPRcvQDrop", "TcpExt:TCPOFODrop", "TcpExt:TCPTimeouts",
                "Tcp:RetransSegs")


def tcp_counters() -> dict[str, int]:
    values: dict[str, int] = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        # Pairs of lines: "Prefix: name name …" then "Prefix: value value …".
        for names, numbers in zip(lines[::2], lines[1::2], strict=False):
            prefix, _, names = names.partition(":")
            for name, number in zip(names.split(), numbers.partition(":")[2].split(), strict=False):
                if f"{prefix}:{name}" in TCP_COUNTERS:
                    values[f"{prefix}:{name}"] = int(number)
    return values


def cpu_secs(processes: list[psutil.Process]) -> float:
    return sum(cpu_split(processes))


def cpu_split(processes: list[psutil.Process]) -> tuple[float, float]:
    """User and system CPU seconds: on loopback the kernel's TCP work (both ends, retransmits) shows as system."""
    user = system = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        user, system = user + times.user, system + times.system
    return user, system


def measure(args: argparse.Namespace, api: EmulatorProcess, kubeconfig: str, workers: int) -> dict[str, Any]:
    port, health_port = free_port(), free_port()
    typha = start_typha(kubeconfig, port, health_port, pin=False, workers=workers)
    clients: Clients | None = None
    result: dict[str, Any] = {"workers": workers}
    try:
        wait_ready(health_port, timeout=300)
        supervisor = psutil.Process(typha.pid)
        tree = [supervisor, *supervisor.children(recursive=True)]
        result["server_processes"] = len(tree)
        started = time.perf_counter()
        clients = Clients(f"127.0.0.1:{port}", args.clients, args.client_processes, args.probe_every, None,
                          sink=args.sink)
        in_sync, _, errors = clients.wait_ready(600)
        result["connect_all_secs"] = time.perf_counter() - started
        result["clients_in_sync"] = in_sync
        if errors:
            result["connect_errors"] = errors[:5]
        clients.latencies()  # not the initial sync's
        kvs0, msgs0, _ = clients.sample()
        load = [psutil.Process(pid) for pid in (api.pid, *(p.pid for p in clients.procs)) if pid]
        (server_user0, server_sys0), load_cpu0 = cpu_split(tree), cpu_secs(load)
        tcp0 = tcp_counters()
        writes, write_secs, elapsed, (kvs1, msgs1, _) = churn_until_delivered(api, clients, args, kvs0,
                                                                              args.catch_up_secs)
        server_user, server_sys = cpu_split(tree)
        server_user, server_sys = server_user - server_user0, server_sys - server_sys0
        server_cpu, load_cpu = server_user + server_sys, cpu_secs(load) - load_cpu0
        tcp = {name: value - tcp0.get(name, 0) for name, value in tcp_counters().items()}
        latencies_ms = [ns / 1e6 for ns in clients.latencies()]
        deliveries = kvs1 - kvs0
        result.update({
            "writes": writes,
            "write_secs": write_secs,
            "deliveries": deliveries,
            "deliveries_expected": writes * args.clients,
            "elapsed_secs": elapsed,
            "deliveries_per_sec": deliveries / elapsed,
            "kvs_per_message": deliveries / max(msgs1 - msgs0, 1),
            "server_cpu_util": server_cpu / elapsed,
            "server_cpu_usec_per_delivery": server_cpu / max(deliveries, 1) * 1e6,
            "server_system_cpu_share": server_sys / server_cpu if server_cpu else 0.0,
            "load_cpu_util": load_cpu / elapsed,
            "latency_ms_p50": percentile(latencies_ms, 0.50),
            "latency_ms_p99": percentile(latencies_ms, 0.99),
            "latency_samples": len(latencies_ms),
            "tcp": tcp,
        })
        stop_errors = clients.stop()
        clients = None
        if stop_errors:
            result["stream_errors"] = stop_errors[:5]
    finally:
        if clients is not None:
            clients.stop()
        typha.terminate()
        try:
            typha.wait(30)
        except Exception:
            for child in psutil.Process(typha.pid).children(recursive=True):
                child.kill()
            typha.kill()
            typha.wait(10)
    return result


def run(args: argparse.Namespace) -> int:
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    results: dict[str, Any] = {"benchmark": "workers", "sink": args.sink, "clients": args.clients, "rate": args.rate,
                               "duration": args.duration, "keys": args.keys, "cpus": psutil.cpu_count(), "runs": []}
    api = EmulatorProcess(args.keys, args.nodes, cpus=None)
    try:
        hello = api.start()
        for workers in counts:
            results["runs"].append(measure(args, api, hello["kubeconfig"], workers))
    finally:
        api.stop()
    base = results["runs"][0]["deliveries_per_sec"] if results["runs"] else 0.0
    for entry in results["runs"]:
        entry["ratio_to_first"] = entry["deliveries_per_sec"] / base if base else float("nan")
    report(table_rows(results), results, args.json)
    return 0


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("setup", f"{r['clients']} clients ({r['sink']} sink), {r['rate']:.0f} pod writes/s for "
                      f"{r['duration']:.0f} s, {r['keys']} pods, {r['cpus']} CPUs, nothing pinned")]
    for e in r["runs"]:
        name = f"--workers {e['workers']}"
        rows += [
            (f"{name}: deliveries/s", f"{e['deliveries_per_sec']:,.0f} (x{e['ratio_to_first']:.2f}; "
                                      f"{e['deliveries']:,} of {e['deliveries_expected']:,} in "
                                      f"{e['elapsed_secs']:.1f} s, {e['kvs_per_message']:.0f} KVs/msg)"),
            (f"{name}: latency", f"p50 {e['latency_ms_p50']:.0f} ms, p99 {e['latency_ms_p99']:.0f} ms"),
            (f"{name}: CPU", f"typha {e['server_cpu_util'] * 100:.0f}% of a core over {e['server_processes']} "
                             f"processes ({e['server_cpu_usec_per_delivery']:.2f} µs/delivery, "
                             f"{e.get('server_system_cpu_share', 0) * 100:.0f}% of it system), "
                             f"load side {e['load_cpu_util'] * 100:.0f}%"),
            (f"{name}: clients in sync", f"{e['clients_in_sync']}/{r['clients']} in {e['connect_all_secs']:.1f} s"),
        ]
        if e.get("tcp"):
            rows.append((f"{name}: TCP (machine)", ", ".join(f"{key.partition(':')[2]} {value:,}"
                                                             for key, value in e["tcp"].items())))
    return rows
