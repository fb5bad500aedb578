"""`typha demo`: the whole system on one machine, without root and without a cluster.

Layout:
- this process: the Kubernetes API emulator (its own thread and loop), the churn generator and the
  live display;
- a `typha serve` child process, reading the emulator through a kubeconfig, as in production;
- agent worker processes (`typha.demo.workers`: one per 8 nodes, at most four per CPU, or
  `--agent-processes`), running one felix-client (`--dry-run`) plus one confd-client per simulated
  node as trio tasks, every agent with its own Sync stream. Agents in their own interpreters, not
  sharing this one's GIL with the emulator and the churn, see the latency the system gives them.

Phases: populate the API → start typha and wait for readiness → start the agents and wait until every
one has written its files → churn for `duration` seconds → write a final marker pod and wait until
every felix-client has received and applied it (so the files reflect the final state) → stop
everything → summary.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from typha.demo.agents import LatencyLog, percentile
from typha.demo.cluster import Cluster, ClusterSpec, node_name
from typha.demo.workers import AgentWorker, ConfdView, FelixView, WorkerFailed, process_count
from typha.testing.procs import free_port
from typha.testing.wait import WaitTimeout, wait_until_trio

log = logging.getLogger("typha.demo")


@dataclass
class DemoOptions:
    nodes: int = 50
    pods_per_node: int = 20
    policies: int = 50
    duration: float = 20.0
    out: Path | None = None
    rate: float = 20.0  # API writes per second during churn
    policy_edit_every: float = 5.0
    seed: int = 1
    felix_debounce: float = 0.5
    confd_debounce: float = 0.2
    sync_timeout: float = 90.0
    settle_timeout: float = 30.0
    agent_processes: int = 0  # 0: one per 8 nodes, at most four per CPU (typha.demo.workers.process_count)


def _die_with_parent() -> None:
    """In the typha child: get SIGTERM if the demo dies without cleaning up (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TyphaProcess:
    """`typha serve` as a child process with health and metrics on loopback."""

    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        self.port, self.health_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log_path = log_path
        command = [
            sys.executable, "-m", "typha.cli", "serve", "--workers", "1", "--kubeconfig", str(kubeconfig),
            "--server-host", "127.0.0.1", "--server-port", str(self.port),
            "--health-enabled", "true", "--health-host", "127.0.0.1", "--health-port", str(self.health_port),
            "--prometheus-metrics-enabled", "true", "--prometheus-metrics-host", "127.0.0.1",
            "--prometheus-metrics-port", str(self.metrics_port),
            "--shutdown-timeout-secs", "2", "--log-severity-screen", "WARNING",
        ]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        # Its own session: a Ctrl-C in the terminal reaches only the demo, which then stops typha in order.
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                        start_new_session=True, preexec_fn=_die_with_parent)
        self.pid = self.process.pid
        self.ready_after: float | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _get(self, path: str, port: int) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        return self._get("/readiness", self.health_port)[0] == 200

    def metrics(self) -> dict[str, float]:
        """A few of typha's Prometheus metrics, by name{syncer}."""
        status, text = self._get("/metrics", self.metrics_port)
        out: dict[str, float] = {}
        if status != 200:
            return out
        wanted = ("typha_connections_active", "typha_cache_size", "typha_updates_total",
                  "typha_updates_skipped", "typha_snapshots_generated", "typha_breadcrumb_seq_number")
        for line in text.splitlines():
            if not line.startswith(wanted):
                continue
            name, _, value = line.rpartition(" ")
            name = name.replace('syncer="', "").replace('"}', "}")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
        return out

    def rss_bytes(self) -> int:
        try:
            import psutil

            return psutil.Process(self.pid).memory_info().rss
        except Exception:
            return 0

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # immediate stop (SIGTERM would drain clients first)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


