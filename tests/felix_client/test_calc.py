"""The calculation: label inheritance, active policies, ordering, IP-set members, routes, incrementality."""

from __future__ import annotations

import random
from typing import Any

import pytest

from felix_client import rules
from felix_client.calc import Calculator
from felix_client.calc.model import IPSetSpec
from felix_client.names import length_limited_id
from typha.model import keys
from typha.model.convert.k8s import veth_name

NODE = "node-1"


def wep(node: str, ns: str, pod: str, ip: str, labels: dict[str, str], **extra: Any) -> tuple[str, dict[str, Any]]:
    path = keys.workload_endpoint_path(node, "k8s", f"{ns}/{pod}", "eth0")
    value = {
        "state": "active",
        "name": veth_name(ns, pod),
        "profile_ids": [f"kns.{ns}", f"ksa.{ns}.default"],
        "ipv4_nets": [f"{ip}/32"],
        "labels": {**labels, "projectcalico.org/namespace": ns, "projectcalico.org/orchestrator": "k8s"},
        **extra,
    }
    return path, value


def ns_labels(ns: str, **labels: str) -> tuple[str, dict[str, str]]:
    return keys.profile_labels_path(f"kns.{ns}"), {
        "pcns.projectcalico.org/name": ns, **{f"pcns.{k}": v for k, v in labels.items()}}


def policy(name: str, selector: str, *, ns: str = "demo", kind: str = "NetworkPolicy", **value: Any):
    return keys.policy_path(kind, ns, name), {"tier": "default", "selector": selector, **value}


def members(calc: Calculator, selector: str) -> list[str]:
    from typha.model.selector import canonicalise

    found = calc.ipset_members(IPSetSpec("selector", selector=canonicalise(selector)))
    assert found is not None, f"no IP set for {selector}"
    return sorted(found)


def test_length_limited_id():
    assert length_limited_id("cali-pi-", "knp/demo/allow-frontend") == "cali-pi-_wy0fJonwc5GCXzWY0p9"
    assert length_limited_id("cali-pri-", "kns.demo") == "cali-pri-kns.demo"
    assert len(length_limited_id("cali-pri-", "_short")) == 28  # a leading "_" is always hashed


def test_namespace_selector_follows_namespace_labels_through_the_profile():
    calc = Calculator(NODE)
    calc.apply([
        wep(NODE, "x", "a", "10.0.0.1", {"pod": "a"}),
        wep("node-2", "y", "b", "10.0.0.2", {"pod": "b"}),
        ns_labels("x", team="red"),
        ns_labels("y", team="blue"),
        policy("p", "pod == 'a'", ns="x", inbound_rules=[{"action": "allow", "src_selector": "pcns.team == 'red'"}]),
    ])
    assert members(calc, "pcns.team == 'red'") == ["10.0.0.1"]
    calc.take_dirty()
    calc.update(*ns_labels("y", team="red"))
    assert members(calc, "pcns.team == 'red'") == ["10.0.0.1", "10.0.0.2"]
    assert {s.selector for s in calc.take_dirty().ipsets} == {'pcns.team == "red"'}
    # The endpoint's own label wins over the profile's.
    calc.update(*wep("node-2", "y", "b", "10.0.0.2", {"pod": "b", "pcns.team": "green"}))
    assert members(calc, "pcns.team == 'red'") == ["10.0.0.1"]


def test_policy_is_active_only_while_it_selects_a_local_endpoint():
    calc = Calculator(NODE)
    path, value = policy("p", "app == 'web'", inbound_rules=[{"action": "allow", "src_selector": "app == 'db'"}])
    calc.apply([wep("node-2", "demo", "remote", "10.0.1.1", {"app": "web"}), (path, value)])
    assert calc.snapshot().policies == {}
    assert calc.ipset_members(IPSetSpec("selector", selector='app == "db"')) is None
    calc.update(*wep(NODE, "demo", "local", "10.0.0.1", {"app": "web"}))
    assert list(calc.snapshot().policies) == [keys.parse_key(path)]
    calc.update(*wep(NODE, "demo", "local", "10.0.0.1", {"app": "other"}))
    assert calc.snapshot().policies == {}
    assert calc.ipset_refs == {}


