"""Dual stack: IPv6 pools, blocks and endpoint addresses through the calculation and the renderer.

Felix renders each family on its own (felix/rules/policy.go FilterRuleToIPVersion, one table set per
family, `cali60` sets with the same IDs as the `cali40` ones); these tests pin that down offline.
"""

from __future__ import annotations

from typing import Any

import pytest

from felix_client import rules
from felix_client.calc import Calculator
from felix_client.calc.model import parse_rule
from felix_client.rules.ipsets import _guarded_set
from felix_client.validate import Invalid
from typha.model import keys
from typha.model.convert.k8s import veth_name

NODE = "node-1"
POOL4, POOL6 = "10.65.0.0/16", "fd65::/48"
BLOCK4, BLOCK6 = "10.65.0.0/26", "fd65::/122"
REMOTE_BLOCK6 = "fd65::1:0/122"


def wep(node: str, pod: str, ip4: str, ip6: str | None, labels: dict[str, str]) -> tuple[str, dict[str, Any]]:
    path = keys.workload_endpoint_path(node, "k8s", f"demo/{pod}", "eth0")
    return path, {
        "state": "active",
        "name": veth_name("demo", pod),
        "profile_ids": ["kns.demo"],
        "ipv4_nets": [f"{ip4}/32"],
        "ipv6_nets": [f"{ip6}/128"] if ip6 else None,
        "labels": {**labels, "projectcalico.org/namespace": "demo"},
    }


def pool(cidr: str, masquerade: bool = False) -> tuple[str, dict[str, Any]]:
    return keys.ip_pool_path(cidr), {"cidr": cidr, "ipip_mode": "never", "vxlan_mode": "never",
                                     "masquerade": masquerade, "disabled": False}


def block(cidr: str, node: str) -> tuple[str, dict[str, Any]]:
    return keys.block_path(cidr), {"cidr": cidr, "affinity": f"host:{node}", "deleted": False}


def node(name: str, ip4: str, ip6: str) -> tuple[str, dict[str, Any]]:
    return keys.resource_path("Node", name), {"spec": {"bgp": {"ipv4Address": ip4, "ipv6Address": ip6}}}


def dual_stack(*extra: tuple[str, Any]) -> Calculator:
    calc = Calculator(NODE)
    calc.apply([
        pool(POOL4, masquerade=True), pool(POOL6, masquerade=True),
        block(BLOCK4, NODE), block(BLOCK6, NODE), block(REMOTE_BLOCK6, "node-2"),
        node(NODE, "10.201.0.1/24", "fd20::1/64"), node("node-2", "10.201.0.2/24", "fd20::2/64"),
        (keys.host_ip_path("node-2"), "10.201.0.2"),
        wep(NODE, "web", "10.65.0.2", "fd65::2", {"app": "web"}),
        wep("node-2", "client", "10.65.1.2", "fd65::1:2", {"app": "client"}),
        *extra,
    ])
    return calc


def allow_from_clients(**rule: Any) -> tuple[str, dict[str, Any]]:
    return keys.policy_path("NetworkPolicy", "demo", "p"), {
        "tier": "default", "selector": "app == 'web'", "types": ["ingress"],
        "inbound_rules": [{"action": "allow", "src_selector": "app == 'client'", **rule}],
    }


def test_v6_sets_have_the_v4_ids_and_v6_members():
    state = dual_stack(allow_from_clients()).snapshot()
    assert state.ipv6
    by_version = {s.spec.version: s for s in state.ipsets.values()}
    v4, v6 = by_version[4], by_version[6]
    assert v4.spec.name.startswith("cali40s:") and v6.spec.name == "cali60" + v4.spec.name[len("cali40"):]
    assert sorted(v4.members) == ["10.65.1.2"]
    assert sorted(v6.members) == ["fd65::1:2"]
    save = rules.render_ipset_save(rules.desired_ipsets(state))
    assert f"create {v6.spec.name} hash:net family inet6 hashsize 1024 maxelem 1048576" in save
    assert f"add {v6.spec.name} fd65::1:2" in save
    assert "create cali60masq-ipam-pools hash:net family inet6" in save
    assert f"add cali60masq-ipam-pools {POOL6}" in save


def test_ip6tables_use_v6_sets_icmpv6_and_nat_outgoing():
    state = dual_stack(allow_from_clients()).snapshot()
    v4, v6 = rules.render_iptables(state), rules.render_ip6tables(state)
    set4 = next(s.spec.name for s in state.ipsets.values() if s.spec.version == 4)
    set6 = "cali60" + set4[len("cali40"):]
    assert f"--match-set {set4} src" in v4 and "cali60" not in v4
    assert f"--match-set {set6} src" in v6 and "cali40" not in v6
    # Same chain names in both families.
    chains = {line.split()[0] for line in v4.splitlines() if line.startswith(":")}
    assert chains == {line.split()[0] for line in v6.splitlines() if line.startswith(":")}
    for icmp_type in (130, 131, 132, 133, 135, 136):
        assert f"-A cali-wl-to-host -p ipv6-icmp -m icmp6 --icmpv6-type {icmp_type} -j ACCEPT" in v6
    assert "icmpv6" not in v4
    assert ("-A cali-nat-outgoing -m set --match-set cali60masq-ipam-pools src "
            "-m set ! --match-set cali60network-ip-pools dst -j MASQUERADE --random-fully") in v6


