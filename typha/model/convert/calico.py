"""Calico custom resources (crd.projectcalico.org/v1, spec as projectcalico.org/v3) → Calico model KVs.

The update processors of libcalico-go/lib/backend/syncersv1/updateprocessors, one function each:
policies and tiers, network sets, IP pools, host endpoints, IPAM blocks and affinities, the
config-style kinds (ClusterInformation, FelixConfiguration) and the kinds Typha passes through as
v3 resources (BGPConfiguration, BGPPeer, BGPFilter).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from typha.model import keys
from typha.model import selector as _selector
from typha.model.convert import grammar
from typha.model.convert.base import (
    LABEL_NAMESPACE,
    METADATA_ANNOTATION,
    NAMESPACE_LABEL_PREFIX,
    NAMESPACE_PROFILE_PREFIX,
    SERVICE_ACCOUNT_LABEL_PREFIX,
    ConversionError,
    check_selector,
    cidr_or_ip,
    crd_metadata,
    ip_address,
    metadata,
    namespace_of,
    order_v1,
    policy_v1,
    prefix_and_append,
    protocol_v1,
    spec_of,
    strict_cidr,
    v3_resource,
)
from typha.model.convert.k8s import as_number, namespaced_policy_selector

# --- validation shared by the kinds --------------------------------------------------------------

# networkPolicyNameRegex / globalNetworkPolicyNameRegex of Calico's v3 validator, as v3 names.
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NETWORK_POLICY_NAME = re.compile(rf"({_LABEL})(\.{_LABEL})?\Z|(knp|ossg)\.default\.{_LABEL}(\.{_LABEL})*\Z")
_GLOBAL_POLICY_NAME = re.compile(rf"({_LABEL}\.)?{_LABEL}\Z")


def _no_control_characters(value: Any, what: str) -> None:
    """Every string anywhere in `value` is printable: agents write these values into line-based
    programs (iptables-restore, BIRD), where a newline or NUL would start a statement of its own."""
    if isinstance(value, str):
        if not value.isprintable():
            raise ConversionError(f"{what}: control character in {value[:64]!r}")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_control_characters(k, what)
            _no_control_characters(v, what)
    elif isinstance(value, list):
        for v in value:
            _no_control_characters(v, what)


def _crd_labels(md: dict[str, Any], namespaced: bool, v3: bool, what: str) -> dict[str, Any]:
    """The v3 metadata of a Calico resource, its labels held to the validator's label grammar."""
    out = crd_metadata(md, namespaced, v3=v3)
    if not grammar.labels(out.get("labels") or {}):
        raise ConversionError(f"{what}: labels outside Kubernetes' grammar")
    return out

# --- policies and tiers --------------------------------------------------------------------------


def _policy_name(md: dict[str, Any], tier: str, *, v3: bool, namespaced: bool) -> str:
    """The v3 name of a policy, held to the validator's policy-name grammar.

    crd.projectcalico.org/v1 (determinePolicyName): the name from the metadata annotation, else the
    stored name with a default-tier `default.` prefix removed (how policies were stored before
    v3.30). projectcalico.org/v3 stores the v3 object itself: its name is the name, no prefix.
    """
    name = md["name"] if v3 else _v1_policy_name(md, tier)
    pattern = _NETWORK_POLICY_NAME if namespaced else _GLOBAL_POLICY_NAME
    if not isinstance(name, str) or len(name) > 253 or not pattern.match(name):
        raise ConversionError(f"invalid policy name {name!r}")
    return name


def _v1_policy_name(md: dict[str, Any], tier: str) -> str:
    stored = (md.get("annotations") or {}).get(METADATA_ANNOTATION)
    if stored:
        try:
            name = orjson.loads(stored).get("name")
        except (orjson.JSONDecodeError, AttributeError):
            raise ConversionError(f"{md['name']}: unparsable {METADATA_ANNOTATION} annotation") from None
        if name:
            return name
    if tier in ("default", "") and md["name"].startswith("default."):
        return md["name"][len("default.") :]
    return md["name"]


