"""A catalogue of malformed Kubernetes and Calico objects, each one the API server would store.

The emulator enforces what the real API server does for every kind (metadata, names, labels and
annotations as string maps); CRDs' and pods' specs are where bad content gets through (a CRD without
a full schema, a pod annotation written by a buggy CNI plugin, an invalid selector in a string
field). Every object here must be refused by its syncer's conversion: its keys withdrawn, a log line
and `typha_conversion_errors_total{syncer,resource}` counted.
"""

from __future__ import annotations

from typing import Any

from typha.testing import objects

CRD = objects.CRD
MEGABYTE = "x" * (1024 * 1024)


def _crd(kind: str, name: str, spec: Any, namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": CRD, "kind": kind, "metadata": metadata, "spec": spec}


def _pod(name: str, **changes: Any) -> dict[str, Any]:
    """A pod whose IPs come from the CNI plugin's annotations (the kubelet has not reported any yet)."""
    pod = objects.pod("demo", name, node="node-1", ip="10.65.0.9", labels={"app": "web"})
    pod["status"] = {"phase": "Pending"}
    annotations = changes.pop("annotations", None)
    if annotations is not None:
        pod["metadata"]["annotations"].update(annotations)
    pod.update(changes)
    return pod


def _node(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    node = objects.node(name, ipv4="192.168.56.30/24", asn=64512)
    node["metadata"]["annotations"].update(annotations)
    return node


def _policy(name: str, spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "demo"}, "spec": spec}


def _gnp(name: str, **spec: Any) -> dict[str, Any]:
    return _crd("GlobalNetworkPolicy", name, {"selector": "all()", "types": ["Ingress"], **spec})


def rejected() -> list[dict[str, Any]]:
    """Objects whose conversion must fail (the name says what is wrong)."""
    return [
        # pods
        _pod("bad-ip", annotations={"cni.projectcalico.org/podIP": "999.1.1.1/32",
                                    "cni.projectcalico.org/podIPs": "999.1.1.1/32"}),
        _pod("bad-cidr", annotations={"cni.projectcalico.org/podIP": "10.65.0.9/33",
                                      "cni.projectcalico.org/podIPs": "10.65.0.9/33"}),
        _pod("spec-wrong-type", spec="not an object"),
        _pod("huge-annotation", annotations={"cni.projectcalico.org/podIPs": "10.65.0.9/32," + MEGABYTE}),
        # Kubernetes network policies
        _policy("np-bad-operator", {"podSelector": {"matchExpressions": [
            {"key": "app", "operator": "Sometimes", "values": ["web"]}]}, "policyTypes": ["Ingress"]}),
        _policy("np-bad-cidr", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
        _policy("np-bad-port", {"podSelector": {}, "ingress": [{"ports": [{"protocol": "TCP", "port": 70000}]}]}),
        _policy("np-wrong-type", {"podSelector": "app=web"}),
        # Calico policies, tiers, sets
        _gnp("gnp-bad-selector", selector="app == 'web' &&"),
        _gnp("gnp-bad-order", order="first"),
        _gnp("gnp-bad-rule-cidr", ingress=[{"action": "Allow", "source": {"nets": ["10.0.0.0/99"]}}]),
        _gnp("gnp-bad-action", ingress=[{"action": "Maybe"}]),
        _crd("NetworkPolicy", "knp-bad-selector", {"selector": "!!!", "types": ["Ingress"]}, "demo"),
        _crd("Tier", "bad-tier", {"order": "top"}),
        _crd("GlobalNetworkSet", "gns-bad", {"nets": ["10.0.0.0/8", "not-a-net"]}),
        _crd("NetworkSet", "ns-bad", {"nets": ["300.0.0.0/8"]}, "demo"),
        # pools and IPAM
        _crd("IPPool", "pool-bad-cidr", {"cidr": "not-a-cidr", "blockSize": 26}),
        _crd("IPAMBlock", "block-bad", {"cidr": "10.71.0.0/99", "affinity": "host:node-1"}),
        _crd("BlockAffinity", "aff-bad", {"node": "node-1", "cidr": "10.72.0.0/400", "state": "confirmed"}),
        _crd("ClusterInformation", "not-default", {"clusterGUID": "x"}),
    ]


def tolerated() -> list[dict[str, Any]]:
    """Odd objects that convert anyway, listed so that the suite shows they disturb nothing else:
    - the invalid field is dropped or unused, as upstream's conversion does (node annotations,
      HostEndpoint expectedIPs, IPPool blockSize, a pod port the API server would have refused);
    - the v3 object is passed through unvalidated (BGPPeer, BGPConfiguration, BGPFilter,
      FelixConfiguration): upstream's ValidationFilter would turn these into deletes. A known gap:
      agents must cope (confd-client's oneshot reports an unrenderable datastore, see
      test_agents_garbage)."""
    return [
        _node("node-bad-ip", {"projectcalico.org/IPv4Address": "not-an-ip"}),
        _node("node-bad-asn", {"projectcalico.org/ASNumber": "sixty-four"}),
        _node("node-bad-tunnel", {"projectcalico.org/IPv4VXLANTunnelAddr": "10.0.0.300"}),
        _pod("ports-wrong-type", spec={"nodeName": "node-1", "containers": [
            {"name": "app", "ports": [{"name": "http", "containerPort": "eighty", "protocol": "TCP"}]}]}),
        _policy("np-bad-protocol", {"podSelector": {}, "ingress": [{"ports": [{"protocol": "CARRIER-PIGEON"}]}]}),
        _crd("HostEndpoint", "hep-bad", {"node": "node-1", "expectedIPs": ["1.2.3.400"]}),
        _crd("IPPool", "pool-bad-block", {"cidr": "10.70.0.0/16", "blockSize": "big"}),
        _crd("BGPPeer", "peer-bad-ip", {"peerIP": "10.0.0.256", "asNumber": 64512}),
        _crd("BGPPeer", "peer-bad-selector", {"nodeSelector": "has(", "peerSelector": "all()"}),
        _crd("BGPConfiguration", "default", {"asNumber": "many"}),
        _crd("BGPFilter", "filter-bad", {"exportV4": [{"action": "Accept", "cidr": "10.0.0.0/77",
                                                       "matchOperator": "In"}]}),
        _crd("FelixConfiguration", "node.node-1", {"logSeverityScreen": ["not", "a", "string"]}),
        # Labels the real API server would refuse (key syntax, 1,000-character values): they become
        # profile labels as they are; Services and EndpointSlices pass through as Kubernetes objects.
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "odd-labels", "labels": {"bad key!": "v" * 1000}}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "odd-labels", "namespace": "demo", "labels": {"x/y/z": "q" * 5000}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc-odd", "namespace": "demo"},
         "spec": {"clusterIP": "not-an-ip", "ports": [{"port": "eighty"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "es-odd", "namespace": "demo", "labels": {"kubernetes.io/service-name": "svc-odd"}},
         "addressType": "IPv4", "endpoints": [{"addresses": ["999.0.0.1"]}], "ports": [{"port": "x"}]},
    ]


def valid() -> list[dict[str, Any]]:
    """Objects around the malformed ones, of the same kinds, that must reach clients."""
    return [
        objects.namespace("demo", {"team": "a"}),
        objects.namespace("huge", {"big": "v" * 63}) | {"metadata": {
            "name": "huge", "labels": {f"k{i}": "v" * 63 for i in range(200)}, "annotations": {"blob": MEGABYTE}}},
        objects.service_account("demo", labels={"role": "x"}),
        objects.service_account("huge") | {"metadata": {"name": "default", "namespace": "huge",
                                                        "annotations": {"blob": MEGABYTE}}},
        objects.pod("demo", "good", node="node-1", ip="10.65.0.10", labels={"app": "web"}),
        objects.node("node-1", ipv4="192.168.56.11/24", asn=64512),
        objects.network_policy("demo", "np-good", pod_selector={"app": "web"}, from_labels={"app": "db"}, port=80),
        objects.calico_global_policy("gnp-good", selector="app == 'web'", order=10),
        objects.ip_pool("pool-good", "10.65.0.0/16"),
        objects.block_affinity("10.65.0.0/26", node="node-1"),
        _crd("BGPPeer", "peer-good", {"peerIP": "10.0.0.1", "asNumber": 64513}),
        _crd("GlobalNetworkSet", "gns-good", {"nets": ["10.0.0.0/8"]}),
        # Odd but valid names: the longest DNS subdomain, dots, digits first, a policy name that
        # looks like a tiered one. They end up inside key paths.
        objects.pod("demo", ("a" * 61 + ".") * 4 + "z", node="node-1", ip="10.65.0.12"),
        objects.pod("demo", "0.web-1.x", node="node-1", ip="10.65.0.13"),
        objects.network_policy("demo", "knp.default.looks-tiered", pod_selector={}),
        objects.calico_global_policy("default.odd", selector="all()"),
    ]
