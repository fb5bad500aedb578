"""Host endpoints in the calculation and the renderer: parsing, binding to interfaces, which policy
kinds reach which chains, expected IPs in selector IP sets, and each table's chains."""

from __future__ import annotations

from typing import Any

import pytest

from felix_client import rules
from felix_client.calc import Calculator
from felix_client.calc.hostendpoints import parse_host_endpoint, resolve_interfaces
from felix_client.calc.model import IPSetSpec
from felix_client.names import ALL_INTERFACES
from felix_client.rules.hostendpoints import host_endpoint_chains
from felix_client.validate import Invalid
from typha.model import keys
from typha.model.convert import calico
from typha.model.selector import canonicalise

NODE = "node-1"


def hep(endpoint_id: str, node: str = NODE, **value: Any) -> tuple[str, dict[str, Any]]:
    return keys.host_endpoint_path(node, endpoint_id), {"labels": {"role": "node"}, **value}


def gnp(name: str, *, selector: str = "role == 'node'", **value: Any) -> tuple[str, dict[str, Any]]:
    value.setdefault("inbound_rules", [{"action": "allow", "protocol": "tcp", "dst_ports": [80]}])
    value.setdefault("types", ["ingress"])
    return keys.policy_path("GlobalNetworkPolicy", "", name), {"selector": selector, **value}


def names(tiers: tuple[Any, ...]) -> list[str]:
    return [p.key.name for tier in tiers for p in tier.policies]


def test_parse_host_endpoint_from_the_v3_converter() -> None:
    obj = {"metadata": {"name": "n1-eth0", "labels": {"a": "b"}},
           "spec": {"node": NODE, "interfaceName": "eth0", "expectedIPs": ["10.0.0.1", "fd00::1"],
                    "profiles": ["p1"], "ports": [{"name": "web", "port": 80, "protocol": "TCP"}]}}
    [(path, value)] = calico.host_endpoint(obj, v3=True)
    ep = parse_host_endpoint(path, NODE, value)
    assert (ep.iface, ep.nets, ep.nets6, ep.profile_ids, ep.labels) == (
        "eth0", ("10.0.0.1/32",), ("fd00::1/128",), ("p1",), {"a": "b"})
    assert [(p.name, p.protocol, p.port) for p in ep.ports] == [("web", "tcp", 80)]
    assert ep.is_hep and ep.active


@pytest.mark.parametrize("value", [
    {},  # neither an interface nor an expected IP: could never be bound
    {"name": "eth0 -j ACCEPT"},
    {"name": "eth0", "expected_ipv4_addrs": ["fd00::1"]},
    {"name": "eth0", "expected_ipv4_addrs": "10.0.0.1"},
])
def test_parse_host_endpoint_refuses_bad_values(value: dict[str, Any]) -> None:
    with pytest.raises(Invalid):
        parse_host_endpoint("/calico/v1/host/n/endpoint/x", NODE, value)


def test_resolution_follows_endpoint_mgr() -> None:
    def ep(**value: Any) -> Any:
        return parse_host_endpoint("/calico/v1/host/n/endpoint/x", NODE, value)

    heps = {
        "b-named": ep(name="eth0"),
        "a-by-ip": ep(expected_ipv4_addrs=["10.0.0.1"]),
        "c-by-ip": ep(expected_ipv4_addrs=["10.0.1.1"]),
        "d-named-other": ep(name="eth9", expected_ipv4_addrs=["10.0.1.1"]),  # never matches by address
        "z-star": ep(name="*"),
        "y-star": ep(name="*"),
    }
    ifaces = {"eth0": ["10.0.0.1"], "eth1": ["10.0.1.1"], "lo": ["127.0.0.1"]}
    # eth0: both the named one and an address match; the alphabetically first endpoint ID wins.
    assert resolve_interfaces(heps, ifaces) == {"eth0": "a-by-ip", "eth1": "c-by-ip", ALL_INTERFACES: "y-star"}
    # Addresses unknown (offline rendering): named endpoints bind to their interface, others cannot.
    assert resolve_interfaces(heps, None) == {"eth0": "b-named", "eth9": "d-named-other", ALL_INTERFACES: "y-star"}
    # An interface the node lacks binds nothing once the interfaces are known.
    assert "eth9" not in resolve_interfaces(heps, ifaces)


