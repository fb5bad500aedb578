"""What `calicoctl apply` stores in the Kubernetes datastore, so Calico's fixtures can feed our emulator.

Calico's confd fixtures are calicoctl-style `projectcalico.org/v3` YAML plus a few Kubernetes objects.
In Kubernetes-datastore mode, libcalico-go does not store v3 objects as they are written:

- A v3 **Node** is the Kubernetes `v1` Node itself (libcalico-go `backend/k8s/resources/node.go`). Its
  BGP spec lives in `projectcalico.org/*` annotations (`IPv4Address`, `IPv6Address`, `ASNumber`,
  `RouteReflectorClusterID`, `IPv4IPIPTunnelAddr`, the VXLAN and WireGuard fields), its Calico labels
  in the annotation `projectcalico.org/labels` as a JSON object and its Calico annotations in
  `projectcalico.org/annotations`. The Kubernetes labels of the Node stay the kubelet's; readers merge
  both label sets, Kubernetes labels winning (`K8sNodeToCalico`). Calico cannot create or delete a
  Node in this mode, so upstream's test harness creates the Kubernetes Node (with the kubelet labels
  `kubernetes.io/arch`, `kubernetes.io/os`, `kubernetes.io/hostname`) and then updates it: that is what
  `to_kubernetes` produces.
- Every other v3 kind is a `crd.projectcalico.org/v1` custom resource of the same kind and spec
  (`customresource.go`, `resources.go: ConvertCalicoResourceToK8sResource`). The v3 metadata, minus
  name/namespace/uid/resourceVersion, is kept as JSON in the annotation `projectcalico.org/metadata`;
  only labels and annotations Calico owns (keys containing `projectcalico.org/` or
  `operator.tigera.io/`) are copied onto the custom resource itself. Policy kinds are stored under
  their tiered name (`names.TieredPolicyName`: `default.<name>` when the name has no tier prefix)
  and keep their v3 name in the metadata annotation.
- libcalico-go's client (`clientv3`) sets `creationTimestamp` on create and defaults IPPools before
  storing them (`clientv3/ippool.go validateAndSetDefaults`): `nodeSelector: all()`, `blockSize` 26
  (IPv4) or 122 (IPv6), `allowedUses: [Workload, Tunnel]`, `ipipMode: Never`, `vxlanMode: Never`,
  and a normalised CIDR. It applies no defaults to BGPPeer, BGPConfiguration or BGPFilter.

Plain Kubernetes documents pass through with the fixture README §4 rules: a namespaced object without
a namespace goes into `default`, a Service loses its `status`. A Secret's `stringData` is folded into
base64 `data` as the API server does on write, so what is stored is what a real cluster would hold.

Fields Calico's Go types declare as strings are rendered the Go way after loading (`yes` as a label
is "true", an integer community is its digits): `STRING_FIELDS` lists them per kind.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import os
import pathlib
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from typha.model.resources import CALICO_CRD_GROUP, Resource, for_object
from typha.testing.apiserver import goyaml
from typha.testing.apiserver.goyaml import go_string

CALICO_V3 = "projectcalico.org/v3"
CRD_V1 = f"{CALICO_CRD_GROUP}/v1"

# Node annotations, exactly as libcalico-go's node.go names them.
NODE_IPV4_ADDRESS = "projectcalico.org/IPv4Address"
NODE_IPV6_ADDRESS = "projectcalico.org/IPv6Address"
NODE_AS_NUMBER = "projectcalico.org/ASNumber"
NODE_RR_CLUSTER_ID = "projectcalico.org/RouteReflectorClusterID"
NODE_IPV4_IPIP_TUNNEL_ADDR = "projectcalico.org/IPv4IPIPTunnelAddr"
NODE_IPV4_VXLAN_TUNNEL_ADDR = "projectcalico.org/IPv4VXLANTunnelAddr"
NODE_VXLAN_TUNNEL_MAC = "projectcalico.org/VXLANTunnelMACAddr"
NODE_IPV6_VXLAN_TUNNEL_ADDR = "projectcalico.org/IPv6VXLANTunnelAddr"
NODE_VXLAN_TUNNEL_MAC_V6 = "projectcalico.org/VXLANTunnelMACAddrV6"
NODE_WIREGUARD_IPV4_ADDR = "projectcalico.org/IPv4WireguardInterfaceAddr"
NODE_WIREGUARD_IPV6_ADDR = "projectcalico.org/IPv6WireguardInterfaceAddr"
NODE_WIREGUARD_PUBLIC_KEY = "projectcalico.org/WireguardPublicKey"
NODE_WIREGUARD_PUBLIC_KEY_V6 = "projectcalico.org/WireguardPublicKeyV6"
# Calico metadata of a resource that is not a Calico CRD (the Node), and of one that is.
LABELS_ANNOTATION = "projectcalico.org/labels"
ANNOTATIONS_ANNOTATION = "projectcalico.org/annotations"
METADATA_ANNOTATION = "projectcalico.org/metadata"

# What a kubelet puts on every Node it registers; upstream's KDD harness adds the same three.
KUBELET_ARCH, KUBELET_OS = "amd64", "linux"

POLICY_KINDS = frozenset(["GlobalNetworkPolicy", "NetworkPolicy", "StagedGlobalNetworkPolicy", "StagedNetworkPolicy"])
# Prefixes of names that are already tiered (`names.policyNameIsFormatted`).
_FORMATTED_POLICY_PREFIXES = (
    "knp.default.",
    "kanp.adminnetworkpolicy.",
    "kbanp.baselineadminnetworkpolicy.",
    "ossg.",
)

_COMMON_STRING_FIELDS = ("metadata.name", "metadata.namespace", "metadata.labels.*", "metadata.annotations.*")
_SECRET_REF = ("name", "key")
_FILTER_RULE = (
    "cidr", "matchOperator", "source", "interface", "action", "peerType",
    "communities.values[]", "operations[].addCommunity.value",
)  # fmt: skip

# Fields whose Go type is string (or a list/map of strings), per (apiVersion, kind), from Calico's
# v3 API types and Kubernetes' core types. Only these are rewritten; everything else keeps the type
# YAML gave it, as the Go struct would (an int field stays an int).
STRING_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    (CALICO_V3, "BGPConfiguration"): (
        "spec.logSeverityScreen", "spec.bindMode", "spec.programClusterRoutes",
        "spec.nodeMeshMaxRestartTime", "spec.localWorkloadPeeringIPV4", "spec.localWorkloadPeeringIPV6",
        "spec.serviceClusterIPs[].cidr", "spec.serviceExternalIPs[].cidr",
        "spec.serviceLoadBalancerIPs[].cidr",
        "spec.communities[].name", "spec.communities[].value",
        "spec.prefixAdvertisements[].cidr", "spec.prefixAdvertisements[].communities[]",
        "spec.ignoredInterfaces[]",
        *(f"spec.nodeMeshPassword.secretKeyRef.{f}" for f in _SECRET_REF),
    ),
    (CALICO_V3, "BGPPeer"): (
        "spec.node", "spec.peerIP", "spec.nodeSelector", "spec.peerSelector", "spec.sourceAddress",
        "spec.maxRestartTime", "spec.reachableBy", "spec.filters[]", "spec.localWorkloadSelector",
        "spec.nextHopMode", "spec.reversePeering",
        *(f"spec.password.secretKeyRef.{f}" for f in _SECRET_REF),
    ),
    (CALICO_V3, "IPPool"): (
        "spec.cidr", "spec.ipipMode", "spec.vxlanMode", "spec.nodeSelector", "spec.namespaceSelector",
        "spec.allowedUses[]", "spec.assignmentMode",
    ),
    (CALICO_V3, "BGPFilter"): tuple(
        f"spec.{direction}[].{field}"
        for direction in ("exportV4", "importV4", "exportV6", "importV6")
        for field in _FILTER_RULE
    ),
    (CALICO_V3, "Node"): (
        "spec.bgp.ipv4Address", "spec.bgp.ipv6Address", "spec.bgp.routeReflectorClusterID",
        "spec.bgp.ipv4IPIPTunnelAddr", "spec.ipv4VXLANTunnelAddr", "spec.vxlanTunnelMACAddr",
        "spec.ipv6VXLANTunnelAddr", "spec.vxlanTunnelMACAddrV6",
        "spec.wireguard.interfaceIPv4Address", "spec.wireguard.interfaceIPv6Address",
        "status.wireguardPublicKey", "status.wireguardPublicKeyV6",
    ),
    ("v1", "Secret"): ("type", "stringData.*", "data.*"),
    ("v1", "Service"): (
        "spec.type", "spec.clusterIP", "spec.clusterIPs[]", "spec.externalIPs[]", "spec.loadBalancerIP",
        "spec.externalTrafficPolicy", "spec.internalTrafficPolicy", "spec.selector.*",
        "spec.ports[].name", "spec.ports[].protocol", "spec.ipFamilies[]", "spec.ipFamilyPolicy",
    ),
    ("discovery.k8s.io/v1", "EndpointSlice"): (
        "addressType", "endpoints[].addresses[]", "endpoints[].nodeName", "endpoints[].hostname",
        "endpoints[].zone", "endpoints[].targetRef.kind", "endpoints[].targetRef.name",
        "endpoints[].targetRef.namespace", "ports[].name", "ports[].protocol",
    ),
}  # fmt: skip

# numorstring.ASNumber fields: a number, or a string in plain or dotted ("1.10") notation, stored as a number.
AS_NUMBER_FIELDS: dict[str, tuple[str, ...]] = {
    "BGPConfiguration": ("spec.asNumber",),
    "BGPPeer": ("spec.asNumber", "spec.localASNumber"),
    "Node": ("spec.bgp.asNumber",),
    "BGPFilter": tuple(
        f"spec.{direction}[].{field}"
        for direction in ("exportV4", "importV4", "exportV6", "importV6")
        for field in ("asPathPrefix[]", "operations[].prependASPath.prefix[]")
    ),
}


class Emulator(Protocol):
    """The part of `typha.testing.apiserver.server.KubeAPIEmulator` this module writes through."""

    def upsert(self, obj: dict[str, Any]) -> Any: ...

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]: ...

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Any: ...


# --- loading ----------------------------------------------------------------------------------


def _split_path(path: str) -> tuple[str, ...]:
    """Split a field path: `spec.communities[].value` -> ("spec", "communities", "[]", "value")."""
    steps: list[str] = []
    for part in path.split("."):
        if part.endswith("[]"):
            steps.extend((part[:-2], "[]"))
        else:
            steps.append(part)
    return tuple(steps)


def _map_path(value: Any, steps: tuple[str, ...], fn: Callable[[Any], Any]) -> Any:
    """`value` with `fn` applied at every place `steps` reaches ('*' any map key, '[]' any list item)."""
    if not steps:
        return fn(value)
    head, rest = steps[0], steps[1:]
    if head == "[]":
        return [_map_path(item, rest, fn) for item in value] if isinstance(value, list) else value
    if not isinstance(value, dict):
        return value
    if head == "*":
        return {k: _map_path(v, rest, fn) for k, v in value.items()}
    if head not in value:
        return value
    return {**value, head: _map_path(value[head], rest, fn)}


def _as_map_string(value: Any) -> Any:
    # A YAML null decoded into a map[string]string entry is the empty string in Go.
    return "" if value is None else go_string(value)


_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() would also take digits of other scripts


def parse_as_number(value: Any) -> int:
    """numorstring.ASNumber: a 32-bit number, or its text in plain or dotted ("<high>.<low>") notation."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"invalid AS number {value!r}")
    if isinstance(value, int):
        number = value
    elif _DIGITS.fullmatch(value):
        number = int(value)
    else:
        high, dot, low = value.partition(".")
        if not (dot and _DIGITS.fullmatch(high) and _DIGITS.fullmatch(low) and int(high) < 2**16 and int(low) < 2**16):
            raise ValueError(f"invalid AS number {value!r}")
        number = int(high) << 16 | int(low)
    if not 0 <= number < 2**32:
        raise ValueError(f"AS number {value!r} out of range")
    return number