def test_ordering_within_a_tier_and_types_defaulting():
    calc = Calculator(NODE)
    calc.apply([
        wep(NODE, "demo", "a", "10.0.0.1", {"app": "a"}),
        policy("zeta", "all()", order=5, inbound_rules=[{"action": "allow"}]),
        policy("a", "all()", order=6, inbound_rules=[{"action": "allow"}]),
        policy("a-b", "all()", order=6, inbound_rules=[{"action": "allow"}]),
        policy("alpha", "all()", order=5, inbound_rules=[{"action": "allow"}]),
        policy("none", "all()", inbound_rules=[{"action": "allow"}]),
        policy("first", "all()", order=1, outbound_rules=[{"action": "allow"}]),  # egress only
        policy("both", "all()", order=2, inbound_rules=[{"action": "deny"}], outbound_rules=[{"action": "deny"}]),
        policy("typed", "all()", order=3, types=["egress"], inbound_rules=[{"action": "deny"}]),
        policy("empty", "all()", order=4),  # no rules at all: ingress, allows nothing
    ])
    (ep,) = calc.snapshot().endpoints
    ingress = [[p.key.name for p in t.policies] for t in ep.ingress]
    assert ingress == [["both", "empty", "alpha", "zeta", "a-b", "a", "none"]]
    assert [[p.key.name for p in t.policies] for t in ep.egress] == [["first", "both", "typed"]]


def test_named_ports_and_network_sets():
    calc = Calculator(NODE)
    ports = [{"name": "http", "protocol": "tcp", "port": 8080}, {"name": "dns", "protocol": "udp", "port": 53}]
    calc.apply([
        wep(NODE, "demo", "web", "10.0.0.1", {"app": "web"}, ports=ports),
        wep("node-2", "demo", "web2", "10.0.0.2", {"app": "web"}, ports=ports[:1]),
        (keys.network_set_path("ext"), {"nets": ["192.0.2.0/24", "2001:db8::/32"], "labels": {"app": "web"}}),
        policy("p", "app == 'web'", inbound_rules=[{"action": "allow", "protocol": "tcp", "dst_ports": ["http"]},
                                                   {"action": "allow", "src_selector": "app == 'web'"}]),
    ])
    state = calc.snapshot()
    by_kind = {s.spec.kind: sorted(s.members) for s in state.ipsets.values() if s.spec.version == 4}
    assert by_kind == {"named-port": ["10.0.0.1,tcp:8080", "10.0.0.2,tcp:8080"],
                       "selector": ["10.0.0.1", "10.0.0.2", "192.0.2.0/24"]}
    # The network set's IPv6 CIDR makes the node dual-stack: the same IDs as cali60 sets, IPv6 members only.
    by_kind6 = {s.spec.kind: sorted(s.members) for s in state.ipsets.values() if s.spec.version == 6}
    assert by_kind6 == {"named-port": [], "selector": ["2001:db8::/32"]}
    named = next(s for s in state.ipsets.values() if s.spec.kind == "named-port")
    assert f"-m set --match-set {named.spec.name} dst,dst" in rules.render_iptables(state)


def _routing_calc(pool: dict[str, Any], *, vxlan: bool = False, subnet2: str = "192.168.56.12/24") -> Calculator:
    calc = Calculator(NODE)
    updates: list[tuple[str, Any]] = [
        (keys.ip_pool_path("10.65.0.0/16"), {"cidr": "10.65.0.0/16", "ipip_mode": "never", "vxlan_mode": "never",
                                             "masquerade": False, "disabled": False, **pool}),
        (keys.block_path("10.65.0.0/26"), {"cidr": "10.65.0.0/26", "affinity": f"host:{NODE}"}),
        (keys.block_path("10.65.1.0/26"), {"cidr": "10.65.1.0/26", "affinity": "host:node-2"}),
    ]
    for node, address in ((NODE, "192.168.56.11/24"), ("node-2", subnet2)):
        updates.append((keys.host_ip_path(node), address.split("/")[0]))
        updates.append((keys.resource_path("Node", node), {"spec": {"bgp": {"ipv4Address": address}}}))
        if vxlan:
            updates.append((keys.host_config_path(node, "IPv4VXLANTunnelAddr"), f"10.65.{int(node == 'node-2')}.1"))
            updates.append((keys.host_config_path(node, "VXLANTunnelMACAddr"), f"66:00:00:00:00:0{node[-1]}"))
    calc.apply(updates)
    return calc