def test_rules_are_filtered_per_family_symmetrically():
    v4_only = {"action": "allow", "src_nets": ["10.0.0.0/8"]}
    v6_only = {"action": "allow", "src_nets": ["fd00::/8"]}
    for rule, skipped_in in ((v4_only, 6), (v6_only, 4), ({"action": "allow", "ip_version": 4}, 6),
                             ({"action": "allow", "ip_version": 6}, 4),
                             ({"action": "allow", "protocol": "icmp", "icmp_type": 8}, 6),
                             ({"action": "allow", "protocol": "icmpv6", "icmp_type": 128}, 4),
                             ({"action": "allow", "!dst_nets": ["fd00::/8"]}, 4),
                             ({"action": "allow", "!dst_nets": ["10.0.0.0/8"]}, 6)):
        kept_in = 4 if skipped_in == 6 else 6
        with pytest.raises(Invalid) as info:
            parse_rule(rule, skipped_in)
        assert info.value.reason == "other-ip-family", rule
        assert parse_rule(rule, kept_in).action == "allow"
    mixed = parse_rule({"action": "allow", "src_nets": ["10.0.0.0/8", "fd00::/8"]}, 6)
    assert mixed.src.nets == ("fd00::/8",)
    # A negated IPv6 catch-all never matches: skipped for IPv6, as Felix's filterNets does for IPv4.
    with pytest.raises(Invalid) as info:
        parse_rule({"action": "allow", "!src_nets": ["::/0"]}, 6)
    assert info.value.reason == "negated-catch-all"


def test_icmpv6_rule_renders_for_ipv6_only():
    calc = dual_stack(allow_from_clients(protocol="icmpv6", icmp_type=128, icmp_code=0))
    state = calc.snapshot()
    v4, v6 = rules.render_iptables(state), rules.render_ip6tables(state)
    assert "-p ipv6-icmp" in v6 and "-m icmp6 --icmpv6-type 128/0" in v6
    policy_chain = next(line.split()[1] for line in v6.splitlines() if line.startswith("-A cali-pi-"))
    # The chain exists in IPv4 too, without the rule (nothing in it accepts).
    assert f":{policy_chain} - [0:0]" in v4
    v4_rules = [line for line in v4.splitlines() if line.startswith(f"-A {policy_chain} ")]
    assert v4_rules and not any("MARK" in line or "icmp" in line for line in v4_rules)


def test_v6_routes_local_remote_and_blackhole():
    state = dual_stack().snapshot()
    text = rules.render_routes(state)
    web = veth_name("demo", "web")
    assert f"fd65::2 dev {web} scope link metric 1024" in text
    assert f"blackhole {BLOCK6} proto 80" in text
    assert f"{REMOTE_BLOCK6} via fd20::2 dev eth0 proto 80 onlink" in text
    local = next(r for r in state.routes6 if r.kind == "local")
    assert (local.dst, local.metric) == ("fd65::2/128", 1024)


def test_v4_only_node_programs_no_ipv6():
    calc = Calculator(NODE)
    calc.apply([pool(POOL4), block(BLOCK4, NODE), wep(NODE, "web", "10.65.0.2", None, {"app": "web"}),
                wep("node-2", "client", "10.65.1.2", None, {"app": "client"}), allow_from_clients()])
    state = calc.snapshot()
    assert not state.ipv6
    assert rules.render_ip6tables(state) == ""
    assert all(s.spec.version == 4 for s in state.ipsets.values())
    assert not state.routes6
    # The first IPv6 pool switches IPv6 on, with the sets already filled.
    calc.apply([pool(POOL6)])
    assert calc.take_dirty().filter
    state = calc.snapshot()
    assert state.ipv6 and {s.spec.version for s in state.ipsets.values()} == {4, 6}


def test_ipv6_support_false_turns_ipv6_off():
    calc = dual_stack((keys.global_config_path("Ipv6Support"), "false"))
    assert not calc.snapshot().ipv6


def test_endpoint_slice_addresses_split_by_family():
    slice_path = keys.resource_path("KubernetesEndpointSlice", "svc-abc", "demo")
    slice_value = {"metadata": {"namespace": "demo", "labels": {"kubernetes.io/service-name": "svc"}},
                   "endpoints": [{"addresses": ["10.65.1.2"]}, {"addresses": ["fd65::1:2"]}],
                   "ports": [{"port": 80, "protocol": "TCP"}]}
    calc = dual_stack((slice_path, slice_value), allow_from_clients(dst_service="svc", dst_service_ns="demo"))
    state = calc.snapshot()
    svc = {s.spec.version: sorted(s.members) for s in state.ipsets.values() if s.spec.kind == "service"}
    assert svc == {4: ["10.65.1.2,tcp:80"], 6: ["fd65::1:2,tcp:80"]}


def test_guard_keeps_ip_port_members_and_drops_other_family_ones():
    v4 = rules.IPSet("cali40n:x", "hash:ip,port", frozenset({"10.0.0.1,tcp:80", "fd00::1,tcp:80"}))
    v6 = rules.IPSet("cali60n:x", "hash:ip,port", frozenset({"10.0.0.1,tcp:80", "fd00::1,tcp:80"}))
    assert _guarded_set(v4).members == {"10.0.0.1,tcp:80"}
    assert _guarded_set(v6).members == {"fd00::1,tcp:80"}
