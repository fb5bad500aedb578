"""Property: a hostile string in any string field of an object never changes what an agent renders
except as data in its proper place (issue 17, build 2, conversion side).

For each field family (Kubernetes NetworkPolicies, pods, namespaces, Calico policies, IP pools, BGP
peers, nodes) hypothesis puts a hostile string - newlines, quotes, `-j`, `--append`, NUL, Unicode,
very long - into one string field (a value, or a label key) of a valid object and converts it. Either
the conversion refuses the object (ConversionError, which the syncer turns into withdrawn keys, a
log line and a metric), or every value it produces holds to its grammar:

- keys and every string inside a value are printable (no line break, NUL or other control
  character can start a statement of its own in iptables-restore, ipset or BIRD input);
- protocols, ports, CIDRs, interface names, tiers, profile IDs and endpoint labels are what Calico's
  validators accept;
- every selector parses, and has the same structure as the one the same object gets with a benign
  placeholder in that field: the hostile string appears only as a label name or a literal value,
  never as selector syntax. Where the field is not selector material at all, the selectors are
  those of the untouched object.

At least 2,000 examples per family; conversion costs microseconds, so each family takes seconds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from typha.model import selector
from typha.model.convert import BGP_CONVERTERS, FELIX_CONVERTERS, ConversionError, grammar
from typha.model.convert.base import cidr_or_ip, port_v1
from typha.testing import objects as o

EXAMPLES = 2000
GROUP = "crd.projectcalico.org"
PLACEHOLDER = "zzplaceholder"

PAYLOADS = (
    "\n", "\r\n", "\x00", "\t", " ", "'", '"', "`", ";", "{", "}", "(", ")", "||", "&&", "!", ",", "/", "%2f",
    "-j ACCEPT", "--append cali-fw-x --jump cali-pro-kns.demo", "-A cali-INPUT -j ACCEPT",
    "TCP\n--append cali-fw-x --jump cali-pro-kns.demo", 'ICMP" -j ACCEPT', "a' || all() || x == 'b",
    'a" || all() || x == "b', "all()", "global()", "has(x)", "protocol bgp evil {", "é", "\u2028", "\u0661",
    "\ufeff", "🙂", "0", "65536", "256", "10.0.0.0/8", "::/0", "x" * 64, "y" * 5000,
)  # fmt: skip
# Ordinary text around the payloads, so that some hostile strings survive a grammar and reach the
# checks of what is produced (sampled, not generated: hypothesis' own cost dominates otherwise).
_AROUND = ("", "a", "x/", "0", "ab.c-", "node-1", "k8s.io/")
_AFTER = ("", "z", "-", ".9", "/x")

# A payload (or two) between ordinary characters, or any short Unicode text at all.
HOSTILE = st.one_of(
    st.builds(
        lambda before, first, middle, second, after: before + first + middle + second + after,
        st.sampled_from(_AROUND), st.sampled_from(PAYLOADS), st.sampled_from(_AFTER),
        st.sampled_from(("", *PAYLOADS)), st.sampled_from(_AFTER),
    ),
    st.text(min_size=1, max_size=20),
)  # fmt: skip

# --- the families: a valid object each, and the converters that read it ------------------------

LABEL_MAPS = frozenset({"labels", "matchLabels"})
Path = tuple[Any, ...]


def _k8s_policy() -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": "demo", "labels": {"team": "a"}},
        "spec": {
            "podSelector": {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]}],
            },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"role": "client"}},
                         "namespaceSelector": {"matchLabels": {"env": "prod"}}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                    ],
                    "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": "dns"}],
                }
            ],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                        "ports": [{"protocol": "TCP", "port": 5432, "endPort": 5440}]}],
        },
    }  # fmt: skip


def _pod() -> dict[str, Any]:
    pod = o.pod("demo", "web-1", node="node-1", ip="10.65.0.2", labels={"app": "web", "tier": "front"},
                ports=[("http", 8080, "TCP"), ("dns", 53, "UDP")])  # fmt: skip
    pod["metadata"]["annotations"]["cni.projectcalico.org/allowedSourcePrefixes"] = '["192.168.5.0/24"]'
    pod["metadata"]["generateName"] = "web-"
    return pod


def _rule() -> dict[str, Any]:
    return {
        "action": "Allow",
        "protocol": "TCP",
        "source": {
            "selector": "role == 'client'",
            "namespaceSelector": "env == 'prod'",
            "nets": ["10.0.0.0/8"],
            "notSelector": "quarantine == 'true'",
            "serviceAccounts": {"names": ["api"], "selector": "team == 'a'"},
        },
        "destination": {"ports": [80, "8000:8080", "http"], "notNets": ["10.9.0.0/16"], "notPorts": [22]},
    }


def _gnp() -> dict[str, Any]:
    return {
        "apiVersion": o.CRD,
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "default.allow-web", "labels": {"team": "a"}},
        "spec": {
            "tier": "default",
            "order": 100,
            "selector": "app == 'web'",
            "namespaceSelector": "env == 'prod'",
            "serviceAccountSelector": "team == 'a'",
            "types": ["Ingress", "Egress"],
            "ingress": [_rule()],
            "egress": [{"action": "Deny", "protocol": "UDP", "destination": {"ports": [53], "nets": ["1.1.1.1"]},
                        "icmp": None}, {"action": "Pass", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}}],
        },
    }  # fmt: skip


def _calico_np() -> dict[str, Any]:
    return {
        "apiVersion": o.CRD,
        "kind": "NetworkPolicy",
        "metadata": {"name": "default.allow-db", "namespace": "demo"},
        "spec": {"selector": "app == 'db'", "serviceAccountSelector": "team == 'a'", "types": ["Ingress"],
                 "ingress": [_rule()]},
    }  # fmt: skip


def _pool() -> dict[str, Any]:
    pool = o.ip_pool("pool-1", "10.65.0.0/16", ipip="CrossSubnet")
    pool["spec"]["assignmentMode"] = "Automatic"
    return pool


def _peer() -> dict[str, Any]:
    return {
        "apiVersion": o.CRD,
        "kind": "BGPPeer",
        "metadata": {"name": "rr-1", "labels": {"role": "rr"}},
        "spec": {
            "peerIP": "192.168.56.1:179",
            "asNumber": "64512",
            "node": "node-1",
            "nodeSelector": "rack == 'a'",
            "peerSelector": "has(route-reflector)",
            "sourceAddress": "UseNodeIP",
            "filters": ["export-only"],
            "maxRestartTime": "120s",
            "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "rr-password"}},
        },
    }


def _node() -> dict[str, Any]:
    node = o.node("node-1", ipv4="192.168.56.30/24", asn=64512)
    node["metadata"]["labels"] = {"kubernetes.io/hostname": "node-1", "rack": "a"}
    node["metadata"]["annotations"].update({
        "projectcalico.org/IPv4IPIPTunnelAddr": "10.65.1.1",
        "projectcalico.org/IPv4VXLANTunnelAddr": "10.65.2.1",
        "projectcalico.org/VXLANTunnelMACAddr": "66:0b:aa:bb:cc:dd",
        "projectcalico.org/WireguardPublicKey": "A" * 43 + "=",
        "projectcalico.org/RouteReflectorClusterID": "224.0.0.1",
    })
    return node


def _namespace() -> dict[str, Any]:
    return o.namespace("demo", labels={"env": "prod", "team": "a"})


Converters = list[Callable[[dict[str, Any]], list[tuple[str, Any]]]]

FAMILIES: dict[str, tuple[Callable[[], dict[str, Any]], Converters]] = {
    "k8s-networkpolicy": (_k8s_policy, [FELIX_CONVERTERS["networkpolicies.networking.k8s.io"]]),
    "pod": (_pod, [FELIX_CONVERTERS["pods"]]),
    "namespace": (_namespace, [FELIX_CONVERTERS["namespaces"]]),
    "calico-globalnetworkpolicy": (_gnp, [FELIX_CONVERTERS["globalnetworkpolicies.crd.projectcalico.org"]]),
    "calico-networkpolicy": (_calico_np, [FELIX_CONVERTERS["networkpolicies.crd.projectcalico.org"]]),
    "ippool": (_pool, [FELIX_CONVERTERS[f"ippools.{GROUP}"], BGP_CONVERTERS[f"ippools.{GROUP}"]]),
    "bgppeer": (_peer, [BGP_CONVERTERS["bgppeers.crd.projectcalico.org"]]),
    "node": (_node, [FELIX_CONVERTERS["nodes"], BGP_CONVERTERS["nodes"]]),
}  # fmt: skip


def string_fields(value: Any, path: Path = ()) -> Iterator[Path]:
    """Every string leaf, and every key of a label map (as `(..., ("key", k))`)."""
    if isinstance(value, str):
        if path not in (("apiVersion",), ("kind",)):
            yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            if path and path[-1] in LABEL_MAPS:
                yield (*path, ("key", k))
            yield from string_fields(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from string_fields(v, (*path, i))


def with_field(obj: dict[str, Any], path: Path, text: str) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    parent: Any = out
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if isinstance(last, tuple):
        parent[text] = parent.pop(last[1])
    else:
        parent[last] = text
    return out


def convert(converters: Converters, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The KVs of every converter, or None when the object is refused."""
    out: dict[str, Any] = {}
    try:
        for fn in converters:
            out.update(fn(obj))
    except ConversionError:
        return None
    return out


