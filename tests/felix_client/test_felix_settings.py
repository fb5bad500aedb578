"""Deny, REJECT, LogPrefix, NAT-outgoing and VXLAN rules as Felix renders them, the FelixConfiguration
fields behind them (with Felix's precedence and defaults), and unrenderable Deny/Pass rules failing
closed."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

from felix_client import rules
from felix_client.calc import Calculator
from felix_client.calc.model import FelixSettings, ParsedRule, parse_rules
from felix_client.rules.policy import RuleContext
from typha.model import keys

from .test_calc import NODE, _routing_calc, policy, wep


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("felix_client_rules_rejected_total", {"reason": reason}) or 0.0


# --- fail closed ----------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["deny", "pass", "next-tier"])
def test_an_unrenderable_deny_or_pass_becomes_an_unconditional_deny(action: str, caplog: Any) -> None:
    before = rejected("bad-port")
    with caplog.at_level(logging.WARNING, logger="felix_client.validate"):
        parsed = parse_rules([{"action": action, "protocol": "tcp", "dst_ports": ["80;x"]}], f"t-{action}")
    assert parsed == (ParsedRule("deny", fail_closed=True),)
    assert rejected("bad-port") == before + 1  # still counted
    assert any("rendered as a drop" in r.getMessage() and "bad-port" in r.getMessage() for r in caplog.records)
    # No match at all: it drops everything that reaches it, in the chain (direction) it was in.
    assert rules.render_rules(parsed, "Policy x ingress") == [
        '-m comment --comment "Policy x ingress" -m comment --comment "felix-client: invalid rule fails closed" '
        "-j MARK --set-xmark 0x40000/0x40000",
        '-m comment --comment "Policy x ingress" -m mark --mark 0x40000/0x40000 -j DROP',
    ]


def test_an_unrenderable_allow_or_log_is_left_out_and_a_rule_felix_skips_stays_skipped() -> None:
    for action in ("allow", "log", None):
        assert parse_rules([{"action": action, "protocol": "tcp", "dst_ports": ["80;x"]}], "t") == ()
    # Felix renders nothing for IPv4 here whatever the action: skipping is exact, not a widening.
    assert parse_rules([{"action": "deny", "src_nets": ["fd00::/64"]}], "t") == ()
    assert parse_rules([{"action": "deny", "!dst_nets": ["0.0.0.0/0"]}], "t") == ()


def test_a_rule_that_is_not_an_object_fails_closed() -> None:
    assert parse_rules(["deny all"], "t") == (ParsedRule("deny", fail_closed=True),)


def test_fail_closed_deny_stops_a_later_allow_in_the_policy_chain() -> None:
    calc = Calculator(NODE)
    calc.apply([
        wep(NODE, "demo", "web", "10.65.0.2", {"app": "web"}),
        policy("p", "app == 'web'", types=["ingress"], inbound_rules=[
            {"action": "deny", "protocol": "tcp", "src_ports": ["not a port"]},
            {"action": "allow"},
        ]),
    ])
    text = rules.render_iptables(calc.snapshot())
    chain = [line for line in text.splitlines() if line.startswith("-A cali-pi-np/demo/p ")]
    assert chain[0].endswith("felix-client: invalid rule fails closed\" -j MARK --set-xmark 0x40000/0x40000")
    assert chain[1].endswith("-m mark --mark 0x40000/0x40000 -j DROP")
    assert chain[2].endswith("-j MARK --set-xmark 0x10000/0x10000")  # the allow comes after the drop


# --- actions --------------------------------------------------------------------------------------


def test_deny_marks_then_drops_or_rejects() -> None:
    (deny,) = parse_rules([{"action": "deny", "protocol": "udp"}])
    assert rules.render_rule(deny, "c") == [
        '-p udp -m comment --comment "c" -j MARK --set-xmark 0x40000/0x40000',
        '-m comment --comment "c" -m mark --mark 0x40000/0x40000 -j DROP',
    ]
    reject = RuleContext(FelixSettings(filter_deny_action="REJECT"))
    assert rules.render_rule(deny, "c", reject)[1].endswith(
        "-m mark --mark 0x40000/0x40000 -j REJECT --reject-with icmp-port-unreachable")


def test_log_prefix_specifiers_and_rate_limit() -> None:
    (log,) = parse_rules([{"action": "log"}])
    context = RuleContext(FelixSettings(log_prefix="%k:%p:%t:%n", log_rate_limit="10/min",
                                        log_rate_limit_burst=7), "np", "foo", "app", "admin")
    assert rules.render_rule(log, "c", context) == [
        '-m comment --comment "c" -m limit --limit 10/min --limit-burst 7 '
        '-j LOG --log-prefix "np:app/foo:admin:foo: " --log-level 5'
    ]
    # Longer than the 29 bytes --log-prefix holds: cut as iptables-nft stores it.
    long = RuleContext(FelixSettings(log_prefix="calico-packet %p"), "gnp", "a-rather-long-policy-name")
    assert '--log-prefix "calico-packet a-rather-long-p"' in rules.render_rule(log, "c", long)[0]


# --- FelixConfiguration ---------------------------------------------------------------------------


def test_settings_defaults_are_felixs() -> None:
    settings = FelixSettings.from_sources(lambda name: None)
    assert settings == FelixSettings()
    assert (settings.endpoint_to_host_action, settings.filter_deny_action, settings.log_prefix) == (
        "DROP", "DROP", "calico-packet")


def test_settings_precedence_env_then_datastore_and_bad_values_fall_through() -> None:
    datastore = {"IptablesFilterDenyAction": "Reject", "LogPrefix": "from-datastore", "NATPortRange": "99:100",
                 "LogActionRateLimit": "5/second", "NATOutgoingAddress": "not-an-ip"}
    env = {"FELIX_LOGPREFIX": "from-env", "FELIX_IPTABLESFILTERDENYACTION": "sometimes"}
    before = REGISTRY.get_sample_value("felix_client_objects_rejected_total", {"kind": "FelixConfiguration"}) or 0
    settings = FelixSettings.from_sources(datastore.get, env)
    assert settings.log_prefix == "from-env"
    assert settings.filter_deny_action == "REJECT"  # the bad env value falls through to the datastore's
    assert settings.nat_port_range == (99, 100)
    assert settings.log_rate_limit == "5/sec"
    assert settings.nat_outgoing_address == ""  # invalid: Felix's default
    after = REGISTRY.get_sample_value("felix_client_objects_rejected_total", {"kind": "FelixConfiguration"})
    assert after == before + 2


def test_calculator_reads_global_then_per_host_config() -> None:
    calc = Calculator(NODE)
    assert calc.snapshot().settings.endpoint_to_host_action == "DROP"
    calc.update(keys.global_config_path("DefaultEndpointToHostAction"), "ACCEPT")
    calc.update(keys.global_config_path("IptablesFilterDenyAction"), "REJECT")
    assert calc.snapshot().endpoint_to_host_action == "ACCEPT"
    calc.update(keys.host_config_path(NODE, "DefaultEndpointToHostAction"), "RETURN")
    calc.update(keys.host_config_path("other-node", "IptablesFilterDenyAction"), "DROP")
    state = calc.snapshot()
    assert (state.endpoint_to_host_action, state.settings.filter_deny_action) == ("RETURN", "REJECT")
    assert "-A cali-wl-to-host -m comment --comment \"Configured DefaultEndpointToHostAction\" -j RETURN" in (
        rules.render_iptables(state))
    # The environment wins over both (Felix: env > config file > per-host > global).
    env_calc = Calculator(NODE, env={"FELIX_DEFAULTENDPOINTTOHOSTACTION": "DROP"})
    env_calc.update(keys.host_config_path(NODE, "DefaultEndpointToHostAction"), "ACCEPT")
    assert env_calc.snapshot().endpoint_to_host_action == "DROP"


def test_reject_reaches_the_endpoint_chains() -> None:
    calc = Calculator(NODE)
    calc.apply([wep(NODE, "demo", "web", "10.65.0.2", {"app": "web"}),
                (keys.global_config_path("IptablesFilterDenyAction"), "REJECT")])
    text = rules.render_iptables(calc.snapshot())
    assert '-m comment --comment "Reject if no profiles matched" -j REJECT --reject-with icmp-port-unreachable' in text
    assert "-m conntrack --ctstate INVALID -j REJECT --reject-with icmp-port-unreachable" in text


def test_conntrack_invalid_check_and_filter_allow_action_reach_the_endpoint_chains() -> None:
    """DisableConntrackInvalidCheck leaves out the INVALID drop of every endpoint chain (Felix's
    appendConntrackRules); IptablesFilterAllowAction RETURN makes established traffic set the accept
    mark and return instead of accepting. A bad value is Felix's default (the check stays on)."""
    calc = Calculator(NODE)
    calc.apply([wep(NODE, "demo", "web", "10.65.0.2", {"app": "web"})])
    text = rules.render_iptables(calc.snapshot())
    assert "-A cali-tw-cali" in text and "-m conntrack --ctstate INVALID -j DROP" in text
    assert "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" in text
    calc.apply([(keys.global_config_path("DisableConntrackInvalidCheck"), "true"),
                (keys.global_config_path("IptablesFilterAllowAction"), "RETURN")])
    text = rules.render_iptables(calc.snapshot())
    endpoint_rules = [line for line in text.splitlines() if line.startswith(("-A cali-tw-", "-A cali-fw-"))]
    assert endpoint_rules
    assert not any("--ctstate INVALID" in line for line in endpoint_rules)
    assert any(line.endswith("--ctstate RELATED,ESTABLISHED -j MARK --set-xmark 0x10000/0x10000")
               for line in endpoint_rules)
    assert any(line.endswith("--ctstate RELATED,ESTABLISHED -j RETURN") for line in endpoint_rules)
    assert not FelixSettings.from_sources({"DisableConntrackInvalidCheck": "sometimes"}.get).disable_conntrack_invalid


