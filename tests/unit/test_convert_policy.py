"""Policy conversions: Kubernetes NetworkPolicy, Calico (Staged)(Global)NetworkPolicy, Tier.

The selector strings are upstream's exact spelling (k8s/conversion/conversion.go and
syncersv1/updateprocessors/rules.go): single quotes, `(ns) && (sel)` wrapping, canonical re-serialising
only where upstream re-parses (namespace and service-account selectors).
"""

from __future__ import annotations

from typing import Any

import pytest

from typha.model import selector
from typha.model.convert import FELIX_CONVERTERS, ConversionError
from typha.testing import objects as o

K8S_NP = FELIX_CONVERTERS["networkpolicies.networking.k8s.io"]
CALICO_NP = FELIX_CONVERTERS["networkpolicies.crd.projectcalico.org"]
GNP = FELIX_CONVERTERS["globalnetworkpolicies.crd.projectcalico.org"]
CRD = "crd.projectcalico.org/v1"


def k8s_policy(spec: dict[str, Any], name: str = "np", ns: str = "demo") -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}  # fmt: skip


def one(kvs: list[tuple[str, Any]]) -> tuple[str, Any]:
    assert len(kvs) == 1
    return kvs[0]


def test_worked_example_allow_frontend() -> None:
    """docs/calico/felix.md §2.4: demo/allow-frontend."""
    np = o.network_policy("demo", "allow-frontend", pod_selector={"app": "backend"},
                          from_labels={"app": "frontend"}, port=8080)  # fmt: skip
    key, value = one(K8S_NP(np))
    assert key == "/calico/v1/policy/KubernetesNetworkPolicy/demo/allow-frontend"
    assert value == {
        "namespace": "demo",
        "tier": "default",
        "order": 1000.0,
        "inbound_rules": [
            {
                "action": "allow",
                "protocol": "tcp",
                "src_selector": "(projectcalico.org/namespace == 'demo') && "
                "(projectcalico.org/orchestrator == 'k8s' && app == 'frontend')",
                "orig_src_selector": "projectcalico.org/orchestrator == 'k8s' && app == 'frontend'",
                "dst_ports": [8080],
            }
        ],
        "selector": "(projectcalico.org/orchestrator == 'k8s' && app == 'backend') && "
        "projectcalico.org/namespace == 'demo'",
        "types": ["ingress"],
    }
    # ...and the source selector's canonical form and IP-set ID are the ones Felix uses.
    src = selector.parse(value["inbound_rules"][0]["src_selector"])
    assert src.canonical == (
        '(projectcalico.org/namespace == "demo" && (projectcalico.org/orchestrator == "k8s" && app == "frontend"))'
    )
    assert ("cali40" + src.unique_id)[:31] == "cali40s:WW1cS4JdpQmN8rHkfbF1kmF"


def test_k8s_selector_spelling_match_expressions_sorted_labels() -> None:
    spec = {
        "podSelector": {
            "matchLabels": {"tier": "web", "app": "x"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "stage"]},
                {"key": "skip", "operator": "NotIn", "values": ["yes"]},
                {"key": "has-me", "operator": "Exists"},
                {"key": "not-me", "operator": "DoesNotExist"},
            ],
        },
        "policyTypes": ["Egress"],
    }
    _, value = one(K8S_NP(k8s_policy(spec)))
    assert value["selector"] == (
        "(projectcalico.org/orchestrator == 'k8s' && app == 'x' && tier == 'web' && "
        "env in { 'prod', 'stage' } && skip not in { 'yes' } && has(has-me) && ! has(not-me)) && "
        "projectcalico.org/namespace == 'demo'"
    )
    assert value["types"] == ["egress"]
    assert "inbound_rules" not in value
    assert "outbound_rules" not in value