def render_go_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` as Go would hold it after decoding into its typed struct: string fields are strings.

    Idempotent, so documents built by hand can go through it again.
    """
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    out = doc
    for path in (*_COMMON_STRING_FIELDS, *STRING_FIELDS.get((str(api_version), str(kind)), ())):
        out = _map_path(out, _split_path(path), _as_map_string if path.endswith("*") else go_string)
    if api_version == CALICO_V3:
        for path in AS_NUMBER_FIELDS.get(str(kind), ()):
            out = _map_path(out, _split_path(path), lambda v: v if v is None else parse_as_number(v))
    return out


def load_documents(text_or_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The non-empty documents of a YAML text or file, read as Calico's Go tools read them."""
    docs = goyaml.load_all(text_or_path)
    for doc in docs:
        if not isinstance(doc, dict):
            raise ValueError(f"a document must be a mapping, not {type(doc).__name__}: {doc!r}")
    return [render_go_fields(doc) for doc in docs]


# --- conversion -------------------------------------------------------------------------------


def _go_json(value: Any) -> str:
    """Compact JSON as Go's encoding/json writes it (callers sort map keys; Go escapes <, > and &)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(raw, escaped)
    return text


def _sorted_map(mapping: dict[str, Any]) -> dict[str, Any]:
    # Go marshals a map with its keys in byte order; for UTF-8 that is code point order.
    return dict(sorted(mapping.items()))


def _ours(key: str) -> bool:
    """Labels and annotations Calico keeps on the custom resource itself (`resources.go isOurs`)."""
    return "projectcalico.org/" in key or "operator.tigera.io/" in key


def tiered_policy_name(name: str) -> str:
    """names.TieredPolicyName: the backend name of a (Staged)(Global)NetworkPolicy."""
    if not name or name.startswith(_FORMATTED_POLICY_PREFIXES):
        return name
    return name if "." in name else f"default.{name}"


def _drop_nulls(value: Any) -> Any:
    # A YAML null is Go's zero value, which the Calico types' omitempty fields leave out when stored.
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _rfc3339(moment: datetime) -> str:
    # metav1.Time marshals as RFC 3339 in UTC with whole seconds.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _metadata(doc: dict[str, Any]) -> dict[str, Any]:
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        raise ValueError(f"{doc.get('kind')} document without metadata.name: {doc!r}")
    return metadata


def _ippool_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The IPPool spec after clientv3's validateAndSetDefaults, raising where it would refuse the pool."""
    cidr = spec.get("cidr")
    if not cidr or "/" not in str(cidr):
        raise ValueError(f"IPPool CIDR must be specified as a subnet, got {cidr!r}")
    try:
        network = ipaddress.ip_network(str(cidr), strict=False)
    except ValueError as exc:
        raise ValueError(f"IPPool CIDR must be a valid subnet: {cidr!r}") from exc
    if network.network_address != ipaddress.ip_address(str(cidr).split("/")[0]):
        raise ValueError(f"IPPool CIDR is not strictly masked: {cidr!r}")
    out = dict(spec)
    out["cidr"] = str(network)
    if not out.get("nodeSelector"):
        out["nodeSelector"] = "all()"
    if not out.get("blockSize"):
        out["blockSize"] = 26 if network.version == 4 else 122
    if not out.get("allowedUses"):
        out["allowedUses"] = ["Workload", "Tunnel"]
    if not out.get("ipipMode"):
        out["ipipMode"] = "Never"
    if not out.get("vxlanMode"):
        out["vxlanMode"] = "Never"
    low, high = (20, 32) if network.version == 4 else (116, 128)
    if not low <= out["blockSize"] <= high:
        raise ValueError(f"IPv{network.version} block size must be between {low} and {high}")
    if not out.get("disabled") and network.prefixlen > out["blockSize"]:
        raise ValueError(f"IP pool {cidr} is smaller than its block size /{out['blockSize']}")
    if out["ipipMode"] != "Never" and out["vxlanMode"] != "Never":
        raise ValueError("Cannot enable both VXLAN and IPIP on the same IPPool")
    if network.version == 6 and out["ipipMode"] != "Never":
        raise ValueError("IPIP is not supported on an IPv6 IP pool")
    return out


def _node_to_kubernetes(doc: dict[str, Any], kubelet_labels: bool) -> dict[str, Any]:
    metadata = _metadata(doc)
    name = metadata["name"]
    spec = doc.get("spec") or {}
    status = doc.get("status") or {}
    k8s_labels = (
        {"kubernetes.io/arch": KUBELET_ARCH, "kubernetes.io/hostname": name, "kubernetes.io/os": KUBELET_OS}
        if kubelet_labels
        else {}
    )
    annotations: dict[str, str] = {}
    # restoreCalicoLabels: a Calico label shadowed by a Kubernetes label is not written back.
    calico_labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k not in k8s_labels}
    if calico_labels:
        annotations[LABELS_ANNOTATION] = _go_json(_sorted_map(calico_labels))
    if metadata.get("annotations"):
        annotations[ANNOTATIONS_ANNOTATION] = _go_json(_sorted_map(metadata["annotations"]))

    def put(annotation: str, value: Any) -> None:
        if value not in (None, ""):
            annotations[annotation] = str(value)

    put(NODE_IPV4_VXLAN_TUNNEL_ADDR, spec.get("ipv4VXLANTunnelAddr"))
    put(NODE_VXLAN_TUNNEL_MAC, spec.get("vxlanTunnelMACAddr"))
    put(NODE_IPV6_VXLAN_TUNNEL_ADDR, spec.get("ipv6VXLANTunnelAddr"))
    put(NODE_VXLAN_TUNNEL_MAC_V6, spec.get("vxlanTunnelMACAddrV6"))
    bgp = spec.get("bgp") or {}
    put(NODE_IPV4_ADDRESS, bgp.get("ipv4Address"))
    put(NODE_IPV4_IPIP_TUNNEL_ADDR, bgp.get("ipv4IPIPTunnelAddr"))
    put(NODE_IPV6_ADDRESS, bgp.get("ipv6Address"))
    if bgp.get("asNumber") is not None:
        # ASNumber.String(): decimal digits, whatever notation the document used.
        annotations[NODE_AS_NUMBER] = str(parse_as_number(bgp["asNumber"]))
    put(NODE_RR_CLUSTER_ID, bgp.get("routeReflectorClusterID"))
    wireguard = spec.get("wireguard") or {}
    put(NODE_WIREGUARD_IPV4_ADDR, wireguard.get("interfaceIPv4Address"))
    put(NODE_WIREGUARD_IPV6_ADDR, wireguard.get("interfaceIPv6Address"))
    put(NODE_WIREGUARD_PUBLIC_KEY, status.get("wireguardPublicKey"))
    put(NODE_WIREGUARD_PUBLIC_KEY_V6, status.get("wireguardPublicKeyV6"))

    k8s_metadata: dict[str, Any] = {"name": name}
    if k8s_labels:
        k8s_metadata["labels"] = k8s_labels
    if annotations:
        k8s_metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Node", "metadata": k8s_metadata, "spec": {}}


def _calico_metadata_json(metadata: dict[str, Any], kind: str, created: str) -> str:
    """The `projectcalico.org/metadata` annotation: ObjectMeta as Go marshals it, in struct field order."""
    stored: dict[str, Any] = {}
    if kind in POLICY_KINDS:
        stored["name"] = metadata["name"]  # the only kinds whose v3 name differs from the backend name
    for field in ("generateName", "generation"):
        if metadata.get(field):
            stored[field] = metadata[field]
    stored["creationTimestamp"] = metadata.get("creationTimestamp") or created
    for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
        if metadata.get(field) is not None:
            stored[field] = metadata[field]
    for field in ("labels", "annotations"):
        if metadata.get(field):
            stored[field] = _sorted_map(metadata[field])
    for field in ("ownerReferences", "finalizers"):
        if metadata.get(field):
            stored[field] = metadata[field]
    return _go_json(stored)


def _calico_to_crd(doc: dict[str, Any], now: datetime | None) -> dict[str, Any]:
    kind = str(doc.get("kind"))
    try:
        resource = for_object(CRD_V1, kind)
    except KeyError:
        raise ValueError(f"no crd.projectcalico.org/v1 kind for projectcalico.org/v3 {kind}") from None
    metadata = _metadata(doc)
    spec = _drop_nulls(doc.get("spec") or {})  # `spec:` with no value is an empty spec
    if kind == "IPPool":
        spec = _ippool_spec(spec)
    created = _rfc3339(now or datetime.now(UTC))

    annotations = {METADATA_ANNOTATION: _calico_metadata_json(metadata, kind, created)}
    annotations.update({k: v for k, v in (metadata.get("annotations") or {}).items() if _ours(k)})
    crd_metadata: dict[str, Any] = {
        "name": tiered_policy_name(metadata["name"]) if kind in POLICY_KINDS else metadata["name"]
    }
    namespace = _namespace(resource, metadata)
    if namespace is not None:
        crd_metadata["namespace"] = namespace
    labels = {k: v for k, v in (metadata.get("labels") or {}).items() if _ours(k)}
    if labels:
        crd_metadata["labels"] = labels
    crd_metadata["annotations"] = annotations
    return {"apiVersion": CRD_V1, "kind": kind, "metadata": crd_metadata, "spec": spec}


def _namespace(resource: Resource, metadata: dict[str, Any]) -> str | None:
    if not resource.namespaced:
        return None
    return metadata.get("namespace") or "default"


def _kubernetes_passthrough(doc: dict[str, Any]) -> dict[str, Any]:
    api_version, kind = str(doc.get("apiVersion")), str(doc.get("kind"))
    try:
        resource = for_object(api_version, kind)
    except KeyError:
        raise ValueError(f"unsupported kind {kind!r} in {api_version!r}") from None
    out = copy.deepcopy(doc)
    metadata = _metadata(out)
    namespace = _namespace(resource, metadata)
    if namespace is not None:
        metadata["namespace"] = namespace
    if kind == "Service":
        out.pop("status", None)  # the API ignores status on create; no golden shows it
    if kind == "Secret" and out.get("stringData") is not None:
        # stringData is write-only: the API server merges it into data, base64-encoded, over any
        # same-named key in data.
        data = dict(out.get("data") or {})
        for key, value in out.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        out["data"] = data
    return out


def to_kubernetes(doc: dict[str, Any], *, now: datetime | None = None, kubelet_labels: bool = True) -> dict[str, Any]:
    """The object Calico's Kubernetes datastore holds for one loaded document.

    `now` is the creationTimestamp libcalico-go's client stamps on new Calico resources (default: the
    current time). `kubelet_labels` gives a converted Calico Node the three labels a kubelet sets, as
    upstream's KDD harness does; the fixture goldens do not depend on them.
    """
    doc = render_go_fields(doc)
    if doc.get("apiVersion") == CALICO_V3:
        if doc.get("kind") == "Node":
            return _node_to_kubernetes(doc, kubelet_labels)
        return _calico_to_crd(doc, now)
    return _kubernetes_passthrough(doc)


def stored_identity(doc: dict[str, Any]) -> tuple[str, str, str, str | None]:
    """(apiVersion, kind, name, namespace) of the object `doc` is stored as; a delete needs no spec."""
    api_version, kind = str(doc.get("apiVersion")), str(doc.get("kind"))
    name = str(go_string(_metadata(doc)["name"]))
    metadata = doc["metadata"]
    if api_version == CALICO_V3:
        if kind == "Node":
            return "v1", "Node", name, None
        try:
            resource = for_object(CRD_V1, kind)
        except KeyError:
            raise ValueError(f"no crd.projectcalico.org/v1 kind for projectcalico.org/v3 {kind}") from None
        backend_name = tiered_policy_name(name) if kind in POLICY_KINDS else name
        return CRD_V1, kind, backend_name, _namespace(resource, metadata)
    try:
        resource = for_object(api_version, kind)
    except KeyError:
        raise ValueError(f"unsupported kind {kind!r} in {api_version!r}") from None
    return api_version, kind, name, _namespace(resource, metadata)


# --- applying to the emulator -----------------------------------------------------------------


def _keep_creation_timestamp(emulator: Emulator, obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` with the creationTimestamp of the Calico resource it replaces, if there is one.

    calicoctl apply updates an existing resource with its original creationTimestamp (clientv3 refuses
    an update without one); keeping it also spares watchers a metadata-only change on every re-apply.
    """
    if obj["apiVersion"] != CRD_V1:
        return obj
    metadata = obj["metadata"]
    try:
        current = emulator.get(CRD_V1, obj["kind"], metadata["name"], namespace=metadata.get("namespace"))
    except Exception as exc:
        if getattr(exc, "status", None) == 404:
            return obj
        raise
    try:
        created = json.loads(current["metadata"]["annotations"][METADATA_ANNOTATION])["creationTimestamp"]
    except (KeyError, TypeError, ValueError):
        return obj  # not written by Calico: nothing to keep
    stored = json.loads(metadata["annotations"][METADATA_ANNOTATION])
    if not created or stored.get("creationTimestamp") == created:
        return obj
    stored["creationTimestamp"] = created
    annotations = {**metadata["annotations"], METADATA_ANNOTATION: _go_json(stored)}
    return {**obj, "metadata": {**metadata, "annotations": annotations}}


def apply_documents(emulator: Emulator, docs: Iterable[dict[str, Any]]) -> int:
    """Upsert each document's stored form in order (create, or replace whole); returns how many."""
    count = 0
    for doc in docs:
        emulator.upsert(_keep_creation_timestamp(emulator, to_kubernetes(doc)))
        count += 1
    return count