def test_policy_kinds_split_as_felix_sends_them() -> None:
    calc = Calculator(NODE)
    calc.apply([
        hep("eth0", name="eth0"),
        gnp("normal", order=1),
        gnp("forward", order=2, apply_on_forward=True, types=["ingress", "egress"],
            outbound_rules=[{"action": "allow"}]),
        gnp("prednat", order=3, pre_dnat=True, apply_on_forward=True),
        gnp("untracked", order=4, untracked=True, apply_on_forward=True, types=["ingress", "egress"],
            outbound_rules=[{"action": "allow"}]),
    ])
    [h] = calc.snapshot().host_endpoints
    assert names(h.ingress) == ["normal", "forward"]
    assert names(h.egress) == ["forward"]
    assert names(h.forward_ingress) == names(h.forward_egress) == ["forward"]
    assert names(h.prednat_ingress) == ["prednat"]
    assert names(h.untracked_ingress) == names(h.untracked_egress) == ["untracked"]
    # preDNAT and untracked tiers never end in a drop; the normal tier does.
    assert all(t.default_pass for t in h.prednat_ingress + h.untracked_ingress)
    assert not any(t.default_pass for t in h.ingress)


def test_host_only_policies_never_reach_workloads_but_reach_host_endpoints() -> None:
    calc = Calculator(NODE)
    wep_path = keys.workload_endpoint_path(NODE, "k8s", "ns/pod", "eth0")
    calc.apply([
        (wep_path, {"state": "active", "name": "cali1", "ipv4_nets": ["10.65.0.2/32"], "labels": {"role": "node"}}),
        gnp("prednat", pre_dnat=True),
        gnp("untracked", untracked=True),
    ])
    state = calc.snapshot()
    [ep] = state.endpoints
    assert ep.ingress == ()
    assert state.policies == {}
    calc.apply([hep("eth0", name="eth0")])
    state = calc.snapshot()
    assert sorted(k.name for k in state.policies) == ["prednat", "untracked"]
    assert state.endpoints[0].ingress == ()
    # Turning a preDNAT policy into a normal one moves it to the workload too.
    calc.apply([gnp("prednat")])
    assert names(calc.snapshot().endpoints[0].ingress) == ["prednat"]


def test_expected_ips_are_selector_ipset_members_on_every_node() -> None:
    calc = Calculator(NODE)
    calc.apply([
        gnp("from-nodes", inbound_rules=[{"action": "allow", "src_selector": "role == 'node'"}]),
        hep("eth0", name="eth0", expected_ipv4_addrs=["10.0.0.1"]),
        hep("n2-eth0", node="node-2", name="eth0", expected_ipv4_addrs=["10.0.0.2"]),
    ])
    found = calc.ipset_members(IPSetSpec("selector", selector=canonicalise("role == 'node'")))
    assert found == frozenset({"10.0.0.1", "10.0.0.2"})
    # node-2's endpoint selects no policy here (it is not this node's), so it has no chains.
    assert [h.endpoint_id for h in calc.snapshot().host_endpoints] == ["eth0"]
    calc.update(keys.host_endpoint_path("node-2", "n2-eth0"), None)
    found = calc.ipset_members(IPSetSpec("selector", selector=canonicalise("role == 'node'")))
    assert found == frozenset({"10.0.0.1"})


def test_profiles_and_labels_of_a_host_endpoint() -> None:
    calc = Calculator(NODE)
    calc.apply([
        hep("eth0", name="eth0", labels={}, profile_ids=["p1"]),
        (keys.profile_labels_path("p1"), {"role": "node"}),
        (keys.profile_rules_path("p1"), {"inbound_rules": [{"action": "allow"}]}),
        gnp("normal"),
    ])
    state = calc.snapshot()
    [h] = state.host_endpoints
    assert names(h.ingress) == ["normal"]  # selected through the profile's labels
    assert h.profile_ids == ("p1",)
    assert "p1" in state.profiles
    calc.update(keys.profile_labels_path("p1"), None)
    [h] = calc.snapshot().host_endpoints
    assert h.ingress == ()


def test_addresses_bind_ip_only_endpoints() -> None:
    calc = Calculator(NODE)
    calc.apply([hep("by-ip", expected_ipv4_addrs=["10.0.0.1"])])
    assert calc.snapshot().host_endpoints == []  # addresses unknown: not bound (and logged)
    calc.set_host_interfaces({"ens3": ["10.0.0.1"]})
    assert calc.take_dirty().filter
    assert [h.iface for h in calc.snapshot().host_endpoints] == ["ens3"]


