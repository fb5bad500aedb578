"""Pod, Namespace, ServiceAccount, Node, Service conversions, pinned to upstream's keys and JSON fields.

Expected values are written out in full so that a renamed or dropped field fails a test: they are
what libcalico-go's structs JSON-encode to (field names from libcalico-go/lib/backend/model).
"""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import pytest

from typha.model import keys
from typha.model.convert import BGP_CONVERTERS, FELIX_CONVERTERS, ConversionError, veth_name
from typha.testing import objects as o

convert_pod = FELIX_CONVERTERS["pods"]


def as_dict(kvs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(kvs)
    assert len(out) == len(kvs), "duplicate keys"
    return out


# --- interface names (docs/calico/felix.md §1.2 and §2.4) ---


@pytest.mark.parametrize(
    ("ns", "pod", "name"),
    [
        ("demo", "frontend", "cali76e3fb891b9"),
        ("demo", "backend", "cali6793bd60945"),
        ("demo", "other", "cali41433c6da7d"),
    ],
)
def test_interface_names(ns: str, pod: str, name: str) -> None:
    assert veth_name(ns, pod) == name
    assert len(name) == 15  # IFNAMSIZ-1


# --- Pod → WorkloadEndpoint ---


def test_pod_to_workload_endpoint_exact_value() -> None:
    pod = o.pod("demo", "frontend", node="node-1", ip="10.65.0.2", labels={"app": "frontend"},
                ports=[("http", 8080, "TCP"), ("dns", 53, "UDP")])  # fmt: skip
    assert convert_pod(pod) == [
        (
            "/calico/v1/host/node-1/workload/k8s/demo%2ffrontend/endpoint/eth0",
            {
                "state": "active",
                "name": "cali76e3fb891b9",
                "active_instance_id": "",
                "mac": None,
                "profile_ids": ["kns.demo", "ksa.demo.default"],
                "ipv4_nets": ["10.65.0.2/32"],
                "ipv6_nets": None,
                "labels": {
                    "app": "frontend",
                    "projectcalico.org/namespace": "demo",
                    "projectcalico.org/orchestrator": "k8s",
                    "projectcalico.org/serviceaccount": "default",
                },
                "ports": [
                    {"name": "http", "protocol": "tcp", "port": 8080},
                    {"name": "dns", "protocol": "udp", "port": 53},
                ],
            },
        )
    ]


def test_pod_does_not_mutate_its_input() -> None:
    pod = o.pod("demo", "frontend", node="node-1", ip="10.65.0.2", labels={"app": "frontend"})
    before = copy.deepcopy(pod)
    convert_pod(pod)
    assert pod == before


def test_pod_dual_stack_and_ip_sources() -> None:
    pod = o.pod("demo", "a", node="n", ip="10.65.0.9")
    pod["status"]["podIPs"] = [{"ip": "10.65.0.9"}, {"ip": "FD00:65::0009"}]
    value = convert_pod(pod)[0][1]
    assert value["ipv4_nets"] == ["10.65.0.9/32"]
    assert value["ipv6_nets"] == ["fd00:65::9/128"]  # Go's canonical IPv6 text

    # No status IPs yet: the Calico CNI annotation (plural first) is used.
    pod["status"] = {"phase": "Pending"}
    pod["metadata"]["annotations"] = {"cni.projectcalico.org/podIPs": "10.65.0.9/32,fd00:65::9/128"}
    value = convert_pod(pod)[0][1]
    assert (value["ipv4_nets"], value["ipv6_nets"]) == (["10.65.0.9/32"], ["fd00:65::9/128"])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p["spec"].update(hostNetwork=True),
        lambda p: p["spec"].pop("nodeName"),
        lambda p: (p["status"].clear(), p["metadata"].pop("annotations")),
        lambda p: p["status"].update(phase="Succeeded"),
        lambda p: p["status"].update(phase="Failed"),
        lambda p: p["metadata"].update(
            deletionTimestamp="2026-01-01T00:00:00Z",
            annotations={"cni.projectcalico.org/podIP": ""},
        ),
    ],
    ids=["hostNetwork", "unscheduled", "no-ips", "succeeded", "failed", "terminating-ip-released"],
)
def test_pods_that_produce_no_endpoint(mutate: Any) -> None:
    pod = o.pod("demo", "x", node="node-1", ip="10.65.0.2")
    mutate(pod)
    assert convert_pod(pod) == []