def test_empty_pod_selector_and_default_types() -> None:
    _, value = one(K8S_NP(k8s_policy({"podSelector": {}, "ingress": [{}]})))
    assert value["selector"] == "(projectcalico.org/orchestrator == 'k8s') && projectcalico.org/namespace == 'demo'"
    assert value["types"] == ["ingress"]
    assert value["inbound_rules"] == [{"action": "allow"}]  # from anywhere, any port


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({"podSelector": {}, "egress": [{}]}, ["ingress", "egress"]),  # egress-only rules: still isolates ingress
        ({"podSelector": {}, "ingress": [{}], "egress": [{"ports": [{"port": 53}]}]}, ["ingress", "egress"]),
        ({"podSelector": {}, "egress": []}, ["ingress"]),
        ({"podSelector": {}}, ["ingress"]),
        ({"podSelector": {}, "egress": [{}], "policyTypes": ["Ingress"]}, ["ingress"]),  # given types win
    ],
)
def test_missing_policy_types_default_as_the_api_server_does(spec: dict[str, Any], types: list[str]) -> None:
    _, value = one(K8S_NP(k8s_policy(spec)))
    assert value["types"] == types
    if "egress" in types:
        assert value["outbound_rules"]


def test_namespace_selectors_get_pcns_prefix() -> None:
    spec = {
        "podSelector": {},
        "ingress": [
            {
                "from": [
                    {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"app": "x"}}},
                    {"namespaceSelector": {}},
                ]
            }
        ],
    }
    _, value = one(K8S_NP(k8s_policy(spec)))
    first, second = value["inbound_rules"]
    assert first["src_selector"] == (
        "(pcns.team == \"a\") && (projectcalico.org/orchestrator == 'k8s' && app == 'x')"
    )
    assert first["orig_src_namespace_selector"] == "team == 'a'"
    assert second["src_selector"] == "(has(projectcalico.org/namespace)) && (projectcalico.org/orchestrator == 'k8s')"
    assert second["orig_src_namespace_selector"] == "all()"


def test_ports_group_by_protocol_and_merge_into_ranges() -> None:
    spec = {
        "podSelector": {},
        "ingress": [
            {
                "from": [{"ipBlock": {"cidr": "10.1.2.3/16", "except": ["10.1.9.0/24"]}}],
                "ports": [
                    {"port": 81},
                    {"port": 80},
                    {"protocol": "UDP", "port": 53},
                    {"port": "http"},
                    {"port": 9000, "endPort": 9005},
                ],
            }
        ],
    }
    _, value = one(K8S_NP(k8s_policy(spec)))
    assert value["inbound_rules"] == [
        {"action": "allow", "protocol": "tcp", "src_nets": ["10.1.0.0/16"], "!src_nets": ["10.1.9.0/24"],
         "dst_ports": ["http", "80:81", "9000:9005"]},
        {"action": "allow", "protocol": "udp", "src_nets": ["10.1.0.0/16"], "!src_nets": ["10.1.9.0/24"],
         "dst_ports": [53]},
    ]  # fmt: skip


def test_protocol_without_port_allows_all_ports_of_it() -> None:
    spec = {"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP"}, {"protocol": "TCP", "port": 1}]}]}
    _, value = one(K8S_NP(k8s_policy(spec)))
    assert value["inbound_rules"] == [
        {"action": "allow", "protocol": "sctp"},
        {"action": "allow", "protocol": "tcp", "dst_ports": [1]},
    ]


