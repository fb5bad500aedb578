"""IPv6 VXLAN offline (issue #14 item 1): an IPv6 pool with vxlanMode routes its remote blocks over
`vxlan-v6.calico` via the other node's IPv6 tunnel address, the VTEPs come from the node's
IPv6VXLANTunnelAddr / VXLANTunnelMACAddrV6 and its IPv6 address, and ip6tables gets Felix's v6 VXLAN
rules (felix/rules/static.go: filter INPUT/OUTPUT, raw NOTRACK, the tunnel's MASQUERADE) - while the
IPv4 tables and an IPv4-only VXLAN setup stay as they were."""

from __future__ import annotations

import hashlib
from typing import Any

from felix_client import rules
from felix_client.calc import Calculator
from felix_client.calc.routes import VTEP
from felix_client.dataplane.vxlan import OwnVTEP, own_vteps
from typha.model import keys

NODE, PEER = "node-1", "node-2"
POOL4, POOL6 = "10.65.0.0/16", "fd65::/48"


def _pool(cidr: str, vxlan: str) -> tuple[str, dict[str, Any]]:
    return keys.ip_pool_path(cidr), {"cidr": cidr, "ipip_mode": "never", "vxlan_mode": vxlan,
                                     "masquerade": False, "disabled": False}


def _block(cidr: str, node: str) -> tuple[str, dict[str, Any]]:
    return keys.block_path(cidr), {"cidr": cidr, "affinity": f"host:{node}"}


def _calc(vxlan4: str = "never", vxlan6: str = "always", *, macs: bool = True) -> Calculator:
    calc = Calculator(NODE)
    updates: list[tuple[str, Any]] = [
        _pool(POOL4, vxlan4), _pool(POOL6, vxlan6),
        _block("10.65.0.0/26", NODE), _block("10.65.1.0/26", PEER),
        _block("fd65::/122", NODE), _block("fd65::1:0/122", PEER),
    ]
    for i, node in enumerate((NODE, PEER), 1):
        updates += [
            (keys.host_ip_path(node), f"10.201.0.{i}"),
            (keys.resource_path("Node", node),
             {"spec": {"bgp": {"ipv4Address": f"10.201.0.{i}/24", "ipv6Address": f"fd20::{i}/64"}}}),
            (keys.host_config_path(node, "IPv4VXLANTunnelAddr"), f"10.65.{i - 1}.1"),
            (keys.host_config_path(node, "VXLANTunnelMACAddr"), f"66:00:00:00:04:0{i}"),
            (keys.host_config_path(node, "IPv6VXLANTunnelAddr"), f"fd65::{i - 1:x}:1" if i > 1 else "fd65::1"),
        ]
        if macs:
            updates.append((keys.host_config_path(node, "VXLANTunnelMACAddrV6"), f"66:00:00:00:06:0{i}"))
    calc.apply(updates)
    return calc


def test_ipv6_vxlan_routes_and_vteps():
    state = _calc().snapshot()
    assert state.vxlan6 and not state.vxlan
    assert [r.render() for r in state.routes6] == [
        "blackhole fd65::/122 proto 80", "fd65::1:0/122 via fd65::1:1 dev vxlan-v6.calico onlink"]
    assert state.vteps6 == [VTEP(PEER, "fd65::1:1", "66:00:00:00:06:02", "fd20::2", "vxlan-v6.calico")]
    assert state.vteps == []  # the IPv4 pool does not use VXLAN
    assert rules.render_routes(state).splitlines()[-2:] == [
        "neigh fd65::1:1 dev vxlan-v6.calico lladdr 66:00:00:00:06:02 PERMANENT",
        "fdb 66:00:00:00:06:02 dev vxlan-v6.calico dst fd20::2"]
    sets = rules.desired_ipsets(state)
    assert sets["cali60all-vxlan-net"].members == {"fd20::1", "fd20::2"}
    assert "cali40all-vxlan-net" not in sets