def test_pod_profile_labels_cannot_be_spoofed_and_no_sa() -> None:
    pod = o.pod("demo", "x", node="node-1", ip="10.65.0.2",
                labels={"pcns.team": "evil", "pcsa.x": "y", "projectcalico.org/namespace": "kube-system"})  # fmt: skip
    pod["spec"]["serviceAccountName"] = ""
    value = convert_pod(pod)[0][1]
    assert value["labels"] == {"projectcalico.org/namespace": "demo", "projectcalico.org/orchestrator": "k8s"}
    assert value["profile_ids"] == ["kns.demo"]


def test_pod_unnamed_and_unknown_protocol_ports_are_dropped() -> None:
    pod = o.pod("demo", "x", node="n", ip="10.65.0.2", ports=[("", 80, "TCP"), ("weird", 9, "ICMP")])
    pod["spec"]["containers"][0]["ports"].append({"name": "implicit", "containerPort": 81})
    assert convert_pod(pod)[0][1]["ports"] == [{"name": "implicit", "protocol": "tcp", "port": 81}]


def test_pod_workload_id_is_escaped() -> None:
    # The "<ns>/<pod>" workload ID is escaped as upstream escapes it. A pod name outside the API
    # server's grammar (this one) is refused before it can reach a key; the escaping is what keys
    # built from such an ID would get.
    pod = o.pod("demo", "a%b", node="node-1", ip="10.65.0.2")
    assert keys.workload_endpoint_path("node-1", "k8s", "demo/a%b", "eth0") == (
        "/calico/v1/host/node-1/workload/k8s/demo%2fa%25b/endpoint/eth0"
    )
    with pytest.raises(ConversionError, match="DNS-1123"):
        convert_pod(pod)
    valid = o.pod("demo", "a.b", node="node-1", ip="10.65.0.2")
    assert convert_pod(valid)[0][0] == keys.workload_endpoint_path("node-1", "k8s", "demo/a.b", "eth0")


def test_pod_with_bad_ip_is_invalid() -> None:
    pod = o.pod("demo", "x", node="n", ip="10.65.0.2")
    pod["status"]["podIPs"] = [{"ip": "10.65.0.256"}]
    with pytest.raises(ConversionError, match=r"10\.65\.0\.256"):
        convert_pod(pod)


def test_pod_floating_ips_and_spoofing_annotations() -> None:
    pod = o.pod("demo", "x", node="n", ip="10.65.0.2")
    pod["metadata"]["annotations"]["cni.projectcalico.org/floatingIPs"] = '["172.16.0.1"]'
    pod["metadata"]["annotations"]["cni.projectcalico.org/allowedSourcePrefixes"] = '["192.168.5.7/24"]'
    value = convert_pod(pod)[0][1]
    assert value["ipv4_nat"] == [{"int_ip": "10.65.0.2", "ext_ip": "172.16.0.1"}]
    assert value["allow_spoofed_source_ips"] == ["192.168.5.0/24"]
    pod["metadata"]["annotations"]["cni.projectcalico.org/floatingIPs"] = "not json"
    with pytest.raises(ConversionError):
        convert_pod(pod)


def test_pod_missing_name_is_invalid() -> None:
    pod = o.pod("demo", "x", node="n", ip="10.65.0.2")
    del pod["metadata"]["name"]
    with pytest.raises(ConversionError, match=r"metadata\.name"):
        convert_pod(pod)


# --- Namespace / ServiceAccount → profiles ---


def test_namespace_profile() -> None:
    ns = o.namespace("demo", labels={"team": "a"})
    ns["metadata"]["uid"] = "u-1"
    ns["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    labels = {
        "pcns.kubernetes.io/metadata.name": "demo",
        "pcns.team": "a",
        "pcns.projectcalico.org/name": "demo",
    }
    assert as_dict(FELIX_CONVERTERS["namespaces"](ns)) == {
        "/calico/v1/policy/profile/kns.demo/labels": labels,
        "/calico/v1/policy/profile/kns.demo/rules": {
            "inbound_rules": [{"action": "allow"}],
            "outbound_rules": [{"action": "allow"}],
        },
        "/calico/resources/v3/projectcalico.org/profiles/kns.demo": {
            "kind": "Profile",
            "apiVersion": "projectcalico.org/v3",
            "metadata": {"name": "kns.demo", "uid": "u-1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "ingress": [{"action": "Allow", "source": {}, "destination": {}}],
                "egress": [{"action": "Allow", "source": {}, "destination": {}}],
                "labelsToApply": labels,
            },
        },
    }