# --- what a produced value may hold ----------------------------------------------------------


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


def selectors_in(value: Any, path: Path = ()) -> Iterator[tuple[Path, str]]:
    """The selector fields of a value (by name; a label or annotation map holds data, not fields)."""
    if isinstance(value, dict):
        if path and path[-1] in ("labels", "annotations", "labelsToApply"):
            return
        for k, v in value.items():
            if isinstance(v, str) and k.lower().endswith("selector"):
                yield (*path, k), v
            else:
                yield from selectors_in(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from selectors_in(v, (*path, i))


def value_selectors(key: str, value: Any) -> Iterator[tuple[Path, str]]:
    if key.endswith("/labels"):
        return iter(())  # a profile's labels: the whole value is a label map
    return selectors_in(value)


_RULE_PORTS = ("src_ports", "!src_ports", "dst_ports", "!dst_ports")
_RULE_NETS = ("src_nets", "!src_nets", "dst_nets", "!dst_nets")


def check_rule(rule: dict[str, Any]) -> None:
    assert rule.get("action", "allow") in ("allow", "deny", "log", "next-tier")
    for field in ("protocol", "!protocol"):
        if field in rule:
            p = rule[field]
            assert p in grammar.PROTOCOL_NAMES_V1 or (type(p) is int and 1 <= p <= 255), rule
    for field in _RULE_PORTS:
        for port in rule.get(field, ()):
            assert port_v1(port) == port, rule
    for field in _RULE_NETS:
        for net in rule.get(field, ()):
            assert cidr_or_ip(net)[1] == net, rule
    for field in ("src_service", "dst_service"):
        if field in rule:
            assert grammar.dns1123_subdomain(rule[field]), rule


def check_value(key: str, value: Any) -> None:
    assert grammar.printable(key, limit=1024) and "'" not in key and '"' not in key, key
    selector_texts = set()
    for _, text in value_selectors(key, value):
        selector.parse(text)  # raises if not
        # Tab is a blank of the selector language; selectors are matched, never pasted into rules.
        assert text.replace("\t", " ").isprintable(), (key, text)
        selector_texts.add(text)
    for text in strings_in(value):
        assert text in selector_texts or text.isprintable(), (key, text)
    if not isinstance(value, dict):
        return
    if key.startswith("/calico/v1/policy/"):
        assert grammar.dns1123_label(value.get("tier", "default")), value  # profiles have no tier
        for rule in value.get("inbound_rules", []) + value.get("outbound_rules", []):
            check_rule(rule)
    if "/workload/" in key:
        assert grammar.interface_name(value["name"]), value
        for net in (value.get("ipv4_nets") or []) + (value.get("ipv6_nets") or []):
            assert cidr_or_ip(net)[1] == net
        labels = dict(value["labels"])
        # Calico's own label carries the service account's name: a DNS-1123 subdomain, up to 253.
        assert grammar.dns1123_subdomain(labels.pop("projectcalico.org/serviceaccount", "sa")), value
        assert grammar.labels(labels), labels
        assert all(grammar.v1_name(p) for p in value["profile_ids"]), value
        for port in value.get("ports", []):
            assert grammar.port_name(port["name"]) and port["protocol"] in ("tcp", "udp", "sctp"), port
    if key.startswith("/calico/v1/ipam/"):
        assert cidr_or_ip(value["cidr"])[1] == value["cidr"]
    if key.startswith("/calico/v1/policy/profile/") and key.endswith("/labels"):
        assert all(grammar.label_value(v) for v in value.values()), value
    if value.get("kind") == "Node":
        for address in value["spec"].get("addresses", []):
            cidr_or_ip(address["address"])


def shape(node: selector.Node, hostile: str) -> Any:
    """The selector's structure, with the hostile string (or the placeholder) as one symbol."""

    def text(value: str) -> str:
        # Namespace and service-account selectors reach the rule with their labels prefixed.
        for prefix in ("", "pcns.", "pcsa."):
            if value in (prefix + hostile, prefix + PLACEHOLDER):
                return prefix + "<field>"
        return value

    if isinstance(node, selector.LabelOpNode):
        return ("op", node.op, text(node.label), text(node.value))
    if isinstance(node, selector.LabelSetNode):
        return ("set", node.negated, text(node.label), tuple(sorted(text(v) for v in node.values)))
    if isinstance(node, selector.HasNode):
        return ("has", text(node.label))
    if isinstance(node, selector.NotNode):
        return ("not", shape(node.operand, hostile))
    if isinstance(node, selector.AndNode | selector.OrNode):
        return (type(node).__name__, tuple(shape(op, hostile) for op in node.operands))
    return type(node).__name__


def selector_shapes(kvs: dict[str, Any], hostile: str) -> list[tuple[Path, str]]:
    """(place in the value, structure) of every selector; keys left out, as a name may be the field."""
    return sorted(
        (path, repr(shape(selector.parse(text).root, hostile)))
        for key, value in kvs.items()
        for path, text in value_selectors(key, value)
    )


PLACEHOLDER_SELECTOR = f"{PLACEHOLDER} == '{PLACEHOLDER}'"


def _is_selector_field(path: Path) -> bool:
    return isinstance(path[-1], str) and path[-1].lower().endswith("selector")


def _changed(kvs: dict[str, Any], original: dict[str, Any]) -> set[Path]:
    """The places (within a value) of selectors that differ from the original object's."""
    before = {path: text for key, value in original.items() for path, text in value_selectors(key, value)}
    after = {path: text for key, value in kvs.items() for path, text in value_selectors(key, value)}
    return {path for path, text in after.items() if before.get(path) != text}


def check_family(family: str, path: Path, hostile: str) -> None:
    build, converters = FAMILIES[family]
    base = build()
    got = convert(converters, with_field(base, path, hostile))
    if got is None:
        return  # refused: the syncer withdraws the object's keys, logs and counts it
    for key, value in got.items():
        check_value(key, value)
    if _is_selector_field(path):
        # The field is Calico selector syntax by definition: what the user wrote is their selector,
        # so it must parse on its own, and only the selectors built from this field may change.
        selector.parse(hostile)
        reference = convert(converters, with_field(base, path, PLACEHOLDER_SELECTOR))
        original = convert(converters, base)
        assert reference is not None and original is not None
        assert _changed(got, original) <= _changed(reference, original), (family, path, hostile)
        return
    reference = convert(converters, with_field(base, path, PLACEHOLDER))
    if reference is None:
        # The field is no selector material (the placeholder is not even valid there): the hostile
        # value must not have changed any selector.
        reference = convert(converters, base)
        assert reference is not None
    assert selector_shapes(got, hostile) == selector_shapes(reference, hostile), (family, path, hostile)


def _family_test(family: str) -> Callable[[], None]:
    paths = sorted(string_fields(FAMILIES[family][0]()), key=repr)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(path=st.sampled_from(paths), hostile=HOSTILE)
    def run(path: Path, hostile: str) -> None:
        check_family(family, path, hostile)

    return run


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hostile_string_in_any_field_is_refused_or_inert(family: str) -> None:
    base = FAMILIES[family][0]()
    assert convert(FAMILIES[family][1], base), f"the {family} base object must convert"
    assert len(list(string_fields(base))) >= 3
    _family_test(family)()


def test_checker_catches_an_injected_selector() -> None:
    # The property must be able to fail: a selector pasted with the payload has another shape.
    good = {"/calico/v1/policy/x": {"selector": "role == 'zzplaceholder'"}}
    bad = {"/calico/v1/policy/x": {"selector": "role == 'a' || all() || x == 'b'"}}
    assert selector_shapes(good, "a' || all() || x == 'b") != selector_shapes(bad, "a' || all() || x == 'b")
    with pytest.raises(AssertionError):
        check_value("/calico/v1/policy/x", {"tier": "default", "inbound_rules": [{"protocol": "tcp\n-A x"}]})
