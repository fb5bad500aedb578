"""Pods on two nodes reach each other over a VXLAN pool and over a no-encap pool, both programmed
by felix-client (issue #5 acceptance; docs/calico/felix.md §2.3 "Route variants by encapsulation").

Two pools: 10.70.0.0/16 with vxlanMode Always and 10.65.0.0/16 with no encapsulation, one block of
each per node, one pod per pool per node. The node annotations carry each node's VXLAN tunnel
address and VTEP MAC, as calico-node leaves them.

No-encap routes: in a BIRD-backed Calico install BIRD programs a no-encap pool's remote-block routes
(`proto bird`); Felix programs them itself (`proto 80 onlink`, via the peer's node IP) when
FelixConfiguration ProgramClusterRoutes is Enabled, the default here, so this test needs no BIRD.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from felix_harness import FelixCluster, Listener, Node, Pod, exchange_eventually, running_cluster

from typha.testing import objects
from typha.testing.wait import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "bridge", "iptables-restore", "ipset")),
                       reason="needs iproute2, iptables and ipset"),
]

VXLAN_POOL = "10.70.0.0/16"
PLAIN_POOL = "10.65.0.0/16"
NODES = [
    Node("node-1", 1, vxlan_ip="10.70.0.1", vxlan_mac="66:a5:00:00:00:01"),
    Node("node-2", 2, vxlan_ip="10.70.1.1", vxlan_mac="66:a5:00:00:00:02"),
]
BLOCKS = {"10.70.0.0/26": "node-1", "10.70.1.0/26": "node-2", "10.65.0.0/26": "node-1", "10.65.1.0/26": "node-2"}
PODS = [
    Pod("demo", "vx-a", "node-1", "10.70.0.2"),
    Pod("demo", "vx-b", "node-2", "10.70.1.2"),
    Pod("demo", "plain-a", "node-1", "10.65.0.2"),
    Pod("demo", "plain-b", "node-2", "10.65.1.2"),
]
PORT = 8080


@pytest.fixture
def cluster(netns: Any, tmp_path: Path) -> Iterator[FelixCluster]:
    pools = [objects.ip_pool("vxlan", VXLAN_POOL, vxlan="Always"), objects.ip_pool("plain", PLAIN_POOL)]
    nodes = [Node(n.name, n.index, n.vxlan_ip, n.vxlan_mac) for n in NODES]
    pods = [Pod(p.ns, p.name, p.node, p.ip) for p in PODS]
    with running_cluster(netns, tmp_path, nodes, pods, pools, BLOCKS) as c:
        yield c


def vxlan_counters(c: FelixCluster, node: str) -> tuple[int, int]:
    (link,) = c.ip_json(node, "ip", "-j", "-s", "link", "show", "vxlan.calico")
    stats = link["stats64"]
    return stats["tx"]["packets"], stats["rx"]["packets"]


def test_vxlan_and_no_encap_between_nodes(cluster: FelixCluster) -> None:
    c = cluster
    pods = c.pods
    me, peer = c.nodes["node-1"], c.nodes["node-2"]

    # Device: VNI 4096, port 4789, on the underlay address, with this node's VTEP MAC and tunnel /32.
    wait_until(lambda: all("vxlan.calico" in c.run(n, "ip", "link", "show") for n in c.nodes), timeout=10,
               what=lambda: "; ".join(c.agent_log(n) for n in c.nodes))
    for node in (me, peer):
        (link,) = c.ip_json(node.name, "ip", "-j", "-d", "link", "show", "vxlan.calico")
        info = link["linkinfo"]["info_data"]
        assert (info["id"], info["port"], info["local"]) == (4096, 4789, node.underlay_ip)
        assert link["address"] == node.vxlan_mac
        assert link["mtu"] == 1410
        assert "UP" in link["flags"]
        addrs = c.ip_json(node.name, "ip", "-j", "-4", "addr", "show", "dev", "vxlan.calico")
        assert [(a["local"], a["prefixlen"]) for a in addrs[0]["addr_info"]] == [(node.vxlan_ip, 32)]

    # Routes on node-1 (the mirror image holds on node-2).
    routes = {r["dst"]: r for r in c.ip_json("node-1", "ip", "-j", "-4", "route", "show")}
    assert routes["10.70.1.0/26"]["gateway"] == "10.70.1.1"
    assert routes["10.70.1.0/26"]["dev"] == "vxlan.calico"
    assert "onlink" in routes["10.70.1.0/26"]["flags"]
    assert routes["10.65.1.0/26"]["gateway"] == peer.underlay_ip
    assert routes["10.65.1.0/26"]["dev"] == "eth0"
    assert "onlink" in routes["10.65.1.0/26"]["flags"]
    assert routes["10.65.1.0/26"]["protocol"] == "80"
    for own in ("10.70.0.0/26", "10.65.0.0/26"):
        assert routes[own]["type"] == "blackhole"
    for pod in (pods["demo/vx-a"], pods["demo/plain-a"]):
        assert routes[pod.ip]["dev"] == pod.iface
        assert routes[pod.ip]["scope"] == "link"
    assert "10.70.1.2" not in routes
    assert "10.65.1.2" not in routes
    routes2 = {r["dst"]: r for r in c.ip_json("node-2", "ip", "-j", "-4", "route", "show")}
    assert (routes2["10.70.0.0/26"]["gateway"], routes2["10.70.0.0/26"]["dev"]) == ("10.70.0.1", "vxlan.calico")
    assert (routes2["10.65.0.0/26"]["gateway"], routes2["10.65.0.0/26"]["dev"]) == (me.underlay_ip, "eth0")

    # Neighbour and FDB entries: the peer's tunnel IP resolves to its VTEP MAC, which lives at its
    # underlay address. Nothing is learned (learning is off), so these are the only entries.
    for node, other in ((me, peer), (peer, me)):
        neigh = c.ip_json(node.name, "ip", "-j", "neigh", "show", "dev", "vxlan.calico")
        assert [(n["dst"], n["lladdr"], n["state"]) for n in neigh] == [(other.vxlan_ip, other.vxlan_mac,
                                                                        ["PERMANENT"])]
        fdb = [f for f in c.ip_json(node.name, "bridge", "-j", "fdb", "show", "dev", "vxlan.calico")
               if f.get("dst")]
        assert [(f["mac"], f["dst"]) for f in fdb] == [(other.vxlan_mac, other.underlay_ip)]

    # The kernel picks the tunnel for the VXLAN pool and the underlay for the other.
    (via_vxlan,) = c.ip_json("node-1", "ip", "-j", "route", "get", "10.70.1.2")
    assert (via_vxlan["dev"], via_vxlan["gateway"]) == ("vxlan.calico", "10.70.1.1")
    (via_eth0,) = c.ip_json("node-1", "ip", "-j", "route", "get", "10.65.1.2")
    assert (via_eth0["dev"], via_eth0["gateway"]) == ("eth0", peer.underlay_ip)

    listeners = [Listener(c.ns_tool, p.netns, PORT) for p in pods.values()]
    try:
        # VXLAN, both directions; the tunnel's counters show the packets went through it.
        tx1, _ = vxlan_counters(c, "node-1")
        _, rx2 = vxlan_counters(c, "node-2")
        a, b = pods["demo/vx-a"], pods["demo/vx-b"]
        assert exchange_eventually(c.ns_tool, a.netns, b.ip, PORT) == a.ip
        assert exchange_eventually(c.ns_tool, b.netns, a.ip, PORT) == b.ip
        tx1_after, _ = vxlan_counters(c, "node-1")
        _, rx2_after = vxlan_counters(c, "node-2")
        # A TCP exchange is at least SYN, ACK, FIN from the client side.
        assert tx1_after - tx1 >= 3
        assert rx2_after - rx2 >= 3

        # No encapsulation, both directions: the pod address arrives unchanged.
        a, b = pods["demo/plain-a"], pods["demo/plain-b"]
        assert exchange_eventually(c.ns_tool, a.netns, b.ip, PORT) == a.ip
        assert exchange_eventually(c.ns_tool, b.netns, a.ip, PORT) == b.ip
    finally:
        for listener in listeners:
            listener.close()


def test_vxlan_entries_follow_the_peer_and_are_repaired(cluster: FelixCluster) -> None:
    """The peer's VTEP MAC changes (as after a node rebuild): its own device, node-1's neighbour and
    FDB entries and the traffic follow; an FDB entry deleted behind the agent's back comes back at
    the next resync."""
    c = cluster
    node2 = c.api.get("v1", "Node", "node-2")  # type: ignore[union-attr]
    new_mac = "66:a5:00:00:00:22"
    node2["metadata"]["annotations"]["projectcalico.org/VXLANTunnelMACAddr"] = new_mac
    c.api.replace(node2)  # type: ignore[union-attr]

    def own_mac() -> str:
        return c.ip_json("node-2", "ip", "-j", "link", "show", "vxlan.calico")[0]["address"]

    wait_until(lambda: own_mac() == new_mac, timeout=10, what=own_mac)  # node-2's agent re-addresses its own device

    def fdb_macs() -> list[str]:
        return [f["mac"] for f in c.ip_json("node-1", "bridge", "-j", "fdb", "show", "dev", "vxlan.calico")
                if f.get("dst") == "10.201.0.2"]

    def neigh_mac() -> str | None:
        neigh = c.ip_json("node-1", "ip", "-j", "neigh", "show", "dev", "vxlan.calico", "to", "10.70.1.1")
        return neigh[0]["lladdr"] if neigh else None

    wait_until(lambda: neigh_mac() == new_mac and fdb_macs() == [new_mac], timeout=10,
               what=lambda: f"neigh {neigh_mac()}, fdb {fdb_macs()}")
    a, b = c.pods["demo/vx-a"], c.pods["demo/vx-b"]
    listener = Listener(c.ns_tool, b.netns, PORT)
    try:
        assert exchange_eventually(c.ns_tool, a.netns, b.ip, PORT) == a.ip
        c.run("node-1", "bridge", "fdb", "del", new_mac, "dev", "vxlan.calico", "dst", "10.201.0.2")
        assert new_mac not in fdb_macs()
        started = time.monotonic()
        wait_until(lambda: fdb_macs() == [new_mac], timeout=15, what=lambda: f"fdb {fdb_macs()}")
        print(f"FDB entry restored after {time.monotonic() - started:.1f}s")
        assert exchange_eventually(c.ns_tool, a.netns, b.ip, PORT) == a.ip
    finally:
        listener.close()
