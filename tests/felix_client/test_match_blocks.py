"""The rule model from the datastore to the renderer where Felix's tables (felix_tables/) start
later: what rule_scanner.go puts into proto.Rule's set lists, and the scratch-mark blocks a parsed
rule's CIDRs and port alternatives become."""

from __future__ import annotations

from felix_client import rules
from felix_client.calc.model import parse_rules


def test_source_selector_and_service_are_two_sets_in_felix_order() -> None:
    """rule_scanner.go: SrcIpSetIds is the selector's set, then the source service's."""
    (rule,) = parse_rules([{"action": "allow", "src_selector": "app == 'a'", "src_service": "web",
                            "src_service_ns": "demo"}])
    selector, service = rule.src.ip_sets
    assert (selector.kind, service.kind) == ("selector", "service-noport")
    (allow, _ret) = rules.render_rule(rule, "c")
    assert f"-m set --match-set {selector.name} src -m set --match-set {service.name} src " in allow


def test_named_ports_alone_carry_the_selector() -> None:
    (named,) = parse_rules([{"action": "allow", "protocol": "tcp", "dst_selector": "app == 'a'",
                             "dst_ports": ["http"]}])
    assert named.dst.ip_sets == ()
    assert [s.kind for s in named.ipsets()] == ["named-port"]
    (mixed,) = parse_rules([{"action": "allow", "protocol": "tcp", "dst_selector": "app == 'a'",
                             "dst_ports": ["http", 80]}])
    assert sorted(s.kind for s in mixed.ipsets()) == ["named-port", "selector"]


def test_several_cidrs_need_no_ip_set() -> None:
    (rule,) = parse_rules([{"action": "allow", "src_nets": ["10.0.0.0/8", "11.0.0.0/8"],
                            "!src_nets": ["10.1.0.0/16"]}])
    assert rule.ipsets() == []
    assert rules.render_rule(rule, "c") == [
        '-m comment --comment "c" -j MARK --set-xmark 0x0/0x180000',
        '-s 10.0.0.0/8 -m comment --comment "c" -j MARK --set-xmark 0x80000/0x80000',
        '-s 11.0.0.0/8 -m comment --comment "c" -j MARK --set-xmark 0x80000/0x80000',
        '! -s 10.1.0.0/16 -m comment --comment "c" -m mark --mark 0x80000/0x80000 -j MARK --set-xmark 0x10000/0x10000',
        '-m comment --comment "c" -m mark --mark 0x10000/0x10000 -j RETURN',
    ]


def test_a_catch_all_net_counts_as_felix_counts_it() -> None:
    """Felix keeps 0.0.0.0/0 in SrcNet: with a notNet that is two source matches, so a negated block;
    the catch-all itself is what iptables-save shows of `-s 0.0.0.0/0`: nothing."""
    (rule,) = parse_rules([{"action": "deny", "src_nets": ["0.0.0.0/0"], "!src_nets": ["10.1.0.0/16"]}])
    assert rules.render_rule(rule, "c") == [
        '-m comment --comment "c" -j MARK --set-xmark 0x80000/0x180000',
        '-s 10.1.0.0/16 -m comment --comment "c" -j MARK --set-xmark 0x0/0x80000',
        '-m comment --comment "c" -m mark --mark 0x80000/0x80000 -j MARK --set-xmark 0x40000/0x40000',
        '-m comment --comment "c" -m mark --mark 0x40000/0x40000 -j DROP',
    ]
