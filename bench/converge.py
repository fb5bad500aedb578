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

Part 2 (programming cost; `--scale-only` runs just this part): for each `--scale` N, N policies
each selecting a local pod are fed to a `Calculator` in this process, in a cluster of
`--scale-remote` remote endpoints (default `--remote-endpoints`); every tenth policy admits every
pod (an IP set of all of them), the next tenth one tier cluster-wide. The whole rendering (rules +
IP set scripts) is timed; then, as root and per iptables backend (`--backends`: `auto` is what
Felix's Auto detection picks in the node's namespace; `nft`, `legacy`), this thread joins a fresh
node namespace (as the agent runs inside its node's, so no tool pays an `ip netns exec`) and applies
as the agent's applier does (take the dirty marks, snapshot, `Dataplane.apply`): the first full
programming, a resync (iptables-save of each table, restoring only what differs), then `--edits`
one-policy edits (a port moves: one `cali-pi-` chain) and as many remote pod relabels (IP set
members move), each applied from memory as between the agent's resyncs. Each edit's cost is broken
down: calc (the incremental update), snapshot, render (what changed), ipset, iptables-restore,
links; the tidy-up of a make-before-break chain (nft; the agent runs it after the apply) is timed
apart. iptables-restore alone is timed too: a no-op (the process's fixed cost), a chain added, a
chain rewritten (rules deleted).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import math
import os
import random
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
from felix_client.dataplane import backend as iptables_backend
from felix_client.dataplane.dataplane import Dataplane
from typha.demo import cluster as gen
from typha.model.convert import FELIX_CONVERTERS, veth_name
from typha.model.resources import for_object
from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import stop_process, wait_ready

NODE = gen.node_name(0)
FIRST_PORT = 20000  # change k sets port FIRST_PORT + k: distinct per change, never a default port
CLONE_NEWNET = 0x40000000  # setns(2): join a network namespace


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local-endpoints", type=int, default=100, help="pods on the measured node (at most 100)")
    parser.add_argument("--remote-endpoints", type=int, default=1000,
                        help="pods on other nodes (rounded up to whole nodes of --local-endpoints pods)")
    parser.add_argument("--policies", type=int, default=50, help="NetworkPolicies in the cluster")
    parser.add_argument("--changes", type=int, default=100, help="policy edits to measure, one at a time")
    parser.add_argument("--debounce", type=float, default=0.05, help="the agent's --debounce (seconds)")
    parser.add_argument("--scale", default="100,1000",
                        help="policy counts for the programming-cost part, comma-separated ('' to skip)")
    parser.add_argument("--scale-remote", type=int, default=None, metavar="N",
                        help="remote endpoints for the programming-cost part (default: --remote-endpoints)")
    parser.add_argument("--scale-only", action="store_true", help="only the programming-cost part (no agent, no typha)")
    parser.add_argument("--edits", type=int, default=20,
                        help="one-policy edits (and remote pod relabels) measured per scale and backend")
    parser.add_argument("--backends", default="auto,nft,legacy",
                        help="iptables backends for the programming-cost part: auto (what Felix's Auto picks "
                        "in the node's namespace), nft, legacy (those missing on the host are left out)")
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
    admitting, on its own port: every tenth, every pod in the cluster (one IP set with all of them);
    the next tenth, one tier in every namespace (a set per tier, a third of the pods each); the rest,
    one tier of their own namespace. Every policy is active on the node, each with its own chain."""
    pods = local_pods(spec)
    out = []
    for i in range(count):
        namespace, _, labels = pods[i % len(pods)]
        tier = gen.TIERS[i % len(gen.TIERS)]
        policy = objects.network_policy(namespace, f"scale-{i:05d}", pod_selector={"app": labels["app"]},
                                        from_labels={"tier": tier}, port=1024 + i % 60000)
        peer: dict[str, Any] = {"namespaceSelector": {}}
        if i % 10 == 1:
            peer["podSelector"] = {"matchLabels": {"tier": tier}}
        if i % 10 in (0, 1):
            policy["spec"]["ingress"][0]["from"] = [peer]
        out.append(policy)
    return out


def to_kvs(store: KubeAPIEmulator, obj: dict[str, Any]) -> list[tuple[str, Any]]:
    """The felix syncer's KVs for `obj`, converted as typha converts it (on the object as stored)."""
    stored = store.upsert(obj)
    converter = FELIX_CONVERTERS.get(for_object(stored["apiVersion"], stored["kind"]).key)
    return [] if converter is None else list(converter(stored))


def calculator_for(spec: gen.ClusterSpec, policies: list[dict[str, Any]]) -> tuple[Calculator, KubeAPIEmulator]:
    store = KubeAPIEmulator()
    calc = Calculator(NODE)
    for obj in [*gen.Cluster(spec).initial_objects(), *policies]:
        calc.apply(to_kvs(store, obj))
    return calc, store


@contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run this thread (and what it starts) in `netns`, as the agent runs in its node's namespace: the
    dataplane's tools then start without an `ip netns exec` in front (2 ms each here)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/self/ns/net") as home, open(f"/run/netns/{netns}") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000 if samples else math.nan


def restore_costs(dataplane: Dataplane, runs: int) -> dict[str, float]:
    """Median seconds of three `iptables-restore --noflush` runs of the filter table, to split an
    edit's restore into the process's fixed cost and the kernel's: one that changes nothing, one that
    adds a chain with one rule (nothing deleted), one that rewrites that chain (its old rule deleted,
    as any in-place edit deletes rules). The probe chains are removed afterwards."""
    argv = [dataplane.restore, "--noflush", *(["--wait"] if dataplane.backend == "legacy" else [])]

    def timed(text: str) -> float:
        started = time.perf_counter()
        subprocess.run(argv, input=text, text=True, check=True, capture_output=True, timeout=60)
        return time.perf_counter() - started

    probes = [f"cali-zz-probe-{i}" for i in range(runs)]
    out = {
        "noop": statistics.median(timed("*filter\nCOMMIT\n") for _ in range(runs)),
        "add_chain": statistics.median(timed(f"*filter\n:{c} - [0:0]\n-A {c} -j RETURN\nCOMMIT\n") for c in probes),
        "rewrite_chain": statistics.median(timed(f"*filter\n:{c} - [0:0]\n-A {c} -j ACCEPT\nCOMMIT\n")
                                           for c in probes),
    }
    timed("*filter\n" + "".join(f":{c} - [0:0]\n" for c in probes) + "".join(f"-X {c}\n" for c in probes)
          + "COMMIT\n")
    return out


def agent_apply(calc: Calculator, dataplane: Dataplane, resync: bool) -> dict[str, float]:
    """One apply as the agent's applier makes it (felix_client.agent: take the dirty marks, snapshot,
    dataplane.apply), with the seconds of each phase."""
    started = time.perf_counter()
    dirty = calc.take_dirty()
    state = calc.snapshot()
    snapshot_done = time.perf_counter()
    dataplane.apply(state, resync=resync, routes_changed=dirty.routes)
    done = time.perf_counter()
    phases = {"snapshot": snapshot_done - started, **dataplane.phases, "apply": done - started}
    # The agent tidies make-before-break chains once the apply is done (and logged).
    dataplane.tidy()
    phases["tidy"] = time.perf_counter() - done
    return phases


def measure_edits(calc: Calculator, store: KubeAPIEmulator, dataplane: Dataplane,
                  edits: list[dict[str, Any]]) -> dict[str, Any]:
    """Each object written, then applied from memory (resync=False) as between the agent's resyncs."""
    samples: dict[str, list[float]] = {}
    contents = written = 0
    for obj in edits:
        kvs = to_kvs(store, obj)  # typha's conversion: not the agent's work
        chains_before, before = dataplane.stats.chains_written, dataplane.stats.contents_applies
        started = time.perf_counter()
        calc.apply(kvs)
        calc_secs = time.perf_counter() - started
        phases = agent_apply(calc, dataplane, resync=False)
        contents += dataplane.stats.contents_applies - before
        written += dataplane.stats.chains_written - chains_before
        for name, value in {"calc": calc_secs, **phases, "total": calc_secs + phases["apply"]}.items():
            samples.setdefault(name, []).append(value)
    return {"count": len(edits), "contents_only_applies": contents, "chains_written": written,
            "median_secs": {name: statistics.median(v) for name, v in samples.items()},
            "max_secs": {name: max(v) for name, v in samples.items()}, "samples_secs": samples}


def measure_programming(spec: gen.ClusterSpec, count: int, netns_ok: bool, backends: list[str],
                        edits: int) -> dict[str, Any]:
    # Only the scale policies: the cluster's own would blur the count.
    spec = dataclasses.replace(spec, policies=0)
    policies = scale_policies(spec, count)
    calc, store = calculator_for(spec, policies)
    calc.take_dirty()
    started = time.perf_counter()
    state = calc.snapshot()
    snapshot_secs = time.perf_counter() - started
    started = time.perf_counter()
    tables = rules.render_tables(state)
    sets = rules.desired_ipsets(state)
    ipset_script = rules.render_ipset_restore(sets)
    render_secs = time.perf_counter() - started
    out: dict[str, Any] = {
        "policies": count, "remote_endpoints": spec.pods - spec.pods_per_node, "active_policies": len(state.policies),
        "endpoints": len(state.endpoints), "rules": sum(len(r) for t in tables.values() for r in t.chains.values()),
        "ipsets": len(sets), "largest_ipset": max((len(s.members) for s in sets.values()), default=0),
        "ipset_members": sum(len(s.members) for s in sets.values()), "ipset_script_bytes": len(ipset_script),
        "snapshot_secs": snapshot_secs, "render_secs": render_secs, "backends": {},
    }
    if not netns_ok:
        return out
    rng = random.Random(16)
    remote = {p["metadata"]["name"]: p for p in gen.Cluster(spec).initial_objects()
              if p["kind"] == "Pod" and p["spec"]["nodeName"] != NODE}
    for backend in backends:
        with node_namespace(spec) as ns, inside(ns):
            chosen = iptables_backend.select(environ={}) if backend == "auto" else backend
            dataplane = Dataplane(backend=chosen, make_before_break=True)  # as the agent makes it
            result: dict[str, Any] = {"backend": chosen, "restore_binary": dataplane.restore}
            # A fresh calculation per backend: the agent's first apply follows its first snapshot.
            calc, store = calculator_for(spec, policies)
            for attempt, resync in (("first", True), ("again", True)):
                result[attempt] = agent_apply(calc, dataplane, resync)
            result["restore_secs"] = restore_costs(dataplane, 15)
            # One policy's port moves (a rule in its cali-pi- chain), as in part 1; each edit another policy.
            port_edits = []
            for k in range(edits):
                edited = json.loads(json.dumps(policies[(k * 7) % count]))
                edited["spec"]["ingress"][0]["ports"][0]["port"] = FIRST_PORT + k
                port_edits.append(edited)
            result["policy_edit"] = measure_edits(calc, store, dataplane, port_edits)
            # A remote pod changes tier: its address leaves one tier's sets and joins another's.
            relabels = []
            for _ in range(edits):
                pod = json.loads(json.dumps(remote[rng.choice(sorted(remote))]))
                labels = pod["metadata"]["labels"]
                labels["tier"] = rng.choice([t for t in gen.TIERS if t != labels["tier"]])
                remote[pod["metadata"]["name"]] = pod
                relabels.append(pod)
            result["remote_relabel"] = measure_edits(calc, store, dataplane, relabels)
            out["backends"][backend] = result
    return out


# --- the command ---------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _programming_rows(p: dict[str, Any]) -> list[tuple[str, str]]:
    title = f"{p['policies']} policies, {p['remote_endpoints']} remote"
    rows = [(title, f"{p['active_policies']} active, {p['rules']} rules, {p['ipsets']} IP sets "
                    f"({p['ipset_members']} members, largest {p['largest_ipset']}): whole render "
                    f"{_ms(p['render_secs'])} ms")]
    for name, b in p["backends"].items():
        label = f"  {name} ({b['backend']})" if name == "auto" else f"  {name}"
        rows.append((label, f"first apply {_ms(b['first']['apply'])} ms (iptables {_ms(b['first']['iptables'])}, "
                            f"ipset {_ms(b['first']['ipsets'])}); resync {_ms(b['again']['apply'])} ms; "
                            f"iptables-restore alone: no-op {_ms(b['restore_secs']['noop'])}, add a chain "
                            f"{_ms(b['restore_secs']['add_chain'])}, rewrite a chain "
                            f"{_ms(b['restore_secs']['rewrite_chain'])}"
                            " ms"))
        for kind in ("policy_edit", "remote_relabel"):
            e = b[kind]
            m = e["median_secs"]
            rows.append((f"    {kind.replace('_', ' ')} (median of {e['count']})",
                         f"total {_ms(m['total'])} ms = calc {_ms(m['calc'])} + snapshot {_ms(m['snapshot'])} + "
                         f"render {_ms(m.get('render', 0.0))} + ipset {_ms(m.get('ipsets', 0.0))} + "
                         f"iptables-restore {_ms(m.get('iptables', 0.0))} (+ links {_ms(m.get('links', 0.0))}); "
                         f"then tidy {_ms(m['tidy'])}; "
                         f"max total {_ms(e['max_secs']['total'])} ms; {e['contents_only_applies']} contents-only, "
                         f"{e['chains_written']} chains written"))
    return rows


def run(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    spec = cluster_spec(args.local_endpoints, args.remote_endpoints, args.policies)
    netns_ok = can_use_netns()
    use_netns = netns_ok and args.dry_run is None
    results: dict[str, Any] = {
        "benchmark": "converge", "mode": "netns" if use_netns else "dry-run", "local_endpoints": spec.pods_per_node,
        "remote_endpoints": spec.pods - spec.pods_per_node, "nodes": spec.nodes, "policies": spec.policies,
        "debounce": args.debounce, "commit": _commit(),
        # 2 shared cores: the load says how quiet the machine was (at the start; "loadavg_end" at the end).
        "loadavg": os.getloadavg(),
    }
    rows: list[tuple[str, str]] = []
    ok = True
    if not args.scale_only:
        with tempfile.TemporaryDirectory(prefix="bench-converge-") as tmp, ExitStack() as stack:
            work = Path(tmp)
            netns = stack.enter_context(node_namespace(spec)) if use_netns else None
            dry_run = None if use_netns else (args.dry_run or work / "dry-run")
            results["convergence"] = measure_convergence(args, spec, work, netns, dry_run, deadline)
        conv = results["convergence"]
        lat = conv["latencies_secs"]
        ok = conv["final_state_ok"]
        rows += [
            ("mode", f"{results['mode']} ({conv['programmed_endpoints']} local endpoints programmed, "
                     f"{results['remote_endpoints']} remote, {conv['active_policies']} of {spec.policies} policies "
                     f"active, debounce {_ms(args.debounce)} ms)"),
            ("first apply after agent start", f"{conv['first_apply_secs']:.2f} s (apply itself "
                                              f"{conv['first_apply_duration_secs']:.2f} s)"),
            ("policy write → dataplane", f"{len(lat)} changes: p50 {_ms(percentile(lat, 0.5))} / p99 "
                                         f"{_ms(percentile(lat, 0.99))} / max {_ms(max(lat, default=math.nan))} ms"),
            ("  of which the apply", f"median {_ms(statistics.median(conv['apply_secs']) if lat else math.nan)} ms"),
            ("final rules in iptables-save", "all present" if ok
             else f"MISSING for {', '.join(conv['final_state_missing'])}"),
        ]
    scales = [int(n) for n in args.scale.split(",") if n.strip()]
    scale_spec = cluster_spec(args.local_endpoints, args.remote_endpoints if args.scale_remote is None
                              else args.scale_remote, args.policies)
    backends = [b for b in args.backends.split(",") if b.strip() in ("auto", "nft", "legacy")
                and (b == "auto" or shutil.which(f"iptables-{b}-restore"))]
    results["programming"] = []
    for count in scales:
        if time.monotonic() > deadline:
            break
        p = measure_programming(scale_spec, count, netns_ok, backends, args.edits)
        results["programming"].append(p)
        rows += _programming_rows(p)
    results["loadavg_end"] = os.getloadavg()
    rows.append(("load average (1, 5, 15 min)", f"start {results['loadavg']}, end {results['loadavg_end']}"))
    report(rows, results, args.json)
    return 0 if ok else 1


def _commit() -> str | None:
    """The commit measured (with "-dirty" when the tree has changes), so a result names its code."""
    here = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")
