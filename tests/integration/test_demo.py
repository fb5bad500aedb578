"""`typha demo` end to end, small: emulator → `typha serve` → a felix-client and confd-client per node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from typha.demo.cluster import NOENCAP_POOL, VXLAN_POOL, Cluster, ClusterSpec, block_cidr
from typha.demo.workers import process_count

SMALL = ["--nodes", "3", "--pods-per-node", "3", "--policies", "2", "--duration", "2", "--rate", "10"]


def run_demo(out: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "typha.cli", "demo", *SMALL, "--out", str(out), *extra],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def test_small_demo_runs_to_completion_and_writes_every_nodes_files(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "typha demo: summary" in result.stdout
    assert "typha KVs per syncer" in result.stdout
    assert str(out) in result.stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is True
    assert summary["cluster"]["nodes"] == 3
    assert summary["cluster"]["pods_initial"] == 9
    assert summary["typha"]["kvs"]["felix"] > 0
    assert summary["typha"]["kvs"]["bgp"] > 0
    agents = summary["agents"]
    assert (agents["felix_written"], agents["confd_written"]) == (3, 3)
    assert agents["agent_processes"] == 1  # three nodes: one worker process is plenty
    churn = summary["churn"]
    assert churn["writes"]["policy"] >= 1
    assert churn["writes"]["create"] + churn["writes"]["delete"] + churn["writes"]["relabel"] > 0
    assert churn["updates_delivered"] > 0
    assert churn["latency_secs"]["samples"] > 0

    assert set(summary["nodes"]) == {"node-000", "node-001", "node-002"}
    policy_chains = source_sets = 0
    for i, (node, info) in enumerate(sorted(summary["nodes"].items())):
        iptables = Path(info["iptables"]).read_text()
        ipsets = Path(info["ipsets"]).read_text()
        routes = Path(info["routes"]).read_text()
        bird = Path(info["bird"]["bird.cfg"]).read_text()
        status = json.loads(Path(info["felix_status"]).read_text())
        assert status["in_sync"] is True
        assert status["hostname"] == node
        policy_chains += iptables.count(":cali-pi-")
        source_sets += ipsets.count("create cali40s:")
        assert "create cali40masq-ipam-pools" in ipsets, node
        # The remote nodes' VXLAN blocks are routed over vxlan.calico; their no-encap blocks via the underlay.
        for j in range(3):
            if j != i:
                assert f"{block_cidr(VXLAN_POOL, j)} via " in routes and "dev vxlan.calico" in routes, node
                assert f"{block_cidr(NOENCAP_POOL, j)} via 172.18.0.{10 + j} dev eth0" in routes, node
        # Full BGP mesh: a peer for each other node, none for itself.
        peers = {f"Mesh_172_18_0_{10 + j}" for j in range(3) if j != i}
        assert all(f"protocol bgp {peer} from bgp_template" in bird for peer in peers), (node, bird)
        assert f"Mesh_172_18_0_{10 + i} " not in bird
        assert (Path(info["bird"]["bird_aggr.cfg"])).exists()
    # Each policy selects pods on several nodes (churn may delete some, never all): active somewhere,
    # with the IP set of its source pods.
    assert policy_chains > 0
    assert source_sets > 0


def test_cluster_generation_is_consistent():
    cluster = Cluster(ClusterSpec(nodes=4, pods_per_node=5, policies=3))
    objs = cluster.initial_objects()
    pods = [o for o in objs if o["kind"] == "Pod"]
    assert len(pods) == 20
    ips = [p["status"]["podIP"] for p in pods]
    assert len(set(ips)) == len(ips)
    # Each pod's IP is inside a block affine to its own node.
    import ipaddress

    blocks = {o["spec"]["cidr"]: o["spec"]["affinity"] for o in objs if o["kind"] == "IPAMBlock"}
    for pod in pods:
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        owner = [aff for cidr, aff in blocks.items() if ip in ipaddress.ip_network(cidr)]
        assert owner == [f"host:{pod['spec']['nodeName']}"]
    assert {o["kind"] for o in objs} >= {"Namespace", "Node", "Pod", "IPPool", "IPAMBlock", "BlockAffinity",
                                         "BGPConfiguration", "NetworkPolicy"}


def test_agent_processes_are_spread_by_nodes_and_bounded_by_cpus(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert [process_count(n) for n in (1, 3, 8, 9, 50, 64, 1000)] == [1, 1, 1, 2, 7, 8, 8]
    assert process_count(50, requested=3) == 3
    assert process_count(2, requested=5) == 2  # never more processes than nodes


def test_bad_sizes_are_refused(tmp_path):
    result = subprocess.run([sys.executable, "-m", "typha.cli", "demo", "--nodes", "0", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--nodes" in result.stdout + result.stderr


def test_interrupt_stops_everything_and_still_summarises(tmp_path):
    out = tmp_path / "demo"
    process = subprocess.Popen(
        [sys.executable, "-m", "typha.cli", "demo", *SMALL[:-4], "--duration", "60", "--out", str(out),
         "--agent-processes", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        # Wait for churn to start: every agent has written its files by then.
        while time.monotonic() < deadline and not (out / "nodes" / "node-002" / "bird" / "bird.cfg").exists():
            time.sleep(0.1)
        assert (out / "nodes" / "node-002" / "bird" / "bird.cfg").exists()
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stdout + stderr
    assert "typha demo: summary" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True
    # typha serve was stopped too (it runs in its own session, so only the demo could stop it).
    typha_pids = [
        pid for pid in os.listdir("/proc") if pid.isdigit()
        and _cmdline(pid).count(str(out / "kubeconfig"))
    ]
    assert typha_pids == []
    # So were the agents' worker processes (their own sessions too).
    worker_pids = [pid for pid in os.listdir("/proc") if pid.isdigit() and str(out / "nodes") in _cmdline(pid)]
    assert worker_pids == []


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("argv", [["--help"]])
def test_help_lists_the_options(argv):
    result = subprocess.run([sys.executable, "-m", "typha.cli", "demo", *argv], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for flag in ("--nodes", "--pods-per-node", "--policies", "--duration", "--out"):
        assert flag in result.stdout
