"""v3 documents -> what Calico's Kubernetes datastore stores; names and shapes pinned from libcalico-go."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from typha.testing.apiserver import calico_v3
from typha.testing.apiserver.calico_v3 import (
    CRD_V1,
    apply_documents,
    delete_documents,
    load_documents,
    load_file,
    standard_block_affinities,
    stored_identity,
    to_kubernetes,
)

NOW = datetime(2026, 11, 26, 23, 0, 5, tzinfo=UTC)
CREATED = '"creationTimestamp":"2026-11-26T23:00:05Z"'


def one(text: str) -> dict[str, Any]:
    (doc,) = load_documents(text)
    return doc


def convert(text: str, **kwargs: Any) -> dict[str, Any]:
    return to_kubernetes(one(text), now=NOW, **kwargs)


# --- Node -------------------------------------------------------------------------------------

NODE = """
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: kube-node-1
  labels:
    route-reflector: yes
    zone: "a<b"
  annotations:
    note: hello
spec:
  bgp:
    ipv4Address: 10.192.0.3/16
    ipv6Address: fd00::3/64
    asNumber: 64512
    routeReflectorClusterID: 224.0.0.1
    ipv4IPIPTunnelAddr: 192.168.1.1
  ipv4VXLANTunnelAddr: 192.168.2.1
  vxlanTunnelMACAddr: 66:aa:bb:cc:dd:ee
  ipv6VXLANTunnelAddr: fd00:1::1
  vxlanTunnelMACAddrV6: 66:aa:bb:cc:dd:ef
  wireguard:
    interfaceIPv4Address: 192.168.3.1
status:
  wireguardPublicKey: key4
"""


def test_node_becomes_the_kubernetes_node_with_calico_annotations():
    node = convert(NODE)
    assert node == {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "kube-node-1",
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": "kube-node-1",
                "kubernetes.io/os": "linux",
            },
            "annotations": {
                # Go's json.Marshal: sorted keys, compact, HTML characters escaped.
                "projectcalico.org/labels": '{"route-reflector":"true","zone":"a\\u003cb"}',
                "projectcalico.org/annotations": '{"note":"hello"}',
                "projectcalico.org/IPv4Address": "10.192.0.3/16",
                "projectcalico.org/IPv6Address": "fd00::3/64",
                "projectcalico.org/ASNumber": "64512",
                "projectcalico.org/RouteReflectorClusterID": "224.0.0.1",
                "projectcalico.org/IPv4IPIPTunnelAddr": "192.168.1.1",
                "projectcalico.org/IPv4VXLANTunnelAddr": "192.168.2.1",
                "projectcalico.org/VXLANTunnelMACAddr": "66:aa:bb:cc:dd:ee",
                "projectcalico.org/IPv6VXLANTunnelAddr": "fd00:1::1",
                "projectcalico.org/VXLANTunnelMACAddrV6": "66:aa:bb:cc:dd:ef",
                "projectcalico.org/IPv4WireguardInterfaceAddr": "192.168.3.1",
                "projectcalico.org/WireguardPublicKey": "key4",
            },
        },
        "spec": {},
    }
    assert json.loads(node["metadata"]["annotations"]["projectcalico.org/labels"]) == {
        "route-reflector": "true",
        "zone": "a<b",
    }


def test_node_without_spec_or_labels_has_no_calico_annotations():
    node = convert("apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: bare\n")
    assert "annotations" not in node["metadata"]
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "bare"


def test_node_without_kubelet_labels_and_dotted_as_number():
    node = convert(
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: n\n"
        "spec:\n  bgp:\n    ipv4Address: 10.0.0.1/24\n    asNumber: '1.10'\n",
        kubelet_labels=False,
    )
    assert "labels" not in node["metadata"]
    assert node["metadata"]["annotations"]["projectcalico.org/ASNumber"] == str((1 << 16) + 10)


def test_node_label_shadowed_by_a_kubelet_label_is_not_stored():
    node = convert(
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: node-a\n"
        "  labels:\n    kubernetes.io/hostname: other\n    mine: x\n"
    )
    assert node["metadata"]["annotations"]["projectcalico.org/labels"] == '{"mine":"x"}'
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node-a"


def test_a_name_that_reads_as_a_boolean_is_rendered_the_go_way():
    # metadata.name is a Go string: an unquoted `n` arrives as false and is stored as "false".
    node = convert("apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: n\n")
    assert node["metadata"]["name"] == "false"


# --- Calico custom resources --------------------------------------------------------------------


def test_bgp_peer_becomes_a_crd_with_metadata_annotation_and_only_calico_labels():
    peer = convert(
        """
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: peer-1
  labels:
    team: net
    projectcalico.org/owned: "yes"
  annotations:
    operator.tigera.io/x: "1"
    other: "2"
