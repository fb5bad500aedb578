"""NAT outgoing (issue #5 acceptance; docs/calico/felix.md §2.3 nat table): traffic from a pod in a
natOutgoing pool to an address outside every pool leaves the node masqueraded; traffic between
pool addresses is not, and a pool without natOutgoing is never masqueraded.

An "outside" namespace hangs off node-1 (ext0, 203.0.113.1/24 ↔ outside 203.0.113.2/24) and runs a
listener that reports the source address it saw. It routes the pools back via node-1, so an
unmasqueraded packet is answered too: "not masqueraded" is an observation, not a timeout.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from felix_harness import FelixCluster, Listener, Node, Pod, exchange_eventually

from felix_client.names import MASQ_SET, POOLS_SET
from typha.testing import objects
from typha.testing.wait import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "iptables-restore", "ipset")),
                       reason="needs iproute2, iptables and ipset"),
]

NAT_POOL = "10.66.0.0/16"
PLAIN_POOL = "10.65.0.0/16"
BLOCKS = {"10.66.0.0/26": "node-1", "10.66.1.0/26": "node-2", "10.65.0.0/26": "node-1", "10.65.1.0/26": "node-2"}
NODE_EXT = "203.0.113.1"  # node-1's address towards the outside
OUTSIDE = "203.0.113.2"
PORT = 8080


@pytest.fixture
def cluster(netns: Any, tmp_path: Path) -> Iterator[tuple[FelixCluster, str]]:
    pools = [objects.ip_pool("nat", NAT_POOL, nat_outgoing=True), objects.ip_pool("plain", PLAIN_POOL)]
    pods = [
        Pod("demo", "nat-a", "node-1", "10.66.0.2"),
        Pod("demo", "nat-b", "node-2", "10.66.1.2"),
        Pod("demo", "plain-a", "node-1", "10.65.0.2"),
    ]
    c = FelixCluster(netns, tmp_path, [Node("node-1", 1), Node("node-2", 2)], pods, pools, BLOCKS)
    try:
        c.build_network()
        outside = netns.add("out")
        node1 = c.nodes["node-1"].netns
        netns.ip(node1, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", outside)
        netns.ip(node1, "addr", "add", f"{NODE_EXT}/24", "dev", "ext0")
        netns.ip(node1, "link", "set", "ext0", "up")
        netns.ip(outside, "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
        netns.ip(outside, "link", "set", "eth0", "up")
        for pool in (NAT_POOL, PLAIN_POOL):
            netns.ip(outside, "route", "add", pool, "via", NODE_EXT)
        c.start()
        yield c, outside
    finally:
        c.close()


def ipset_members(c: FelixCluster, node: str, name: str) -> list[str]:
    out = c.run(node, "ipset", "list", name)
    return sorted(out.split("Members:\n", 1)[1].split())


def test_nat_outgoing_masquerades_only_pool_to_outside(cluster: tuple[FelixCluster, str]) -> None:
    c, outside = cluster
    ns = c.ns_tool
    nat_a, nat_b, plain_a = c.pods["demo/nat-a"], c.pods["demo/nat-b"], c.pods["demo/plain-a"]

    nat_rules = [line for line in c.run("node-1", "iptables-save", "-t", "nat").splitlines()
                 if line.startswith("-A cali-nat-outgoing")]
    assert nat_rules == [f"-A cali-nat-outgoing -m set --match-set {MASQ_SET} src "
                         f"-m set ! --match-set {POOLS_SET} dst -j MASQUERADE --random-fully"]
    assert ipset_members(c, "node-1", MASQ_SET) == [NAT_POOL]
    assert ipset_members(c, "node-1", POOLS_SET) == sorted([NAT_POOL, PLAIN_POOL])

    listeners = [Listener(ns, outside, PORT)]
    listeners += [Listener(ns, p.netns, PORT) for p in (nat_b, plain_a)]
    try:
        # natOutgoing pool → outside: the listener sees node-1's address, not the pod's.
        assert exchange_eventually(ns, nat_a.netns, OUTSIDE, PORT) == NODE_EXT
        # A pool without natOutgoing keeps its source (the outside routes it back).
        assert exchange_eventually(ns, plain_a.netns, OUTSIDE, PORT) == plain_a.ip
        # Pod → pod stays unmasqueraded: to another node in the same pool, and to another pool.
        assert exchange_eventually(ns, nat_a.netns, nat_b.ip, PORT) == nat_a.ip
        assert exchange_eventually(ns, nat_a.netns, plain_a.ip, PORT) == nat_a.ip

        # Turning natOutgoing off in the API reaches the node: the rule and set empty, the pod's
        # own address leaves the node (a new connection, so no conntrack entry carries the NAT over).
        pool = c.api.get("crd.projectcalico.org/v1", "IPPool", "nat")  # type: ignore[union-attr]
        pool["spec"]["natOutgoing"] = False
        c.api.replace(pool)  # type: ignore[union-attr]
        wait_until(lambda: not ipset_members(c, "node-1", MASQ_SET), timeout=10,
                   what=lambda: c.run("node-1", "ipset", "list", MASQ_SET))
        assert "MASQUERADE" not in "\n".join(line for line in c.run("node-1", "iptables-save", "-t", "nat")
                                              .splitlines() if line.startswith("-A cali-nat-outgoing"))
        assert exchange_eventually(ns, nat_a.netns, OUTSIDE, PORT) == nat_a.ip
    finally:
        for listener in listeners:
            listener.close()
