"""Worker kill under load: `typha serve --workers W`, N reconnecting clients, churn, and one worker SIGKILLed.

The clients (`bench.resume_sink`, through `bench.storm`'s driver) keep their resume point. During the
churn, at `--kill-at` seconds, one worker process gets SIGKILL; its clients' streams end, they
reconnect to the same port, the kernel hands them to a live worker (or to the restarted one), and
they resume there. Reported for the killed worker's clients: time from the kill until back in sync
(p50/p99/max), resumed vs snapshotted. Nothing lost: after the churn, every client, moved or not,
must have received the same number of KVs in deltas since the churn started (a resumed stream gets
exactly the crumbs after its position, so a gap or a duplicate shows up as a different count).
Issue 7's target: back in sync within 2 s, by resume. Nothing is pinned (the workers need the cores).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import time
from typing import Any

import psutil

from bench.apiproc import EmulatorProcess
from bench.fanout import free_port, start_typha
from bench.output import report
from bench.storm import StormClients, summarise, wait_initial
from typha.testing.procs import wait_ready


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="typha serve --workers")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--keys", type=int, default=1000, help="pods in the cluster")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200.0, help="pod writes per second during the churn")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of churn")
    parser.add_argument("--kill-at", type=float, default=2.0, help="seconds into the churn to kill a worker")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up waiting for clients after this")
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")


def live_workers(supervisor: psutil.Process) -> list[psutil.Process]:
    workers = []
    for child in supervisor.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "--upstream" in child.cmdline():
                workers.append(child)
        except psutil.Error:
            continue
    return workers


def restarted(supervisor: psutil.Process, victim: psutil.Process, workers: int) -> bool:
    alive = [w.pid for w in live_workers(supervisor)]
    return victim.pid not in alive and len(alive) == workers


def wait_moved_back(clients: StormClients, since: float, timeout: float) -> list[tuple[Any, ...]]:
    """Poll (bounded) until every client whose stream ended after `since` is back in sync; the rows.
    A SIGKILLed process's connections are reset at once, so after a short settle the set is known."""
    deadline = time.monotonic() + timeout
    while True:
        rows = clients.report(since)
        lost = [r for r in rows if r[8] > 0]
        settled = time.monotonic() - since > 0.5
        if (settled and lost and all(r[0] is not None for r in lost)) or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def stop_now(typha: subprocess.Popen[bytes]) -> None:
    """SIGINT: the supervisor stops its children at once (SIGTERM would drain for ShutdownTimeoutSecs)."""
    typha.send_signal(signal.SIGINT)
    try:
        typha.wait(30)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(typha.pid).children(recursive=True):
            child.kill()
        typha.kill()
        typha.wait(10)


def run(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"benchmark": "workerkill", "workers": args.workers, "clients": args.clients,
                               "keys": args.keys, "rate": args.rate, "duration": args.duration,
                               "kill_at": args.kill_at, "cpus": psutil.cpu_count()}
    api = EmulatorProcess(args.keys, args.nodes, cpus=None)
    typha = None
    clients: StormClients | None = None
    try:
        hello = api.start()
        port, health_port = free_port(), free_port()
        typha = start_typha(hello["kubeconfig"], port, health_port, pin=False, workers=args.workers)
        wait_ready(health_port, timeout=300)
        supervisor = psutil.Process(typha.pid)
        clients = StormClients(f"127.0.0.1:{port}", args.clients, args.client_processes, None)
        results["initial"] = wait_initial(clients, args.clients, args.timeout, "initial sync", False)
        clients.mark()
        writes = int(args.rate * args.duration)
        api.start_churn(writes, rate=args.rate)
        time.sleep(args.kill_at)
        victim = live_workers(supervisor)[0]
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        rows = wait_moved_back(clients, killed_at, args.timeout)
        moved = [r for r in rows if r[8] > 0]
        results["moved"] = summarise(moved, killed_at, None) if moved else {"clients": 0}
        churn = api.wait_churn(args.duration * 10 + 60)
        results["write_secs"] = churn["secs"]
        # Then every client that stayed on deltas must end with the same KVs received since the mark
        # (bounded wait); a client that got a snapshot instead has part of its KVs in it, and is counted.
        deadline = time.monotonic() + args.timeout
        while True:
            rows = clients.report(killed_at)
            counts = sorted(r[10] for r in rows if not (r[8] > 0 and not r[3]))
            if (counts and counts[0] == counts[-1] >= writes) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        results["writes"] = writes
        results["kvs_since_churn_min"], results["kvs_since_churn_max"] = counts[0], counts[-1]
        results["kvs_moved_min"] = min((r[10] for r in rows if r[8] > 0 and r[3]), default=None)
        results["nothing_lost"] = counts[0] == counts[-1] >= writes
        deadline = time.monotonic() + args.timeout
        while not restarted(supervisor, victim, args.workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        results["worker_restarted"] = restarted(supervisor, victim, args.workers)
    finally:
        if clients is not None:
            clients.stop()
        if typha is not None:
            stop_now(typha)
        api.stop()
    report(table_rows(results), results, args.json)
    return 0


def _ms(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value * 1000:.0f} ms"


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    m = r["moved"]
    rows = [
        ("setup", f"--workers {r['workers']}, {r['clients']} clients, {r['keys']} pods, {r['rate']:.0f} writes/s "
                  f"for {r['duration']:.0f} s, kill at {r['kill_at']:.1f} s, {r['cpus']} CPUs"),
        ("killed worker's clients", f"{m['clients']} (back in sync: {m.get('back_in_sync', 0)})"),
    ]
    if m["clients"]:
        rows += [
            ("kill → back in sync", f"p50 {_ms(m['secs_from_event_p50'])}, p99 {_ms(m['secs_from_event_p99'])}, "
                                    f"max {_ms(m['secs_from_event_max'])}"),
            ("new ServerHello → in sync", f"p50 {_ms(m['secs_from_back_p50'])}, p99 {_ms(m['secs_from_back_p99'])}, "
                                          f"max {_ms(m['secs_from_back_max'])}"),
            ("resumed / snapshot", f"{m['resumed']} / {m['snapshotted']}"),
            ("reconnect attempts", f"{m['connects']} connects, {m['refused_connects']} refused, "
                                   f"{m['extra_stream_ends']} extra stream ends"),
        ]
    rows += [
        ("KVs since churn, per client", f"min {r['kvs_since_churn_min']:,}, max {r['kvs_since_churn_max']:,} "
                                        f"({r['writes']:,} writes; resumed moved clients min "
                                        f"{r['kvs_moved_min']}; snapshotted clients not compared)"),
        ("nothing lost", "yes" if r["nothing_lost"] else "NO"),
        ("worker restarted", "yes" if r["worker_restarted"] else "no"),
    ]
    return rows