spec:
  nodeSelector: has(node)
  peerIP: 10.24.0.2
  asNumber: "64512"
  keepOriginalNextHop: true
  password:
    secretKeyRef: {name: my-secrets-1, key: a}
"""
    )
    assert peer == {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "BGPPeer",
        "metadata": {
            "name": "peer-1",
            "labels": {"projectcalico.org/owned": "yes"},
            "annotations": {
                "projectcalico.org/metadata": "{"
                + CREATED
                + ',"labels":{"projectcalico.org/owned":"yes","team":"net"}'
                + ',"annotations":{"operator.tigera.io/x":"1","other":"2"}}',
                "operator.tigera.io/x": "1",
            },
        },
        "spec": {
            "nodeSelector": "has(node)",
            "peerIP": "10.24.0.2",
            "asNumber": 64512,
            "keepOriginalNextHop": True,
            "password": {"secretKeyRef": {"name": "my-secrets-1", "key": "a"}},
        },
    }


def test_empty_spec_and_no_client_defaults_for_bgp_configuration():
    config = convert("apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n")
    assert config["spec"] == {}
    assert config["metadata"] == {
        "name": "default",
        "annotations": {"projectcalico.org/metadata": "{" + CREATED + "}"},
    }


def test_null_fields_are_left_out_like_go_zero_values():
    peer = convert(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: p\n"
        "spec:\n  peerIP: 10.0.0.1\n  node:\n  asNumber: 65000\n"
    )
    assert peer["spec"] == {"peerIP": "10.0.0.1", "asNumber": 65000}


def test_creation_timestamp_in_the_document_is_kept():
    pool = convert(
        "apiVersion: projectcalico.org/v3\nkind: BGPFilter\nmetadata:\n  name: f\n"
        "  creationTimestamp: '2020-01-01T00:00:00Z'\nspec: {}\n"
    )
    assert pool["metadata"]["annotations"]["projectcalico.org/metadata"] == (
        '{"creationTimestamp":"2020-01-01T00:00:00Z"}'
    )


def test_bgp_filter_keeps_its_rules():
    text = """
apiVersion: projectcalico.org/v3
kind: BGPFilter
metadata: {name: f}
spec:
  exportV4:
  - {action: Accept, matchOperator: In, cidr: 10.0.0.0/8, operations: [{prependASPath: {prefix: [65000, "1.2"]}}]}
  importV6:
  - {action: Reject, interface: "eth*", communities: {values: [5663:12]}}
