"""The whole system on real kernels: three nodes, typha, felix-client, confd-client and BIRD, pods in two pools.

Built with typha.testing.vcluster: node namespaces on a bridged underlay (10.203.0.0/24), the API
emulator over HTTP, `typha serve` as a child process on a Unix socket, and per node namespace a
`felix-client`, a `confd-client` and a `bird`. Every node has a pod in the no-encap pool (remote block
routes learned over BGP and programmed by BIRD: FelixConfiguration programClusterRoutes=Disabled) and
one in the VXLAN pool (routes, neighbours and FDB entries programmed by felix-client).

Checks, in order: all pods reach all pods; a NetworkPolicy isolating one pod gives exactly the
model's matrix (typha.testing.netpol_model); deleting it restores everything; `typha serve` is
stopped, the policy written while it is down, connectivity holds, and after a restart the agents
resync and enforce it; finally node-3's pods, block affinities and blocks are deleted (as Calico IPAM
releases them) and the other nodes lose their routes to those blocks, BGP-learned and VXLAN alike.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from typha.demo.cluster import bgp_configuration
from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.netpol_model import ModelPod, NetworkPolicyModel
from typha.testing.vcluster import VirtualCluster, VNode, VPod, bird_programs_cluster_routes, missing_tools
from typha.testing.wait import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())}"),
]

NS = "e2e"
PORT = 8080
NODES = [VNode(f"node-{i}", f"10.203.0.{10 + i}") for i in (1, 2, 3)]
NOENCAP_POOL, VXLAN_POOL = "10.68.0.0/16", "10.69.0.0/16"
STEP = 20.0  # seconds a step may take to converge (a hang guard, not a timing claim)


def noencap_block(i: int) -> str:
    return f"10.68.{i}.0/26"


def vxlan_block(i: int) -> str:
    return f"10.69.{i}.0/26"


def pods() -> list[VPod]:
    out = []
    for i, node in enumerate(NODES, 1):
        out.append(VPod(NS, f"a-{i}", node.name, f"10.68.{i}.10"))
        out.append(VPod(NS, f"b-{i}", node.name, f"10.69.{i}.10"))
    return out


def pod_object(pod: VPod) -> dict[str, Any]:
    return objects.pod(pod.namespace, pod.name, node=pod.node, ip=pod.ip,
                       labels={"name": pod.name, "pool": "noencap" if pod.name.startswith("a") else "vxlan"},
                       ports=[("http", PORT, "TCP")])


def cluster_objects(all_pods: list[VPod]) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [
        objects.namespace(NS), objects.service_account(NS), bgp_configuration(), bird_programs_cluster_routes(),
        objects.ip_pool("noencap", NOENCAP_POOL),
        objects.ip_pool("vxlan", VXLAN_POOL, vxlan="Always"),
    ]
    for i, node in enumerate(NODES, 1):
        # The VTEP address comes from the node's VXLAN block, as calico-node allocates it.
        objs.append(objects.node(node.name, ipv4=f"{node.ip}/{node.prefixlen}", vxlan_tunnel_addr=f"10.69.{i}.1",
                                 vxlan_mac=f"66:00:00:00:00:0{i}"))
        for cidr in (noencap_block(i), vxlan_block(i)):
            objs += [objects.block_affinity(cidr, node=node.name), objects.ipam_block(cidr, node=node.name)]
    objs += [pod_object(p) for p in all_pods]
    return objs


ISOLATE = {
    # b-1 (VXLAN pool, node-1) accepts TCP 8080 from a-2 (no-encap pool, node-2) only.
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "isolate-b-1", "namespace": NS},
    "spec": {"podSelector": {"matchLabels": {"name": "b-1"}}, "policyTypes": ["Ingress"],
             "ingress": [{"from": [{"podSelector": {"matchLabels": {"name": "a-2"}}}],
                          "ports": [{"protocol": "TCP", "port": PORT}]}]},
}


def expected(api: KubeAPIEmulator, vc: VirtualCluster) -> dict[tuple[str, str], bool]:
    live = [ModelPod.from_object(o) for o in api.objects() if o["kind"] == "Pod"]
    namespaces = {o["metadata"]["name"]: o["metadata"].get("labels") or {}
                  for o in api.objects() if o["kind"] == "Namespace"}
    policies = [o for o in api.objects() if o["kind"] == "NetworkPolicy"]
    model = NetworkPolicyModel([p for p in live if p.ref in vc.pods], namespaces, policies)
    return model.matrix("TCP", PORT)


def route_dst(line: str) -> str:
    return line.split()[1] if line.startswith(("blackhole", "unreachable")) else line.split()[0]


def routes_into(vc: VirtualCluster, nodes: tuple[str, ...], blocks: list[str]) -> list[str]:
    """Routes on `nodes` to anything inside `blocks`: the blocks themselves, and any /32 in them."""
    nets = [ipaddress.ip_network(b) for b in blocks]
    out = []
    for node in nodes:
        for line in vc.routes(node):
            dst = route_dst(line)
            if dst != "default" and any(ipaddress.ip_network(dst, strict=False).subnet_of(n) for n in nets):
                out.append(f"{node}: {line}")
    return out


def bird_routes(vc: VirtualCluster, node: str) -> list[str]:
    return [line for line in vc.routes(node) if " proto bird " in f" {line} "]


def test_virtual_cluster_end_to_end(tmp_path: Path) -> None:
    all_pods = pods()
    with KubeAPIEmulator(bookmark_interval=0.2).start() as api, VirtualCluster(tmp_path / "vc", prefix="e2") as vc:
        for node in NODES:
            vc.add_node(VNode(node.name, node.ip))
        for pod in all_pods:
            vc.add_pod(pod)
        vc.serve([PORT])
        for obj in cluster_objects(all_pods):
            api.create(obj)
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        vc.start_typha(kubeconfig)
        vc.start_agents()
        vc.wait_felix(vc.local_endpoints())

        # 1. Every pod reaches every other, across both pools; remote blocks routed as each pool says.
        full = dict.fromkeys(vc.all_pairs(), True)
        assert expected(api, vc) == full
        vc.converge(full, PORT, 60, "baseline: all pods reach all pods")  # includes BGP sessions coming up
        for i, node in enumerate(NODES, 1):
            for j in (1, 2, 3):
                if j != i:
                    assert "proto bird" in vc.route_to(node.name, noencap_block(j)), vc.diagnostics()
                    assert f"via 10.69.{j}.1 dev vxlan.calico" in vc.route_to(node.name, vxlan_block(j))
            # BGP carries blocks only: a pod's /32 has Felix's normal priority, which calico_aggr() does
            # not export (only an elevated one, below it, would be).
            learned = bird_routes(vc, node.name)
            assert sorted(route_dst(line) for line in learned) == sorted(
                noencap_block(j) for j in (1, 2, 3) if j != i), learned

        # 2. A policy isolates b-1: only a-2 gets in.
        api.create(ISOLATE)
        isolated = expected(api, vc)
        assert [pair for pair, ok in isolated.items() if not ok] == [
            (src, "e2e/b-1") for src in vc.pods if src not in ("e2e/b-1", "e2e/a-2")]
        vc.converge(isolated, PORT, STEP, "policy isolating b-1")

        # 3. Deleting it restores connectivity.
        api.delete("networking.k8s.io/v1", "NetworkPolicy", "isolate-b-1", NS)
        vc.converge(full, PORT, STEP, "policy deleted")

        # 4. typha restarts; the policy written while it is down still arrives, nothing else changes.
        vc.stop_typha()
        api.create(ISOLATE)
        vc.converge(full, PORT, STEP, "typha down: the dataplane stays as programmed")
        vc.start_typha(kubeconfig)
        # Only a resync from the new typha can bring the policy; confd-client's shows in step 5.
        vc.converge(isolated, PORT, STEP, "after typha's restart")
        api.delete("networking.k8s.io/v1", "NetworkPolicy", "isolate-b-1", NS)
        vc.converge(full, PORT, STEP, "policy deleted after the restart")

        # 5. node-3's pods go, then its blocks (as Calico IPAM releases an empty block): routes withdrawn.
        for pod in [p for p in all_pods if p.node == "node-3"]:
            api.delete("v1", "Pod", pod.name, NS)
            vc.remove_pod(pod.ref)
        for cidr in (noencap_block(3), vxlan_block(3)):
            api.delete(objects.CRD, "BlockAffinity", objects.block_affinity(cidr, node="node-3")["metadata"]["name"])
            api.delete(objects.CRD, "IPAMBlock", objects.ipam_block(cidr, node="node-3")["metadata"]["name"])
        gone = [noencap_block(3), vxlan_block(3)]
        wait_until(lambda: not routes_into(vc, ("node-1", "node-2", "node-3"), gone), timeout=STEP,
                   what=lambda: f"routes into node-3's blocks left: "
                                f"{routes_into(vc, ('node-1', 'node-2', 'node-3'), gone)}")
        vc.converge(dict.fromkeys(vc.all_pairs(), True), PORT, STEP, "the remaining pods still reach each other")
        vc.check_agents()
