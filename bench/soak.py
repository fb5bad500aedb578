"""`python -m bench soak`: hours-in-minutes of steady churn plus periodic faults, watching for growth.

One `typha serve` process follows the Kubernetes API emulator (in this process, so the guarantee
checker records every commit); a `felix-client --dry-run` and a `confd-client` process and a set of
in-process Sync clients follow typha through a loopback proxy that can cut connections. Churn comes
from the demo's cluster generator at a steady rate, with as many pods deleted as created. Every
`--fault-interval` seconds one fault from a fixed cycle hits: watches dropped, history compacted
(410 and re-list), a burst of API 500s, a burst of 429s with Retry-After, every client connection
cut for a second. RSS and open file descriptors of typha and the agents are sampled throughout;
after a warm-up (typha's resume window filling up) the growth is reported as a least-squares slope
per process. At the end churn stops, the clients must converge, and the guarantee checker judges
every in-process client. Printed and written as JSON (and a plot with
`--plot`); nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.cutproxy import CutProxy
from bench.output import report
from typha.client import AsyncSyncClient, Backoff
from typha.demo.cluster import Cluster, ClusterSpec, node_name
from typha.model.kv import SyncStatus
from typha.source.datastore import convert_objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.guarantees import ClientRecord, GuaranteeChecker, pack
from typha.testing.procs import free_port, stop_process, wait_ready

FAULTS = ("watch-drop", "compaction", "api-500-burst", "api-429-burst", "connection-cut")
CONVERGE_SECS = 120.0
# typha keeps breadcrumbs this long: its memory grows until the window is full, so the growth fit
# starts after it (Typha's default of 300 s would leave a 10-minute run little to measure).
RESUME_WINDOW_SECS = 120.0


def parse_duration(text: str) -> float:
    """`600`, `600s`, `10m` or `1h` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=parse_duration, default=600.0, help="e.g. 600, 10m, 1h (default 10m)")
    parser.add_argument("--rate", type=float, default=20.0, help="API writes per second")
    parser.add_argument("--fault-interval", type=float, default=60.0, help="seconds between faults")
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds between RSS/fd samples")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds excluded from growth fits (default: a fifth of the run, at least "
                        "the resume window plus 60 s)")
    parser.add_argument("--clients", type=int, default=20, help="in-process Sync clients per syncer (judged)")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--pods-per-node", type=int, default=20)
    parser.add_argument("--policies", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")
    parser.add_argument("--plot", metavar="PNG", help="draw RSS and open fds over time here (matplotlib)")
    parser.add_argument("--tracemalloc", metavar="DIR",
                        help="run typha under tracemalloc and dump a snapshot into DIR every --tracemalloc-interval "
                        "seconds (compare them with tracemalloc.Snapshot.load(...).compare_to)")
    parser.add_argument("--tracemalloc-interval", type=float, default=60.0)


# -- process sampling -----------------------------------------------------------------------------


def sample_tree(pid: int) -> tuple[int, int]:
    """RSS (KB) and open fds of pid and its descendants (typha --workers N forks)."""
    rss = fds = 0
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for member in members:
        try:
            rss += member.memory_info().rss // 1024
            fds += member.num_fds()
        except psutil.Error:
            pass  # exited between the listing and the read
    return rss, fds


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) in value per minute; 0 for fewer than two points."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


# -- the rig --------------------------------------------------------------------------------------


@dataclass
class Watched:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (secs since start, RSS KB, fds)
    restarts: int = 0


def traced_typha() -> None:
    """`python -c 'from bench.soak import traced_typha; traced_typha()' DIR INTERVAL serve …`: typha under
    tracemalloc, dumping a snapshot (and a line of traced bytes vs RSS) into DIR every INTERVAL seconds,
    so that growth inside typha can be attributed by traceback (`python -m bench.soak` itself runs the
    emulator and clients, whose allocations must not be mixed in)."""
    import threading
    import tracemalloc

    from typha.cli import main

    out, interval, argv = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    tracemalloc.start(25)

    def dump() -> None:
        index = 0
        while True:
            time.sleep(interval)
            snapshot = tracemalloc.take_snapshot()
            snapshot.dump(str(out / f"typha-{index:03d}.snap"))
            traced, peak = tracemalloc.get_traced_memory()
            rss = psutil.Process().memory_info().rss
            with (out / "typha-traced.txt").open("a") as f:
                f.write(f"{index} {time.time():.0f} traced {traced} peak {peak} rss {rss}\n")
            index += 1

    threading.Thread(target=dump, name="tracemalloc-dump", daemon=True).start()
    sys.exit(main(argv))