def test_rule_annotations_go_on_every_rule_of_the_rule() -> None:
    """Felix renders a rule's metadata annotations as comments on each of its iptables rules."""
    parsed = parse_rules([{"action": "deny", "protocol": "tcp", "metadata": {"annotations": {"k": "v"}}}], "t")
    rendered = rules.render_rules(parsed, "Policy x ingress")
    assert len(rendered) == 2
    assert all('-m comment --comment "k=v"' in rule for rule in rendered)


# --- NAT outgoing and VXLAN -----------------------------------------------------------------------


def test_nat_outgoing_settings() -> None:
    calc = _routing_calc({"masquerade": True})
    calc.apply([(keys.global_config_path("NATOutgoingAddress"), "192.168.0.1"),
                (keys.global_config_path("NATPortRange"), "32768:65535"),
                (keys.global_config_path("NATOutgoingExclusions"), "IPPoolsAndHostIPs")])
    nat = rules.render_tables(calc.snapshot())["nat"].chains["cali-nat-outgoing"]
    match = ("-m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40network-ip-pools dst "
             "-m set ! --match-set cali40all-hosts-net dst")
    assert nat == [
        f"-p tcp {match} -j SNAT --to-source 192.168.0.1:32768-65535 --random-fully",
        f"-p tcp {match} -j RETURN",
        f"-p udp {match} -j SNAT --to-source 192.168.0.1:32768-65535 --random-fully",
        f"-p udp {match} -j RETURN",
        f"{match} -j SNAT --to-source 192.168.0.1 --random-fully",
    ]


