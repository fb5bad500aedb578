"""confd-client: CPU per KV update, rendering only what changed vs. re-rendering all six files.

A cluster of N nodes in a full mesh (two IPv4 pools, an IPv6 pool, a block per node, a global
BGPPeer, the default BGPConfiguration) is loaded into a `ConfdAgent` writing into a temporary
directory (no BIRD: nothing to reload). Then each kind of update is applied `--reps` times, each
followed by what the daemon does after its debounce (render if anything changed, write the files
whose text differs), and the CPU time of the process is taken per update. Two agents run the same
updates in the same process: `incremental` (the agent as it is) and `full` (every update to a key
the agent uses re-renders all six files and compares each with the disk, as before). Printed per
kind and size; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.output import report
from confd_client.agent import ConfdAgent, Settings
from confd_client.render import render_all
from typha.client import UpdateBatch
from typha.model.keys import block_affinity_path, ip_pool_path, resource_path
from typha.model.kv import Update

ME = "node-0"


def node_value(i: int, labels: dict[str, str] | None = None, ip_offset: int = 0) -> dict[str, Any]:
    host = i + 10 + ip_offset
    return {"kind": "Node", "metadata": {"name": f"node-{i}", "labels": {"rack": str(i % 4), **(labels or {})}},
            "spec": {"bgp": {"ipv4Address": f"172.18.{host >> 8}.{host & 255}/16"}}}


def block_of(i: int) -> str:
    return f"10.244.{i >> 2}.{(i & 3) * 64}/26"


def initial(nodes: int) -> list[Update]:
    updates = [Update(resource_path("Node", f"node-{i}"), node_value(i), "1") for i in range(nodes)]
    updates += [Update(block_affinity_path(f"node-{i}", block_of(i)), {"state": "confirmed"}, "1")
                for i in range(nodes)]
    updates += [
        Update(ip_pool_path("10.244.0.0/16"), {"cidr": "10.244.0.0/16"}, "1"),
        Update(ip_pool_path("10.245.0.0/16"), {"cidr": "10.245.0.0/16", "vxlan_mode": "always"}, "1"),
        Update(ip_pool_path("fd00:10::/64"), {"cidr": "fd00:10::/64"}, "1"),
        Update(resource_path("BGPConfiguration", "default"),
               {"kind": "BGPConfiguration", "metadata": {"name": "default"}, "spec": {"asNumber": 64512}}, "1"),
        Update(resource_path("BGPPeer", "tor"), {"kind": "BGPPeer", "metadata": {"name": "tor"},
                                                 "spec": {"peerIP": "172.18.255.1", "asNumber": 65000}}, "1"),
    ]
    return updates


# kind -> (update number r -> the update); each kind toggles between two values, so every update changes its key.
def kinds(nodes: int) -> dict[str, Callable[[int], Update]]:
    other = max(1, nodes // 2) if nodes > 1 else 0

    def node_labels(r: int) -> Update:  # a Node re-sent with only a label moved (no BGP field)
        return Update(resource_path("Node", f"node-{other}"), node_value(other, {"seen": str(r)}), "1")

    def other_block(r: int) -> Update:  # another node's block affinity added and removed
        value = {"state": "confirmed"} if r % 2 == 0 else None
        return Update(block_affinity_path(f"node-{other}", "10.250.0.0/26"), value, "1")

    def own_block(r: int) -> Update:
        value = {"state": "confirmed"} if r % 2 == 0 else None
        return Update(block_affinity_path(ME, "10.250.1.0/26"), value, "1")

    def pool(r: int) -> Update:
        return Update(ip_pool_path("10.244.0.0/16"), {"cidr": "10.244.0.0/16", "disableBGPExport": r % 2 == 0}, "1")

    def node_ip(r: int) -> Update:  # another node's BGP address moves: the mesh changes
        return Update(resource_path("Node", f"node-{other}"), node_value(other, ip_offset=1000 * (r % 2)), "1")

    def peer(r: int) -> Update:
        spec = {"peerIP": "172.18.255.1", "asNumber": 65000 + r % 2}
        return Update(resource_path("BGPPeer", "tor"), {"kind": "BGPPeer", "metadata": {"name": "tor"},
                                                         "spec": spec}, "1")

    return {"node labels": node_labels, "other's block": other_block, "own block": own_block, "pool": pool,
            "node address": node_ip, "bgp peer": peer}


class FullRenderAgent(ConfdAgent):
    """The agent as it was: any update to a used key renders all six files and reads each back."""

    def handle(self, event: Any) -> None:
        if isinstance(event, UpdateBatch):
            used = False
            for update in event.updates:
                used |= self.store.apply(update.key, update.value)
            if used:
                self.store.note(("all",))

    def render(self) -> dict[str, str]:
        self.counters.renders += 1
        self.store.take_changes()
        self.counters.files_rendered += 6
        return render_all(self.store, self.settings.nodename, self.settings.render_env)

    def apply(self, files: Any) -> list[str]:
        self._on_disk.clear()
        return super().apply(files)


def make(cls: type[ConfdAgent], directory: Path, nodes: int) -> ConfdAgent:
    agent = cls(Settings(nodename=ME, endpoints=["127.0.0.1:1"], config_dir=directory))
    agent.handle(UpdateBatch(initial(nodes)))
    agent.in_sync = True
    agent.apply(agent.render())
    return agent


def step(agent: ConfdAgent, update: Update) -> None:
    """One update as the daemon handles it: apply, then (after the debounce) render and write if it changed."""
    agent.handle(UpdateBatch([update]))
    if agent.store.changes:
        agent.apply(agent.render())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, nargs="+", default=[50, 500], help="cluster sizes (nodes in the mesh)")
    parser.add_argument("--reps", type=int, default=100, help="updates timed per kind, size and mode")
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")


def run(args: argparse.Namespace) -> int:
    rows: list[tuple[str, str]] = []
    results: dict[str, Any] = {"benchmark": "confd", "reps": args.reps, "sizes": []}
    for nodes in args.nodes:
        size: dict[str, Any] = {"nodes": nodes, "kinds": {}}
        with tempfile.TemporaryDirectory(prefix="bench-confd-") as tmp:
            agents = {mode: make(cls, Path(tmp) / mode, nodes)
                      for mode, cls in (("full", FullRenderAgent), ("incremental", ConfdAgent))}
            for kind, make_update in kinds(nodes).items():
                per_mode: dict[str, Any] = {}
                for mode, agent in agents.items():
                    before = agent.counters.files_rendered, agent.counters.writes
                    cpu: list[float] = []
                    for r in range(args.reps):
                        started = time.process_time()
                        step(agent, make_update(r))
                        cpu.append(time.process_time() - started)
                    per_mode[mode] = {
                        "cpu_us_mean": statistics.fmean(cpu) * 1e6,
                        "cpu_us_median": statistics.median(cpu) * 1e6,
                        "files_rendered_per_update": (agent.counters.files_rendered - before[0]) / args.reps,
                        "files_written_per_update": (agent.counters.writes - before[1]) / args.reps,
                    }
                full, inc = per_mode["full"], per_mode["incremental"]
                per_mode["ratio_full_to_incremental"] = full["cpu_us_mean"] / max(inc["cpu_us_mean"], 1e-3)
                size["kinds"][kind] = per_mode
                rows.append((
                    f"{nodes} nodes, {kind}",
                    f"full {full['cpu_us_mean']:9.0f} µs ({full['files_rendered_per_update']:.1f} files rendered) · "
                    f"incremental {inc['cpu_us_mean']:9.0f} µs ({inc['files_rendered_per_update']:.1f} rendered, "
                    f"{inc['files_written_per_update']:.1f} written) · "
                    f"full/incremental {per_mode['ratio_full_to_incremental']:.1f}",
                ))
        results["sizes"].append(size)
    report(rows, results, args.json)
    return 0