def start_typha(kubeconfig: str, port: int, health_port: int, log: Path,
                tracemalloc_dir: str | None = None, tracemalloc_interval: float = 60.0) -> subprocess.Popen[bytes]:
    prefix = [sys.executable, "-m", "typha.cli"]
    if tracemalloc_dir:
        Path(tracemalloc_dir).mkdir(parents=True, exist_ok=True)
        prefix = [sys.executable, "-c", "from bench.soak import traced_typha; traced_typha()", tracemalloc_dir,
                  str(tracemalloc_interval)]
    command = [
        *prefix, "serve", "--workers", "1", "--log-severity-screen", "WARNING",
        "--kubeconfig", kubeconfig, "--server-host", "127.0.0.1", "--server-port", str(port),
        "--health-enabled", "true", "--health-host", "127.0.0.1", "--health-port", str(health_port),
        "--checksum-interval-secs", "5", "--resume-window-secs", str(RESUME_WINDOW_SECS),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def start_agents(address: str, node: str, workdir: Path) -> list[Watched]:
    felix_out, confd_out = workdir / "felix", workdir / "confd"
    felix_out.mkdir()
    confd_out.mkdir()
    env = {**os.environ, "NODENAME": node}
    agents = []
    for name, command in (
        ("felix-client", [sys.executable, "-m", "felix_client.agent", "--typha", address, "--hostname", node,
                          "--dry-run", str(felix_out), "--resync-interval", "30", "--log-level", "WARNING"]),
        ("confd-client", [sys.executable, "-m", "confd_client.agent", "--typha", address,
                          "--config-dir", str(confd_out)]),
    ):
        log = workdir / f"{name}.log"
        process = subprocess.Popen(command, env={**env, "CONFD_LOGLEVEL": "WARNING"}, stdout=subprocess.DEVNULL,
                                   stderr=log.open("wb"))
        agents.append(Watched(name, process, log))
    return agents


def inject(fault: str, api: KubeAPIEmulator, proxy: CutProxy) -> dict[str, Any]:
    if fault == "watch-drop":
        api.close_watches()
    elif fault == "compaction":
        api.compact()
        api.expire_watches()
    elif fault == "api-500-burst":
        api.fail_next(20, 500)
        api.close_watches()  # so the re-watches and re-lists meet the errors
    elif fault == "api-429-burst":
        api.fail_next(20, 429, retry_after=1)
        api.close_watches()
    elif fault == "connection-cut":
        proxy.start_cut(1.0)
        return proxy.wait_cut(30)
    return {}


async def converge(api: KubeAPIEmulator, records: list[ClientRecord], timeout: float) -> float | None:
    """Seconds until every record's mirror equals the conversion of the API's objects, or None."""
    started = time.monotonic()
    objects = await asyncio.to_thread(api.objects)
    want = {t: {k: pack(v) for k, v in convert_objects(t, objects).items()} for t in {r.syncer_type for r in records}}
    while time.monotonic() - started < timeout:
        if all(r.mirror == want[r.syncer_type] and r.statuses and r.statuses[-1][1] is SyncStatus.IN_SYNC
               for r in records):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    return None


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    cluster = Cluster(ClusterSpec(nodes=args.nodes, pods_per_node=args.pods_per_node, policies=args.policies,
                                  seed=args.seed))
    api = KubeAPIEmulator(bookmark_interval=5.0)
    for obj in cluster.initial_objects():
        api.create(obj)
    checker = GuaranteeChecker().attach(api)
    api.start()
    kubeconfig = workdir / "kubeconfig"
    api.write_kubeconfig(kubeconfig)

    port, health_port = free_port(), free_port()
    typha = Watched("typha", start_typha(str(kubeconfig), port, health_port, workdir / "typha.log",
                                             args.tracemalloc, args.tracemalloc_interval),
                    workdir / "typha.log")
    proxy = CutProxy(port)
    clients: list[tuple[AsyncSyncClient, ClientRecord]] = []
    agents: list[Watched] = []
    faults: list[dict[str, Any]] = []
    writes = 0
    started = time.monotonic()
    try:
        await asyncio.to_thread(wait_ready, health_port, None, 120)
        proxy_address = f"127.0.0.1:{await asyncio.to_thread(proxy.start)}"
        agents = start_agents(proxy_address, node_name(0), workdir)
        for syncer_type in ("felix", "bgp"):
            for i in range(args.clients):
                host = node_name(i % args.nodes)
                record = checker.client(f"{host}#{i}/{syncer_type}", syncer_type)
                client = AsyncSyncClient([proxy_address], syncer_type, hostname=host, callbacks=record,
                                         backoff=Backoff(initial=0.1, maximum=2.0))
                client.start()
                clients.append((client, record))
        watched = [typha, *agents]
        started = time.monotonic()
        next_sample = next_fault = 0.0
        next_fault = args.fault_interval
        fault_index = 0
        interval = 1.0 / args.rate if args.rate > 0 else None
        next_write = started
        last_progress = started
        while (now := time.monotonic()) - started < args.duration:
            elapsed = now - started
            if elapsed >= next_sample:
                for item in watched:
                    if item.process.poll() is None:
                        item.samples.append((round(elapsed, 2), *sample_tree(item.process.pid)))
                next_sample += args.sample_interval
            if elapsed >= next_fault:
                fault = FAULTS[fault_index % len(FAULTS)]
                fault_index += 1
                detail = await asyncio.to_thread(inject, fault, api, proxy)
                faults.append({"at": round(elapsed, 2), "fault": fault, **{k: v for k, v in detail.items()
                                                                           if isinstance(v, int | float)}})
                next_fault += args.fault_interval
            if interval is not None and now >= next_write:
                op = cluster.churn_op(rng, edit_policy=rng.random() < 0.05, steady=True)
                if op[0] != "noop":
                    Cluster.apply(api, op)
                    writes += 1
                next_write += interval
            if now - last_progress >= 30:
                last_progress = now
                rss = typha.samples[-1][1] // 1024 if typha.samples else 0
                print(f"[soak] {elapsed:5.0f}/{args.duration:.0f} s  writes {writes}  faults {len(faults)}  "
                      f"typha RSS {rss} MB", file=sys.stderr, flush=True)
            await asyncio.sleep(min(0.05, interval or 0.05))
        run_secs = time.monotonic() - started
        converged = await converge(api, [r for _, r in clients], CONVERGE_SECS)
        for client, record in clients:
            record.set_final(digest=client.core.digest, mirror=client.core.to_dict())
        verdict = checker.verdict(await asyncio.to_thread(api.objects))
        counters = [c.counters for c, _ in clients]
        alive = {item.name: item.process.poll() is None for item in watched}
    finally:
        await asyncio.gather(*(c.close() for c, _ in clients), return_exceptions=True)
        for item in [*agents, typha]:
            if item.process.poll() is None:
                item.process.terminate()  # all at once, so their shutdowns overlap
        for item in [*agents, typha]:
            stop_process(item.process)
        proxy.stop()
        api.stop()

    warmup = args.warmup if args.warmup is not None else max(RESUME_WINDOW_SECS + 60.0, args.duration / 5)
    processes = {}
    for item in watched:
        steady = [(t, rss, fds) for t, rss, fds in item.samples if t >= warmup]
        processes[item.name] = {
            "samples": item.samples,
            "alive_at_end": alive[item.name],
            "rss_kb_after_warmup_first": steady[0][1] if steady else None,
            "rss_kb_last": steady[-1][1] if steady else None,
            "rss_kb_max_after_warmup": max((s[1] for s in steady), default=None),
            "rss_slope_kb_per_min": round(slope_per_minute([(t, rss) for t, rss, _ in steady]), 1),
            "fds_after_warmup_first": steady[0][2] if steady else None,
            "fds_last": steady[-1][2] if steady else None,
            "fds_max_after_warmup": max((s[2] for s in steady), default=None),
        }
    return {
        "benchmark": "soak",
        "duration_secs": round(run_secs, 1),
        "rate": args.rate,
        "writes": writes,
        "fault_interval_secs": args.fault_interval,
        "faults": faults,
        "warmup_secs": warmup,
        "cluster": {"nodes": args.nodes, "pods": args.nodes * args.pods_per_node, "policies": args.policies,
                    "pods_at_end": len(cluster.pods)},
        "clients_judged": len(clients),
        "converged_after_secs": None if converged is None else round(converged, 2),
        "verdict_ok": verdict.ok,
        "verdict": str(verdict),
        "client_totals": {
            name: sum(getattr(c, name) for c in counters)
            for name in ("connections", "snapshots", "resumes", "digest_resyncs", "resyncs", "protocol_errors",
                         "checksum_matches", "checksum_mismatches")
        },
        "processes": processes,
    }


def plot(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_fds) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for name, data in results["processes"].items():
        samples = data["samples"]
        if not samples:
            continue
        minutes = [t / 60 for t, _, _ in samples]
        ax_rss.plot(minutes, [rss / 1024 for _, rss, _ in samples], label=name)
        ax_fds.plot(minutes, [fds for _, _, fds in samples], label=name)
    for fault in results["faults"]:
        for ax in (ax_rss, ax_fds):
            ax.axvline(fault["at"] / 60, color="grey", alpha=0.3, linewidth=0.8)
    for ax in (ax_rss, ax_fds):
        ax.axvspan(0, results["warmup_secs"] / 60, color="orange", alpha=0.08)
    ax_rss.set_ylabel("RSS (MB)")
    ax_fds.set_ylabel("open file descriptors")
    ax_fds.set_xlabel("minutes (grey lines: faults; shaded: warm-up)")
    ax_rss.legend(loc="upper left")
    verdict = "all guarantees held" if results["verdict_ok"] else "GUARANTEE VIOLATIONS"
    ax_rss.set_title(f"soak: {results['duration_secs'] / 60:.1f} min, {results['rate']:g} writes/s, "
                     f"{len(results['faults'])} faults, {results['clients_judged']} clients judged: {verdict}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("duration", f"{r['duration_secs']:.0f} s, {r['writes']} API writes at {r['rate']:g}/s"),
        ("faults", f"{len(r['faults'])} ({', '.join(sorted({f['fault'] for f in r['faults']})) or 'none'})"),
        ("clients judged", str(r["clients_judged"])),
        ("converged after churn", "no" if r["converged_after_secs"] is None else f"{r['converged_after_secs']} s"),
        ("guarantee checker", "ok" if r["verdict_ok"] else r["verdict"]),
        ("client totals", ", ".join(f"{k} {v}" for k, v in r["client_totals"].items())),
    ]
    for name, p in r["processes"].items():
        if p["rss_kb_last"] is None:
            rows.append((name, "no samples after warm-up"))
            continue
        first, last, peak = (p[k] / 1024 for k in ("rss_kb_after_warmup_first", "rss_kb_last",
                                                      "rss_kb_max_after_warmup"))
        rows.append((f"{name} RSS", f"{first:.1f} -> {last:.1f} MB (max {peak:.1f}, "
                     f"slope {p['rss_slope_kb_per_min']:+.1f} KB/min)"))
        exited = "" if p["alive_at_end"] else ", EXITED"
        rows.append((f"{name} fds", f"{p['fds_after_warmup_first']} -> {p['fds_last']} "
                     f"(max {p['fds_max_after_warmup']}){exited}"))
    return rows


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        results = asyncio.run(soak(args, Path(tmp)))
    report(table_rows(results), results, args.json)
    if args.plot:
        plot(results, args.plot)
        print(f"plot written to {args.plot}")
    return 0
