"""Host endpoints against the kernel (issue 14 acceptance; docs/calico/felix.md §2): a HostEndpoint
for a node's eth0 makes the node drop what its policy does not allow, except on the failsafe ports,
and taking the policy or the endpoint away restores access.

A "node" namespace (eth0 10.78.0.1/24) and a "peer" namespace (eth0 10.78.0.2/24) joined by a veth.
The node runs listeners on a failsafe port (tcp:22, Felix's FailsafeInboundHostPorts default) and on
two ordinary ports; felix_client's calculation and dataplane program the node from the KVs typha's
converters make of a v3 HostEndpoint and GlobalNetworkPolicy. Probes connect from the peer; a
blocked port is one whose SYN is dropped (the probe's connect times out).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from felix_harness import Listener, exchange_eventually, tcp_exchange

from felix_client.calc import Calculator
from felix_client.dataplane import Dataplane
from typha.model.convert import calico

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "iptables-restore", "ipset")),
                       reason="needs iproute2, iptables and ipset"),
]

NODE = "node-1"
NODE_IP = "10.78.0.1"
PEER_IP = "10.78.0.2"
FAILSAFE_PORT = 22
ALLOWED_PORT = 8080
OTHER_PORT = 9090


def host_endpoint(**spec: Any) -> list[tuple[str, Any]]:
    obj = {"metadata": {"name": "node-1-eth0", "labels": {"host-endpoint": "node-1"}},
           "spec": {"node": NODE, "interfaceName": "eth0", "expectedIPs": [NODE_IP], **spec}}
    return calico.host_endpoint(obj, v3=True)


def policy(ports: list[int]) -> list[tuple[str, Any]]:
    obj = {"metadata": {"name": "node-ingress"},
           "spec": {"selector": "has(host-endpoint)", "types": ["Ingress"],
                    "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ports}}]}}
    return calico.global_network_policy(obj, v3=True)


def deleted(kvs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(key, None) for key, _ in kvs]


@pytest.fixture
def node(netns: Any) -> Iterator[tuple[Any, str, str]]:
    node_ns, peer_ns = netns.add("hepnode"), netns.add("heppeer")
    netns.ip(node_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer_ns)
    for ns, address in ((node_ns, NODE_IP), (peer_ns, PEER_IP)):
        netns.ip(ns, "addr", "add", f"{address}/24", "dev", "eth0")
        netns.ip(ns, "link", "set", "eth0", "up")
    listeners = [Listener(netns, node_ns, port) for port in (FAILSAFE_PORT, ALLOWED_PORT, OTHER_PORT)]
    try:
        yield netns, node_ns, peer_ns
    finally:
        for listener in listeners:
            listener.close()


def reachable(netns: Any, peer: str, port: int) -> bool:
    return tcp_exchange(netns, peer, NODE_IP, port) is not None


def test_host_endpoint_policy_blocks_all_but_failsafe_and_allowed_ports(node: tuple[Any, str, str]) -> None:
    netns, node_ns, peer = node
    calc = Calculator(NODE)
    dp = Dataplane(node_ns)
    dp.apply(calc.snapshot())
    # No host endpoint: the node is not policed.
    for port in (FAILSAFE_PORT, ALLOWED_PORT, OTHER_PORT):
        assert exchange_eventually(netns, peer, NODE_IP, port) == PEER_IP

    # A host endpoint with a policy allowing only ALLOWED_PORT: the other port is dropped, the
    # failsafe port still answers (cali-fh-eth0 jumps to cali-failsafe-in before any policy).
    hep, pol = host_endpoint(), policy([ALLOWED_PORT])
    calc.apply(hep + pol)
    state = calc.snapshot()
    assert [h.iface for h in state.host_endpoints] == ["eth0"]
    dp.apply(state)
    assert not reachable(netns, peer, OTHER_PORT)
    assert exchange_eventually(netns, peer, NODE_IP, FAILSAFE_PORT) == PEER_IP
    assert exchange_eventually(netns, peer, NODE_IP, ALLOWED_PORT) == PEER_IP

    # A policy that allows nothing the node listens on: only the failsafe port answers.
    calc.apply(policy([7]))
    dp.apply(calc.snapshot())
    assert not reachable(netns, peer, ALLOWED_PORT)
    assert not reachable(netns, peer, OTHER_PORT)
    assert exchange_eventually(netns, peer, NODE_IP, FAILSAFE_PORT) == PEER_IP

    # No policy at all: Felix's default for a host endpoint is to drop all but failsafe traffic.
    calc.apply(deleted(pol))
    dp.apply(calc.snapshot())
    assert not reachable(netns, peer, ALLOWED_PORT)
    assert exchange_eventually(netns, peer, NODE_IP, FAILSAFE_PORT) == PEER_IP

    # The policy back, then the host endpoint gone: the node is open again.
    calc.apply(pol)
    dp.apply(calc.snapshot())
    assert not reachable(netns, peer, OTHER_PORT)
    calc.apply(deleted(hep))
    state = calc.snapshot()
    assert state.host_endpoints == []
    dp.apply(state)
    for port in (FAILSAFE_PORT, ALLOWED_PORT, OTHER_PORT):
        assert exchange_eventually(netns, peer, NODE_IP, port) == PEER_IP


def test_all_interfaces_host_endpoint_and_profile_allow(node: tuple[Any, str, str]) -> None:
    """A `*` host endpoint polices every interface through the dispatch chains' default; a profile
    that allows everything opens the node again (profiles come after policy, as in Felix)."""
    netns, node_ns, peer = node
    calc = Calculator(NODE)
    dp = Dataplane(node_ns)
    calc.apply(host_endpoint(interfaceName="*", expectedIPs=[]))
    dp.apply(calc.snapshot())
    assert not reachable(netns, peer, OTHER_PORT)
    assert exchange_eventually(netns, peer, NODE_IP, FAILSAFE_PORT) == PEER_IP

    calc.apply(host_endpoint(interfaceName="*", expectedIPs=[], profiles=["allow-all"]))
    calc.apply([("/calico/v1/policy/profile/allow-all/rules",
                 {"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]})])
    dp.apply(calc.snapshot())
    assert exchange_eventually(netns, peer, NODE_IP, OTHER_PORT) == PEER_IP