def _global_selector(spec: dict[str, Any], what: str) -> str:
    """The GlobalNetworkPolicy v1 selector: the selector, then `pcns.`/`pcsa.` clauses appended.

    The all() rewrites apply to the whole combined string, as upstream's strings.Replace does.
    """
    selector = spec.get("selector") or ""
    if selector:
        check_selector(selector, f"{what} selector")
    if spec.get("namespaceSelector"):
        selector = prefix_and_append(selector, spec["namespaceSelector"], NAMESPACE_LABEL_PREFIX, what)
        selector = selector.replace("all()", f"has({LABEL_NAMESPACE})")
    if spec.get("serviceAccountSelector"):
        selector = prefix_and_append(selector, spec["serviceAccountSelector"], SERVICE_ACCOUNT_LABEL_PREFIX, what)
        selector = selector.replace("all()", "has(projectcalico.org/serviceaccount)")
    return selector


def _staged_action(spec: dict[str, Any], staged: bool, what: str) -> str:
    action = spec.get("stagedAction") or "" if staged else ""
    if action not in ("", "Set", "Delete", "Learn", "Ignore"):
        raise ConversionError(f"{what}: invalid stagedAction {action!r}")
    return str(action)


def _global_policy(kind: str, obj: dict[str, Any], staged: bool, v3: bool) -> list[tuple[str, Any]]:
    md = metadata(obj)
    spec = spec_of(obj)
    action = _staged_action(spec, staged, kind)
    if action == "Delete":
        return []  # a staged delete is not sent to Felix
    name = _policy_name(md, spec.get("tier") or "", v3=v3, namespaced=False)
    what = f"{kind} {name}"
    value = policy_v1(
        spec, namespace="", selector=_global_selector(spec, what), what=what, staged_action=action or None
    )
    if spec.get("doNotTrack"):
        value["untracked"] = True
    if spec.get("preDNAT"):
        value["pre_dnat"] = True
    if spec.get("applyOnForward"):
        value["apply_on_forward"] = True
    return [(keys.policy_path(kind, "", name), value)]


def _namespaced_policy(kind: str, obj: dict[str, Any], staged: bool, v3: bool) -> list[tuple[str, Any]]:
    md = metadata(obj)
    ns = namespace_of(md)
    spec = spec_of(obj)
    action = _staged_action(spec, staged, kind)
    if action == "Delete":
        return []
    name = _policy_name(md, spec.get("tier") or "", v3=v3, namespaced=True)
    what = f"{kind} {ns}/{name}"
    selector = spec.get("selector") or ""
    if selector:
        check_selector(selector, f"{what} selector")
    selector = namespaced_policy_selector(selector, ns, spec.get("serviceAccountSelector") or "")
    value = policy_v1(spec, namespace=ns, selector=selector, what=what, staged_action=action or None)
    return [(keys.policy_path(kind, ns, name), value)]


