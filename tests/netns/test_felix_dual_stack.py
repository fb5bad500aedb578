"""Dual stack on real kernels (issue #14 item 1): two nodes with IPv4 and IPv6 pools, pods with both
addresses, felix-client programming both families.

Shown here: the IPv6 routes (a /128 per local pod on its cali interface with Felix's metric, the
local block blackholed, the remote block via the other node's IPv6 address), IPv6 reachability
between pods on one node and across nodes (ping and TCP, the source address kept), the ip6tables
ruleset with Felix's chain names, and a NetworkPolicy enforced in both families.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from felix_harness import FelixCluster, Listener, Node, Pod, exchange_eventually, running_cluster, tcp_exchange

from typha.model.convert import veth_name
from typha.testing import objects
from typha.testing.wait import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "iptables-restore", "ip6tables-restore", "ipset")),
                       reason="needs iproute2, iptables, ip6tables and ipset"),
]

POOL4, POOL6 = "10.65.0.0/16", "fd65::/48"
BLOCKS = {"10.65.0.0/26": "node-1", "10.65.1.0/26": "node-2", "fd65::/122": "node-1", "fd65::1:0/122": "node-2"}
PORT = 8080


@pytest.fixture
def cluster(netns: Any, tmp_path: Path) -> Iterator[FelixCluster]:
    pools = [objects.ip_pool("v4", POOL4), objects.ip_pool("v6", POOL6, block_size=122)]
    pods = [
        Pod("demo", "a", "node-1", "10.65.0.2", {"app": "a"}, ip6="fd65::2"),
        Pod("demo", "b", "node-2", "10.65.1.2", {"app": "b"}, ip6="fd65::1:2"),
        Pod("demo", "c", "node-1", "10.65.0.3", {"app": "c"}, ip6="fd65::3"),
    ]
    nodes = [Node("node-1", 1, ipv6=True), Node("node-2", 2, ipv6=True)]
    with running_cluster(netns, tmp_path, nodes, pods, pools, BLOCKS) as c:
        yield c


def ping6(c: FelixCluster, src: Pod, dst: str) -> bool:
    out = c.ns_tool.run(src.netns, "ping", "-6", "-c", "1", "-W", "1", dst, check=False)
    return " 0% packet loss" in out


def test_ipv6_routes_reachability_and_policy(cluster: FelixCluster) -> None:
    c = cluster
    a, b, pod_c = c.pods["demo/a"], c.pods["demo/b"], c.pods["demo/c"]

    def routes_programmed() -> bool:
        text = c.run("node-1", "ip", "-6", "route", "show", "table", "main")
        # Felix's workload routes are protocol "boot", which `ip route` does not print.
        return (f"fd65::2 dev {veth_name('demo', 'a')} metric 1024" in text
                and "fd65::1:0/122 via fd20::2 dev eth0 proto 80" in text
                and "blackhole fd65::/122 dev lo proto 80" in text)

    wait_until(routes_programmed, timeout=15, what=lambda: c.run("node-1", "ip", "-6", "route") + c.agent_log("node-1"))

    filter6 = c.run("node-1", "ip6tables-save", "-t", "filter")
    assert "-A cali-wl-to-host -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT" in filter6
    # Felix's chain names in IPv6 too: the endpoint chains of both local pods.
    for pod in (a, pod_c):
        assert f"-A cali-tw-{pod.iface} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" in filter6
    assert "cali60masq-ipam-pools" not in c.run("node-1", "ip6tables-save", "-t", "nat")  # no natOutgoing pool

    # Same node and across nodes, over IPv6: ping, and TCP with the pod's own address as the source.
    wait_until(lambda: ping6(c, a, b.ip6) and ping6(c, a, pod_c.ip6), timeout=20,
               what=lambda: c.run("node-1", "ip6tables-save") + c.run("node-1", "ip", "-6", "neigh"))
    listeners = [Listener(c.ns_tool, p.netns, PORT, ipv6=True) for p in (b, pod_c)]
    listeners += [Listener(c.ns_tool, b.netns, PORT)]
    try:
        assert exchange_eventually(c.ns_tool, a.netns, b.ip6, PORT) == a.ip6
        assert exchange_eventually(c.ns_tool, a.netns, pod_c.ip6, PORT) == a.ip6
        assert exchange_eventually(c.ns_tool, a.netns, b.ip, PORT) == a.ip

        # A policy isolating b for ingress: both families are cut, and b's IPv6 set is programmed.
        assert c.api is not None
        c.api.create({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                      "metadata": {"name": "isolate-b", "namespace": "demo"},
                      "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"],
                               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "c"}}}]}]}})
        wait_until(lambda: tcp_exchange(c.ns_tool, a.netns, b.ip6, PORT) is None
                   and tcp_exchange(c.ns_tool, a.netns, b.ip, PORT) is None, timeout=15,
                   what=lambda: c.run("node-2", "ip6tables-save", "-t", "filter") + c.agent_log("node-2"))
        # c is allowed in: over IPv6 through the cali60 set of the selector, holding c's IPv6 address.
        assert exchange_eventually(c.ns_tool, pod_c.netns, b.ip6, PORT) == pod_c.ip6
        sets6 = [name for name in c.run("node-2", "ipset", "list", "-n").split() if name.startswith("cali60s:")]
        assert len(sets6) == 1
        assert "fd65::3" in c.run("node-2", "ipset", "list", sets6[0])
        assert "family inet6" in c.run("node-2", "ipset", "list", sets6[0])
    finally:
        for listener in listeners:
            listener.close()