"""
    spec = convert(text)["spec"]
    assert spec["exportV4"][0]["operations"] == [{"prependASPath": {"prefix": [65000, (1 << 16) + 2]}}]
    assert spec["importV6"][0]["communities"] == {"values": ["5663:12"]}


@pytest.mark.parametrize(
    ("pool_spec", "expected"),
    [
        (
            "{cidr: 192.168.0.0/16}",
            {
                "cidr": "192.168.0.0/16",
                "nodeSelector": "all()",
                "blockSize": 26,
                "allowedUses": ["Workload", "Tunnel"],
                "ipipMode": "Never",
                "vxlanMode": "Never",
            },
        ),
        (
            "{cidr: '2002:0::/64'}",
            {
                "cidr": "2002::/64",
                "nodeSelector": "all()",
                "blockSize": 122,
                "allowedUses": ["Workload", "Tunnel"],
                "ipipMode": "Never",
                "vxlanMode": "Never",
            },
        ),
        (
            "{cidr: 10.0.0.0/16, ipipMode: Always, natOutgoing: true, blockSize: 24, nodeSelector: 'x == \"y\"',"
            " allowedUses: [Workload], disableBGPExport: true}",
            {
                "cidr": "10.0.0.0/16",
                "nodeSelector": 'x == "y"',
                "blockSize": 24,
                "allowedUses": ["Workload"],
                "ipipMode": "Always",
                "vxlanMode": "Never",
                "natOutgoing": True,
                "disableBGPExport": True,
            },
        ),
    ],
)
def test_ippool_gets_clientv3_defaults(pool_spec, expected):
    pool = convert(f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec: {pool_spec}\n")
    assert pool["apiVersion"] == CRD_V1
    assert pool["spec"] == expected


@pytest.mark.parametrize(
    "pool_spec",
    [
        "{}",
        "{cidr: 10.0.0.1/16}",  # not strictly masked
        "{cidr: not-a-cidr/8}",
        "{cidr: 10.0.0.0/16, ipipMode: Always, vxlanMode: Always}",
        "{cidr: 'fd00::/64', ipipMode: Always}",
        "{cidr: 10.0.0.0/28}",  # smaller than the default /26 block
        "{cidr: 10.0.0.0/16, blockSize: 19}",
    ],
)
def test_ippool_that_clientv3_refuses_is_refused(pool_spec):
    with pytest.raises(ValueError, match=r"(?i)ip ?pool|block size"):
        convert(f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: p\nspec: {pool_spec}\n")


@pytest.mark.parametrize(
    ("kind", "name", "namespace", "backend_name"),
    [
        ("GlobalNetworkPolicy", "allow-dns", None, "default.allow-dns"),
        ("GlobalNetworkPolicy", "security.allow-dns", None, "security.allow-dns"),
        ("NetworkPolicy", "knp.default.web", "prod", "knp.default.web"),
        ("StagedNetworkPolicy", "web", None, "default.web"),
    ],
)
def test_policies_are_stored_under_their_tiered_name(kind, name, namespace, backend_name):
    ns_line = f"  namespace: {namespace}\n" if namespace else ""
    text = f"apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata:\n  name: {name}\n{ns_line}spec: {{}}\n"
    policy = convert(text)
    assert policy["metadata"]["name"] == backend_name
    # The v3 name survives in the metadata annotation, the only kinds where it is stored.
    stored = json.loads(policy["metadata"]["annotations"]["projectcalico.org/metadata"])
    assert stored["name"] == name
    if kind.startswith("Global"):
        assert "namespace" not in policy["metadata"]
    else:
        assert policy["metadata"]["namespace"] == (namespace or "default")
    assert stored_identity(one(text))[2:] == (backend_name, policy["metadata"].get("namespace"))


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match="Widget"):
        convert("apiVersion: projectcalico.org/v3\nkind: Widget\nmetadata:\n  name: w\n")
    with pytest.raises(ValueError, match="Gadget"):
        convert("apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: g\n")
    with pytest.raises(ValueError, match=r"metadata\.name"):
        convert("apiVersion: v1\nkind: Secret\nmetadata: {}\n")


def test_conversion_does_not_modify_its_input():
    doc = one(NODE)
    before = copy.deepcopy(doc)
    to_kubernetes(doc, now=NOW)
    pool = one("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16}\n")
    pool_before = copy.deepcopy(pool)
    to_kubernetes(pool, now=NOW)
    assert (doc, pool) == (before, pool_before)


# --- Kubernetes documents -----------------------------------------------------------------------


def test_service_goes_to_default_namespace_without_status():
    service = convert(
        "kind: Service\napiVersion: v1\nmetadata:\n  name: service-1\n"
        "spec:\n  type: LoadBalancer\n  clusterIP: 10.101.0.101\n  ports: [{port: 80, targetPort: 80}]\n"
        "status:\n  loadBalancer:\n    ingress: [{ip: 80.15.0.1}]\n"
    )
    assert service == {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": "service-1", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.101.0.101", "ports": [{"port": 80, "targetPort": 80}]},
    }


def test_endpoint_slice_goes_to_default_namespace():
    slc = convert(
        "kind: EndpointSlice\napiVersion: discovery.k8s.io/v1\nmetadata:\n  name: s\n"
        "  labels: {kubernetes.io/service-name: service-1}\naddressType: IPv4\n"
        "endpoints: [{addresses: [192.168.2.1], nodeName: kube-master}]\n"
    )
    assert slc["metadata"] == {
        "name": "s",
        "namespace": "default",
        "labels": {"kubernetes.io/service-name": "service-1"},
    }
    assert slc["endpoints"] == [{"addresses": ["192.168.2.1"], "nodeName": "kube-master"}]


def test_secret_string_data_is_stored_as_data():
    secret = convert(
        "kind: Secret\napiVersion: v1\nmetadata:\n  name: my-secrets-1\n  namespace: kube-system\n"
        "data:\n  a: b2xk\n  z: eg==\nstringData:\n  a: password-a\n  b: yes\n"
    )
    assert secret["metadata"] == {"name": "my-secrets-1", "namespace": "kube-system"}
    assert "stringData" not in secret
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"a": "password-a", "b": "true", "z": "z"}


def test_cluster_scoped_kubernetes_objects_get_no_namespace():
    assert stored_identity(one("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n")) == (
        "v1",
        "Namespace",
        "prod",
        None,
    )


# --- identities, block affinities ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "identity"),
    [
        ("apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}", ("v1", "Node", "n1", None)),
        (
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}",  # no spec needed
            (CRD_V1, "IPPool", "p", None),
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {name: s}",
            (CRD_V1, "NetworkSet", "s", "default"),
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: kube-system}",
            ("v1", "Secret", "s", "kube-system"),
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: e}",
            ("discovery.k8s.io/v1", "EndpointSlice", "e", "default"),
        ),
    ],
)
def test_stored_identity(text, identity):
    assert stored_identity(one(text)) == identity


def test_standard_block_affinities_match_the_fixture_readme():
    affinities = standard_block_affinities()
    assert [(a["metadata"]["name"], a["spec"]["cidr"], a["spec"]["state"]) for a in affinities] == [
        ("kube-master-10-0-0-0-30", "10.0.0.0/30", ""),
        ("kube-master-10-1-0-0-24", "10.1.0.0/24", ""),
        ("kube-master-10-2-0-1-32", "10.2.0.1/32", ""),
        ("kube-master-192-168-221-192-26", "192.168.221.192/26", ""),
        ("kube-master-192-168-221-64-26", "192.168.221.64/26", "confirmed"),
        ("kube-master-192-168-221-0-26", "192.168.221.0/26", "pending"),
    ]
    for affinity in affinities:
        assert affinity["apiVersion"] == "crd.projectcalico.org/v1"
        assert affinity["kind"] == "BlockAffinity"
        assert affinity["spec"]["node"] == "kube-master"
        assert affinity["spec"]["deleted"] == "false"  # a string in the v1 CRD
    # Fresh objects each call, so a caller may modify them.
    affinities[0]["spec"]["state"] = "changed"
    assert standard_block_affinities()[0]["spec"]["state"] == ""


def test_block_affinity_name_for_ipv6():
    assert calico_v3.block_affinity_name("node-a", "fd00:1::/122") == "node-a-fd00-1---122"


# --- applying through the emulator's interface --------------------------------------------------


class NotFound(Exception):
    status = 404


class FakeEmulator:
    """Records calls; keyed like the API (kind, namespace, name) so replace-whole is observable."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str | None, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, Any]] = []

    def upsert(self, obj: dict[str, Any]) -> dict[str, Any]:
        key = (obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        self.objects[key] = obj
        self.calls.append(("upsert", key))
        return obj

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        try:
            return copy.deepcopy(self.objects[(api_version, kind, namespace, name)])
        except KeyError:
            raise NotFound from None

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        key = (api_version, kind, namespace, name)
        self.calls.append(("delete", key))
        del self.objects[key]  # KeyError stands in for the API's 404


def test_apply_then_delete_files(tmp_path):
    (tmp_path / "input.yaml").write_text(
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\n"
        "spec: {bgp: {ipv4Address: 10.0.0.1/24}}\n---\n"
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerIP: 10.0.0.9, asNumber: 1}\n"
        "---\n"
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: kube-system}\nstringData: {a: x, b: y}\n"
    )
    (tmp_path / "step-01.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: kube-system}\nstringData: {b: z}\n"
    )
    (tmp_path / "step-02.delete.yaml").write_text(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\n---\n"
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\n"
    )
    api = FakeEmulator()
    assert load_file(api, tmp_path / "input.yaml") == 3
    assert load_file(api, str(tmp_path / "step-01.yaml")) == 1
    assert load_file(api, tmp_path / "step-02.delete.yaml") == 2
    assert [c[0] for c in api.calls] == ["upsert"] * 4 + ["delete"] * 2
    assert api.calls[-2:] == [
        ("delete", (CRD_V1, "BGPPeer", None, "p")),
        ("delete", ("v1", "Node", None, "n1")),
    ]
    # Replace whole: key `a` is gone after the step.
    (secret,) = api.objects.values()
    assert secret["data"] == {"b": base64.b64encode(b"z").decode()}