def test_vxlan_notrack_and_udp_masquerade_clear_of_the_vxlan_port() -> None:
    tables = rules.render_tables(_routing_calc({"vxlan_mode": "always"}, vxlan=True).snapshot())
    assert "-p udp -m udp --dport 4789 -j NOTRACK" in tables["raw"].chains["cali-PREROUTING"]
    assert "-p udp -m udp --dport 4789 -j NOTRACK" in tables["raw"].chains["cali-OUTPUT"]
    assert tables["nat"].chains["cali-POSTROUTING"][-2:] == [
        "-o vxlan.calico -p udp -m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL "
        "-j MASQUERADE --to-ports 4790-65535 --random-fully",
        "-o vxlan.calico -m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL "
        "-j MASQUERADE --random-fully",
    ]
    without = rules.render_tables(_routing_calc({}).snapshot())
    assert not any("NOTRACK" in rule for chain in without["raw"].chains.values() for rule in chain)
    # Felix's raw OUTPUT chain is there without VXLAN too (it dispatches to untracked host endpoint policy).
    assert without["raw"].chains["cali-OUTPUT"] == [
        "-j MARK --set-xmark 0x0/0x1b0000", "-j cali-to-host-endpoint", "-m mark --mark 0x10000/0x10000 -j ACCEPT"]