def test_routes_by_encapsulation():
    no_encap = _routing_calc({})
    assert rules.render_routes(no_encap.snapshot()).splitlines() == [
        "blackhole 10.65.0.0/26 proto 80", "10.65.1.0/26 via 192.168.56.12 dev eth0 proto 80 onlink"]
    vxlan = _routing_calc({"vxlan_mode": "always"}, vxlan=True)
    assert rules.render_routes(vxlan.snapshot()).splitlines() == [
        "blackhole 10.65.0.0/26 proto 80",
        "10.65.1.0/26 via 10.65.1.1 dev vxlan.calico onlink",
        "neigh 10.65.1.1 dev vxlan.calico lladdr 66:00:00:00:00:02 PERMANENT",
        "fdb 66:00:00:00:00:02 dev vxlan.calico dst 192.168.56.12",
    ]
    assert "cali40all-vxlan-net" in rules.render_iptables(vxlan.snapshot())
    cross_same = _routing_calc({"ipip_mode": "cross-subnet"})
    assert "10.65.1.0/26 via 192.168.56.12 dev eth0 proto 80 onlink" in rules.render_routes(cross_same.snapshot())
    cross_other = _routing_calc({"ipip_mode": "cross-subnet"}, subnet2="192.168.57.12/24")
    assert "10.65.1.0/26 via 192.168.57.12 dev tunl0 proto 80 onlink" in rules.render_routes(cross_other.snapshot())


def test_nat_outgoing_only_with_a_masquerading_pool():
    plain = _routing_calc({})
    assert "MASQUERADE --random-fully\n" not in rules.render_iptables(plain.snapshot()).split("*nat")[1].replace(
        "-o ", "")  # no tunnel either
    masq = _routing_calc({"masquerade": True})
    nat = rules.render_iptables(masq.snapshot()).split("*nat")[1]
    assert ("-A cali-nat-outgoing -m set --match-set cali40masq-ipam-pools src -m set ! --match-set "
            "cali40network-ip-pools dst -j MASQUERADE --random-fully") in nat
    assert rules.desired_ipsets(masq.snapshot())["cali40masq-ipam-pools"].members == {"10.65.0.0/16"}


# --- incremental == from scratch ----------------------------------------------------------------

SELECTORS = ["app == 'a'", "app == 'b'", "has(app)", "!has(app)", "all()", "pcns.team == 'red'",
             "app in {'a', 'b'} && pcns.team != 'blue'", "tier == 'x' || app == 'c'"]


def _random_kv(rng: random.Random) -> tuple[str, Any]:
    kind = rng.randrange(5)
    if kind == 0:
        node = rng.choice([NODE, "node-2"])
        pod = rng.choice("abcdef")
        labels = {k: rng.choice(["a", "b", "c", "x"]) for k in rng.sample(["app", "tier"], rng.randrange(3))}
        ports = [{"name": "http", "protocol": "tcp", "port": rng.choice([80, 8080])}] if rng.random() < 0.5 else []
        return wep(node, rng.choice(["x", "y"]), pod, f"10.0.{rng.randrange(3)}.{rng.randrange(4)}", labels,
                   ports=ports)
    if kind == 1:
        return ns_labels(rng.choice(["x", "y"]), team=rng.choice(["red", "blue"]))
    if kind == 2:
        rule: dict[str, Any] = {"action": rng.choice(["allow", "deny"]), "src_selector": rng.choice(SELECTORS)}
        if rng.random() < 0.3:
            rule.update(protocol="tcp", dst_ports=["http"])
        if rng.random() < 0.3:
            rule["!src_selector"] = rng.choice(SELECTORS)
        return policy(f"p{rng.randrange(4)}", rng.choice(SELECTORS), order=rng.choice([None, 1, 2]),
                      inbound_rules=[rule], outbound_rules=[rule] if rng.random() < 0.5 else [])
    if kind == 3:
        return (keys.network_set_path(f"n{rng.randrange(2)}"),
                {"nets": [rng.choice(["192.0.2.0/24", "198.51.100.0/24"])], "labels": {"app": rng.choice("ab")}})
    ns = rng.choice(["x", "y"])
    return keys.profile_rules_path(f"kns.{ns}"), {"inbound_rules": [{"action": "allow",
                                                                      "src_selector": rng.choice(SELECTORS)}]}


def _output(calc: Calculator) -> tuple[str, str, str]:
    state = calc.snapshot()
    return (rules.render_iptables(state), rules.render_ipset_save(rules.desired_ipsets(state)),
            rules.render_routes(state))


