"""The emulator refuses what a real API server refuses, with its 422 message and field paths."""

from __future__ import annotations

from typing import Any

import pytest

from typha.testing.apiserver.registry import Registry
from typha.testing.apiserver.store import ApiError, ObjectStore

REGISTRY = Registry("calico-v1")


def resource(api_version: str, kind: str):
    found = REGISTRY.by_kind(api_version, kind)
    assert found is not None
    return found


def refused(api_version: str, kind: str, obj: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as err:
        ObjectStore().create(resource(api_version, kind), {"apiVersion": api_version, "kind": kind, **obj},
                             validate=True)
    assert (err.value.status, err.value.reason) == (422, "Invalid")
    return err.value


@pytest.mark.parametrize(("api_version", "kind", "name", "expected"), [
    ("v1", "Namespace", "a.b", "a lowercase RFC 1123 label must consist of"),
    ("v1", "Pod", "Web", "a lowercase RFC 1123 subdomain must consist of"),
    ("v1", "Service", "1web", "a DNS-1035 label must consist of"),
    ("v1", "ConfigMap", "x" * 254, "must be no more than 253 characters"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", "a/b", "may not contain '/'"),
    ("crd.projectcalico.org/v1", "IPPool", "Pool_1", "a lowercase RFC 1123 subdomain"),
])
def test_names_by_kind(api_version: str, kind: str, name: str, expected: str) -> None:
    err = refused(api_version, kind, {"metadata": {"name": name}})
    assert err.message.startswith(f'{kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": ')
    assert expected in err.message
    assert err.details is not None
    assert err.details["kind"] == kind
    assert err.details["causes"][0]["field"] == "metadata.name"


def test_fixtures_may_skip_all_but_the_name_checks() -> None:
    store = ObjectStore()
    pod = resource("v1", "Pod")
    store.create(pod, {"metadata": {"name": "p", "labels": {"bad key": "v"}}, "status": {"podIP": "nonsense"}})
    with pytest.raises(ApiError) as err:
        store.create(pod, {"metadata": {"name": "Bad"}})
    assert err.value.status == 422


def test_rbac_names_may_hold_colons() -> None:
    ObjectStore().create(resource("rbac.authorization.k8s.io/v1", "ClusterRole"),
                         {"metadata": {"name": "system:controller:calico"}})


def test_label_keys_and_values_and_several_errors_in_brackets() -> None:
    err = refused("v1", "Pod", {"metadata": {"name": "p", "labels": {
        "bad key": "v", "example.com/ok": "bad value", "UPPER.example/x": "v", "k": "x" * 64}}})
    assert err.message.startswith('Pod "p" is invalid: [metadata.labels: Invalid value: "bad key": name part must')
    assert 'metadata.labels: Invalid value: "bad value": a valid label must be an empty string' in err.message
    assert 'metadata.labels: Invalid value: "UPPER.example/x": prefix part a lowercase RFC 1123' in err.message
    assert "must be no more than 63 characters" in err.message
    assert err.details is not None
    assert len(err.details["causes"]) == 4


def test_total_annotation_size_is_limited() -> None:
    store = ObjectStore()
    cm = resource("v1", "ConfigMap")
    store.create(cm, {"metadata": {"name": "fits", "annotations": {"a": "x" * (256 * 1024 - 1)}}})
    err = refused("v1", "ConfigMap", {"metadata": {"name": "big", "annotations": {"a": "x" * (256 * 1024)}}})
    assert err.message == 'ConfigMap "big" is invalid: metadata.annotations: Too long: must have at most 262144 bytes'


def test_network_policy_ports_protocols_and_peers() -> None:
    spec = {"podSelector": {}, "policyTypes": ["Ingress", "Sideways"],
            "ingress": [{"ports": [{"protocol": "ICMP"}, {"port": 70000}, {"port": "http--x"},
                                   {"port": 80, "endPort": 79}, {"port": 80, "protocol": "SCTP", "endPort": 90}],
                         "from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["nonsense"]}}]}]}
    err = refused("networking.k8s.io/v1", "NetworkPolicy", {"metadata": {"name": "np"}, "spec": spec})
    assert err.details is not None
    fields = [c["field"] for c in err.details["causes"]]
    assert fields == ["spec.ingress[0].ports[0].protocol", "spec.ingress[0].ports[1].port",
                      "spec.ingress[0].ports[2].port", "spec.ingress[0].ports[3].endPort",
                      "spec.ingress[0].from[0].ipBlock.cidr", "spec.egress[0].to[0].ipBlock.except[0]",
                      "spec.policyTypes[1]"]
    assert 'spec.ingress[0].ports[0].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"' in (
        err.message)


def test_pod_ips() -> None:
    err = refused("v1", "Pod", {"metadata": {"name": "p"}, "status": {
        "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.300"}]}})
    assert err.details is not None
    assert [c["field"] for c in err.details["causes"]] == ["status.podIPs[1].ip", "status.podIPs[0].ip"]
    assert "must be a valid IP address" in err.message
    two_v4 = {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}
    dual = refused("v1", "Pod", {"metadata": {"name": "p"}, "status": two_v4})
    assert "may specify no more than one IP for each IP family" in dual.message
    ObjectStore().create(resource("v1", "Pod"), {"metadata": {"name": "ok"}, "status": {
        "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}})


def test_network_policy_selectors_and_peers() -> None:
    spec = {"podSelector": {"matchLabels": {"app": "bad value"}},
            "ingress": [{"from": [{}, {"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}},
                                  {"namespaceSelector": {"matchExpressions": [
                                      {"key": "team", "operator": "In"},
                                      {"key": "team", "operator": "Exists", "values": ["a"]},
                                      {"key": "bad key", "operator": "Near", "values": ["a"]}]}}]}]}
    err = refused("networking.k8s.io/v1", "NetworkPolicy", {"metadata": {"name": "np"}, "spec": spec})
    assert err.details is not None
    assert [(c["field"], c["message"].split(":")[0]) for c in err.details["causes"]] == [
        ("spec.podSelector.matchLabels", "Invalid value"),
        ("spec.ingress[0].from[0]", "Required value"),
        ("spec.ingress[0].from[1]", "Forbidden"),
        ("spec.ingress[0].from[2].namespaceSelector.matchExpressions[0].values", "Required value"),
        ("spec.ingress[0].from[2].namespaceSelector.matchExpressions[1].values", "Forbidden"),
        ("spec.ingress[0].from[2].namespaceSelector.matchExpressions[2].operator", "Invalid value"),
        ("spec.ingress[0].from[2].namespaceSelector.matchExpressions[2].key", "Invalid value"),
    ]
    assert "spec.ingress[0].from[1]: Forbidden: may not specify both ipBlock and another peer" in err.message
    ObjectStore().create(resource("networking.k8s.io/v1", "NetworkPolicy"), {
        "metadata": {"name": "ok"}, "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}},
        validate=True)