def test_service_account_profile() -> None:
    sa = o.service_account("demo", "builder", labels={"role": "ci"})
    kvs = as_dict(FELIX_CONVERTERS["serviceaccounts"](sa))
    assert kvs["/calico/v1/policy/profile/ksa.demo.builder/labels"] == {
        "pcsa.role": "ci",
        "pcsa.projectcalico.org/name": "builder",
    }
    assert kvs["/calico/v1/policy/profile/ksa.demo.builder/rules"] == {}
    v3 = kvs["/calico/resources/v3/projectcalico.org/profiles/ksa.demo.builder"]
    assert v3["spec"] == {"labelsToApply": {"pcsa.role": "ci", "pcsa.projectcalico.org/name": "builder"}}


# --- Node ---


WG_KEY = "jlkVyQYooZYzI2wFfNhSZez5eWh44yfq1wKVjLvSXgY="


def _node() -> dict[str, Any]:
    node = o.node("node-1", ipv4="192.168.56.11/24", ipip_tunnel_addr="10.65.0.1",
                  vxlan_tunnel_addr="10.65.0.64", vxlan_mac="66:c7:a8:2e:14:9b", asn=64512)  # fmt: skip
    node["metadata"]["uid"] = "uid-n1"
    node["metadata"]["resourceVersion"] = "42"
    node["metadata"]["annotations"]["projectcalico.org/WireguardPublicKey"] = WG_KEY
    node["metadata"]["annotations"]["projectcalico.org/IPv4WireguardInterfaceAddr"] = "10.65.0.128"
    node["metadata"]["annotations"]["projectcalico.org/labels"] = '{"rack":"r1","kubernetes.io/os":"calico"}'
    return node


def test_felix_node_keys_and_values() -> None:
    kvs = as_dict(FELIX_CONVERTERS["nodes"](_node()))
    assert sorted(kvs) == [
        "/calico/resources/v3/projectcalico.org/nodes/node-1",
        "/calico/v1/host/node-1/bird_ip",
        "/calico/v1/host/node-1/config/IPv4VXLANTunnelAddr",
        "/calico/v1/host/node-1/config/IpInIpTunnelAddr",
        "/calico/v1/host/node-1/config/VXLANTunnelMACAddr",
        "/calico/v1/host/node-1/wireguard",
    ]
    assert kvs["/calico/v1/host/node-1/bird_ip"] == "192.168.56.11"
    assert kvs["/calico/v1/host/node-1/config/IpInIpTunnelAddr"] == "10.65.0.1"
    assert kvs["/calico/v1/host/node-1/config/IPv4VXLANTunnelAddr"] == "10.65.0.64"
    assert kvs["/calico/v1/host/node-1/config/VXLANTunnelMACAddr"] == "66:c7:a8:2e:14:9b"
    assert kvs["/calico/v1/host/node-1/wireguard"] == {
        "interfaceIPv4Addr": "10.65.0.128",
        "publicKey": WG_KEY,
    }
    assert kvs["/calico/resources/v3/projectcalico.org/nodes/node-1"] == {
        "kind": "Node",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {
            "name": "node-1",
            "uid": "uid-n1",
            "creationTimestamp": None,
            # Kubernetes labels win over the Calico labels stored in the annotation.
            "labels": {"rack": "r1", "kubernetes.io/os": "linux", "kubernetes.io/hostname": "node-1"},
            "annotations": {
                "projectcalico.org/kube-labels": '{"kubernetes.io/hostname":"node-1","kubernetes.io/os":"linux"}'
            },
        },
        "spec": {
            "bgp": {"asNumber": 64512, "ipv4Address": "192.168.56.11/24", "ipv4IPIPTunnelAddr": "10.65.0.1"},
            "ipv4VXLANTunnelAddr": "10.65.0.64",
            "vxlanTunnelMACAddr": "66:c7:a8:2e:14:9b",
            "orchRefs": [{"orchestrator": "k8s", "nodeName": "node-1"}],
            "wireguard": {"interfaceIPv4Address": "10.65.0.128"},
            "addresses": [
                {"address": "192.168.56.11/24", "type": "CalicoNodeIP"},
                {"address": "192.168.56.11", "type": "InternalIP"},
            ],
        },
        "status": {"wireguardPublicKey": WG_KEY},
    }


