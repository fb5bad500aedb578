"""Agent convergence benchmark: policy write in the API → dataplane change on one node.

Part 1 (convergence): the API emulator (in this process, so the write time is read right at the
write) holds a generated cluster (`typha.demo.cluster`: IP pools, blocks, nodes, pods, policies)
with `--local-endpoints` pods on the measured node `node-000` and `--remote-endpoints` on the others;
`typha serve` runs as a child process on a Unix socket; one `felix-client` follows it for `node-000`.
As root it runs inside a network namespace this benchmark creates (a dummy `eth0` with the node's
address and one veth per local pod, named as the CNI names them) and programs real iptables, IP sets
and routes there; otherwise (or with `--dry-run DIR`) it writes its would-be output to a directory.
After the first apply (the agent applies only once in sync), `--changes` policy edits are made one
at a time, each moving a port of a policy that selects local pods (so the change is a rule in a
`cali-pi-` chain). The agent's `--apply-log` reports each completed apply with a monotonic time and
the resourceVersions of the policies it carried; latency = that time minus the monotonic time just
before the API write. The final rules are then checked in `iptables-save` (or `iptables.save`).

Part 2 (programming cost): for each `--scale` N, N policies each selecting a local pod are fed to a
`Calculator` in this process; the rendering (rules + IP set scripts) is timed, then, as root, the
first full programming of a fresh namespace (`ipset restore`, then `iptables-restore --noflush` of
raw, nat and filter, as the agent does), a re-apply of the same state (the resync: iptables-save of
each table, restoring only what differs) and a one-policy edit applied from memory as the agent does
between resyncs (no iptables-save; only the edited chain restored).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rich.progress import Progress

from bench.fanout import free_port, percentile
from bench.output import report
from felix_client import rules
from felix_client.calc import Calculator
from felix_client.dataplane.dataplane import TABLES, Dataplane
from typha.demo import cluster as gen
from typha.model.convert import FELIX_CONVERTERS, veth_name
from typha.model.resources import for_object
from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import stop_process, wait_ready

NODE = gen.node_name(0)
FIRST_PORT = 20000  # change k sets port FIRST_PORT + k: distinct per change, never a default port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local-endpoints", type=int, default=100, help="pods on the measured node (at most 100)")
    parser.add_argument("--remote-endpoints", type=int, default=1000,
                        help="pods on other nodes (rounded up to whole nodes of --local-endpoints pods)")
    parser.add_argument("--policies", type=int, default=50, help="NetworkPolicies in the cluster")
    parser.add_argument("--changes", type=int, default=100, help="policy edits to measure, one at a time")
    parser.add_argument("--debounce", type=float, default=0.05, help="the agent's --debounce (seconds)")
    parser.add_argument("--scale", default="100,1000",
                        help="policy counts for the programming-cost part, comma-separated ('' to skip)")
    parser.add_argument("--dry-run", type=Path, default=None, metavar="DIR",
                        help="run the agent with --dry-run DIR instead of in a namespace (default when not root)")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound on the whole run (seconds)")
    parser.add_argument("--change-timeout", type=float, default=30.0, help="bound on one change (seconds)")
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")


# --- the cluster -----------------------------------------------------------------------------------


def cluster_spec(local: int, remote: int, policies: int) -> gen.ClusterSpec:
    if not 1 <= local <= 100:
        raise SystemExit("--local-endpoints must be between 1 and 100")
    return gen.ClusterSpec(nodes=1 + math.ceil(remote / local), pods_per_node=local, policies=policies)


def changed_policy(k: int, spec: gen.ClusterSpec) -> dict[str, Any]:
    # Policy p always selects pod p (typha.demo.cluster), and pods 0..local-1 are node-000's: so
    # policies below `local` are active on the measured node and each edit changes its rules.
    p = k % min(spec.policies, spec.pods_per_node)
    return gen.policy(p, spec, port=FIRST_PORT + k)


def local_pods(spec: gen.ClusterSpec) -> list[tuple[str, str, dict[str, str]]]:
    """(namespace, name, labels) of node-000's pods, in the order the generator creates them."""
    c = gen.Cluster(spec)
    c.initial_objects()
    return [(p.namespace, p.name, p.labels) for p in c.pods.values() if p.node == 0]


# --- the node namespace ----------------------------------------------------------------------------