def test_tables_with_host_endpoints() -> None:
    calc = Calculator(NODE)
    calc.apply([
        hep("eth0", name="eth0"),
        hep("star", name="*"),
        gnp("prednat", pre_dnat=True, apply_on_forward=True),
        gnp("untracked", untracked=True, apply_on_forward=True),
    ])
    state = calc.snapshot()
    mangle = host_endpoint_chains(state, "mangle")
    # The `*` endpoint is the mangle dispatch's default; egress to local workloads skips it.
    assert mangle["cali-to-host-endpoint"] == [
        "-o eth0 -g cali-th-eth0",
        '-o cali+ -m comment --comment "Skip egress WHEP policy for traffic to local workload" -j RETURN',
        "-g cali-th-any-interface-at-all",
    ]
    assert mangle["cali-from-host-endpoint"] == ["-i eth0 -g cali-fh-eth0", "-g cali-fh-any-interface-at-all"]
    assert "cali-pi-gnp/prednat" in mangle
    # Untracked policy on a `*` endpoint is ignored (Felix does not support it); eth0 gets raw chains.
    raw = host_endpoint_chains(state, "raw")
    assert raw["cali-from-host-endpoint"] == ["-i eth0 -g cali-fh-eth0"]
    assert "cali-fh-any-interface-at-all" not in raw
    assert "-m mark --mark 0x10000/0x10000 -j NOTRACK" in raw["cali-fh-eth0"]
    # The raw table's OUTPUT hook reaches the untracked egress chains.
    tables = rules.render_tables(state)
    assert tables["raw"].chains["OUTPUT"] == ["-j cali-OUTPUT"]
    assert "-j cali-to-host-endpoint" in tables["raw"].chains["cali-OUTPUT"]
    assert tables["raw"].chains["cali-to-host-endpoint"] == ["-o eth0 -g cali-th-eth0"]
    # The whole ruleset renders and passes the last grammar check (no guard tripped).
    text = rules.render_iptables(state)
    assert rules.GUARD_DROP not in text
    assert "-A cali-fh-eth0 -j cali-failsafe-in" in text
    assert "-A cali-failsafe-in -p tcp -m multiport --dports 22 -j ACCEPT" in text


def test_no_host_endpoints_leaves_empty_dispatch_chains() -> None:
    state = Calculator(NODE).snapshot()
    assert host_endpoint_chains(state, "filter") == {
        "cali-from-host-endpoint": [], "cali-to-host-endpoint": [], "cali-from-hep-forward": [],
        "cali-to-hep-forward": []}
    assert host_endpoint_chains(state, "mangle") == {"cali-from-host-endpoint": [], "cali-to-host-endpoint": []}
    assert host_endpoint_chains(state, "raw") == {"cali-from-host-endpoint": [], "cali-to-host-endpoint": []}


def test_a_host_endpoint_polices_the_nodes_ipv6_too() -> None:
    """Felix programs ip6tables whenever IPv6 is supported; felix_client only on a node with IPv6 to
    police - and a host endpoint's policy covers the node's own IPv6 traffic."""
    calc = Calculator(NODE)
    calc.apply([hep("eth0", name="eth0"), gnp("normal")])
    state = calc.snapshot()
    assert state.ipv6
    text = rules.render_ip6tables(state)
    assert "-A cali-from-host-endpoint -i eth0 -g cali-fh-eth0" in text
    assert "-A cali-pi-gnp/normal -p tcp" in text
    calc.update(keys.host_endpoint_path(NODE, "eth0"), None)
    assert not calc.snapshot().ipv6


def test_named_ports_of_host_endpoints_fill_named_port_sets() -> None:
    calc = Calculator(NODE)
    calc.apply([
        hep("eth0", name="eth0", expected_ipv4_addrs=["10.0.0.1"], ports=[{"name": "api", "protocol": "tcp",
                                                                            "port": 6443}]),
        gnp("to-api", inbound_rules=[{"action": "allow", "protocol": "tcp", "dst_ports": ["api"],
                                      "dst_selector": "role == 'node'"}]),
    ])
    spec = IPSetSpec("named-port", canonicalise("role == 'node'"), "tcp", "api")
    assert calc.ipset_members(spec) == frozenset({"10.0.0.1,tcp:6443"})