def test_ipv6_vxlan_rules_in_ip6tables_only():
    state = _calc().snapshot()
    v4, v6 = rules.render_tables(state), rules.render_tables(state, version=6)
    assert v6["filter"].chains["cali-INPUT"][:2] == [
        '-p udp -m comment --comment "Allow IPv6 VXLAN packets from allowed hosts" -m multiport --dports 4789 '
        "-m set --match-set cali60all-vxlan-net src -m addrtype --dst-type LOCAL -j ACCEPT",
        '-p udp -m comment --comment "Drop IPv6 VXLAN packets from non-allowed hosts" -m multiport --dports 4789 '
        "-m addrtype --dst-type LOCAL -j DROP",
    ]
    assert ('-p udp -m comment --comment "Allow IPv6 VXLAN packets to other allowed hosts" -m multiport '
            "--dports 4789 -m addrtype --src-type LOCAL -m set --match-set cali60all-vxlan-net dst -j ACCEPT"
            in v6["filter"].chains["cali-OUTPUT"])
    notrack = "-p udp -m udp --dport 4789 -j NOTRACK"
    assert notrack in v6["raw"].chains["cali-PREROUTING"]
    assert notrack in v6["raw"].chains["cali-OUTPUT"]
    assert any(r.startswith("-o vxlan-v6.calico -p udp") and "--to-ports 4790-65535" in r
               for r in v6["nat"].chains["cali-POSTROUTING"])
    # Nothing of it in the IPv4 tables, which have no VXLAN pool.
    for table in v4.values():
        text = table.render()
        assert "VXLAN" not in text and "NOTRACK" not in text and "vxlan" not in text


def test_ipv4_vxlan_alone_leaves_ip6tables_without_vxlan():
    state = _calc(vxlan4="always", vxlan6="never").snapshot()
    assert state.vxlan and not state.vxlan6 and state.vteps6 == []
    v6 = rules.render_iptables(state, version=6)
    assert "VXLAN" not in v6 and "NOTRACK" not in v6 and "vxlan" not in v6
    assert "-p udp -m udp --dport 4789 -j NOTRACK" in rules.render_iptables(state)


def test_cross_subnet_ipv6_vxlan_uses_the_underlay_within_the_subnet():
    # Both nodes are in fd20::/64: CrossSubnet keeps the traffic unencapsulated.
    state = _calc(vxlan6="cross-subnet").snapshot()
    assert [r.render() for r in state.routes6][-1] == "fd65::1:0/122 via fd20::2 dev eth0 proto 80 onlink"


def test_vtep_mac_derived_as_felix_does_without_a_mac():
    # vxlan_resolver.go vtepMACForHost: "f" and 5 bytes of SHA-1 of the node name (+ "-v6" for IPv6).
    calc = _calc(macs=False)
    expected = ":".join(f"{b:02x}" for b in b"f" + hashlib.sha1(b"node-2-v6").digest()[:5])
    assert [v.mac for v in calc.snapshot().vteps6] == [expected]
    assert calc.routing.vtep_mac(PEER) == "66:00:00:00:04:02"  # IPv4's came with the node


def test_own_vteps_carry_felix_configuration():
    calc = _calc(vxlan4="always")
    calc.apply([(keys.global_config_path("VXLANVNI"), "5000"), (keys.global_config_path("VXLANPort"), "4790"),
                (keys.global_config_path("VXLANMTUV6"), "1400")])
    state = calc.snapshot()
    assert own_vteps((calc.routing, calc.routing6), state.settings) == [
        OwnVTEP("10.65.0.1", "66:00:00:00:04:01", "10.201.0.1", 4790, 5000, 0),
        OwnVTEP("fd65::1", "66:00:00:00:06:01", "fd20::1", 4790, 5000, 1400),
    ]
    # An MTU below IPv6's minimum is refused: the default (from the parent's MTU) stays.
    calc.apply([(keys.global_config_path("VXLANMTUV6"), "1000")])
    assert calc.snapshot().settings.vxlan_mtu_v6 == 0


def test_ipv6_vtep_waits_for_the_node_ipv6_address():
    calc = _calc()
    calc.apply([(keys.resource_path("Node", PEER), {"spec": {"bgp": {"ipv4Address": "10.201.0.2/24"}}})])
    state = calc.snapshot()
    assert state.vteps6 == []
    assert all("fd65::1:0/122" not in r.dst for r in state.routes6)
