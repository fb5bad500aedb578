"""Host endpoints against the kernel (issue 14 acceptance; docs/calico/felix.md §2): a HostEndpoint
for a node's eth0 makes the node drop what its policy does not allow, except on the failsafe ports,
and taking the policy or the endpoint away restores access.

A "node" namespace (eth0 10.78.0.1/24, fd78::1/64) and a "peer" namespace (eth0 10.78.0.2/24,
fd78::2/64) joined by a veth; every probe is made over IPv4 and IPv6.
The node runs listeners on a failsafe port (tcp:22, Felix's FailsafeInboundHostPorts default) and on
two ordinary ports; felix_client's calculation and dataplane program the node from the KVs typha's
converters make of a v3 HostEndpoint and GlobalNetworkPolicy. Probes connect from the peer; a
blocked port is one whose SYN is dropped (the probe's connect times out).
"""

from __future__ import annotations

import json
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
NODE_IP6 = "fd78::1"
PEER_IP6 = "fd78::2"
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
    for ns, address, address6 in ((node_ns, NODE_IP, NODE_IP6), (peer_ns, PEER_IP, PEER_IP6)):
        netns.ip(ns, "addr", "add", f"{address}/24", "dev", "eth0")
        netns.ip(ns, "-6", "addr", "add", f"{address6}/64", "dev", "eth0", "nodad")
        netns.ip(ns, "link", "set", "eth0", "up")
    # Static IPv6 neighbours: a host endpoint's policy also drops neighbour discovery (as Felix's
    # does, unless a policy allows ICMPv6), which would leave the IPv6 probes testing that instead.
    macs = {ns: json.loads(netns.ip(ns, "-j", "link", "show", "eth0"))[0]["address"] for ns in (node_ns, peer_ns)}
    for ns, other, address in ((node_ns, peer_ns, PEER_IP6), (peer_ns, node_ns, NODE_IP6)):
        netns.ip(ns, "-6", "neigh", "replace", address, "lladdr", macs[other], "dev", "eth0", "nud", "permanent")
    listeners = [Listener(netns, node_ns, port, ipv6=ipv6)
                 for port in (FAILSAFE_PORT, ALLOWED_PORT, OTHER_PORT) for ipv6 in (False, True)]
    try:
        yield netns, node_ns, peer_ns
    finally:
        for listener in listeners:
            listener.close()


def expect_open(netns: Any, peer: str, open_ports: set[int]) -> None:
    """Each listening port of the node, over IPv4 and IPv6: answers if in `open_ports`, else its SYN
    is dropped. An open port is retried a little (`exchange_eventually`), a closed one tried once."""
    for node_ip, peer_ip in ((NODE_IP, PEER_IP), (NODE_IP6, PEER_IP6)):
        for port in (FAILSAFE_PORT, ALLOWED_PORT, OTHER_PORT):
            if port in open_ports:
                assert exchange_eventually(netns, peer, node_ip, port) == peer_ip, (node_ip, port)
            else:
                assert tcp_exchange(netns, peer, node_ip, port) is None, f"{node_ip}:{port} answered"


ALL_PORTS = {FAILSAFE_PORT, ALLOWED_PORT, OTHER_PORT}


def test_host_endpoint_policy_blocks_all_but_failsafe_and_allowed_ports(node: tuple[Any, str, str]) -> None:
    netns, node_ns, peer = node
    calc = Calculator(NODE)
    dp = Dataplane(node_ns)
    dp.apply(calc.snapshot())
    expect_open(netns, peer, ALL_PORTS)  # no host endpoint: the node is not policed

    # A host endpoint with a policy allowing only ALLOWED_PORT: the other port is dropped, the
    # failsafe port still answers (cali-fh-eth0 jumps to cali-failsafe-in before any policy).
    # IPv6 too: the host endpoint switches the node's ip6tables on.
    hep, pol = host_endpoint(), policy([ALLOWED_PORT])
    calc.apply(hep + pol)
    state = calc.snapshot()
    assert [h.iface for h in state.host_endpoints] == ["eth0"]
    assert state.ipv6
    dp.apply(state)
    expect_open(netns, peer, {FAILSAFE_PORT, ALLOWED_PORT})

    # A policy that allows nothing the node listens on: only the failsafe port answers.
    calc.apply(policy([7]))
    dp.apply(calc.snapshot())
    expect_open(netns, peer, {FAILSAFE_PORT})

    # No policy at all: Felix's default for a host endpoint is to drop all but failsafe traffic.
    calc.apply(deleted(pol))
    dp.apply(calc.snapshot())
    expect_open(netns, peer, {FAILSAFE_PORT})

    # The policy back, then the host endpoint gone: the node is open again.
    calc.apply(pol)
    dp.apply(calc.snapshot())
    expect_open(netns, peer, {FAILSAFE_PORT, ALLOWED_PORT})
    calc.apply(deleted(hep))
    state = calc.snapshot()
    assert state.host_endpoints == []
    dp.apply(state)
    expect_open(netns, peer, ALL_PORTS)


