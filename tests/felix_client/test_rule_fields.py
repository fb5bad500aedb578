"""No rule field is silently ignored: each one of the Calico v3 API's rule types changes what
felix_client renders, or makes the rule skipped (logged and counted) or refused by conversion.

The field lists are facts from projectcalico/calico `api/pkg/apis/projectcalico/v3/policy_common.go`
(Rule, EntityRule, ICMPFields, HTTPMatch, HTTPPath, ServiceMatch, ServiceAccountMatch, RuleMetadata)
and `libcalico-go/lib/backend/model/rule.go` (the v1 model rule the agent receives). A field added
upstream and to these lists without being handled fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from felix_client import rules, validate
from felix_client.calc.model import RULE_FIELDS, ParsedRule, parse_rules
from typha.model.convert.base import ConversionError, rule_v1

V3_FIELDS = {
    "Rule": ["action", "ipVersion", "protocol", "icmp", "notProtocol", "notICMP", "source", "destination", "http",
             "metadata"],
    "EntityRule": ["nets", "selector", "namespaceSelector", "services", "ports", "notNets", "notSelector", "notPorts",
                   "serviceAccounts"],
    "ICMPFields": ["type", "code"],
    "HTTPMatch": ["methods", "paths"],
    "HTTPPath": ["exact", "prefix"],
    "ServiceMatch": ["name", "namespace"],
    "ServiceAccountMatch": ["names", "selector"],
    "RuleMetadata": ["annotations"],
}

V1_FIELDS = [
    "action", "ip_version", "protocol", "!protocol", "icmp_type", "icmp_code", "!icmp_type", "!icmp_code",
    *(f"{neg}{side}_{what}" for neg in ("", "!") for side in ("src", "dst")
      for what in ("tag", "net", "nets", "selector", "ports")),
    "src_service", "src_service_ns", "dst_service", "dst_service_ns",
    "orig_src_selector", "orig_src_namespace_selector", "orig_dst_selector", "orig_dst_namespace_selector",
    "!orig_src_selector", "!orig_dst_selector", "orig_src_service_acct_names", "orig_src_service_acct_selector",
    "orig_dst_service_acct_names", "orig_dst_service_acct_selector", "http", "metadata",
]
# Passed through for the policy API / Dikastes; the combined selectors carry their meaning, and
# Felix's iptables renderer does not read them either. The v3 walk below proves the meaning arrives.
V1_INFORMATIONAL = {f for f in V1_FIELDS if "orig_" in f}

BASE: dict[str, Any] = {"action": "Allow", "protocol": "TCP"}
ICMP_BASE: dict[str, Any] = {"action": "Allow", "protocol": "ICMP"}


def _side(side: str, er: dict[str, Any], base: dict[str, Any] = BASE) -> tuple[dict[str, Any], dict[str, Any]]:
    return base, {**base, side: er}


# (struct, field) -> (rule without the field, rule with it): v3 rules.
CASES: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {
    ("Rule", "action"): (BASE, {**BASE, "action": "Deny"}),
    ("Rule", "ipVersion"): (BASE, {**BASE, "ipVersion": 6}),
    ("Rule", "protocol"): ({"action": "Allow"}, BASE),
    ("Rule", "icmp"): (ICMP_BASE, {**ICMP_BASE, "icmp": {"type": 8}}),
    ("Rule", "notProtocol"): ({"action": "Allow"}, {"action": "Allow", "notProtocol": "UDP"}),
    ("Rule", "notICMP"): (ICMP_BASE, {**ICMP_BASE, "notICMP": {"type": 8}}),
    ("Rule", "source"): _side("source", {"nets": ["10.1.0.0/16"]}),
    ("Rule", "destination"): _side("destination", {"nets": ["10.1.0.0/16"]}),
    ("Rule", "http"): (BASE, {**BASE, "http": {}}),
    ("Rule", "metadata"): (BASE, {**BASE, "metadata": {"annotations": {"team": "blue"}}}),
    ("ICMPFields", "type"): (ICMP_BASE, {**ICMP_BASE, "icmp": {"type": 3}}),
    ("ICMPFields", "code"): ({**ICMP_BASE, "icmp": {"type": 3}}, {**ICMP_BASE, "icmp": {"type": 3, "code": 1}}),
    ("HTTPMatch", "methods"): (BASE, {**BASE, "http": {"methods": ["GET"]}}),
    ("HTTPMatch", "paths"): (BASE, {**BASE, "http": {"paths": [{"exact": "/a"}]}}),
    ("HTTPPath", "exact"): (BASE, {**BASE, "http": {"paths": [{"exact": "/a"}]}}),
    ("HTTPPath", "prefix"): (BASE, {**BASE, "http": {"paths": [{"prefix": "/a"}]}}),
    ("ServiceMatch", "name"): _side("destination", {"services": {"name": "web"}}),
    ("ServiceMatch", "namespace"): ({**BASE, "destination": {"services": {"name": "web"}}},
                                    {**BASE, "destination": {"services": {"name": "web", "namespace": "other"}}}),
    ("ServiceAccountMatch", "names"): _side("source", {"serviceAccounts": {"names": ["sa1"]}}),
    ("ServiceAccountMatch", "selector"): _side("source", {"serviceAccounts": {"selector": "role == 'x'"}}),
    ("RuleMetadata", "annotations"): (BASE, {**BASE, "metadata": {"annotations": {"a": "b"}}}),
}
ENTITY_SAMPLES: dict[str, Any] = {
    "nets": ["10.1.0.0/16"],
    "selector": "app == 'db'",
    "namespaceSelector": "team == 'a'",
    "services": {"name": "web", "namespace": "demo"},
    "ports": [80],
    "notNets": ["10.2.0.0/16"],
    "notSelector": "app == 'x'",
    "notPorts": [81],
    "serviceAccounts": {"names": ["sa1"]},
}
for _where in ("source", "destination"):
    for _field, _sample in ENTITY_SAMPLES.items():
        CASES[(f"EntityRule.{_where}", _field)] = _side(_where, {_field: _sample})


def _rejected() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "felix_client_rules_rejected":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


def _outcome(v3_rule: dict[str, Any]) -> str | tuple[Any, ...]:
    """"refused" (conversion), "skipped" (agent, counted), or the rendered rules and their IP sets."""
    try:
        v1 = rule_v1(v3_rule, "demo", "test")
    except ConversionError:
        return "refused"
    before = _rejected()
    parsed = parse_rules([v1], "test")
    if not parsed:
        assert _rejected() == before + 1, "a rule left out must be counted"
        return "skipped"
    (rule,) = parsed
    return tuple(rules.render_rule(rule, "c")), tuple(sorted(s.name for s in rule.ipsets()))


def test_every_v3_rule_field_is_walked() -> None:
    walked: dict[str, set[str]] = {}
    for struct, field in CASES:
        walked.setdefault(struct.split(".")[0], set()).add(field)
    assert walked == {k: set(v) for k, v in V3_FIELDS.items()}
    assert {f for (s, f) in CASES if s == "EntityRule.destination"} == set(V3_FIELDS["EntityRule"])
    assert {f for (s, f) in CASES if s == "EntityRule.source"} == set(V3_FIELDS["EntityRule"])


@pytest.mark.parametrize("case", sorted(CASES), ids=lambda c: f"{c[0]}.{c[1]}")
def test_no_v3_field_is_silently_ignored(case: tuple[str, str]) -> None:
    without, with_field = CASES[case]
    base = _outcome(without)
    assert isinstance(base, tuple), f"the baseline of {case} must render"
    assert _outcome(with_field) != base, f"{case} neither changed the rendered rule nor skipped it"


def test_v1_fields_are_all_known() -> None:
    """Every v1 field is either rendered or one of the informational originals; tags are refused."""
    tags = {f for f in V1_FIELDS if f.endswith("_tag")}
    assert set(V1_FIELDS) - tags == RULE_FIELDS
    assert V1_INFORMATIONAL < RULE_FIELDS
    for tag in sorted(tags):
        assert parse_rules([{"action": "allow", tag: "t"}], "test") == ()
    assert parse_rules([{"action": "allow", "src_frobnicate": 1}], "test") == ()


@pytest.mark.parametrize(
    ("field", "value"),
    [("src_net", "10.9.0.0/16"), ("dst_net", "10.9.0.0/16"), ("!src_net", "10.9.0.0/16"), ("!dst_net", "10.9.0.0/16")],
)
def test_single_net_fields_are_matched(field: str, value: str) -> None:
    (plain,) = parse_rules([{"action": "allow"}])
    (with_net,) = parse_rules([{"action": "allow", field: value}])
    assert rules.render_rule(with_net, "c") != rules.render_rule(plain, "c")
    assert value in " ".join(rules.render_rule(with_net, "c"))


def test_destination_service_is_not_allow_all() -> None:
    """The issue's defect: a rule to a service rendered as "allow all TCP"."""
    v1 = rule_v1({**BASE, "destination": {"services": {"name": "web", "namespace": "demo"}}}, "demo", "t")
    (rule,) = parse_rules([v1])
    (allow, _ret) = rules.render_rule(rule, "c")
    (spec,) = rule.ipsets()
    assert spec.kind == "service" and spec.service == "demo/web" and spec.ipset_type == "hash:ip,port"
    assert f"-m set --match-set {spec.name} dst,dst" in allow
    assert spec.name.startswith("cali40svc:")