def test_egress_rule_puts_peer_on_destination() -> None:
    spec = {
        "podSelector": {"matchLabels": {"app": "a"}},
        "policyTypes": ["Ingress", "Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432}]}],
    }
    _, value = one(K8S_NP(k8s_policy(spec)))
    assert value["types"] == ["ingress", "egress"]
    assert value["outbound_rules"] == [
        {
            "action": "allow",
            "protocol": "tcp",
            "dst_selector": "(projectcalico.org/namespace == 'demo') && "
            "(projectcalico.org/orchestrator == 'k8s' && app == 'db')",
            "dst_ports": [5432],
            "orig_dst_selector": "projectcalico.org/orchestrator == 'k8s' && app == 'db'",
        }
    ]


@pytest.mark.parametrize(
    "spec",
    [
        {"podSelector": {"matchLabels": {"app": "it's"}}},  # a quote can't be expressed in a selector
        {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
        {"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]},
        {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}},
    ],
    ids=["bad-label-value", "bad-cidr", "bad-port", "bad-operator"],
)
def test_invalid_k8s_policies(spec: dict[str, Any]) -> None:
    with pytest.raises(ConversionError):
        K8S_NP(k8s_policy(spec))


def test_staged_kubernetes_network_policy() -> None:
    conv = FELIX_CONVERTERS["stagedkubernetesnetworkpolicies.crd.projectcalico.org"]
    obj: dict[str, Any] = {"apiVersion": CRD, "kind": "StagedKubernetesNetworkPolicy",
           "metadata": {"name": "s", "namespace": "demo"},
           "spec": {"stagedAction": "Set", "podSelector": {}, "ingress": [{}]}}  # fmt: skip
    key, value = one(conv(obj))
    assert key == "/calico/v1/policy/StagedKubernetesNetworkPolicy/demo/s"
    assert value["staged_action"] == "Set"
    assert value["order"] == 1000.0
    obj["spec"]["stagedAction"] = "Delete"
    assert conv(obj) == []


# --- Calico policies ---


def calico_np(spec: dict[str, Any], *, name: str = "np1", ns: str = "demo", md: dict[str, Any] | None = None) -> dict:
    return {"apiVersion": CRD, "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns, **(md or {})}, "spec": spec}  # fmt: skip


def test_calico_network_policy_rules() -> None:
    spec = {
        "tier": "default",
        "order": 100,
        "selector": "app == 'db'",
        "serviceAccountSelector": "role == 'x'",
        "types": ["Ingress", "Egress"],
        "ingress": [
            {
                "action": "Allow",
                "protocol": "TCP",
                "source": {
                    "selector": "role == 'fe'",
                    "namespaceSelector": "team == 'x'",
                    "notSelector": "bad == 'true'",
                    "serviceAccounts": {"names": ["sb", "sa"]},
                    "ports": ["1000:1000"],
                },
                "destination": {"ports": [5432, "db-port", "8000:8080"], "notNets": ["10.9.9.9"]},
                "icmp": {"type": 8, "code": 0},
            },
            {"action": "Pass", "ipVersion": 6, "notProtocol": 58, "source": {"nets": ["fd00::1/64"]}},
        ],
        "egress": [{"action": "Deny", "destination": {"notSelector": "x == 'y'"}}],
    }
    key, value = one(CALICO_NP(calico_np(spec)))
    assert key == "/calico/v1/policy/NetworkPolicy/demo/np1"
    assert value == {
        "namespace": "demo",
        "tier": "default",
        "order": 100.0,
        "selector": "((app == 'db') && projectcalico.org/namespace == 'demo') && pcsa.role == \"x\"",
        "types": ["ingress", "egress"],
        "inbound_rules": [
            {
                "action": "allow",
                "protocol": "tcp",
                "icmp_type": 8,
                "icmp_code": 0,
                "src_selector": "(pcns.team == \"x\") && "
                "((projectcalico.org/serviceaccount in {\"sa\", \"sb\"}) && (role == 'fe'))",
                "src_ports": [1000],
                "!src_selector": "bad == 'true'",
                "orig_src_selector": "role == 'fe'",
                "orig_src_namespace_selector": "team == 'x'",
                "!orig_src_selector": "bad == 'true'",
                "orig_src_service_acct_names": ["sb", "sa"],
                "dst_ports": [5432, "db-port", "8000:8080"],
                "!dst_nets": ["10.9.9.9/32"],
            },
            {"action": "next-tier", "ip_version": 6, "!protocol": 58, "src_nets": ["fd00::/64"]},
        ],
        "outbound_rules": [
            {
                "action": "deny",
                # A notSelector alone still scopes the rule to the policy's namespace.
                "dst_selector": "projectcalico.org/namespace == 'demo'",
                "!dst_selector": "x == 'y'",
                "!orig_dst_selector": "x == 'y'",
            }
        ],
    }


def test_calico_policy_name_from_metadata_annotation_or_default_prefix() -> None:
    md = {"annotations": {"projectcalico.org/metadata": '{"name":"real-name","creationTimestamp":null}'}}
    assert one(CALICO_NP(calico_np({}, name="default.real-name", md=md)))[0] == (
        "/calico/v1/policy/NetworkPolicy/demo/real-name"
    )
    assert one(CALICO_NP(calico_np({}, name="default.legacy")))[0] == "/calico/v1/policy/NetworkPolicy/demo/legacy"
    key, value = one(CALICO_NP(calico_np({"tier": "sec"}, name="sec.p")))
    assert key == "/calico/v1/policy/NetworkPolicy/demo/sec.p"
    assert value == {"namespace": "demo", "tier": "sec", "selector": "projectcalico.org/namespace == 'demo'"}


def test_global_network_policy() -> None:
    obj = {"apiVersion": CRD, "kind": "GlobalNetworkPolicy", "metadata": {"name": "default.g"},
           "spec": {"selector": "role == 'x'", "namespaceSelector": "all()", "order": 5.5,
                    "doNotTrack": True, "applyOnForward": True, "preDNAT": False,
                    "performanceHints": ["AssumeNeededOnEveryNode"],
                    "ingress": [{"action": "Log", "source": {"namespaceSelector": "global()"}}]}}  # fmt: skip
    key, value = one(GNP(obj))
    assert key == "/calico/v1/policy/GlobalNetworkPolicy//g"
    assert value == {
        "tier": "default",
        "order": 5.5,
        "selector": "(role == 'x') && has(projectcalico.org/namespace)",
        "inbound_rules": [
            {
                "action": "log",
                "src_selector": "!has(projectcalico.org/namespace)",
                "orig_src_namespace_selector": "global()",
            }
        ],
        "untracked": True,
        "apply_on_forward": True,
        "performance_hints": ["AssumeNeededOnEveryNode"],
    }


def test_staged_calico_policies() -> None:
    sgnp = FELIX_CONVERTERS["stagedglobalnetworkpolicies.crd.projectcalico.org"]
    snp = FELIX_CONVERTERS["stagednetworkpolicies.crd.projectcalico.org"]
    g = {"apiVersion": CRD, "kind": "StagedGlobalNetworkPolicy", "metadata": {"name": "sg"},
         "spec": {"stagedAction": "Learn", "selector": "all()"}}  # fmt: skip
    assert one(sgnp(g)) == (
        "/calico/v1/policy/StagedGlobalNetworkPolicy//sg",
        {"tier": "default", "selector": "all()", "staged_action": "Learn"},
    )
    n = calico_np({"stagedAction": "Delete"}, name="sn")
    assert snp(n) == []
    n["spec"]["stagedAction"] = "Set"
    assert one(snp(n))[0] == "/calico/v1/policy/StagedNetworkPolicy/demo/sn"


@pytest.mark.parametrize(
    ("conv", "obj"),
    [
        (GNP, {"apiVersion": CRD, "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"},
               "spec": {"selector": "app == "}}),
        (GNP, {"apiVersion": CRD, "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"},
               "spec": {"ingress": [{"action": "Allow", "source": {"selector": "a ==="}}]}}),
        (GNP, {"apiVersion": CRD, "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"},
               "spec": {"ingress": [{"action": "Allow", "source": {"namespaceSelector": "(("}}]}}),
        (CALICO_NP, calico_np({"egress": [{"action": "Allow", "destination": {"nets": ["10.0.0.0/40"]}}]})),
        (CALICO_NP, calico_np({"ingress": [{"action": "Allow", "destination": {"ports": ["90:80"]}}]})),
        (CALICO_NP, calico_np({"types": ["Sideways"]})),
        (CALICO_NP, {"apiVersion": CRD, "kind": "NetworkPolicy", "metadata": {"name": "no-ns"}, "spec": {}}),
    ],
    ids=["bad-selector", "bad-rule-selector", "bad-namespace-selector", "bad-cidr", "bad-port-range",
         "bad-types", "missing-namespace"],
)  # fmt: skip
def test_invalid_calico_policies(conv: Any, obj: dict[str, Any]) -> None:
    with pytest.raises(ConversionError):
        conv(obj)


def test_tier() -> None:
    conv = FELIX_CONVERTERS["tiers.crd.projectcalico.org"]
    obj = {"apiVersion": CRD, "kind": "Tier", "metadata": {"name": "security"}, "spec": {"order": 100}}
    assert conv(obj) == [("/calico/v1/policy/tier/security/metadata", {"order": 100.0, "defaultAction": "Deny"})]
    obj["spec"] = {"defaultAction": "Pass"}
    assert conv(obj) == [("/calico/v1/policy/tier/security/metadata", {"defaultAction": "Pass"})]
