"""`typha demo --netns`: the generated cluster on real kernels, ending with a connectivity matrix.

Needs root. The cluster is the same generated one as the simulated demo (typha.demo.cluster), small by
default (3 nodes, 3 pods each, 2 policies); typha.testing.vcluster builds a namespace per node on a bridged
underlay and one per pod, runs `typha serve`, and per node `felix-client`, `confd-client` and BIRD.
After the agents have programmed their nodes, a short churn (pods created, deleted and relabelled, a
policy edited) goes to the API and to the namespaces (created pods get a namespace, deleted ones lose
it, as CNI would). Then every pod probes every other on TCP 8080 until the result equals what the
NetworkPolicies say (typha.testing.netpol_model, which knows nothing of Calico) or a deadline passes,
and the matrix is printed with any mismatch marked.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from typha.demo.cluster import VXLAN_POOL, Cluster, ClusterSpec, node_ip, node_name
from typha.demo.runner import configure_logging
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.netpol_model import ModelPod, NetworkPolicyModel
from typha.testing.vcluster import VirtualCluster, VNode, VPod, bird_programs_cluster_routes, missing_tools

PORT = 8080  # every generated pod serves it, and the generated policies admit it
Matrix = dict[tuple[str, str], bool]


@dataclass
class NetnsOptions:
    nodes: int = 3
    pods_per_node: int = 3
    policies: int = 2
    duration: float = 3.0  # seconds of churn
    rate: float = 4.0  # API writes per second during churn
    seed: int = 1
    out: Path | None = None
    sync_timeout: float = 60.0
    converge_timeout: float = 30.0


def why_not(euid: int | None = None) -> str | None:
    """Why this machine cannot run the netns demo, or None."""
    if (os.geteuid() if euid is None else euid) != 0:
        return "--netns builds network namespaces and programs iptables in them: run it as root (or drop --netns)"
    missing = missing_tools()
    if missing:
        return f"--netns needs {', '.join(missing)} (iproute2, iptables, ipset, BIRD 1.6)"
    return None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def vpod_of(obj: dict[str, Any]) -> VPod:
    md = obj["metadata"]
    return VPod(md["namespace"], md["name"], obj["spec"]["nodeName"], obj["status"]["podIP"])


class NetnsDemo:
    def __init__(self, options: NetnsOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.spec = ClusterSpec(options.nodes, options.pods_per_node, options.policies, options.seed)
        if self.spec.nodes > 250:
            raise ValueError("--netns: at most 250 nodes")
        self.cluster = Cluster(self.spec)
        self.out = options.out or Path(tempfile.mkdtemp(prefix="typha-demo-netns-"))
        self.writes: dict[str, int] = {}
        self.timings: dict[str, float] = {}

    def run(self) -> int:
        """0: the measured matrix equals the policies' matrix; 1: it does not (or a step failed); 130: Ctrl-C."""
        self.out.mkdir(parents=True, exist_ok=True)
        configure_logging(self.out / "demo.log")
        # SIGTERM too unwinds through the with blocks below, so the namespaces do not outlive us.
        signal.signal(signal.SIGTERM, _interrupt)
        api = KubeAPIEmulator(bookmark_interval=0.2)
        try:
            with api.start("127.0.0.1", 0), VirtualCluster(self.out / "cluster", prefix="td") as vc:
                return self._scenario(api, vc)
        except (AssertionError, RuntimeError) as error:
            self.console.print(f"typha demo --netns failed: {error}", style="red", highlight=False)
            return 1
        except KeyboardInterrupt:  # the cluster is torn down by then (the with blocks)
            self.console.print("interrupted; namespaces and processes removed", style="yellow")
            return 130

    def _phase(self, text: str) -> None:
        self.console.print(f"[bold]·[/bold] {text}", highlight=False)

    def _scenario(self, api: KubeAPIEmulator, vc: VirtualCluster) -> int:
        opts, started = self.options, time.monotonic()
        self._phase(f"building {self.spec.nodes} node and {self.spec.pods} pod namespaces")
        for i in range(self.spec.nodes):
            vc.add_node(VNode(node_name(i), node_ip(i), 16))
        initial = [*self.cluster.initial_objects(), bird_programs_cluster_routes()]
        for obj in initial:
            if obj["kind"] == "Pod":
                vc.add_pod(vpod_of(obj))
        vc.serve([PORT])
        for obj in initial:
            api.create(obj)
        api.write_kubeconfig(self.out / "kubeconfig")
        self.timings["build"] = time.monotonic() - started

        self._phase("starting typha serve, and felix-client, confd-client and BIRD in every node")
        t = time.monotonic()
        vc.start_typha(self.out / "kubeconfig")
        vc.start_agents()
        vc.wait_felix(vc.local_endpoints(), opts.sync_timeout)
        self.timings["agents_programmed"] = time.monotonic() - t

        self._phase(f"churn: {opts.duration:.0f} s at {opts.rate:g} writes/s")
        t = time.monotonic()
        self._churn(api, vc)
        vc.wait_felix(vc.local_endpoints(), opts.sync_timeout)
        self.timings["churn"] = time.monotonic() - t

        self._phase(f"probing every pod pair on TCP {PORT} until it matches the policies")
        t = time.monotonic()
        want = self.expected(api, vc)
        got, rounds = self._converge(vc, want)
        self.timings["converge"] = time.monotonic() - t
        self.timings["total"] = time.monotonic() - started
        wrong = sorted(pair for pair, ok in want.items() if (got[pair] == "ok") != ok)
        labels = {f"{o['metadata']['namespace']}/{o['metadata']['name']}":
                  [v for k, v in sorted(o["metadata"].get("labels", {}).items()) if k in ("app", "tier")]
                  for o in api.objects() if o["kind"] == "Pod"}
        self.console.print(matrix_table(vc, want, got, labels))
        self.console.print(policy_table(api))
        self._write(api, vc, want, got, wrong, rounds)
        if wrong:
            self.console.print(f"{len(wrong)} of {len(want)} pairs differ from the policies:", style="red")
            for src, dst in wrong:
                self.console.print(f"  {src} → {dst}: policies say {'allow' if want[(src, dst)] else 'deny'}, "
                                   f"probe got {got[(src, dst)]}", highlight=False)
            return 1
        allowed = sum(want.values())
        self.console.print(f"[green]matrix matches the policies[/green]: {allowed} allowed, {len(want) - allowed} "
                           f"denied, {len(vc.pods)} pods on {len(vc.nodes)} nodes; probed {rounds} round(s); "
                           f"{self.timings['total']:.1f} s in all; files under {self.out}", highlight=False)
        return 0

    def _churn(self, api: KubeAPIEmulator, vc: VirtualCluster) -> None:
        opts = self.options
        rng = random.Random(opts.seed)
        start = time.monotonic()
        end = start + opts.duration
        edit_at = start + opts.duration / 2 if self.spec.policies else float("inf")
        n = 0
        while time.monotonic() < end:
            edit = time.monotonic() >= edit_at
            if edit:
                edit_at = float("inf")  # one policy edit per run
            what, arg = self.cluster.churn_op(rng, edit_policy=edit)
            if what == "create":
                vc.add_pod(vpod_of(arg))  # CNI before the API: the agent finds the veth it routes to
            self.cluster.apply(api, (what, arg))
            if what == "delete":
                vc.remove_pod(f"{arg[0]}/{arg[1]}")
            self.writes[what] = self.writes.get(what, 0) + 1
            n += 1
            time.sleep(max(0.0, min(start + n / opts.rate, end) - time.monotonic()))

    @staticmethod
    def expected(api: KubeAPIEmulator, vc: VirtualCluster) -> Matrix:
        stored = api.objects()
        pods = [ModelPod.from_object(o) for o in stored if o["kind"] == "Pod"]
        namespaces = {o["metadata"]["name"]: o["metadata"].get("labels") or {}
                      for o in stored if o["kind"] == "Namespace"}
        model = NetworkPolicyModel([p for p in pods if p.ref in vc.pods], namespaces,
                                   [o for o in stored if o["kind"] == "NetworkPolicy"])
        return model.matrix("TCP", PORT)

    def _converge(self, vc: VirtualCluster, want: Matrix) -> tuple[dict[tuple[str, str], str], int]:
        deadline = time.monotonic() + self.options.converge_timeout
        rounds = 0
        while True:
            rounds += 1
            got = vc.probe(list(want), PORT)
            # Denied means dropped: a refused or unreachable connection is a broken network, not a policy.
            if all((got[p] == "ok") if ok else (got[p] == "timeout") for p, ok in want.items()):
                return got, rounds
            if time.monotonic() > deadline:
                return got, rounds
            time.sleep(0.2)

    def _write(self, api: KubeAPIEmulator, vc: VirtualCluster, want: Matrix, got: dict[tuple[str, str], str],
               wrong: list[tuple[str, str]], rounds: int) -> None:
        # The final API objects go along, so a reader can recompute the expectation on its own.
        final = [o for o in api.objects() if o["kind"] in ("Pod", "Namespace", "NetworkPolicy")]
        result = {
            "ok": not wrong,
            "nodes": {name: {"netns": node.netns, "ip": node.ip, "dir": str(vc.node_dir(name))}
                      for name, node in vc.nodes.items()},
            "pods": {ref: {"node": p.node, "ip": p.ip, "netns": p.netns} for ref, p in vc.pods.items()},
            "port": PORT,
            "matrix": [{"src": s, "dst": d, "expected": "allow" if ok else "deny", "probe": got[(s, d)]}
                       for (s, d), ok in want.items()],
            "mismatches": [f"{s} > {d}" for s, d in wrong],
            "probe_rounds": rounds,
            "churn_writes": self.writes,
            "timings_secs": self.timings,
            "objects": final,
        }
        (self.out / "matrix.json").write_text(json.dumps(result, indent=1) + "\n")