def test_source_service_matches_addresses() -> None:
    v1 = rule_v1({**BASE, "source": {"services": {"name": "web", "namespace": "demo"}}}, "demo", "t")
    (rule,) = parse_rules([v1])
    (spec,) = rule.ipsets()
    assert spec.kind == "service-noport" and spec.ipset_type == "hash:net"
    assert spec.name.startswith("cali40svcnoport:")
    assert f"-m set --match-set {spec.name} src " in rules.render_rule(rule, "c")[0]


@pytest.mark.parametrize("side", ["src", "dst"])
def test_ipv6_only_not_nets_skip_the_rule(side: str) -> None:
    """FilterRuleToIPVersion: notNets holding only other-family CIDRs drop the rule for IPv4."""
    before = _rejected()
    assert parse_rules([{"action": "allow", f"!{side}_nets": ["fd00::/64"]}], "test") == ()
    assert _rejected() == before + 1
    # Mixed families keep the IPv4 part, as Felix does.
    (rule,) = parse_rules([{"action": "allow", f"!{side}_nets": ["fd00::/64", "10.0.0.0/8"]}])
    assert "! -" + side[0] + " 10.0.0.0/8" in rules.render_rule(rule, "c")[0]


def test_negated_catch_all_skips_the_rule() -> None:
    assert parse_rules([{"action": "allow", "!dst_nets": ["0.0.0.0/0"]}], "test") == ()