@contextmanager
def node_namespace(spec: gen.ClusterSpec) -> Iterator[str]:
    """A namespace playing node-000: its underlay address on eth0 and one veth per local pod (the
    CNI's side), so routes and per-interface sysctls are programmed as on a real node. The pods' ends
    of the veths (and eth0's peer) go to a second namespace: a node does not hold them, and a netlink
    link dump of twice the interfaces would inflate the agent's route-apply cost."""
    tag = uuid.uuid4().hex[:8]
    name, pods = f"bconv-{tag}", f"bconv-{tag}-pods"
    try:
        for ns in (name, pods):
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
        batch = ["link set lo up", f"link add eth0 type veth peer name uplink netns {pods}",
                 f"addr add {gen.node_ip(0)}/16 dev eth0", "link set eth0 up"]
        for i, (namespace, pod, _) in enumerate(local_pods(spec)):
            iface = veth_name(namespace, pod)
            batch += [f"link add {iface} type veth peer name p{i} netns {pods}", f"link set {iface} up"]
        proc = subprocess.run(["ip", "-n", name, "-batch", "-"], input="\n".join(batch) + "\n",
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"setting up namespace {name}: {proc.stderr.strip()}")
        yield name
    finally:
        for ns in (name, pods):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=30)


def can_use_netns() -> bool:
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("ip", "iptables-restore", "iptables-save", "ipset"))


# --- processes ---------------------------------------------------------------------------------------


def start_typha(kubeconfig: Path, socket_path: Path, health_port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        # One process: a worker hop would add latency that is not the agent's.
        sys.executable, "-m", "typha.cli", "serve", "--workers", "1", "--log-severity-screen", "WARNING",
        "--kubeconfig", str(kubeconfig), "--server-host", f"unix:{socket_path}", "--health-enabled", "true",
        "--health-host", "127.0.0.1", "--health-port", str(health_port), "--syncers", "felix",
    ]
    with open(log, "wb") as err:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)


def start_agent(socket_path: Path, apply_log: Path, debounce: float, netns: str | None, dry_run: Path | None,
                log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "felix_client.agent", "--typha", f"unix:{socket_path}", "--hostname", NODE,
        "--debounce", str(debounce), "--apply-log", str(apply_log), "--log-level", "warning",
        # The periodic resync is drift repair, not convergence: keep it out of the measured window.
        "--resync-interval", "3600",
    ]
    if dry_run is not None:
        command += ["--dry-run", str(dry_run)]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    with open(log, "wb") as err:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)