def test_felix_node_carries_the_ipv6_vtep() -> None:
    """What Felix's IPv6 vxlan manager needs from a node (felixnodeprocessor.go, vxlan_resolver.go): the
    IPv6 tunnel address (as cnet.ParseIP(...).String() spells it) and MAC as host config, and the node's
    IPv6 address on the v3 Node's bgp spec (the VTEP's parent address)."""
    node = o.node("n6", ipv4="192.168.56.16/24")
    node["metadata"]["annotations"].update({
        "projectcalico.org/IPv6Address": "fd20::6/64",
        "projectcalico.org/IPv6VXLANTunnelAddr": "FD66:0::6",
        "projectcalico.org/VXLANTunnelMACAddrV6": "66:a6:00:00:00:06",
    })
    kvs = as_dict(FELIX_CONVERTERS["nodes"](node))
    assert kvs["/calico/v1/host/n6/config/IPv6VXLANTunnelAddr"] == "fd66::6"
    assert kvs["/calico/v1/host/n6/config/VXLANTunnelMACAddrV6"] == "66:a6:00:00:00:06"
    spec = kvs["/calico/resources/v3/projectcalico.org/nodes/n6"]["spec"]
    assert spec["bgp"]["ipv6Address"] == "fd20::6/64"
    assert (spec["ipv6VXLANTunnelAddr"], spec["vxlanTunnelMACAddrV6"]) == ("FD66:0::6", "66:a6:00:00:00:06")


def test_node_heartbeat_does_not_change_the_values() -> None:
    # Typha keeps resourceVersion out of the value so that kubelet heartbeats dedupe in the cache.
    node = _node()
    before = FELIX_CONVERTERS["nodes"](node)
    node["metadata"]["resourceVersion"] = "43"
    node["status"]["conditions"] = [{"type": "Ready", "lastHeartbeatTime": "2026-01-01T00:00:10Z"}]
    assert FELIX_CONVERTERS["nodes"](node) == before


def test_bgp_node_is_only_the_v3_node() -> None:
    kvs = BGP_CONVERTERS["nodes"](_node())
    felix = as_dict(FELIX_CONVERTERS["nodes"](_node()))
    assert kvs == [("/calico/resources/v3/projectcalico.org/nodes/node-1",
                    felix["/calico/resources/v3/projectcalico.org/nodes/node-1"])]  # fmt: skip


def test_node_without_calico_annotations_uses_internal_ip() -> None:
    node = {
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"},
        "status": {"addresses": [{"type": "Hostname", "address": "n2"},
                                 {"type": "ExternalIP", "address": "203.0.113.9"},
                                 {"type": "InternalIP", "address": "192.168.56.12"}]},
    }  # fmt: skip
    kvs = as_dict(FELIX_CONVERTERS["nodes"](node))
    assert kvs["/calico/v1/host/n2/bird_ip"] == "192.168.56.12"
    assert "bgp" not in kvs["/calico/resources/v3/projectcalico.org/nodes/n2"]["spec"]
    assert len(kvs) == 2


def test_node_invalid_annotations_are_dropped_like_upstream() -> None:
    node = o.node("n3", ipv4="192.168.56.13/24", vxlan_mac="zz:zz")
    node["metadata"]["annotations"]["projectcalico.org/IPv4Address"] = "not-a-cidr"
    node["metadata"]["annotations"]["projectcalico.org/ASNumber"] = "banana"
    kvs = as_dict(FELIX_CONVERTERS["nodes"](node))
    spec = kvs["/calico/resources/v3/projectcalico.org/nodes/n3"]["spec"]
    assert "bgp" not in spec
    assert "vxlanTunnelMACAddr" not in spec
    # getAnnotation drops the bad address, so the host IP falls back to the InternalIP.
    assert kvs["/calico/v1/host/n3/bird_ip"] == "192.168.56.13"


# --- Services and EndpointSlices pass through ---


def test_service_and_endpoint_slice_pass_through() -> None:
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo", "resourceVersion": "7", "uid": "s1",
                     "managedFields": [{"manager": "kubectl"}]},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]},
    }  # fmt: skip
    [(key, value)] = FELIX_CONVERTERS["services"](svc)
    assert key == "/calico/resources/v3/projectcalico.org/kubernetesservice/demo/web"
    assert value == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo", "uid": "s1"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP"}]},
    }  # fmt: skip
    eps = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x1", "namespace": "demo"}, "addressType": "IPv4", "endpoints": [],
    }  # fmt: skip
    [(key, value)] = FELIX_CONVERTERS["endpointslices.discovery.k8s.io"](eps)
    assert key == "/calico/resources/v3/projectcalico.org/kubernetesendpointslices/demo/web-x1"
    assert value["addressType"] == "IPv4"


def test_passed_through_value_does_not_depend_on_list_or_watch() -> None:
    """List items carry no apiVersion/kind, watch events do; the value must be the same either way."""
    watched = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "demo"},
               "spec": {"clusterIP": "10.96.0.10"}}
    listed = {k: v for k, v in watched.items() if k not in ("apiVersion", "kind")}
    convert = FELIX_CONVERTERS["services"]
    assert msgpack.packb(convert(listed)[0][1]) == msgpack.packb(convert(watched)[0][1])