def test_http_match_keeps_deny_rules_and_skips_allow_rules() -> None:
    http = {"methods": ["GET"]}
    assert parse_rules([{"action": "allow", "http": http}]) == ()
    # A Pass it cannot render fails closed: left out, its packets would reach later rules that may allow them.
    assert parse_rules([{"action": "next-tier", "http": http}]) == (ParsedRule("deny", fail_closed=True),)
    (deny,) = parse_rules([{"action": "deny", "http": http}])
    assert rules.render_rule(deny, "c")[-1].endswith("-j DROP")


def test_icmp_without_icmp_protocol_is_refused() -> None:
    # iptables' icmp match needs -p icmp; rendered anyway it would make the whole table fail.
    assert parse_rules([{"action": "allow", "protocol": "tcp", "icmp_type": 8}]) == ()
    assert parse_rules([{"action": "allow", "protocol": "icmp", "icmp_code": 1}]) == ()


def test_annotation_comments_are_escaped() -> None:
    (rule,) = parse_rules([{"action": "allow", "metadata": {"annotations": {"k": 'v" -j ACCEPT\n-A x'}}}])
    line = rules.render_rule(rule, "c")[0]
    assert '-m comment --comment "k=v_ -j ACCEPT_-A x"' in line  # escapeComment: one harmless token
    assert validate.check_rule_line("chain", line) is None
    assert rules.Table("filter", [], {"chain": [line]}).guarded().chains["chain"] == [line]


@pytest.mark.parametrize(
    "bad",
    ['-p tcp\n-A cali-fw-x -j ACCEPT', '-p tcp -m comment --comment "x" -j ACCEPT" -j DROP', "-p tcp -j A -j B",
     "-p tcp --append cali-INPUT -j ACCEPT", "-p tcp\x00 -j ACCEPT", "-p tcp -m comment --comment \"\u00e9\" -j DROP"],
)
def test_render_guard_fails_closed(bad: str) -> None:
    assert validate.check_rule_line("chain", bad) is not None
    assert rules.Table("filter", [], {"chain": [bad]}).guarded().chains["chain"] == [rules.GUARD_DROP]


def test_protocol_and_not_protocol() -> None:
    (tcp_not_udp,) = parse_rules([{"action": "allow", "protocol": "tcp", "!protocol": "udp"}])
    (tcp,) = parse_rules([{"action": "allow", "protocol": "tcp"}])
    # iptables takes one -p; "tcp and not udp" is "tcp".
    assert rules.render_rule(tcp_not_udp, "c") == rules.render_rule(tcp, "c")
    # "tcp and not 6" never matches: the rule is skipped.
    assert parse_rules([{"action": "allow", "protocol": "tcp", "!protocol": 6}], "test") == ()


def test_global_policy_chain_names_are_felixs() -> None:
    """felix/types/policy_id.go: a global policy's ID has no empty namespace segment."""
    from felix_client.names import policy_chain_name, policy_id
    from typha.model.keys import PolicyKey

    gnp = PolicyKey("GlobalNetworkPolicy", "", "deny-all")
    assert policy_id(gnp) == "gnp/deny-all"
    assert policy_chain_name(gnp, True) == "cali-pi-gnp/deny-all"
    knp = PolicyKey("KubernetesNetworkPolicy", "demo", "allow-frontend")
    assert policy_id(knp) == "knp/demo/allow-frontend"