class ApplyLog:
    """Follows the agent's --apply-log: complete lines only, from where it was last read."""

    def __init__(self, path: Path, agent: subprocess.Popen[bytes], agent_log: Path) -> None:
        self.path = path
        self.agent = agent
        self.agent_log = agent_log
        self._offset = 0
        self._partial = b""

    def _read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [json.loads(line) for line in lines if line]

    def wait(self, accept: Any, timeout: float, what: str) -> dict[str, Any]:
        """The first apply line `accept` takes. The timestamps are in the lines, so the poll interval
        only delays noticing, never the measurement."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self._read():
                if accept(line):
                    return line
            if self.agent.poll() is not None:
                raise RuntimeError(f"felix-client exited ({self.agent.returncode}) waiting for {what}: "
                                   f"{self.agent_log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no apply with {what} within {timeout:.0f} s")
            time.sleep(0.002)


def dataplane_text(netns: str | None, dry_run: Path | None) -> str:
    if netns is not None:
        return subprocess.run(["ip", "netns", "exec", netns, "iptables-save"], check=True, capture_output=True,
                              text=True, timeout=60).stdout
    assert dry_run is not None
    return (dry_run / "iptables.save").read_text()


def check_final_rules(text: str, final_ports: dict[str, int]) -> list[str]:
    """Policies whose last port is not in a cali-pi- rule of the dumped rules."""
    lines = [line for line in text.splitlines() if line.startswith("-A cali-pi-")]
    return [name for name, port in final_ports.items()
            if not any(re.search(rf"--dports? {port}\b", line) for line in lines)]


# --- part 1 ------------------------------------------------------------------------------------------


def measure_convergence(args: argparse.Namespace, spec: gen.ClusterSpec, work: Path, netns: str | None,
                        dry_run: Path | None, deadline: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    socket_path, apply_log = work / "typha.sock", work / "apply.jsonl"
    with ExitStack() as stack:
        api = stack.enter_context(KubeAPIEmulator(bookmark_interval=1.0).start())
        started = time.perf_counter()
        for obj in gen.Cluster(spec).initial_objects():
            api.create(obj)
        results["populate_secs"] = time.perf_counter() - started
        api.write_kubeconfig(work / "kubeconfig")
        health_port = free_port()
        typha = start_typha(work / "kubeconfig", socket_path, health_port, work / "typha.log")
        stack.callback(stop_process, typha)
        wait_ready(health_port, timeout=max(1.0, deadline - time.monotonic()))
        agent_started = time.monotonic()
        agent = start_agent(socket_path, apply_log, args.debounce, netns, dry_run, work / "agent.log")
        stack.callback(stop_process, agent)
        log = ApplyLog(apply_log, agent, work / "agent.log")
        first = log.wait(lambda line: True, deadline - time.monotonic(), "the first (in-sync) apply")
        results["first_apply_secs"] = first["t"] - agent_started
        results["first_apply_duration_secs"] = first["secs"]
        results["active_policies"] = first["policies"]
        results["programmed_endpoints"] = first["endpoints"]

        latencies: list[float] = []
        apply_secs: list[float] = []
        final_ports: dict[str, int] = {}
        with Progress(transient=True) as progress:
            task = progress.add_task("policy changes", total=args.changes)
            for k in range(args.changes):
                obj = changed_policy(k, spec)
                timeout = min(args.change_timeout, deadline - time.monotonic())
                written_at = time.monotonic()
                revision = api.upsert(obj)["metadata"]["resourceVersion"]
                line = log.wait(lambda line, rv=revision: rv in line["changed"].values(), timeout,
                                f"resourceVersion {revision}")
                latencies.append(line["t"] - written_at)
                apply_secs.append(line["secs"])
                final_ports[f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"] = FIRST_PORT + k
                progress.advance(task)
        missing = check_final_rules(dataplane_text(netns, dry_run), final_ports)
        results.update(changes=len(latencies), latencies_secs=latencies, apply_secs=apply_secs,
                       final_state_ok=not missing, final_state_missing=missing)
        if stop_process(agent) != 0:
            raise RuntimeError(f"felix-client failed: {(work / 'agent.log').read_text()[-2000:]}")
    return results


# --- part 2 ------------------------------------------------------------------------------------------


def scale_policies(spec: gen.ClusterSpec, count: int) -> list[dict[str, Any]]:
    """`count` policies, policy i selecting local pod i % local (by app label in its namespace) and
    admitting one tier on its own port: every one is active on the node, each with its own chain."""
    pods = local_pods(spec)
    out = []
    for i in range(count):
        namespace, _, labels = pods[i % len(pods)]
        out.append(objects.network_policy(namespace, f"scale-{i:05d}", pod_selector={"app": labels["app"]},
                                          from_labels={"tier": gen.TIERS[i % len(gen.TIERS)]},
                                          port=1024 + i % 60000))
    return out


def calculator_for(spec: gen.ClusterSpec, policies: list[dict[str, Any]]) -> Calculator:
    # The same conversion typha applies, on the objects as the API server stores them.
    store = KubeAPIEmulator()
    calc = Calculator(NODE)
    for obj in [*gen.Cluster(spec).initial_objects(), *policies]:
        feed(calc, store, obj)
    return calc


def feed(calc: Calculator, store: KubeAPIEmulator, obj: dict[str, Any]) -> None:
    stored = store.create(obj)
    converter = FELIX_CONVERTERS.get(for_object(stored["apiVersion"], stored["kind"]).key)
    if converter is not None:
        calc.apply(converter(stored))


def measure_programming(spec: gen.ClusterSpec, count: int, netns_ok: bool) -> dict[str, Any]:
    # Only the scale policies: the cluster's own would blur the count.
    spec = dataclasses.replace(spec, policies=0)
    policies = scale_policies(spec, count)
    calc = calculator_for(spec, policies)
    started = time.perf_counter()
    state = calc.snapshot()
    snapshot_secs = time.perf_counter() - started
    started = time.perf_counter()
    tables = rules.render_tables(state)
    sets = rules.desired_ipsets(state)
    ipset_script = rules.render_ipset_restore(sets)
    render_secs = time.perf_counter() - started
    out: dict[str, Any] = {
        "policies": count, "active_policies": len(state.policies), "endpoints": len(state.endpoints),
        "rules": sum(len(r) for t in tables.values() for r in t.chains.values()), "ipsets": len(sets),
        "ipset_script_bytes": len(ipset_script), "snapshot_secs": snapshot_secs, "render_secs": render_secs,
    }
    if not netns_ok:
        return out
    with node_namespace(spec) as ns:
        dataplane = Dataplane(ns)
        for attempt in ("first", "again"):
            started = time.perf_counter()
            dataplane.write_ipsets(sets, dataplane.list_ipsets())
            ipsets_done = time.perf_counter()
            for name in TABLES:
                dataplane.apply_table(name, tables[name])
            out[f"{attempt}_ipset_secs"] = ipsets_done - started
            out[f"{attempt}_iptables_secs"] = time.perf_counter() - ipsets_done
        # One policy's port moves (a rule in its cali-pi- chain), as in part 1.
        edited = json.loads(json.dumps(policies[0]))
        edited["spec"]["ingress"][0]["ports"][0]["port"] = FIRST_PORT
        feed(calc, KubeAPIEmulator(), edited)
        edited_tables = rules.render_tables(calc.snapshot())
        written = dataplane.stats.chains_written
        started = time.perf_counter()
        for name in TABLES:
            dataplane.apply_table(name, edited_tables[name], resync=False)
        out["edit_iptables_secs"] = time.perf_counter() - started
        out["edit_chains_written"] = dataplane.stats.chains_written - written
        out["backend"] = dataplane.backend
    return out


# --- the command ---------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def run(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    spec = cluster_spec(args.local_endpoints, args.remote_endpoints, args.policies)
    netns_ok = can_use_netns()
    use_netns = netns_ok and args.dry_run is None
    results: dict[str, Any] = {
        "benchmark": "converge", "mode": "netns" if use_netns else "dry-run", "local_endpoints": spec.pods_per_node,
        "remote_endpoints": spec.pods - spec.pods_per_node, "nodes": spec.nodes, "policies": spec.policies,
        "debounce": args.debounce,
    }
    with tempfile.TemporaryDirectory(prefix="bench-converge-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        netns = stack.enter_context(node_namespace(spec)) if use_netns else None
        dry_run = None if use_netns else (args.dry_run or work / "dry-run")
        results["convergence"] = measure_convergence(args, spec, work, netns, dry_run, deadline)
    scales = [int(n) for n in args.scale.split(",") if n.strip()]
    results["programming"] = []
    for count in scales:
        if time.monotonic() > deadline:
            break
        results["programming"].append(measure_programming(spec, count, netns_ok))

    conv = results["convergence"]
    lat = conv["latencies_secs"]
    rows = [
        ("mode", f"{results['mode']} ({conv['programmed_endpoints']} local endpoints programmed, "
                 f"{results['remote_endpoints']} remote, {conv['active_policies']} of {spec.policies} policies "
                 f"active, debounce {_ms(args.debounce)} ms)"),
        ("first apply after agent start", f"{conv['first_apply_secs']:.2f} s (apply itself "
                                          f"{conv['first_apply_duration_secs']:.2f} s)"),
        ("policy write → dataplane", f"{len(lat)} changes: p50 {_ms(percentile(lat, 0.5))} / p99 "
                                     f"{_ms(percentile(lat, 0.99))} / max {_ms(max(lat, default=math.nan))} ms"),
        ("  of which the apply", f"median {_ms(statistics.median(conv['apply_secs']) if lat else math.nan)} ms"),
        ("final rules in iptables-save", "all present" if conv["final_state_ok"]
         else f"MISSING for {', '.join(conv['final_state_missing'])}"),
    ]
    for p in results["programming"]:
        text = (f"{p['active_policies']} active, {p['rules']} rules, {p['ipsets']} IP sets: render "
                f"{_ms(p['render_secs'])} ms")
        if "first_iptables_secs" in p:
            text += (f"; program first: ipset {_ms(p['first_ipset_secs'])} + iptables {_ms(p['first_iptables_secs'])}"
                     f" ms; again: {_ms(p['again_ipset_secs'])} + {_ms(p['again_iptables_secs'])} ms; one-policy "
                     f"edit: iptables {_ms(p['edit_iptables_secs'])} ms, chains written {p['edit_chains_written']}")
        rows.append((f"{p['policies']} policies", text))
    report(rows, results, args.json)
    return 0 if conv["final_state_ok"] else 1
