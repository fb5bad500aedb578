"""Values that would become a program are checked at conversion (issue 17 items 1, 2 and 7).

The probes that broke the agents - a NetworkPolicy protocol carrying an extra iptables line, one with
a quote, a matchLabels value that closes its string literal - are refused: the object's keys are
withdrawn, one log line names it and `typha_conversion_errors` counts it. Nothing is ever widened.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

from typha.kube.reflector import Event, EventType
from typha.model import selector
from typha.model.convert import BGP_CONVERTERS, FELIX_CONVERTERS, ConversionError
from typha.model.convert.base import port_v1, protocol_v1
from typha.model.resources import by_key
from typha.source.datastore import Syncer
from typha.testing import objects as o
from typha.testing.mirror import KVMirror

INJECTED_LINE = "TCP\n--append cali-fw-x --jump cali-pro-kns.demo"
QUOTE_BREAK = 'ICMP" -j ACCEPT'
SELECTOR_BREAK = "a' || all() || x == 'b"


def k8s_policy(**port: Any) -> dict[str, Any]:
    np = o.network_policy("demo", "web", pod_selector={"app": "web"}, from_labels={"role": "client"}, port=80)
    np["spec"]["ingress"][0]["ports"][0].update(port)
    return np


def gnp(rule: dict[str, Any], name: str = "probe") -> dict[str, Any]:
    return {
        "apiVersion": o.CRD,
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": name},
        "spec": {"selector": "all()", "types": ["Ingress"], "ingress": [rule]},
    }


def errors(resource: str) -> float:
    sample = REGISTRY.get_sample_value("typha_conversion_errors_total", {"syncer": "felix", "resource": resource})
    return sample or 0.0


def through_syncer(resource_key: str, good: dict[str, Any], bad: dict[str, Any], caplog: Any) -> KVMirror:
    """Send `good`, then `bad` (the same object, changed): the keys must go, with one line and one count."""
    sink = KVMirror()
    syncer = Syncer("felix", sink)
    resource = by_key(resource_key)
    syncer.on_events(resource, [Event(EventType.SET, good)])
    assert sink.kvs, "the valid object converts"
    before = errors(resource_key)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="typha.source.datastore"):
        syncer.on_events(resource, [Event(EventType.SET, bad)])
    assert sink.kvs == {}, "the refused object's keys are withdrawn"
    assert errors(resource_key) == before + 1
    lines = [r for r in caplog.records if r.name == "typha.source.datastore"]
    assert len(lines) == 1 and "skipping invalid" in lines[0].getMessage()
    assert "\n" not in lines[0].getMessage().split(": ", 1)[0]
    return sink


@pytest.mark.parametrize("protocol", [INJECTED_LINE, QUOTE_BREAK, "ICMP", "tcp ", "", "TCP\x00"])
def test_k8s_policy_protocol_outside_tcp_udp_sctp_is_refused(protocol: str, caplog: Any) -> None:
    bad = k8s_policy(protocol=protocol)
    if protocol == "":
        # An empty protocol is the default (TCP), as the API server defaults it.
        assert FELIX_CONVERTERS["networkpolicies.networking.k8s.io"](bad)
        return
    with pytest.raises(ConversionError, match="protocol"):
        FELIX_CONVERTERS["networkpolicies.networking.k8s.io"](bad)
    through_syncer("networkpolicies.networking.k8s.io", k8s_policy(), bad, caplog)


def test_match_labels_value_cannot_close_its_string(caplog: Any) -> None:
    good = o.network_policy("demo", "web", pod_selector={"app": "web"}, from_labels={"role": "client"})
    bad = copy.deepcopy(good)
    bad["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["role"] = SELECTOR_BREAK
    with pytest.raises(ConversionError, match="label value"):
        FELIX_CONVERTERS["networkpolicies.networking.k8s.io"](bad)
    through_syncer("networkpolicies.networking.k8s.io", good, bad, caplog)
    # And in the policy's own podSelector, and in matchExpressions keys and values.
    for where in (
        lambda p: p["spec"]["podSelector"]["matchLabels"].__setitem__("app", SELECTOR_BREAK),
        lambda p: p["spec"]["podSelector"].__setitem__(
            "matchExpressions", [{"key": "app", "operator": "In", "values": [SELECTOR_BREAK]}]
        ),
        lambda p: p["spec"]["podSelector"].__setitem__(
            "matchExpressions", [{"key": "a) || all() || has(b", "operator": "Exists"}]
        ),
    ):
        hostile = copy.deepcopy(good)
        where(hostile)
        with pytest.raises(ConversionError):
            FELIX_CONVERTERS["networkpolicies.networking.k8s.io"](hostile)


def test_k8s_selectors_keep_upstreams_spelling() -> None:
    ((_, value),) = FELIX_CONVERTERS["networkpolicies.networking.k8s.io"](k8s_policy())
    assert value["selector"] == (
        "(projectcalico.org/orchestrator == 'k8s' && app == 'web') && projectcalico.org/namespace == 'demo'"
    )
    src = value["inbound_rules"][0]["src_selector"]
    assert src == (
        "(projectcalico.org/namespace == 'demo') && (projectcalico.org/orchestrator == 'k8s' && role == 'client')"
    )


def test_global_policy_rule_with_bad_protocol_is_logged_and_counted(caplog: Any) -> None:
    good = gnp({"action": "Allow", "protocol": "TCP", "destination": {"ports": [80]}})
    for protocol in (QUOTE_BREAK, INJECTED_LINE, "tcp; drop", 0, 256, "256", True):
        bad = gnp({"action": "Allow", "protocol": protocol, "destination": {"ports": [80]}})
        through_syncer("globalnetworkpolicies.crd.projectcalico.org", good, bad, caplog)


@pytest.mark.parametrize(
    ("protocol", "want"),
    [("TCP", "tcp"), ("tcp", "tcp"), ("UDPLite", "udplite"), ("ICMPv6", "icmpv6"), ("SCTP", "sctp"),
     (6, 6), ("6", 6), ("255", 255), (1, 1)],
)  # fmt: skip
def test_protocols_calico_accepts(protocol: Any, want: Any) -> None:
    assert protocol_v1(protocol) == want


@pytest.mark.parametrize("protocol", [0, "0", 256, -1, "0x6", "٦", "tcp\n", "gre", "", None, 6.0, True])
def test_protocols_calico_refuses(protocol: Any) -> None:
    with pytest.raises(ConversionError):
        protocol_v1(protocol)


@pytest.mark.parametrize(
    ("port", "want"),
    [(80, 80), ("80", 80), ("80:80", 80), ("1:65535", "1:65535"), ("http", "http"), ("web-8080", "web-8080")],
)
def test_ports_calico_accepts(port: Any, want: Any) -> None:
    assert port_v1(port) == want


@pytest.mark.parametrize(
    "port",
    [0, "0", 65536, "80:79", "٨٠", "Http", "-http", "http-", "h--p", "a" * 16, "http\n", "80:", True, 8.0],
)
def test_ports_calico_refuses(port: Any) -> None:
    with pytest.raises(ConversionError):
        port_v1(port)


def test_numeric_ports_need_a_protocol_with_ports() -> None:
    convert = FELIX_CONVERTERS["globalnetworkpolicies.crd.projectcalico.org"]
    assert convert(gnp({"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}}))
    assert convert(gnp({"action": "Allow", "destination": {"ports": ["dns"]}}))
    for rule in (
        {"action": "Allow", "protocol": "ICMP", "destination": {"ports": [80]}},
        {"action": "Allow", "destination": {"ports": [80]}},
        {"action": "Allow", "protocol": 1, "source": {"notPorts": ["1:2"]}},
    ):
        with pytest.raises(ConversionError, match="ports"):
            convert(gnp(rule))


def test_quote_literal_round_trips_or_refuses() -> None:
    for value in ("plain", "it's", 'say "hi"', "", "a b\tc"):
        parsed = selector.parse(f"k == {selector.quote_literal(value)}")
        assert parsed.evaluate({"k": value})
        assert not parsed.evaluate({"k": value + "x"})
    with pytest.raises(ValueError, match="both quote"):
        selector.quote_literal("""'" || all() || "'""")


def test_names_and_namespaces_that_are_not_dns_1123_are_refused() -> None:
    pod = o.pod("demo", "web", node="node-1", ip="10.65.0.2")
    convert = FELIX_CONVERTERS["pods"]
    assert convert(pod)
    for field, value in (
        (("metadata", "name"), "web\n-A x"),
        (("metadata", "namespace"), "demo' || all() || '"),
        (("spec", "nodeName"), "node-1/../../x"),
        (("spec", "serviceAccountName"), "sa'"),
    ):
        hostile = copy.deepcopy(pod)
        hostile[field[0]][field[1]] = value
        with pytest.raises(ConversionError):
            convert(hostile)
    labelled = copy.deepcopy(pod)
    labelled["metadata"]["labels"] = {"app": "web\n"}
    with pytest.raises(ConversionError, match="labels"):
        convert(labelled)


def test_host_endpoint_interface_and_ports() -> None:
    convert = FELIX_CONVERTERS["hostendpoints.crd.projectcalico.org"]

    def hep(**spec: Any) -> dict[str, Any]:
        return {"apiVersion": o.CRD, "kind": "HostEndpoint", "metadata": {"name": "h"},
                "spec": {"node": "node-1", **spec}}  # fmt: skip

    assert convert(hep(interfaceName="eth0"))
    assert convert(hep(interfaceName="*"))
    assert convert(hep(ports=[{"name": "ssh", "protocol": "TCP", "port": 22}]))
    for spec in (
        {"interfaceName": "eth0 -j ACCEPT"},
        {"interfaceName": "a" * 16},
        {"ports": [{"name": "ssh", "protocol": "ICMP", "port": 22}]},
        {"ports": [{"name": "ssh\n", "protocol": "TCP", "port": 22}]},
        {"ports": [{"name": "ssh", "protocol": "TCP", "port": 0}]},
        {"profiles": ["p'"]},
        {"node": "node-1\n"},
    ):
        with pytest.raises(ConversionError):
            convert(hep(**spec))


def test_bgp_peer_fields_that_reach_bird_are_checked() -> None:
    convert = BGP_CONVERTERS["bgppeers.crd.projectcalico.org"]

    def peer(**spec: Any) -> dict[str, Any]:
        return {"apiVersion": o.CRD, "kind": "BGPPeer", "metadata": {"name": "p"}, "spec": spec}

    for good in (
        {"peerIP": "10.0.0.1", "asNumber": 64512},
        {"peerIP": "10.0.0.1:179", "asNumber": "1.10"},
        {"peerIP": "[fd00::1]:179", "nodeSelector": "has(rr)", "filters": ["f-1"]},
    ):
        assert convert(peer(**good))
    for bad in (
        {"peerIP": "10.0.0.1; protocol bgp x {"},
        {"peerIP": "10.0.0.1", "asNumber": "64512\n"},
        {"peerIP": "10.0.0.1", "asNumber": 2**32},
        {"nodeSelector": "has(rr"},
        {"filters": ['f"; export all;']},
        {"password": {"secretKeyRef": {"name": "s", "key": "k\n"}}},
        {"sourceAddress": "UseNodeIP\n"},
        {"node": "Node_1"},
    ):
        with pytest.raises(ConversionError):
            convert(peer(**bad))


def test_node_wireguard_key_and_addresses_are_checked() -> None:
    convert = FELIX_CONVERTERS["nodes"]
    node = o.node("node-1", ipv4="192.168.56.30/24", asn=64512)
    assert convert(node)
    keyed = copy.deepcopy(node)
    keyed["metadata"]["annotations"]["projectcalico.org/WireguardPublicKey"] = "A" * 43 + "="
    assert convert(keyed)
    keyed["metadata"]["annotations"]["projectcalico.org/WireguardPublicKey"] = "key\nPrivateKey = x"
    with pytest.raises(ConversionError, match="wireguardPublicKey"):
        convert(keyed)
    addressed = copy.deepcopy(node)
    addressed["status"]["addresses"] = [{"type": "InternalIP", "address": "10.0.0.1\n-A x"}]
    with pytest.raises(ConversionError, match="InternalIP"):
        convert(addressed)


def test_http_matches_hold_to_the_validator() -> None:
    convert = FELIX_CONVERTERS["globalnetworkpolicies.crd.projectcalico.org"]
    ok = {"action": "Allow", "http": {"methods": ["GET"], "paths": [{"exact": "/a"}, {"prefix": "/b/"}]}}
    ((_, value),) = convert(gnp(ok))
    assert value["inbound_rules"][0]["http"] == {"methods": ["GET"], "paths": [{"exact": "/a"}, {"prefix": "/b/"}]}
    bad: list[dict[str, Any]] = [
        {"methods": ["GET", "GET"]},
        {"methods": ["GET\r\nX-Injected: 1"]},
        {"paths": [{"exact": "/a", "prefix": "/b"}]},
        {"paths": [{"exact": "a"}]},
        {"paths": [{"prefix": "/a?x=1"}]},
        {"paths": [{"exact": "/a b"}]},
        {"paths": [{}]},
    ]
    for http in bad:
        with pytest.raises(ConversionError, match="HTTP"):
            convert(gnp({"action": "Allow", "http": http}))