def test_deleting_something_absent_is_an_error():
    with pytest.raises(KeyError):
        delete_documents(FakeEmulator(), load_documents("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"))


def test_reapplying_a_calico_resource_keeps_its_creation_timestamp():
    api = FakeEmulator()
    peer = "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerIP: 10.0.0.%d}\n"
    api.upsert(to_kubernetes(one(peer % 1), now=NOW))
    apply_documents(api, load_documents(peer % 2))
    (stored,) = api.objects.values()
    assert stored["spec"] == {"peerIP": "10.0.0.2"}
    assert stored["metadata"]["annotations"]["projectcalico.org/metadata"] == "{" + CREATED + "}"


def test_apply_documents_counts_and_keeps_order():
    api = FakeEmulator()
    docs = load_documents("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n" * 2)
    assert apply_documents(api, docs) == 2
    assert len(api.objects) == 1


@pytest.mark.parametrize(("text", "number"), [("64512", 64512), ("1.10", 65546), ("0.0", 0), ("4294967295", 2**32 - 1)])
def test_as_numbers_in_plain_and_dotted_notation(text, number):
    assert calico_v3.parse_as_number(text) == number


@pytest.mark.parametrize("bad", ["²", "1.x", "70000.1", "1.2.3", "", True, 1.5, -1, 2**32])
def test_invalid_as_numbers_are_refused(bad):
    with pytest.raises(ValueError, match="AS number"):
        calico_v3.parse_as_number(bad)