@pytest.mark.parametrize("seed", range(8))
def test_incremental_updates_end_where_a_fresh_calculation_does(seed):
    rng = random.Random(seed)
    calc = Calculator(NODE)
    final: dict[str, Any] = {}
    for step in range(300):
        if final and rng.random() < 0.25:
            path = rng.choice(sorted(final))
            calc.update(path, None)
            del final[path]
        else:
            path, value = _random_kv(rng)
            calc.update(path, value)
            final[path] = value
        if step % 50 == 49:
            fresh = Calculator(NODE)
            fresh.apply(sorted(final.items()))
            assert _output(calc) == _output(fresh), f"seed {seed} step {step}"
    for path in list(final):
        calc.update(path, None)
    assert calc.ipset_refs == {}
    assert calc.active_profiles == {}
    assert calc.active_policies == set()


def test_admin_down_endpoint_and_host_only_policies():
    calc = Calculator(NODE)
    path, value = wep(NODE, "demo", "a", "10.0.0.1", {"app": "a"})
    calc.apply([
        (path, {**value, "state": "down"}),
        policy("p", "all()", inbound_rules=[{"action": "allow", "src_selector": "app == 'b'"}]),
        policy("pre", "all()", kind="GlobalNetworkPolicy", ns="", pre_dnat=True, inbound_rules=[{"action": "deny"}]),
        policy("staged", "all()", kind="StagedNetworkPolicy", inbound_rules=[{"action": "deny"}]),
    ])
    state = calc.snapshot()
    assert [k.name for k in state.policies] == ["p"]
    text = rules.render_iptables(state)
    iface = value["name"]
    assert f'-A cali-tw-{iface} -m comment --comment "Endpoint admin disabled" -j DROP' in text
    assert "cali-pi-" not in text
    assert "cali-pri-" not in text


def test_source_named_ports_match_src_src():
    calc = Calculator(NODE)
    calc.apply([
        wep(NODE, "demo", "a", "10.0.0.1", {"app": "a"}, ports=[{"name": "dns", "protocol": "udp", "port": 53}]),
        policy("p", "all()", inbound_rules=[{"action": "allow", "protocol": "udp", "src_selector": "app == 'a'",
                                             "src_ports": ["dns"]}]),
    ])
    state = calc.snapshot()
    (named,) = [s for s in state.ipsets.values() if s.spec.kind == "named-port"]
    assert named.members == {"10.0.0.1,udp:53"}
    assert f"-m set --match-set {named.spec.name} src,src" in rules.render_iptables(state)
    assert len(state.ipsets) == 1  # the selector lives inside the named-port set


def test_an_invalid_value_acts_as_a_deletion():
    calc = Calculator(NODE)
    path, value = policy("p", "app == 'a'", inbound_rules=[{"action": "allow"}])
    calc.apply([wep(NODE, "demo", "a", "10.0.0.1", {"app": "a"}), (path, value)])
    assert len(calc.snapshot().policies) == 1
    calc.update(path, {**value, "selector": "app == "})  # does not parse
    assert calc.snapshot().policies == {}
    ep_path, ep_value = wep(NODE, "demo", "a", "10.0.0.1", {"app": "a"})
    calc.update(ep_path, {**ep_value, "ipv4_nets": ["not-an-ip"]})
    assert calc.snapshot().endpoints == []
    assert calc.routing.local_routes == {}


def test_dispatch_tree_reaches_every_endpoint_and_drops_unknown_ones():
    from .iptables_sim import Dataplane, Packet

    calc = Calculator(NODE)
    pods = [f"pod{i}" for i in range(40)]
    calc.apply(wep(NODE, "demo", pod, f"10.0.0.{i + 1}", {"app": "a"}) for i, pod in enumerate(pods))
    state = calc.snapshot()
    text = rules.render_iptables(state)
    assert "-g cali-from-wl-dispatch-" in text  # 40 names over 16 hex digits: there are groups
    plane = Dataplane.from_text(text, rules.render_ipset_save(rules.desired_ipsets(state)))
    for ep in state.endpoints:
        for root, flag, prefix in (("cali-from-wl-dispatch", "iif", "cali-fw-"), ("cali-to-wl-dispatch", "oif",
                                                                                 "cali-tw-")):
            plane.hits.clear()
            pkt = Packet("10.0.0.1", "10.0.0.2", "tcp", 1, 2, "eth0", "eth0")
            setattr(pkt, flag, ep.iface)
            plane.run(root, pkt)
            assert any(chain == prefix + ep.iface for chain, _ in plane.hits), (root, ep.iface)
    for iface in ("cali00000000000", "califfffffffffff"):
        assert plane.run("cali-from-wl-dispatch", Packet("10.0.0.1", "10.0.0.2", "tcp", 1, 2, iface, "x")) == "DROP"