def delete_documents(emulator: Emulator, docs: Iterable[dict[str, Any]]) -> int:
    """Delete the stored object each document names; an absent one raises the emulator's 404."""
    count = 0
    for doc in docs:
        api_version, kind, name, namespace = stored_identity(doc)
        emulator.delete(api_version, kind, name, namespace=namespace)
        count += 1
    return count


def is_delete_file(path: str | os.PathLike[str]) -> bool:
    """Whether a fixture file lists objects to delete (`step-NN.delete.yaml`) rather than to upsert."""
    return os.path.basename(os.fspath(path)).endswith(".delete.yaml")


def load_file(emulator: Emulator, path: str | os.PathLike[str]) -> int:
    """Apply a fixture file, or delete what it lists if its name ends in `.delete.yaml`."""
    docs = load_documents(pathlib.Path(path))
    if is_delete_file(path):
        return delete_documents(emulator, docs)
    return apply_documents(emulator, docs)


# --- the fixture pack's standard IPAM block affinities (README §3) ------------------------------

STANDARD_BLOCK_AFFINITIES: tuple[tuple[str, str, str], ...] = (
    # (cidr, state, node); "" is implicitly confirmed.
    ("10.0.0.0/30", "", "kube-master"),
    ("10.1.0.0/24", "", "kube-master"),
    ("10.2.0.1/32", "", "kube-master"),
    ("192.168.221.192/26", "", "kube-master"),
    ("192.168.221.64/26", "confirmed", "kube-master"),
    ("192.168.221.0/26", "pending", "kube-master"),
)


def block_affinity_name(node: str, cidr: str) -> str:
    """`<node>-<cidr>` with `.`, `:` and `/` as `-` (ipam_affinity.go parseKey, names.CIDRToName)."""
    return f"{node}-{cidr.replace('.', '-').replace(':', '-').replace('/', '-')}"


def block_affinity(node: str, cidr: str, state: str) -> dict[str, Any]:
    """A BlockAffinity as the crd.projectcalico.org/v1 CRD holds it; `deleted` is a string there."""
    return {
        "apiVersion": CRD_V1,
        "kind": "BlockAffinity",
        "metadata": {"name": block_affinity_name(node, cidr)},
        "spec": {"state": state, "node": node, "cidr": cidr, "deleted": "false"},
    }


def standard_block_affinities() -> list[dict[str, Any]]:
    """The six affinities upstream's harness creates in code for cases with `standard_block_affinities`."""
    return [block_affinity(node, cidr, state) for cidr, state, node in STANDARD_BLOCK_AFFINITIES]