def test_all_interfaces_host_endpoint_and_profile_allow(node: tuple[Any, str, str]) -> None:
    """A `*` host endpoint polices every interface through the dispatch chains' default; a profile
    that allows everything opens the node again (profiles come after policy, as in Felix)."""
    netns, node_ns, peer = node
    calc = Calculator(NODE)
    dp = Dataplane(node_ns)
    calc.apply(host_endpoint(interfaceName="*", expectedIPs=[]))
    dp.apply(calc.snapshot())
    expect_open(netns, peer, {FAILSAFE_PORT})

    calc.apply(host_endpoint(interfaceName="*", expectedIPs=[], profiles=["allow-all"]))
    calc.apply([("/calico/v1/policy/profile/allow-all/rules",
                 {"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]})])
    dp.apply(calc.snapshot())
    expect_open(netns, peer, ALL_PORTS)


def test_host_endpoint_bound_by_expected_ip(node: tuple[Any, str, str]) -> None:
    """A host endpoint without an interface name governs the interface holding one of its expected
    IPs, found from the namespace's own interfaces (as the agent does before each apply)."""
    netns, node_ns, peer = node
    calc = Calculator(NODE)
    dp = Dataplane(node_ns)
    obj = {"metadata": {"name": "by-address", "labels": {"host-endpoint": "node-1"}},
           "spec": {"node": NODE, "expectedIPs": [NODE_IP]}}
    calc.apply(calico.host_endpoint(obj, v3=True) + policy([ALLOWED_PORT]))
    assert calc.snapshot().host_endpoints == []  # the node's addresses not known yet: nothing bound
    interfaces = dp.host_interfaces()
    assert NODE_IP in interfaces["eth0"]
    calc.set_host_interfaces(interfaces)
    state = calc.snapshot()
    assert [(h.iface, h.endpoint_id) for h in state.host_endpoints] == [("eth0", "by-address")]
    dp.apply(state)
    expect_open(netns, peer, {FAILSAFE_PORT, ALLOWED_PORT})


def test_untracked_policy_allows_in_the_raw_table(node: tuple[Any, str, str]) -> None:
    """A doNotTrack policy is enforced in the raw table, before conntrack: its allow marks the packet
    accepted (and untracked) both ways, which the filter table then honours, so a port the normal
    policy does not allow answers."""
    netns, node_ns, peer = node
    calc = Calculator(NODE)
    dp = Dataplane(node_ns)
    untracked = {"metadata": {"name": "untracked"},
                 "spec": {"selector": "has(host-endpoint)", "types": ["Ingress", "Egress"], "doNotTrack": True,
                          "applyOnForward": True,
                          "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [OTHER_PORT]}}],
                          "egress": [{"action": "Allow", "protocol": "TCP", "source": {"ports": [OTHER_PORT]}}]}}
    calc.apply(host_endpoint() + policy([ALLOWED_PORT]))
    dp.apply(calc.snapshot())
    expect_open(netns, peer, {FAILSAFE_PORT, ALLOWED_PORT})
    calc.apply(calico.global_network_policy(untracked, v3=True))
    calc.apply(policy([7]))
    state = calc.snapshot()
    assert [h.iface for h in state.host_endpoints if h.has_untracked] == ["eth0"]
    dp.apply(state)
    expect_open(netns, peer, {FAILSAFE_PORT, OTHER_PORT})