def global_network_policy(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    return _global_policy("GlobalNetworkPolicy", obj, staged=False, v3=v3)


def staged_global_network_policy(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    return _global_policy("StagedGlobalNetworkPolicy", obj, staged=True, v3=v3)


def network_policy(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    return _namespaced_policy("NetworkPolicy", obj, staged=False, v3=v3)


def staged_network_policy(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    return _namespaced_policy("StagedNetworkPolicy", obj, staged=True, v3=v3)


def tier(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    """Tier → `/calico/v1/policy/tier/<name>/metadata`; any default action but Pass means Deny."""
    md = metadata(obj)
    if not grammar.dns1123_label(md["name"]):
        raise ConversionError(f"Tier {md['name']!r}: tier names are DNS-1123 labels")
    spec = spec_of(obj)
    value: dict[str, Any] = {}
    order = order_v1(spec.get("order"))
    if order is not None:
        value["order"] = order
    value["defaultAction"] = "Pass" if spec.get("defaultAction") == "Pass" else "Deny"
    return [(keys.tier_path(md["name"]), value)]


# --- network sets --------------------------------------------------------------------------------


def _nets(spec: dict[str, Any], what: str) -> list[str]:
    nets = spec.get("nets") or []
    if not isinstance(nets, list):
        raise ConversionError(f"{what}: nets must be a list")
    try:
        return [cidr_or_ip(n)[1] for n in nets]
    except ConversionError as exc:
        raise ConversionError(f"{what}: {exc}") from None


def global_network_set(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    md = metadata(obj)
    value: dict[str, Any] = {}
    what = f"GlobalNetworkSet {md['name']}"
    nets = _nets(spec_of(obj), what)
    if nets:
        value["nets"] = nets
    labels = _crd_labels(md, False, v3, what).get("labels")
    if labels:
        value["labels"] = labels
    return [(keys.network_set_path(md["name"]), value)]


def network_set(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    """NetworkSet → `/calico/v1/netset/<ns>%2f<name>` with the namespace label and profile added."""
    md = metadata(obj)
    ns = namespace_of(md)
    value: dict[str, Any] = {}
    what = f"NetworkSet {ns}/{md['name']}"
    nets = _nets(spec_of(obj), what)
    if nets:
        value["nets"] = nets
    labels = dict(_crd_labels(md, True, v3, what).get("labels") or {})
    labels[LABEL_NAMESPACE] = ns
    value["labels"] = labels
    value["profile_ids"] = [NAMESPACE_PROFILE_PREFIX + ns]
    return [(keys.network_set_path(f"{ns}/{md['name']}"), value)]


# --- IP pools, host endpoints, IPAM ------------------------------------------------------------

_ENCAP = {"Always": "always", "CrossSubnet": "cross-subnet"}


_ASSIGNMENT_MODES = frozenset({"Automatic", "Manual"})


def ip_pool(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    """IPPool → `/calico/v1/ipam/v4|v6/pool/<net>-<len>` (the same for Felix and confd)."""
    md = metadata(obj)
    spec = spec_of(obj)
    try:
        _, cidr = strict_cidr(spec.get("cidr"))
    except ConversionError as exc:
        raise ConversionError(f"IPPool {md['name']}: {exc}") from None
    if spec.get("assignmentMode") and spec["assignmentMode"] not in _ASSIGNMENT_MODES:
        raise ConversionError(f"IPPool {md['name']}: invalid assignmentMode {spec['assignmentMode']!r}")
    for field in ("nodeSelector", "namespaceSelector"):
        if spec.get(field):
            check_selector(spec[field], f"IPPool {md['name']} {field}")
    ipip = _ENCAP.get(spec.get("ipipMode") or "", "never")
    disabled = bool(spec.get("disabled"))
    value = {
        "cidr": cidr,
        "ipip": "tunl0" if ipip != "never" else "",
        "ipip_mode": ipip,
        "vxlan_mode": _ENCAP.get(spec.get("vxlanMode") or "", "never"),
        "masquerade": bool(spec.get("natOutgoing")),
        "ipam": not disabled,
        "disabled": disabled,
        "disableBGPExport": bool(spec.get("disableBGPExport")),
        "assignment_mode": spec.get("assignmentMode") or "Automatic",
    }
    return [(keys.ip_pool_path(cidr), value)]


_ENDPOINT_PORT_PROTOCOLS = frozenset({"tcp", "udp", "sctp"})


def _endpoint_port(port: Any, what: str) -> dict[str, Any]:
    """validateEndpointPort: a port name, TCP/UDP/SCTP, a port number 1-65535."""
    if not isinstance(port, dict):
        raise ConversionError(f"{what}: invalid port {port!r}")
    name = port.get("name") or ""
    if not grammar.port_name(name):
        raise ConversionError(f"{what}: invalid port name {name!r}")
    protocol = protocol_v1(port.get("protocol") or "TCP")
    if protocol not in _ENDPOINT_PORT_PROTOCOLS:
        raise ConversionError(f"{what}: port {name} protocol {protocol!r} is not TCP, UDP or SCTP")
    number = port.get("port")
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
        raise ConversionError(f"{what}: invalid port number {number!r}")
    return {"name": name, "protocol": protocol, "port": number}


def host_endpoint(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    md = metadata(obj)
    spec = spec_of(obj)
    what = f"HostEndpoint {md['name']}"
    node = spec.get("node")
    if not node:
        raise ConversionError(f"{what}: missing spec.node")
    if not grammar.dns1123_subdomain(node):
        raise ConversionError(f"{what}: invalid spec.node {node!r}")
    value: dict[str, Any] = {}
    if spec.get("interfaceName"):
        iface = spec["interfaceName"]
        if iface != "*" and not grammar.interface_name(iface):
            raise ConversionError(f"{what}: invalid interfaceName {iface!r}")
        value["name"] = iface
    v4: list[str] = []
    v6: list[str] = []
    for text in spec.get("expectedIPs") or ():
        try:
            version, ip = ip_address(text)
        except ConversionError:
            continue  # upstream skips addresses that don't parse
        (v4 if version == 4 else v6).append(ip)
    if v4:
        value["expected_ipv4_addrs"] = v4
    if v6:
        value["expected_ipv6_addrs"] = v6
    value["labels"] = _crd_labels(md, False, v3, what).get("labels") or {}
    if spec.get("profiles"):
        profiles = spec["profiles"]
        if not isinstance(profiles, list) or not all(grammar.v1_name(p) for p in profiles):
            raise ConversionError(f"{what}: invalid profiles {profiles!r}")
        value["profile_ids"] = list(profiles)
    ports = [_endpoint_port(p, what) for p in spec.get("ports") or ()]
    if ports:
        value["ports"] = ports
    return [(keys.host_endpoint_path(node, md["name"]), value)]


def ipam_block(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    """IPAMBlock → `/calico/ipam/v2/assignment/ipv4|6/block/<net>-<len>` (model.AllocationBlock)."""
    md = metadata(obj)
    spec = spec_of(obj)
    try:
        _, cidr = strict_cidr(spec.get("cidr"))
    except ConversionError as exc:
        raise ConversionError(f"IPAMBlock {md['name']}: {exc}") from None
    attributes = spec.get("attributes")
    value = {
        "cidr": cidr,
        "affinity": spec.get("affinity"),
        "allocations": spec.get("allocations"),
        "unallocated": spec.get("unallocated"),
        "attributes": None
        if attributes is None
        else [{"handle_id": a.get("handle_id"), "secondary": a.get("secondary")} for a in attributes],
        "sequenceNumber": spec.get("sequenceNumber") or 0,
        "sequenceNumberForAllocation": spec.get("sequenceNumberForAllocation"),
        "deleted": bool(spec.get("deleted")),
    }
    return [(keys.block_path(cidr), value)]


_GO_BOOLS = {
    "1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
    "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False,
}  # fmt: skip


def block_affinity(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    """BlockAffinity → `/calico/ipam/v2/host/<node>/ipv4|6/block/<net>-<len>` for confd.

    `deleted` is a string in crd.projectcalico.org/v1 and a bool in projectcalico.org/v3.
    """
    md = metadata(obj)
    spec = spec_of(obj)
    node = spec.get("node")
    if not node:
        raise ConversionError(f"BlockAffinity {md['name']}: missing spec.node")
    if not grammar.dns1123_subdomain(node):
        raise ConversionError(f"BlockAffinity {md['name']}: invalid spec.node {node!r}")
    try:
        _, cidr = strict_cidr(spec.get("cidr"))
    except ConversionError as exc:
        raise ConversionError(f"BlockAffinity {md['name']}: {exc}") from None
    deleted_text = spec.get("deleted")
    deleted = False
    if deleted_text not in (None, ""):
        if isinstance(deleted_text, bool):
            deleted = deleted_text
        elif deleted_text in _GO_BOOLS:
            deleted = _GO_BOOLS[deleted_text]
        else:
            raise ConversionError(f"BlockAffinity {md['name']}: deleted {deleted_text!r} is not a bool")
    state = spec.get("state") or ""
    if state not in ("", "confirmed", "pending", "pendingDeletion"):
        raise ConversionError(f"BlockAffinity {md['name']}: invalid state {state!r}")
    return [(keys.block_affinity_path(node, cidr), {"state": state, "deleted": deleted})]


# --- v3 passthrough ------------------------------------------------------------------------------


def _v3_passthrough(
    kind: str, obj: dict[str, Any], v3: bool, checks: tuple[tuple[str, Callable[[Any], bool]], ...]
) -> list[tuple[str, Any]]:
    """The v3 resource as confd reads it, after the checks Calico's v3 validator makes on the fields
    that confd writes into BIRD's configuration."""
    md = metadata(obj)
    spec = spec_of(obj)
    what = f"{kind} {md['name']}"
    _no_control_characters(spec, what)
    for path, valid in checks:
        for value in _at_path(spec, path.split(".")):
            if value is not None and value != "" and not valid(value):
                raise ConversionError(f"{what}: invalid {path} {value!r}")
    value = v3_resource(kind, _crd_labels(md, False, v3, what), spec)
    return [(keys.resource_path(kind, md["name"]), value)]


def _at_path(value: Any, steps: list[str]) -> list[Any]:
    """The values at a dotted path; a `[]` suffix walks a list. Wrong shapes are values too, so the
    check refuses them."""
    if not steps:
        return [value]
    if not isinstance(value, dict):
        return []
    head, rest = steps[0], steps[1:]
    many = head.endswith("[]")
    item = value.get(head[:-2] if many else head)
    if item is None:
        return []
    if many:
        if not isinstance(item, list):
            return [item]
        return [found for element in item for found in _at_path(element, rest)]
    return _at_path(item, rest)


def _is_ip(value: Any) -> bool:
    try:
        ip_address(value)
    except ConversionError:
        return False
    return True


def _is_net(value: Any) -> bool:
    try:
        cidr_or_ip(value)
    except ConversionError:
        return False
    return True


def _is_strict_net(version: int) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        try:
            return strict_cidr(value)[0] == version
        except ConversionError:
            return False

    return check


def _is_ip_port(value: Any) -> bool:
    """validateIPPort: an IP, `a.b.c.d:port` or `[v6]:port`."""
    if _is_ip(value):
        return True
    if not isinstance(value, str):
        return False
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            return False
    elif ":" in host:
        return False
    return _is_ip(host) and grammar.ascii_digits(port) and 1 <= int(port) <= 65535


def _is_selector(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        _selector.parse(value)
    except _selector.SelectorError:
        return False
    return True


def _is_as_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value <= 0xFFFFFFFF
    return isinstance(value, str) and as_number(value) is not None


def _one_of(*allowed: str) -> Callable[[Any], bool]:
    return lambda value: value in allowed


def _is_duration(value: Any) -> bool:
    return isinstance(value, str) and _GO_DURATION.match(value) is not None


def _is_int_between(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


_COMMUNITY = re.compile(r"[0-9]+:[0-9]+(:[0-9]+)?\Z")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}\Z")
_LOG_SEVERITY = re.compile(r"(?i)(Trace|Debug|Info|Warning|Error|Fatal)\Z")
_BGP_INTERFACE = re.compile(r"[a-zA-Z0-9_.*-]{1,15}\Z")


def _is_community(value: Any) -> bool:
    """A community value (`aa:nn`, `aa:nn:mm`) or the name of one defined in the configuration."""
    return isinstance(value, str) and (_COMMUNITY.match(value) is not None or grammar.dns1123_subdomain(value))


def _matches(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and pattern.match(value) is not None


_SECRET_REF = (
    ("secretKeyRef.name", grammar.dns1123_subdomain),
    ("secretKeyRef.key", _matches(_SECRET_KEY)),
)
_BGP_PEER_CHECKS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("node", grammar.dns1123_subdomain),
    ("nodeSelector", _is_selector),
    ("peerSelector", _is_selector),
    ("localWorkloadSelector", _is_selector),
    ("peerIP", _is_ip_port),
    ("asNumber", _is_as_number),
    ("localASNumber", _is_as_number),
    ("sourceAddress", _one_of("UseNodeIP", "None")),
    ("reachableBy", _is_ip),
    ("maxRestartTime", _is_duration),
    ("filters[]", grammar.dns1123_subdomain),
    ("nextHopMode", _one_of("Auto", "Self", "Keep")),
    ("reversePeering", _one_of("Auto", "Manual")),
    ("ttlSecurity", _is_int_between(0, 255)),
    ("numAllowedLocalASNumbers", _is_int_between(0, 2**31 - 1)),
    ("keepaliveTime", _is_duration),
    *((f"password.{path}", check) for path, check in _SECRET_REF),
)
_SERVICE_BLOCKS = ("serviceClusterIPs", "serviceExternalIPs", "serviceLoadBalancerIPs")
_BGP_CONFIGURATION_CHECKS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("asNumber", _is_as_number),
    ("listenPort", _is_int_between(1, 65535)),
    ("logSeverityScreen", _matches(_LOG_SEVERITY)),
    ("bindMode", _one_of("None", "NodeIP")),
    ("programClusterRoutes", _one_of("Enabled", "Disabled", "EnabledIPIPOnly", "EnabledNoEncapOnly")),
    ("localWorkloadPeeringIPV4", _is_ip),
    ("localWorkloadPeeringIPV6", _is_ip),
    ("nodeMeshMaxRestartTime", _is_duration),
    ("ignoredInterfaces[]", _matches(_BGP_INTERFACE)),
    ("communities[].name", grammar.dns1123_subdomain),
    ("communities[].value", _matches(_COMMUNITY)),
    ("prefixAdvertisements[].cidr", _is_net),
    ("prefixAdvertisements[].communities[]", _is_community),
    *((f"{block}[].cidr", _is_net) for block in _SERVICE_BLOCKS),
    *((f"nodeMeshPassword.{path}", check) for path, check in _SECRET_REF),
)
_FILTER_RULE_CHECKS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("matchOperator", _one_of("Equal", "NotEqual", "In", "NotIn")),
    ("source", _one_of("RemotePeers")),
    ("interface", _matches(_BGP_INTERFACE)),
    ("peerType", _one_of("eBGP", "iBGP")),
    ("action", _one_of("Accept", "Reject")),
    ("priority", _is_int_between(1, 2147483646)),
    ("asPathPrefix[]", _is_as_number),
    ("communities.values[]", _is_community),
    ("operations[].addCommunity.value", _is_community),
    ("operations[].prependASPath.prefix[]", _is_as_number),
    ("operations[].setPriority.value", _is_int_between(1, 2147483646)),
)
_BGP_FILTER_CHECKS: tuple[tuple[str, Callable[[Any], bool]], ...] = tuple(
    (f"{direction}[].{path}", check)
    for direction, version in (("exportV4", 4), ("importV4", 4), ("exportV6", 6), ("importV6", 6))
    for path, check in (
        ("cidr", _is_strict_net(version)),
        ("prefixLength.min", _is_int_between(0, 32 if version == 4 else 128)),
        ("prefixLength.max", _is_int_between(0, 32 if version == 4 else 128)),
        *_FILTER_RULE_CHECKS,
    )
)


def bgp_configuration(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    return _v3_passthrough("BGPConfiguration", obj, v3, _BGP_CONFIGURATION_CHECKS)


def bgp_peer(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    return _v3_passthrough("BGPPeer", obj, v3, _BGP_PEER_CHECKS)


def bgp_filter(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    return _v3_passthrough("BGPFilter", obj, v3, _BGP_FILTER_CHECKS)


# --- config kinds --------------------------------------------------------------------------------

_ANNOTATION_CONFIG_PREFIX = "config.projectcalico.org/"


def _config_scope(md: dict[str, Any], kind: str) -> str:
    """"" for the global `default` resource, the node name for `node.<name>`; anything else is invalid."""
    name = md["name"]
    if name == "default":
        return ""
    if name.startswith("node.") and grammar.dns1123_subdomain(name[len("node.") :]):
        return name[len("node.") :]
    raise ConversionError(f"{kind} {name!r}: name must be 'default' or 'node.<nodename>'")


def _config_path(node: str, name: str) -> str:
    return keys.host_config_path(node, name) if node else keys.global_config_path(name)


def cluster_information(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    """ClusterInformation → global config keys plus `/calico/v1/Ready` (annotations are not read)."""
    md = metadata(obj)
    node = _config_scope(md, "ClusterInformation")
    spec = spec_of(obj)
    _no_control_characters(spec, f"ClusterInformation {md['name']}")
    out: list[tuple[str, Any]] = []
    for field, name in (
        ("clusterGUID", "ClusterGUID"),
        ("clusterType", "ClusterType"),
        ("calicoVersion", "CalicoVersion"),
        ("variant", "Variant"),
    ):
        value = spec.get(field)
        if value:
            out.append((_config_path(node, name), str(value)))
    ready = spec.get("datastoreReady")
    if ready is not None and not node:
        out.append((keys.READY_FLAG_PATH, bool(ready)))
    return out


# FelixConfigurationSpec fields whose v1 config name is not the Go field name (`confignamev1` tags),
# or whose Go field name is not the JSON name with its first letter capitalised.
_FELIX_NAMES = {
    "ipv6Support": "Ipv6Support",
    "iptablesPostWriteCheckInterval": "IptablesPostWriteCheckIntervalSecs",
    "iptablesLockTimeout": "IptablesLockTimeoutSecs",
    "iptablesLockProbeInterval": "IptablesLockProbeIntervalMillis",
    "netlinkTimeout": "NetlinkTimeoutSecs",
    "ipipEnabled": "IpInIpEnabled",
    "ipipMTU": "IpInIpMtu",
    "vxlanEnabled": "VXLANEnabled",
    "reportingInterval": "ReportingIntervalSecs",
    "reportingTTL": "ReportingTTLSecs",
    "endpointReportingDelay": "EndpointReportingDelaySecs",
    "usageReportingInitialDelay": "UsageReportingInitialDelaySecs",
    "usageReportingInterval": "UsageReportingIntervalSecs",
    "xdpEnabled": "XDPEnabled",
    "genericXDPEnabled": "GenericXDPEnabled",
    "externalNodesList": "ExternalNodesCIDRList",
    "wireguardKeepAlive": "WireguardPersistentKeepAlive",
    "nftablesMode": "NFTablesMode",  # but NftablesRefreshInterval, NftablesMarkMask, ...
    "bpfConntrackMode": "BPFConntrackCleanupMode",
    "bpfMapSizePerCpuConntrack": "BPFMapSizePerCPUConntrack",
}
# Go spells these leading acronyms in capitals where the JSON name has them in lower case.
_FELIX_ACRONYMS = (
    ("vxlan", "VXLAN"),
    ("ipv4", "IPv4"),
    ("ipv6", "IPv6"),
    ("bpf", "BPF"),
    ("xdp", "XDP"),
    ("nat", "NAT"),
    ("aws", "AWS"),
    ("mtu", "MTU"),
    ("dns", "DNS"),
)
_MILLISECOND_FIELDS = frozenset({"iptablesLockProbeInterval"})
_DURATION_UNIT = r"(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h)"
_GO_DURATION = re.compile(rf"^-?(?:{_DURATION_UNIT})+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
# BPFConntrackTimeouts, in Go struct order: JSON name -> Go field name.
_CONNTRACK_TIMEOUTS = (
    ("creationGracePeriod", "CreationGracePeriod"),
    ("tcpSynSent", "TCPSynSent"),
    ("tcpEstablished", "TCPEstablished"),
    ("tcpFinsSeen", "TCPFinsSeen"),
    ("tcpResetSeen", "TCPResetSeen"),
    ("udpTimeout", "UDPTimeout"),
    ("genericTimeout", "GenericTimeout"),
    ("icmpTimeout", "ICMPTimeout"),
)


def felix_config_name(field: str) -> str:
    if field in _FELIX_NAMES:
        return _FELIX_NAMES[field]
    for lower, upper in _FELIX_ACRONYMS:
        if field.startswith(lower) and len(field) > len(lower) and not field[len(lower)].islower():
            return upper + field[len(lower) :]
    if field.startswith("ip") and len(field) > 2 and field[2].isupper():
        return "IP" + field[2:]
    return field[:1].upper() + field[1:]


def go_float(value: float) -> str:
    """fmt's %v for a float64: strconv 'g' with the shortest digits, %e once the exponent is < -4 or
    >= 6 (so 90 → "90", 0.05 → "0.05", 1e6 → "1e+06", 1.5e-05 stays exponential)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "0"
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + int(exponent)  # position of the decimal point within `digits`
    exp10 = point - 1
    prefix = "-" if sign else ""
    if exp10 < -4 or exp10 >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return prefix + digits + "0" * (point - len(digits))
    return f"{prefix}{digits[:point]}.{digits[point:]}"


def duration_ns(text: str) -> int:
    """time.ParseDuration, to whole nanoseconds (Decimal keeps "1.1s" exact); as Go's, one leading
    sign and a bare "0" are accepted. The one Go-duration parser: confd-client uses it too."""
    body = text[1:] if text[:1] in ("+", "-") else text
    if body == "0":
        return 0
    if body[:1] == "-" or not _GO_DURATION.match(body):
        raise ConversionError(f"invalid duration {text!r}")
    total = sum(Decimal(num) * _UNIT_NS[unit] for num, unit in _DURATION_PART.findall(body))
    return -int(total) if text.startswith("-") else int(total)


def _fraction(value: int, digits: int) -> str:
    whole, frac = divmod(value, 10**digits)
    return f"{whole}.{str(frac).rjust(digits, '0').rstrip('0')}" if frac else str(whole)


def go_duration(ns: int) -> str:
    """time.Duration.String(): "1m30s", "50ms", "1h0m0s", "0s"."""
    if ns == 0:
        return "0s"
    sign, u = ("-" if ns < 0 else ""), abs(ns)
    if u < 10**9:
        if u < 10**3:
            return f"{sign}{u}ns"
        if u < 10**6:
            return f"{sign}{_fraction(u, 3)}µs"
        return f"{sign}{_fraction(u, 6)}ms"
    minutes, rest = divmod(u, 60 * 10**9)
    text = _fraction(rest, 9) + "s"
    if minutes:
        hours, minutes = divmod(minutes, 60)
        text = f"{minutes}m{text}"
        if hours:
            text = f"{hours}h{text}"
    return sign + text


def _proto_ports(value: Any) -> str:
    """protoPortSliceToString: "tcp:22,udp:68,tcp:[fd00::/64]:22"; an empty list is "none"."""
    if not value:
        return "none"
    parts = []
    for pp in value:
        protocol = str(pp.get("protocol") or "tcp").lower()
        port = pp.get("port")
        net = pp.get("net")
        if net:
            version = cidr_or_ip(net)[0]
            parts.append(f"{protocol}:[{net}]:{port}" if version == 6 else f"{protocol}:{net}:{port}")
        else:
            parts.append(f"{protocol}:{port}")
    return ",".join(parts)


def _go_value(value: Any) -> str:
    """fmt's %v, for the values FelixConfiguration has that no special case covers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, list):
        return "[" + " ".join(_go_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_value(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def _felix_value(field: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if field in ("failsafeInboundHostPorts", "failsafeOutboundHostPorts"):
        return _proto_ports(value)
    if field == "routeTableRange":
        return f"{value.get('min')}-{value.get('max')}"
    if field == "routeTableRanges":
        return ",".join(f"{r.get('min')}-{r.get('max')}" for r in value)
    if field == "healthTimeoutOverrides":
        # "<name>=<Duration.String()>,..."; an empty list sends nothing.
        return ",".join(f"{h.get('name')}={go_duration(duration_ns(h.get('timeout')))}" for h in value) or None
    if field == "bpfConntrackTimeouts":
        # structToKeyValueString: the set fields as GoName=value, in struct order.
        return ",".join(f"{go}={value[js]}" for js, go in _CONNTRACK_TIMEOUTS if value.get(js))
    if field == "kubeNodePortRanges":
        return "[" + " ".join(str(p) for p in value) + "]"  # %v of []numorstring.Port
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        # map[string]string: "k=v," per entry (Go's order is random; sorted here so values are stable).
        return "".join(f"{k}={value[k]}," for k in sorted(value))
    if isinstance(value, str):
        if _GO_DURATION.match(value):
            ns = duration_ns(value)
            if field in _MILLISECOND_FIELDS:
                return go_float(ns // 10**6 + (ns % 10**6) / 1e6)
            return go_float(ns / 1e9)
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return _go_value(value)


def felix_configuration(obj: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    """FelixConfiguration → one config key per set field (`default`: global, `node.<n>`: per host).

    Values are the strings Felix parses (configurationprocessor.go); `config.projectcalico.org/<Name>`
    annotations add keys or override fields of the same config name, unvalidated, as upstream.
    """
    md = metadata(obj)
    node = _config_scope(md, "FelixConfiguration")
    # Felix parses each value with its own grammar; the agents here read some of them (interface
    # prefixes, marks, chain insert mode) into iptables text, so a line break never passes.
    _no_control_characters(spec_of(obj), f"FelixConfiguration {md['name']}")
    _no_control_characters(md.get("annotations") or {}, f"FelixConfiguration {md['name']}")
    values: dict[str, str] = {}
    for field, raw in spec_of(obj).items():
        try:
            value = _felix_value(field, raw)
        except (AttributeError, TypeError) as exc:
            raise ConversionError(f"FelixConfiguration {md['name']}: bad {field}: {exc}") from None
        if value is not None:
            values[felix_config_name(field)] = value
    for key, value in (md.get("annotations") or {}).items():
        if key.startswith(_ANNOTATION_CONFIG_PREFIX) and len(key) > len(_ANNOTATION_CONFIG_PREFIX):
            values[key[len(_ANNOTATION_CONFIG_PREFIX) :]] = value
    return [(_config_path(node, name), value) for name, value in values.items()]