def test_vxlan_port_reaches_every_vxlan_rule() -> None:
    calc = _routing_calc({"vxlan_mode": "always"}, vxlan=True)
    calc.apply([wep(NODE, "demo", "web", "10.65.0.2", {"app": "web"}),
                (keys.global_config_path("VXLANPort"), "8472")])
    state = calc.snapshot()
    assert state.settings.vxlan_port == 8472
    text = rules.render_iptables(state)
    assert "4789" not in text
    assert "-p udp -m udp --dport 8472 -j NOTRACK" in text
    assert text.count("--dports 8472") == 4  # INPUT allow and drop, OUTPUT allow, the workload's drop
    assert "-j MASQUERADE --to-ports 8473-65535 --random-fully" in text


def test_nat_outgoing_interface_filter() -> None:
    calc = _routing_calc({"masquerade": True})
    calc.update(keys.global_config_path("IptablesNATOutgoingInterfaceFilter"), "eth+")
    assert rules.render_tables(calc.snapshot())["nat"].chains["cali-nat-outgoing"] == [
        "-o eth+ -m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40network-ip-pools dst "
        "-j MASQUERADE --random-fully"]
    calc.update(keys.global_config_path("IptablesNATOutgoingInterfaceFilter"), "eth0 -j ACCEPT")  # refused
    assert rules.render_tables(calc.snapshot())["nat"].chains["cali-nat-outgoing"][0].startswith("-m set")


def test_encap_from_workloads_settings() -> None:
    calc = Calculator(NODE)
    calc.apply([wep(NODE, "demo", "web", "10.65.0.2", {"app": "web"}),
                (keys.global_config_path("AllowIPIPPacketsFromWorkloads"), "true")])
    text = rules.render_iptables(calc.snapshot())
    assert "IPinIP encapped packets originating in workloads" not in text
    assert "Drop VXLAN encapped packets originating in workloads" in text


# --- policy groups --------------------------------------------------------------------------------


def test_consecutive_policies_with_one_selector_share_a_policy_group_chain() -> None:
    """Felix's policy groups (endpoint manager groupPolicies, PolicyGroupToIptablesChains): two
    policies in a row with the same selector become one cali-gi-/cali-go- chain that the endpoint
    chain jumps to; a policy with another selector keeps its own jump."""
    calc = Calculator(NODE)
    calc.apply([wep(NODE, "demo", "web", "10.65.0.2", {"app": "web"}),
                policy("a", "app == 'web'", order=1, types=["ingress"], inbound_rules=[{"action": "allow"}]),
                policy("b", "app == 'web'", order=2, types=["ingress"], inbound_rules=[{"action": "allow"}]),
                policy("c", "all()", order=3, types=["ingress"], inbound_rules=[{"action": "allow"}])])
    lines = rules.render_iptables(calc.snapshot()).splitlines()
    jumps = [line.split(" -j ")[-1] for line in lines if line.startswith("-A cali-tw-") and "--mark 0x0/" in line
             and " -j cali-" in line]
    assert len(jumps) == 2 and jumps[0].startswith("cali-gi-") and jumps[1] == "cali-pi-np/demo/c", jumps
    group = [line for line in lines if line.startswith(f"-A {jumps[0]} ")]
    assert group == [f"-A {jumps[0]} -j cali-pi-np/demo/a",
                     f"-A {jumps[0]} -m mark --mark 0x0/0x30000 -j cali-pi-np/demo/b"]
    assert f":{jumps[0]} - [0:0]" in lines  # declared, so iptables-restore takes the jump