@dataclass
class Progress:
    """What the display shows; recomputed by the monitor every tick."""

    phase: str = "starting"
    started: float = field(default_factory=time.monotonic)
    churn_started: float | None = None
    churn_ended: float | None = None
    connections: int = 0
    felix_kvs: int = 0
    bgp_kvs: int = 0
    typha_rss: int = 0
    felix_in_sync: int = 0
    confd_in_sync: int = 0
    files_written: int = 0  # agents (felix + confd) that have written their files
    updates: int = 0
    updates_per_sec: float = 0.0
    peak_updates_per_sec: float = 0.0
    writes: int = 0
    writes_per_sec: float = 0.0
    latency_p50: float | None = None
    latency_p99: float | None = None
    applies: int = 0


class Demo:
    def __init__(self, options: DemoOptions, display: Any) -> None:
        self.options = options
        self.spec = ClusterSpec(options.nodes, options.pods_per_node, options.policies, options.seed)
        self.cluster = Cluster(self.spec)
        self.display = display
        self.out = options.out or Path(tempfile.mkdtemp(prefix="typha-demo-"))
        self.progress = Progress()
        self.latency = LatencyLog()
        self.felix: list[FelixView] = []
        self.confd: list[ConfdView] = []
        self.workers: list[AgentWorker] = []
        self.worker_failure: str | None = None
        self.writes: dict[str, int] = {"create": 0, "delete": 0, "relabel": 0, "policy": 0}
        self.api: Any = None
        self.typha: TyphaProcess | None = None
        self.timings: dict[str, float] = {}
        self.final_metrics: dict[str, float] = {}
        self.interrupted = False
        self.failure: str | None = None
        self.initial_objects = 0

    # -- the run ------------------------------------------------------------------------------------

    async def run(self) -> int:
        """0: every agent converged on the final state; 1: something did not; 130: interrupted."""
        started = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stop_on_signal, nursery.cancel_scope)
                nursery.start_soon(self._monitor)
                try:
                    await self._scenario()
                except _Failed as failed:
                    self.failure = str(failed)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                self.progress.phase = "stopping"
                await self._stop_services()
        self.timings["total"] = time.monotonic() - started
        if self.interrupted:
            return 130
        return 1 if self.failure else 0

    async def _stop_on_signal(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.interrupted = True
                scope.cancel()
                return

    async def _scenario(self) -> None:
        from typha.kube.client import KubeClient  # noqa: F401 - fail early if the client is missing
        from typha.testing.apiserver.server import KubeAPIEmulator

        opts = self.options
        t0 = time.monotonic()
        self.progress.phase = "populating the API emulator"
        objs = self.cluster.initial_objects()
        self.initial_objects = len(objs)
        self.api = KubeAPIEmulator(history_limit=max(100_000, 4 * len(objs)))
        for obj in objs:
            self.api.create(obj)
        self.api.start("127.0.0.1", 0)
        kubeconfig = self.out / "kubeconfig"
        self.api.write_kubeconfig(kubeconfig)
        self.timings["populate"] = time.monotonic() - t0

        self.progress.phase = "starting typha serve"
        t1 = time.monotonic()
        self.typha = TyphaProcess(kubeconfig, self.out / "typha.log")
        async with trio.open_nursery() as agents:
            # The agents' processes start (and import) while typha does, as a node's agents are
            # already running when typha becomes ready; they connect once told to start.
            nodes_dir = self.out / "nodes"
            names = [node_name(i) for i in range(self.spec.nodes)]
            count = process_count(len(names), opts.agent_processes)
            for index in range(count):
                # Every count-th node: neighbours (and their work) spread evenly over the processes.
                self.workers.append(AgentWorker(index, names[index::count], self.typha.address, nodes_dir,
                                                self.out / "demo.log", opts.felix_debounce, opts.confd_debounce,
                                                self.latency))
            self.felix = [w.felix[n] for n in names for w in self.workers if n in w.felix]
            self.confd = [w.confd[n] for n in names for w in self.workers if n in w.confd]
            self.timings["agent_processes"] = count
            for worker in self.workers:
                agents.start_soon(self._run_worker, worker, agents.cancel_scope)

            with trio.move_on_after(opts.sync_timeout) as scope:
                while not await trio.to_thread.run_sync(self.typha.ready):
                    if self.typha.process.poll() is not None:
                        raise _Failed(f"typha serve exited with {self.typha.process.returncode}; "
                                      f"see {self.typha.log_path}")
                    await trio.sleep(0.1)
            if scope.cancelled_caught:
                raise _Failed(f"typha serve was not ready after {opts.sync_timeout:.0f} s; see {self.typha.log_path}")
            self.timings["typha_ready"] = time.monotonic() - t1

            self.progress.phase = "agents syncing"
            t2 = time.monotonic()
            for worker in self.workers:
                await worker.send({"start": True})
            try:
                await wait_until_trio(self._all_written, "every agent's files", timeout=opts.sync_timeout,
                                      interval=0.05)
            except WaitTimeout:
                raise _Failed(f"not every agent had written its files after {opts.sync_timeout:.0f} s") from None
            # From the agents' own clocks (monotonic, shared by every process), not from when we heard.
            last = max([f.first_apply_at or t2 for f in self.felix] + [c.first_render_at or t2 for c in self.confd])
            self.timings["agents_in_sync"] = last - t2

            self.progress.phase = "churn"
            await self._churn()

            self.progress.phase = "settling"
            t3 = time.monotonic()
            await self._settle()
            self.timings["settle"] = time.monotonic() - t3
            self.progress.phase = "done"
            if self.typha is not None:
                self.final_metrics = await trio.to_thread.run_sync(self.typha.metrics)
            # Stop the workers in order: each sends a last report (final counters) and exits.
            with trio.move_on_after(15):
                for worker in self.workers:
                    await worker.request_stop()
                for worker in self.workers:
                    await worker.done.wait()
            agents.cancel_scope.cancel()
        if self.worker_failure is not None:
            raise _Failed(self.worker_failure)

    async def _run_worker(self, worker: AgentWorker, scope: trio.CancelScope) -> None:
        try:
            await worker.run()
        except WorkerFailed as failed:
            log.error("%s; see %s", failed, self.out / "demo.log")
            self.worker_failure = f"{failed}; see {self.out / 'demo.log'}"
            scope.cancel()

    def _all_written(self) -> bool:
        return (all(f.first_apply_at is not None for f in self.felix)
                and all(c.first_render_at is not None for c in self.confd))

    async def _churn(self) -> None:
        opts = self.options
        rng = random.Random(opts.seed)
        self.progress.churn_started = time.monotonic()
        start = trio.current_time()  # trio's clock throughout: sleep_until takes its times
        end = start + opts.duration
        # At least one policy edit: in the middle of a short run.
        next_edit = start + min(opts.policy_edit_every, opts.duration / 2) if self.spec.policies else float("inf")
        n = 0
        while trio.current_time() < end:
            edit = trio.current_time() >= next_edit
            if edit:
                next_edit += opts.policy_edit_every
            op = self.cluster.churn_op(rng, edit_policy=edit)
            if op[0] != "noop":
                self.cluster.apply(self.api, op)
                self.writes[op[0]] += 1
            n += 1
            # On a fixed schedule of `rate` writes per second (a stall is caught up), and woken for an edit.
            due = start + n / opts.rate if opts.rate > 0 else end
            await trio.sleep_until(max(trio.current_time(), min(due, next_edit, end)))
        self.progress.churn_ended = time.monotonic()

    async def _settle(self) -> None:
        """Write a stamped marker pod last; the stream is ordered, so an agent that received it has
        received every earlier write. Then wait until each has applied after receiving it."""
        marker = str(time.time_ns())
        for worker in self.workers:
            await worker.send({"marker": marker})
        op = self.cluster.marker_op(marker)
        self.cluster.apply(self.api, op)
        self.writes[op[0]] += 1
        with trio.move_on_after(self.options.settle_timeout) as scope:
            while True:
                pending = [f.node for f in self.felix if not f.settled(marker)]
                if not pending and all(c.first_render_at is not None for c in self.confd):
                    break
                await trio.sleep(0.05)
        if scope.cancelled_caught:
            raise _Failed(f"{len(pending)} felix-clients did not converge on the final state: {pending[:5]}")

    async def _monitor(self) -> None:
        last_t, last_updates, last_writes = time.monotonic(), 0, 0
        tick = 0
        while True:
            await trio.sleep(0.25)
            tick += 1
            p = self.progress
            now = time.monotonic()
            for agent in self.felix:
                if agent.in_sync_at is None and agent.stats.in_sync:
                    agent.in_sync_at = now
            p.felix_in_sync = sum(1 for f in self.felix if f.stats.in_sync)
            p.confd_in_sync = sum(1 for c in self.confd if c.in_sync)
            p.files_written = (sum(1 for f in self.felix if f.first_apply_at is not None)
                               + sum(1 for c in self.confd if c.first_render_at is not None))
            p.updates = sum(f.stats.updates for f in self.felix) + sum(c.updates for c in self.confd)
            p.applies = sum(f.stats.applies for f in self.felix)
            p.writes = sum(self.writes.values())
            if now - last_t >= 1.0:
                p.updates_per_sec = (p.updates - last_updates) / (now - last_t)
                p.writes_per_sec = (p.writes - last_writes) / (now - last_t)
                if p.churn_started is not None:  # the initial snapshot is not a rate
                    p.peak_updates_per_sec = max(p.peak_updates_per_sec, p.updates_per_sec)
                last_t, last_updates, last_writes = now, p.updates, p.writes
            recent = self.latency.window(3.0)
            p.latency_p50, p.latency_p99 = percentile(recent, 0.5), percentile(recent, 0.99)
            if self.typha is not None and tick % 2 == 0:
                metrics = await trio.to_thread.run_sync(self.typha.metrics)
                p.connections = int(metrics.get("typha_connections_active", 0))
                p.felix_kvs = int(metrics.get("typha_cache_size{felix}", 0))
                p.bgp_kvs = int(metrics.get("typha_cache_size{bgp}", 0))
                p.typha_rss = await trio.to_thread.run_sync(self.typha.rss_bytes)
            self.display.update(self)

    async def _stop_services(self) -> None:
        if self.typha is not None:
            self.timings.setdefault("typha_exit", -1)
            code = await trio.to_thread.run_sync(self.typha.stop)
            self.timings["typha_exit"] = code if code is not None else -1
        if self.api is not None:
            await trio.to_thread.run_sync(self.api.stop)

    # -- results ------------------------------------------------------------------------------------

    def result(self) -> dict[str, Any]:
        """Everything the summary shows, as JSON (also written to OUT/summary.json)."""
        m = self.final_metrics
        samples = self.latency.samples
        felix_sync = [f.first_apply_at - f.started_at for f in self.felix if f.first_apply_at is not None]
        confd_sync = [c.first_render_at - c.started_at for c in self.confd if c.first_render_at is not None]
        # In sync (the stream's snapshot received) vs. files written: the rest is the agent's own work.
        felix_in_sync = [f.in_sync_at - f.started_at for f in self.felix if f.in_sync_at is not None]
        confd_in_sync = [c.in_sync_at - c.started_at for c in self.confd if c.in_sync_at is not None]
        nodes = {}
        for f, c in zip(self.felix, self.confd, strict=True):
            nodes[f.node] = {
                "iptables": str(f.out / "iptables.save"),
                "ipsets": str(f.out / "ipsets.save"),
                "routes": str(f.out / "routes.txt"),
                "felix_status": str(f.out / "status.json"),
                "bird": {name: str(c.out / name) for name in ("bird.cfg", "bird_ipam.cfg", "bird_aggr.cfg",
                                                              "bird6.cfg", "bird6_ipam.cfg", "bird6_aggr.cfg")},
                **_node_counts(f.out, c.out),
            }
        return {
            "ok": not self.failure and not self.interrupted,
            "failure": self.failure,
            "interrupted": self.interrupted,
            "out": str(self.out),
            "cluster": {
                "nodes": self.spec.nodes,
                "pods_initial": self.spec.pods,
                "pods_final": len(self.cluster.pods),
                "namespaces": self.spec.namespaces,
                "policies": self.spec.policies,
                "ip_pools": 2,
                "ipam_blocks": 2 * self.spec.nodes,
                "objects_initial": self.initial_objects,
            },
            "typha": {
                "kvs": {s: int(m.get(f"typha_cache_size{{{s}}}", 0)) for s in ("felix", "bgp")},
                "connections": int(m.get("typha_connections_active", 0)),
                "updates_ingested": {s: int(m.get(f"typha_updates_total{{{s}}}", 0)) for s in ("felix", "bgp")},
                "updates_skipped": {s: int(m.get(f"typha_updates_skipped{{{s}}}", 0)) for s in ("felix", "bgp")},
                "rss_bytes": self.progress.typha_rss,
                "log": str(self.out / "typha.log"),
            },
            "agents": {
                "felix_clients": len(self.felix),
                "confd_clients": len(self.confd),
                "felix_written": len(felix_sync),
                "confd_written": len(confd_sync),
                "felix_applies": sum(f.stats.applies for f in self.felix),
                "felix_applies_skipped": sum(f.skipped_applies for f in self.felix),
                "agent_processes": len(self.workers),
                "agent_processes_cpu_secs": sum(w.cpu_secs for w in self.workers),
                "confd_renders": sum(c.counters.renders for c in self.confd),
                "confd_files_written": sum(c.counters.writes for c in self.confd),
                "time_to_files_secs": {
                    "felix_median": statistics.median(felix_sync) if felix_sync else None,
                    "felix_max": max(felix_sync) if felix_sync else None,
                    "confd_median": statistics.median(confd_sync) if confd_sync else None,
                    "confd_max": max(confd_sync) if confd_sync else None,
                    "felix_in_sync_median": statistics.median(felix_in_sync) if felix_in_sync else None,
                    "confd_in_sync_median": statistics.median(confd_in_sync) if confd_in_sync else None,
                },
            },
            "churn": {
                "duration_secs": ((self.progress.churn_ended or 0) - (self.progress.churn_started or 0))
                if self.progress.churn_started else 0.0,
                "writes": dict(self.writes),
                "updates_delivered": self.progress.updates,
                "peak_updates_per_sec": self.progress.peak_updates_per_sec,
                "latency_secs": {
                    "samples": len(samples),
                    "p50": percentile(samples, 0.5),
                    "p90": percentile(samples, 0.9),
                    "p99": percentile(samples, 0.99),
                    "max": max(samples) if samples else None,
                },
            },
            "timings_secs": dict(self.timings),
            "nodes": nodes,
        }


class _Failed(Exception):
    pass


def _node_counts(felix_dir: Path, bird_dir: Path) -> dict[str, int]:
    def read(path: Path) -> str:
        try:
            return path.read_text()
        except OSError:
            return ""

    iptables = read(felix_dir / "iptables.save")
    ipsets = read(felix_dir / "ipsets.save")
    routes = read(felix_dir / "routes.txt")
    bird = read(bird_dir / "bird.cfg")
    return {
        "iptables_rules": sum(1 for line in iptables.splitlines() if line.startswith("-A ")),
        "policy_chains": sum(1 for line in iptables.splitlines() if line.startswith(":cali-pi-")),
        "ipset_count": sum(1 for line in ipsets.splitlines() if line.startswith("create ")),
        "route_count": sum(1 for line in routes.splitlines() if line and not line.startswith(("neigh ", "fdb "))),
        "bgp_peers": sum(1 for line in bird.splitlines() if line.startswith("protocol bgp ")),
    }


def configure_logging(path: Path) -> None:
    """Agents and libraries log to OUT/demo.log, not over the live display."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("typha.demo").setLevel(logging.INFO)


def write_summary(demo: Demo) -> dict[str, Any]:
    result = demo.result()
    (demo.out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


