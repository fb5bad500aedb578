"""Pods on two nodes exchange IPv6 traffic over an IPv6 VXLAN pool, through `vxlan-v6.calico`
programmed by felix-client (issue #14 item 1; Felix's IPv6 vxlan manager, felix/dataplane/linux/vxlan_mgr.go).

The IPv6 pool fd66::/48 has vxlanMode Always; the IPv4 pool beside it has no encapsulation, so
`vxlan.calico` is never created. The nodes' annotations carry the IPv6 underlay address, the IPv6
VXLAN tunnel address and the IPv6 VTEP MAC, as calico-node leaves them. Every address is inside the
namespaces the test creates.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from felix_harness import FelixCluster, Listener, Node, Pod, exchange_eventually, running_cluster

from typha.testing import objects
from typha.testing.wait import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "bridge", "iptables-restore", "ip6tables-restore",
                                                         "ipset")),
                       reason="needs iproute2, iptables, ip6tables and ipset"),
]

POOL4, POOL6 = "10.65.0.0/16", "fd66::/48"
BLOCKS = {"10.65.0.0/26": "node-1", "10.65.1.0/26": "node-2", "fd66::/122": "node-1", "fd66::1:0/122": "node-2"}
PORT = 8080
DEVICE = "vxlan-v6.calico"


@pytest.fixture
def cluster(netns: Any, tmp_path: Path) -> Iterator[FelixCluster]:
    pools = [objects.ip_pool("v4", POOL4), objects.ip_pool("v6", POOL6, block_size=122, vxlan="Always")]
    nodes = [
        Node("node-1", 1, ipv6=True, vxlan_ip6="fd66::1", vxlan_mac6="66:a6:00:00:00:01"),
        Node("node-2", 2, ipv6=True, vxlan_ip6="fd66::1:1", vxlan_mac6="66:a6:00:00:00:02"),
    ]
    pods = [Pod("demo", "a", "node-1", "10.65.0.2", ip6="fd66::2"),
            Pod("demo", "b", "node-2", "10.65.1.2", ip6="fd66::1:2")]
    with running_cluster(netns, tmp_path, nodes, pods, pools, BLOCKS) as c:
        yield c


def counters(c: FelixCluster, node: str) -> tuple[int, int]:
    (link,) = c.ip_json(node, "ip", "-j", "-s", "link", "show", DEVICE)
    return link["stats64"]["tx"]["packets"], link["stats64"]["rx"]["packets"]


def test_ipv6_pods_exchange_traffic_over_vxlan_v6(cluster: FelixCluster) -> None:
    c = cluster
    me, peer = c.nodes["node-1"], c.nodes["node-2"]

    def programmed() -> bool:
        routes = c.run("node-1", "ip", "-6", "route", "show")
        return f"fd66::1:0/122 via {peer.vxlan_ip6} dev {DEVICE}" in routes

    wait_until(programmed, timeout=15, what=lambda: c.run("node-1", "ip", "-6", "route") + c.agent_log("node-1"))

    # The device, on both nodes: Felix's VNI and port (shared with IPv4), the IPv6 underlay address as
    # local address, the IPv6 VTEP MAC, the tunnel address as a /128, the parent's MTU less 70.
    for node in (me, peer):
        (link,) = c.ip_json(node.name, "ip", "-j", "-d", "addr", "show", DEVICE)
        info = link["linkinfo"]["info_data"]
        assert (info["id"], info["port"], info["local6"], info["learning"]) == (4096, 4789, node.underlay_ip6, False)
        assert (link["address"], link["mtu"]) == (node.vxlan_mac6, 1500 - 70)
        assert "UP" in link["flags"]
        assert [(a["local"], a["prefixlen"]) for a in link["addr_info"]
                if a["family"] == "inet6" and a.get("scope") != "link"] == [(node.vxlan_ip6, 128)]
        assert "vxlan.calico" not in c.run(node.name, "ip", "link", "show")  # no IPv4 VXLAN pool

    # Routes, neighbour and FDB entries on node-1 (node-2 mirrors them).
    routes = {r["dst"]: r for r in c.ip_json("node-1", "ip", "-j", "-6", "route", "show")}
    remote = routes["fd66::1:0/122"]
    assert (remote["gateway"], remote["dev"], remote["protocol"]) == (peer.vxlan_ip6, DEVICE, "80")
    assert "onlink" in remote["flags"]
    assert routes["fd66::/122"]["type"] == "blackhole"
    for node, other in ((me, peer), (peer, me)):
        neigh = c.ip_json(node.name, "ip", "-j", "-6", "neigh", "show", "dev", DEVICE)
        assert [(n["dst"], n["lladdr"], n["state"]) for n in neigh] == [(other.vxlan_ip6, other.vxlan_mac6,
                                                                        ["PERMANENT"])]
        fdb = [f for f in c.ip_json(node.name, "bridge", "-j", "fdb", "show", "dev", DEVICE) if f.get("dst")]
        assert [(f["mac"], f["dst"]) for f in fdb] == [(other.vxlan_mac6, other.underlay_ip6)]

    # ip6tables: VXLAN untracked, and accepted only from the nodes in cali60all-vxlan-net.
    raw6 = c.run("node-1", "ip6tables-save", "-t", "raw")
    assert "-A cali-PREROUTING -p udp -m udp --dport 4789 -j NOTRACK" in raw6
    assert "-A cali-OUTPUT -p udp -m udp --dport 4789 -j NOTRACK" in raw6
    filter6 = c.run("node-1", "ip6tables-save", "-t", "filter")
    assert "Allow IPv6 VXLAN packets from allowed hosts" in filter6
    members = c.run("node-1", "ipset", "list", "cali60all-vxlan-net")
    assert "fd20::2" in members and "family inet6" in members
    assert "NOTRACK" not in c.run("node-1", "iptables-save", "-t", "raw")  # nothing for IPv4

    # Traffic, both directions, with the pod's own address as the source; the devices' counters show
    # it went through the tunnel.
    a, b = c.pods["demo/a"], c.pods["demo/b"]
    listeners = [Listener(c.ns_tool, p.netns, PORT, ipv6=True) for p in (a, b)]
    try:
        tx1, _ = counters(c, "node-1")
        _, rx2 = counters(c, "node-2")
        assert exchange_eventually(c.ns_tool, a.netns, b.ip6, PORT) == a.ip6
        assert exchange_eventually(c.ns_tool, b.netns, a.ip6, PORT) == b.ip6
        tx1_after, _ = counters(c, "node-1")
        _, rx2_after = counters(c, "node-2")
        assert tx1_after - tx1 >= 3  # at least SYN, ACK and FIN from the client side
        assert rx2_after - rx2 >= 3
    finally:
        for listener in listeners:
            listener.close()


def test_vxlan_v6_device_goes_when_the_pool_stops_using_vxlan(cluster: FelixCluster) -> None:
    """vxlanMode Never on the IPv6 pool: the device is deleted (Felix's cleanUpVXLANDevice), the peer's
    block is routed over the underlay instead (ProgramClusterRoutes Enabled), and traffic follows."""
    c = cluster
    wait_until(lambda: DEVICE in c.run("node-1", "ip", "link", "show"), timeout=15,
               what=lambda: c.agent_log("node-1"))
    assert c.api is not None
    c.api.patch(objects.CRD, "IPPool", "v6", {"spec": {"vxlanMode": "Never"}})

    def moved() -> bool:
        routes = c.run("node-1", "ip", "-6", "route", "show")
        return (DEVICE not in c.run("node-1", "ip", "link", "show")
                and "fd66::1:0/122 via fd20::2 dev eth0" in routes)

    wait_until(moved, timeout=15, what=lambda: c.run("node-1", "ip", "-6", "route") + c.agent_log("node-1"))
    assert "NOTRACK" not in c.run("node-1", "ip6tables-save", "-t", "raw")
    a, b = c.pods["demo/a"], c.pods["demo/b"]
    listener = Listener(c.ns_tool, b.netns, PORT, ipv6=True)
    try:
        assert exchange_eventually(c.ns_tool, a.netns, b.ip6, PORT) == a.ip6
    finally:
        listener.close()