def matrix_table(vc: VirtualCluster, want: Matrix, got: dict[tuple[str, str], str],
                 labels: dict[str, list[str]]) -> Table:
    refs = sorted(vc.pods)
    table = Table(title=f"connectivity on TCP {PORT} (row → column)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("source pod")
    table.add_column("labels")
    table.add_column("node · pool")
    for i in range(len(refs)):
        table.add_column(str(i), justify="center")
    for i, src in enumerate(refs):
        pod = vc.pods[src]
        pool = "vxlan" if ipaddress.ip_address(pod.ip) in ipaddress.ip_network(VXLAN_POOL) else "no-encap"
        cells = []
        for dst in refs:
            if dst == src:
                cells.append("[dim]-[/dim]")
                continue
            ok, outcome = want[(src, dst)], got[(src, dst)]
            if (outcome == "ok") == ok and (ok or outcome == "timeout"):
                cells.append("[green]✓[/green]" if ok else "[dim]✗[/dim]")
            else:
                cells.append(f"[bold red]{'✓' if outcome == 'ok' else '✗'}![/bold red]")
        table.add_row(str(i), src, ",".join(labels.get(src, [])), f"{pod.node} · {pool}", *cells)
    table.caption = "✓ connected  ✗ dropped, as the policies say;  red ! = differs from the policies"
    return table


def policy_table(api: KubeAPIEmulator) -> Table:
    table = Table(title="NetworkPolicies", title_justify="left")
    for column in ("policy", "selects", "admits from", "ports"):
        table.add_column(column)
    for obj in sorted((o for o in api.objects() if o["kind"] == "NetworkPolicy"),
                      key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"])):
        spec = obj["spec"]
        for rule in spec.get("ingress") or [{}]:
            peers = ", ".join(_labels((p.get("podSelector") or {}).get("matchLabels")) for p in rule.get("from") or [])
            ports = ", ".join(f"{p.get('protocol', 'TCP')}/{p.get('port', '*')}" for p in rule.get("ports") or [])
            selects = _labels((spec.get("podSelector") or {}).get("matchLabels"))
            table.add_row(f"{obj['metadata']['namespace']}/{obj['metadata']['name']}", selects, peers or "anyone",
                          ports or "all")
    return table


def _labels(labels: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "all pods"
