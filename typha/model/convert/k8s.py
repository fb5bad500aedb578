"""Kubernetes objects → Calico model KVs: Pod, Namespace, ServiceAccount, NetworkPolicy, Node, Service.

Each converter follows the two upstream steps in one pass: the KDD conversion to a v3 resource
(libcalico-go/lib/backend/k8s/conversion, k8s/resources/node.go) and the felix/bgp syncer's update
processor (syncersv1/updateprocessors). The pod converter is the hot path (one call per pod on every
list and every pod update; docs/architecture.md §8 budgets ~25 µs): no copies beyond the labels map it must build,
no ipaddress parsing for the common dotted-quad IPv4 case.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import Any

import orjson

from typha.model import keys
from typha.model.convert import grammar
from typha.model.convert.base import (
    LABEL_NAMESPACE,
    LABEL_ORCHESTRATOR,
    LABEL_SERVICE_ACCOUNT,
    NAME_LABEL,
    NAMESPACE_LABEL_PREFIX,
    NAMESPACE_PROFILE_PREFIX,
    SERVICE_ACCOUNT_LABEL_PREFIX,
    SERVICE_ACCOUNT_PROFILE_PREFIX,
    ConversionError,
    check_selector,
    cidr_or_ip,
    go_json,
    ip_address,
    json_map,
    label_term,
    literal,
    metadata,
    namespace_of,
    policy_v1,
    port_v1,
    prefix_and_append,
    spec_of,
    strict_cidr,
    v3_resource,
)

# --- Pod → WorkloadEndpoint ----------------------------------------------------------------------

ANNOTATION_POD_IP = "cni.projectcalico.org/podIP"
ANNOTATION_POD_IPS = "cni.projectcalico.org/podIPs"
ANNOTATION_AWS_POD_IPS = "vpc.amazonaws.com/pod-ips"
_FINISHED_PHASES = frozenset({"Failed", "Succeeded", "Completed"})
_PORT_PROTOCOLS = {"TCP": "tcp", "": "tcp", "UDP": "udp", "SCTP": "sctp"}
_PROFILE_LABEL_PREFIXES = (NAMESPACE_LABEL_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX)


def _interface_prefix() -> str:
    # VethNameForWorkload uses the first entry of FELIX_INTERFACEPREFIX, read once here rather than
    # per pod (the CNI plugin and Felix read the same variable, so it cannot change under us).
    prefix = os.environ.get("FELIX_INTERFACEPREFIX", "")
    return prefix.split(",")[0] if prefix else "cali"


INTERFACE_PREFIX = _interface_prefix()


def veth_name(namespace: str, pod: str, prefix: str = INTERFACE_PREFIX) -> str:
    """The host-side interface name the CNI plugin gives a pod: prefix + sha1("<ns>.<pod>")[:11]."""
    return prefix + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


def _is_dotted_quad(text: str) -> bool:
    parts = text.split(".")
    if len(parts) != 4:
        return False
    for part in parts:
        # Go's net.ParseIP rejects leading zeros as Python does, so canonical input is all we accept.
        if not part.isdigit() or len(part) > 3 or (len(part) > 1 and part[0] == "0") or int(part) > 255:
            return False
    return True


def _pod_net(text: str) -> tuple[int, str]:
    """(version, masked CIDR) for one pod IP (bare, or with a prefix from the CNI annotation)."""
    text = text.strip()
    if text.isascii() and _is_dotted_quad(text):
        return 4, text + "/32"
    if text.endswith("/32") and _is_dotted_quad(text[:-3]):
        return 4, text
    return cidr_or_ip(text)


def _pod_ip_strings(pod: dict[str, Any], annotations: dict[str, str]) -> list[str]:
    """getPodIPs: status.podIPs, status.podIP, then the Calico and AWS CNI annotations."""
    status = pod.get("status") or {}
    pod_ips = status.get("podIPs")
    if pod_ips:
        return [entry.get("ip") or "" for entry in pod_ips]
    if status.get("podIP"):
        return [status["podIP"]]
    if annotations.get(ANNOTATION_POD_IPS):
        return annotations[ANNOTATION_POD_IPS].split(",")
    if annotations.get(ANNOTATION_POD_IP):
        return [annotations[ANNOTATION_POD_IP]]
    if annotations.get(ANNOTATION_AWS_POD_IPS):
        return annotations[ANNOTATION_AWS_POD_IPS].split(",")
    return []


def _is_finished(pod: dict[str, Any], md: dict[str, Any], annotations: dict[str, str]) -> bool:
    """IsFinished: a terminal phase, or deletion with the CNI having explicitly released the IP."""
    if md.get("deletionTimestamp") and (
        annotations.get(ANNOTATION_POD_IP) == "" or annotations.get(ANNOTATION_AWS_POD_IPS) == ""
    ):
        return True
    return (pod.get("status") or {}).get("phase") in _FINISHED_PHASES


def _named_ports(spec: dict[str, Any]) -> list[dict[str, Any]]:
    ports: list[dict[str, Any]] = []
    for container in spec.get("containers") or ():
        for cp in container.get("ports") or ():
            name = cp.get("name")
            number = cp.get("containerPort")
            # The v1 model carries named ports only (the CNI plugin's hostPort-only entries are
            # dropped by the update processor), and only protocols Calico knows.
            if not name or not number:
                continue
            protocol = _PORT_PROTOCOLS.get(cp.get("protocol") or "")
            if protocol is None:
                continue
            # The validator refuses the whole endpoint over one bad named port (EndpointPort).
            if not grammar.port_name(name):
                raise ConversionError(f"invalid container port name {name!r}")
            if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
                raise ConversionError(f"invalid container port {number!r}")
            ports.append({"name": name, "protocol": protocol, "port": number})
    return ports


def _k8s_labels(md: dict[str, Any]) -> dict[str, str]:
    """metadata.labels, held to Kubernetes' grammar as the API server holds them."""
    found = md.get("labels") or {}
    if not grammar.labels(found):
        raise ConversionError(f"{md.get('name')}: labels outside Kubernetes' grammar")
    return found


def pod_to_wep(pod: dict[str, Any]) -> list[tuple[str, Any]]:
    """Pod → `/calico/v1/host/<node>/workload/k8s/<ns>%2f<pod>/endpoint/eth0` (or nothing).

    Nothing for a host-networked or unscheduled pod, one without IPs, or one that has finished
    (upstream's WEP processor filters endpoints without IP networks).
    """
    md = metadata(pod)
    spec = pod.get("spec") or {}
    node = spec.get("nodeName")
    if spec.get("hostNetwork") or not node:
        return []
    if not grammar.dns1123_subdomain(node):
        # The node name is a component of the endpoint's key, written unescaped.
        raise ConversionError(f"invalid spec.nodeName {node!r}")
    name = md["name"]
    ns = namespace_of(md)
    annotations = md.get("annotations") or {}
    ip_strings = _pod_ip_strings(pod, annotations)
    if not ip_strings:
        return []
    ipv4: list[str] = []
    ipv6: list[str] = []
    for text in ip_strings:
        # A malformed IP fails the conversion, as upstream (not silently dropped).
        version, net = _pod_net(text)
        (ipv4 if version == 4 else ipv6).append(net)
    if _is_finished(pod, md, annotations):
        return []

    sa = spec.get("serviceAccountName") or ""
    if sa and not grammar.dns1123_subdomain(sa):
        raise ConversionError(f"invalid spec.serviceAccountName {sa!r}")
    labels = {k: v for k, v in _k8s_labels(md).items() if not k.startswith(_PROFILE_LABEL_PREFIXES)}
    labels[LABEL_NAMESPACE] = ns
    labels[LABEL_ORCHESTRATOR] = "k8s"
    profiles = [NAMESPACE_PROFILE_PREFIX + ns]
    if sa:
        labels[LABEL_SERVICE_ACCOUNT] = sa
        profiles.append(f"{SERVICE_ACCOUNT_PROFILE_PREFIX}{ns}.{sa}")

    value: dict[str, Any] = {
        "state": "active",
        "name": veth_name(ns, name),
        "active_instance_id": "",
        "mac": None,
        "profile_ids": profiles,
        "ipv4_nets": ipv4 or None,  # Go's nil slice: no omitempty on these two
        "ipv6_nets": ipv6 or None,
        "labels": labels,
    }
    ports = _named_ports(spec)
    if ports:
        value["ports"] = ports
    if md.get("generateName"):
        generate = md["generateName"]
        # The API server checks a name prefix as a name whose trailing '-' is masked.
        if not grammar.dns1123_subdomain(generate[:-1] + "a" if str(generate).endswith("-") else generate):
            raise ConversionError(f"invalid metadata.generateName {generate!r}")
        value["generate_name"] = generate
    nat = _floating_ips(annotations, ipv4, ipv6)
    if nat[0]:
        value["ipv4_nat"] = nat[0]
    if nat[1]:
        value["ipv6_nat"] = nat[1]
    spoof = annotations.get("cni.projectcalico.org/allowedSourcePrefixes")
    if spoof:
        value["allow_spoofed_source_ips"] = _json_cidrs(spoof, "allowedSourcePrefixes")
    path = f"/calico/v1/host/{node}/workload/k8s/{keys.escape_name(ns + '/' + name)}/endpoint/eth0"
    return [(path, value)]


def _json_strings(text: str, what: str) -> list[str]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ConversionError(f"failed to parse {what} annotation {text!r} as JSON") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConversionError(f"{what} annotation must be a JSON list of strings")
    return value


def _json_cidrs(text: str, what: str) -> list[str]:
    return [strict_cidr(v)[1] for v in _json_strings(text, what)]


def _floating_ips(annotations: dict[str, str], ipv4: list[str], ipv6: list[str]) -> tuple[list[Any], list[Any]]:
    """The `cni.projectcalico.org/floatingIPs` annotation → ipv4_nat / ipv6_nat."""
    text = annotations.get("cni.projectcalico.org/floatingIPs")
    if text is None or not (ipv4 or ipv6):
        return [], []
    wanted = _json_strings(text, "floatingIPs")
    out4: list[Any] = []
    out6: list[Any] = []
    for net in ipv4 + ipv6:
        if not net.endswith(("/32", "/128")):
            raise ConversionError(f"pod IP {net} is not a single address, cannot NAT it")
    int4 = ipv4[-1].split("/")[0] if ipv4 else None
    int6 = ipv6[-1].split("/")[0] if ipv6 else None
    for ext in wanted:
        internal = int6 if ":" in ext else int4
        if internal is None:
            continue
        # ConvertV2ToV1IPNAT drops pairs whose external IP doesn't parse.
        try:
            _, ext_ip = ip_address(ext)
        except ConversionError:
            continue
        (out6 if ":" in ext else out4).append({"int_ip": internal, "ext_ip": ext_ip})
    return out4, out6


# --- Namespace / ServiceAccount → Profile --------------------------------------------------------

_ALLOW_ALL_RULES = {"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]}
_V3_ALLOW = {"action": "Allow", "source": {}, "destination": {}}


def _profile_kvs(
    name: str, md: dict[str, Any], labels: dict[str, str], rules: dict[str, Any], v3_rules: dict[str, Any]
) -> list[tuple[str, Any]]:
    # The profile processor sends the v1 labels and rules plus the v3 Profile itself (Felix's
    # profile decoder turns the latter into namespace/service-account updates).
    v3_md: dict[str, Any] = {"name": name}
    if md.get("uid"):
        v3_md["uid"] = md["uid"]
    v3_md["creationTimestamp"] = md.get("creationTimestamp")
    spec = dict(v3_rules)
    spec["labelsToApply"] = labels
    return [
        (keys.profile_labels_path(name), labels),
        (keys.profile_rules_path(name), rules),
        (keys.resource_path("Profile", name), v3_resource("Profile", v3_md, spec)),
    ]


def namespace_to_profile(ns: dict[str, Any]) -> list[tuple[str, Any]]:
    """Namespace → profile `kns.<ns>`: allow-all rules, labels `pcns.<k>` + `pcns.projectcalico.org/name`."""
    md = metadata(ns)
    name = md["name"]
    if not grammar.dns1123_label(name):
        raise ConversionError(f"invalid namespace name {name!r}: not a DNS-1123 label")
    labels = {NAMESPACE_LABEL_PREFIX + k: v for k, v in _k8s_labels(md).items()}
    labels[NAMESPACE_LABEL_PREFIX + NAME_LABEL] = name
    v3_rules = {"ingress": [_V3_ALLOW], "egress": [_V3_ALLOW]}
    return _profile_kvs(NAMESPACE_PROFILE_PREFIX + name, md, labels, _ALLOW_ALL_RULES, v3_rules)


def service_account_to_profile(sa: dict[str, Any]) -> list[tuple[str, Any]]:
    """ServiceAccount → profile `ksa.<ns>.<sa>`: no rules, labels `pcsa.<k>` + `pcsa.projectcalico.org/name`."""
    md = metadata(sa)
    name = md["name"]
    ns = namespace_of(md) if md.get("namespace") else "default"
    labels = {SERVICE_ACCOUNT_LABEL_PREFIX + k: v for k, v in _k8s_labels(md).items()}
    labels[SERVICE_ACCOUNT_LABEL_PREFIX + NAME_LABEL] = name
    return _profile_kvs(f"{SERVICE_ACCOUNT_PROFILE_PREFIX}{ns}.{name}", md, labels, {}, {})


# --- networking.k8s.io NetworkPolicy → v1 Policy --------------------------------------------------

_K8S_POD = f"{LABEL_ORCHESTRATOR} == 'k8s'"


def _label_literal(value: Any) -> str:
    if not grammar.label_value(value):
        raise ConversionError(f"label selector: invalid label value {value!r}")
    return literal(value, "label selector")


def k8s_selector(sel: Any, *, pod: bool) -> str:
    """k8sSelectorToCalico, with upstream's exact spelling: single quotes, sorted matchLabels, ` && `.

    Keys and values are held to Kubernetes' label grammar and written as selector literals, never
    pasted: a value such as `a' || all() || x == 'b` refuses the policy instead of widening it.
    """
    terms = [_K8S_POD] if pod else []
    if sel is None:
        return " && ".join(terms)
    if not isinstance(sel, dict):
        raise ConversionError(f"label selector must be an object, not {sel!r}")
    match_labels = sel.get("matchLabels") or {}
    expressions = sel.get("matchExpressions") or []
    if not isinstance(match_labels, dict) or not isinstance(expressions, list):
        raise ConversionError("label selector: matchLabels must be a map and matchExpressions a list")
    if not pod and not match_labels and not expressions:
        return "all()"  # a present-but-empty namespaceSelector selects every namespace
    terms.extend(
        f"{label_term(key, 'matchLabels')} == {_label_literal(match_labels[key])}" for key in sorted(match_labels)
    )
    for expr in expressions:
        if not isinstance(expr, dict):
            raise ConversionError(f"label selector: invalid matchExpression {expr!r}")
        key, op = label_term(expr.get("key"), "matchExpressions"), expr.get("operator")
        values = expr.get("values") or []
        if not isinstance(values, list):
            raise ConversionError(f"label selector: values must be a list, not {values!r}")
        members = ", ".join(_label_literal(v) for v in values)
        if op == "In":
            terms.append(f"{key} in {{ {members} }}")
        elif op == "NotIn":
            terms.append(f"{key} not in {{ {members} }}")
        elif op == "Exists":
            terms.append(f"has({key})")
        elif op == "DoesNotExist":
            terms.append(f"! has({key})")
        else:
            raise ConversionError(f"unknown label selector operator {op!r}")
    return " && ".join(terms)


# The protocols a NetworkPolicyPort may name (the API server refuses any other).
_K8S_PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})


def _k8s_port(port: dict[str, Any]) -> tuple[str, int | str | None]:
    """(protocol, port or None for all ports) of one NetworkPolicyPort; TCP when unspecified."""
    if not isinstance(port, dict):
        raise ConversionError(f"invalid NetworkPolicyPort {port!r}")
    protocol = port.get("protocol") or "TCP"
    if protocol not in _K8S_PROTOCOLS:
        raise ConversionError(f"invalid NetworkPolicyPort protocol {protocol!r}")
    number = port.get("port")
    if number is None:
        return protocol, None
    if isinstance(number, bool) or not isinstance(number, int | str):
        raise ConversionError(f"invalid NetworkPolicyPort port {number!r}")
    text = str(number)
    end = port.get("endPort")
    if end is not None:
        if isinstance(end, bool) or not isinstance(end, int):
            raise ConversionError(f"invalid NetworkPolicyPort endPort {end!r}")
        text = f"{text}:{end}"
    return protocol, port_v1(text)


def simplify_ports(ports: list[int | str]) -> list[int | str]:
    """SimplifyPorts: named ports first, then the numbers coalesced into the fewest ranges."""
    if len(ports) <= 1:
        return ports
    named: list[int | str] = []
    numbers: list[int] = []
    for p in ports:
        if isinstance(p, int):
            numbers.append(p)
        elif ":" in p and p.replace(":", "").isdigit():
            low, high = p.split(":")
            numbers.extend(range(int(low), int(high) + 1))
        else:
            named.append(p)
    if len(numbers) <= 1:
        return ports
    numbers.sort()
    out = named
    i = 0
    while i < len(numbers):
        first = last = numbers[i]
        i += 1
        while i < len(numbers) and numbers[i] <= last + 1:
            last = numbers[i]
            i += 1
        out.append(first if first == last else f"{first}:{last}")
    return out


def _k8s_peer(peer: dict[str, Any] | None) -> dict[str, Any]:
    """k8sPeerToCalicoFields → the v3 EntityRule fields of one peer."""
    if peer is None:
        return {}
    block = peer.get("ipBlock")
    if block is not None:
        # Upstream logs a bad CIDR and emits the rule without nets (matching everything); the API
        # server never stores one, so treat it as the invalid object it is.
        er: dict[str, Any] = {"nets": [strict_cidr(block.get("cidr"))[1]]}
        if block.get("except"):
            er["notNets"] = [strict_cidr(c)[1] for c in block["except"]]
        return er
    er = {"selector": k8s_selector(peer.get("podSelector"), pod=True)}
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is not None:
        er["namespaceSelector"] = k8s_selector(ns_sel, pod=False)
    return er


def _k8s_rules(peers: Any, ports: Any, ingress: bool) -> list[dict[str, Any]]:
    """k8sRuleToCalico: one Allow rule per (protocol, peer) pair, ports merged per protocol."""
    protocol_ports: dict[str, list[int | str] | None] = {}
    for port in ports or [None]:
        if port is None:
            protocol_ports = {"": None}  # no ports at all: any protocol, any port
            break
        protocol, number = _k8s_port(port)
        if number is None:
            protocol_ports[protocol] = None
        elif protocol not in protocol_ports or protocol_ports[protocol]:
            existing = protocol_ports.get(protocol) or []
            protocol_ports[protocol] = [*existing, number]
    entity_rules = [_k8s_peer(p) for p in (peers or [None])]
    rules: list[dict[str, Any]] = []
    for protocol in sorted(protocol_ports):
        numbers = protocol_ports[protocol]
        dst_ports = simplify_ports(numbers) if numbers else None
        for er in entity_rules:
            rule: dict[str, Any] = {"action": "Allow"}
            if protocol:
                rule["protocol"] = protocol
            if ingress:
                rule["source"] = er
                rule["destination"] = {"ports": dst_ports} if dst_ports else {}
            else:
                rule["destination"] = {**er, "ports": dst_ports} if dst_ports else er
            rules.append(rule)
    return rules


def k8s_policy_to_v3_spec(np_spec: dict[str, Any]) -> dict[str, Any]:
    """K8sNetworkPolicyToCalico's v3 NetworkPolicy spec: tier default, order 1000, types defaulted."""
    ingress = [
        r for rule in np_spec.get("ingress") or () for r in _k8s_rules(rule.get("from"), rule.get("ports"), True)
    ]
    egress = [
        r for rule in np_spec.get("egress") or () for r in _k8s_rules(rule.get("to"), rule.get("ports"), False)
    ]
    policy_types = np_spec.get("policyTypes") or []
    types = [t for t in ("Ingress", "Egress") if t in policy_types] or ["Ingress"]
    return {
        "tier": "default",
        "order": 1000.0,
        "selector": k8s_selector(np_spec.get("podSelector") or {}, pod=True),
        "ingress": ingress,
        "egress": egress,
        "types": types,
    }


def namespaced_policy_selector(selector: str, ns: str, sa_selector: str = "") -> str:
    """The v1 selector of a namespaced policy: `(<sel>) && projectcalico.org/namespace == '<ns>'`."""
    ns_clause = f"{LABEL_NAMESPACE} == {literal(ns, 'namespace')}"
    selector = f"({selector}) && {ns_clause}" if selector else ns_clause
    return prefix_and_append(selector, sa_selector, SERVICE_ACCOUNT_LABEL_PREFIX, "serviceAccountSelector")


def _apiserver_defaults(np_spec: dict[str, Any]) -> dict[str, Any]:
    """SetDefaults_NetworkPolicySpec: Calico only ever sees a stored object, which the API server has
    defaulted (Ingress, plus Egress when there are egress rules); a datastore that does not default
    (the emulator, a raw etcd write) must not make an egress-only policy ingress-only."""
    if np_spec.get("policyTypes"):
        return np_spec
    types = ["Ingress", "Egress"] if np_spec.get("egress") else ["Ingress"]
    return {**np_spec, "policyTypes": types}


def k8s_network_policy(np: dict[str, Any]) -> list[tuple[str, Any]]:
    """networking.k8s.io NetworkPolicy → `/calico/v1/policy/KubernetesNetworkPolicy/<ns>/<name>`."""
    md = metadata(np)
    ns = namespace_of(md)
    spec = k8s_policy_to_v3_spec(_apiserver_defaults(spec_of(np)))
    what = f"KubernetesNetworkPolicy {ns}/{md['name']}"
    selector = namespaced_policy_selector(check_selector(spec["selector"], f"{what} podSelector"), ns)
    value = policy_v1(spec, namespace=ns, selector=selector, what=what)
    return [(keys.policy_path("KubernetesNetworkPolicy", ns, md["name"]), value)]


def staged_k8s_network_policy(snp: dict[str, Any], *, v3: bool = False) -> list[tuple[str, Any]]:
    """StagedKubernetesNetworkPolicy CRD: converted like a K8s policy, plus its staged action.

    The same from either Calico API group (`v3`): its name is stored as it is in both."""
    md = metadata(snp)
    ns = namespace_of(md)
    spec = spec_of(snp)
    action = spec.get("stagedAction") or ""
    what = f"StagedKubernetesNetworkPolicy {ns}/{md['name']}"
    if action not in ("", "Set", "Delete", "Learn", "Ignore"):
        raise ConversionError(f"{what}: invalid stagedAction {action!r}")
    if action == "Delete":
        return []  # a staged delete is not sent to Felix
    v3_spec = k8s_policy_to_v3_spec(spec)
    selector = namespaced_policy_selector(check_selector(v3_spec["selector"], f"{what} podSelector"), ns)
    value = policy_v1(v3_spec, namespace=ns, selector=selector, what=what, staged_action=action or None)
    return [(keys.policy_path("StagedKubernetesNetworkPolicy", ns, md["name"]), value)]


# --- Node ----------------------------------------------------------------------------------------

_ANN = "projectcalico.org/"
ANN_IPV4_ADDRESS = _ANN + "IPv4Address"
ANN_IPV6_ADDRESS = _ANN + "IPv6Address"
ANN_AS_NUMBER = _ANN + "ASNumber"
ANN_RR_CLUSTER_ID = _ANN + "RouteReflectorClusterID"
ANN_IPIP_TUNNEL_ADDR = _ANN + "IPv4IPIPTunnelAddr"
ANN_VXLAN_TUNNEL_ADDR = _ANN + "IPv4VXLANTunnelAddr"
ANN_VXLAN_MAC = _ANN + "VXLANTunnelMACAddr"
ANN_VXLAN_V6_TUNNEL_ADDR = _ANN + "IPv6VXLANTunnelAddr"
ANN_VXLAN_V6_MAC = _ANN + "VXLANTunnelMACAddrV6"
ANN_WG_IPV4_ADDR = _ANN + "IPv4WireguardInterfaceAddr"
ANN_WG_IPV6_ADDR = _ANN + "IPv6WireguardInterfaceAddr"
ANN_WG_PUBLIC_KEY = _ANN + "WireguardPublicKey"
ANN_WG_PUBLIC_KEY_V6 = _ANN + "WireguardPublicKeyV6"
ANN_LABELS = _ANN + "labels"
ANN_ANNOTATIONS = _ANN + "annotations"
ANN_KUBE_LABELS = _ANN + "kube-labels"
_HEX = frozenset("0123456789abcdefABCDEF")


def _valid_cidr(version: int, text: str) -> bool:
    try:
        return strict_cidr(text)[0] == version
    except ConversionError:
        return False


def _valid_network(version: int, text: str) -> bool:
    # validateIPv4Network/IPv6Network accept an address or a CIDR of that family.
    try:
        return cidr_or_ip(text)[0] == version
    except ConversionError:
        return False


def _valid_mac(text: str) -> bool:
    parts = text.replace("-", ":").split(":")
    return len(parts) in (6, 8, 20) and all(len(p) == 2 and set(p) <= _HEX for p in parts)


def _valid_wireguard_key(text: str) -> bool:
    """wgtypes.ParseKey, as the validator's wireguardPublicKey check: standard base64 of 32 bytes."""
    if not isinstance(text, str) or len(text) != 44:
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _annotation(annotations: dict[str, str], name: str, valid: Any) -> str:
    """getAnnotation: the value if it validates, else "" (upstream drops bad values silently)."""
    value = annotations.get(name) or ""
    return value if value and valid(value) else ""


def as_number(text: str) -> int | None:
    """numorstring.ASNumberFromString: plain or "asdot" (high.low) notation."""
    try:
        if "." in text:
            high, low = text.split(".", 1)
            h, lo = int(high), int(low)
            if not (0 <= h <= 0xFFFF and 0 <= lo <= 0xFFFF):
                return None
            return h << 16 | lo
        value = int(text)
    except ValueError:
        return None
    return value if 0 <= value <= 0xFFFFFFFF else None


def k8s_node_to_v3(node: dict[str, Any]) -> dict[str, Any]:
    """K8sNodeToCalico: the projectcalico.org/v3 Node Typha streams (Calico IPAM, not host-local)."""
    md = metadata(node)
    name = md["name"]
    annotations = md.get("annotations") or {}
    k8s_labels = md.get("labels") or {}

    labels: dict[str, str] = {}
    calico_labels = json_map(annotations.get(ANN_LABELS))
    if calico_labels:
        labels.update(calico_labels)
    labels.update(k8s_labels)  # Kubernetes labels win over Calico's own
    if not grammar.labels(labels):
        # Node labels feed BGP peer selectors (confd) and host endpoint matching.
        raise ConversionError(f"Node {name}: labels outside Kubernetes' grammar")
    notes = dict(json_map(annotations.get(ANN_ANNOTATIONS)) or {})
    # json.Marshal of the Kubernetes labels map: a node without labels has a nil map, "null".
    notes[ANN_KUBE_LABELS] = go_json(k8s_labels) if md.get("labels") is not None else "null"
    v3_md: dict[str, Any] = {"name": name}
    if md.get("uid"):
        v3_md["uid"] = md["uid"]
    v3_md["creationTimestamp"] = md.get("creationTimestamp")
    if labels:
        v3_md["labels"] = labels
    v3_md["annotations"] = notes

    bgp: dict[str, Any] = {}
    asn_text = annotations.get(ANN_AS_NUMBER)
    if asn_text is not None:
        asn = as_number(asn_text)
        if asn is not None:
            bgp["asNumber"] = asn
    for field, ann, valid in (
        ("ipv4Address", ANN_IPV4_ADDRESS, lambda v: _valid_cidr(4, v)),
        ("ipv6Address", ANN_IPV6_ADDRESS, lambda v: _valid_cidr(6, v)),
        ("ipv4IPIPTunnelAddr", ANN_IPIP_TUNNEL_ADDR, lambda v: _valid_network(4, v)),
        ("routeReflectorClusterID", ANN_RR_CLUSTER_ID, lambda v: _valid_network(4, v)),
    ):
        value = _annotation(annotations, ann, valid)
        if value:
            bgp[field] = value
    spec: dict[str, Any] = {}
    if bgp:
        spec["bgp"] = {k: bgp[k] for k in _BGP_ORDER if k in bgp}
    for field, ann, valid in (
        ("ipv4VXLANTunnelAddr", ANN_VXLAN_TUNNEL_ADDR, lambda v: _valid_network(4, v)),
        ("vxlanTunnelMACAddr", ANN_VXLAN_MAC, _valid_mac),
        ("ipv6VXLANTunnelAddr", ANN_VXLAN_V6_TUNNEL_ADDR, lambda v: _valid_network(6, v)),
        ("vxlanTunnelMACAddrV6", ANN_VXLAN_V6_MAC, _valid_mac),
    ):
        value = _annotation(annotations, ann, valid)
        if value:
            spec[field] = value
    spec["orchRefs"] = [{"orchestrator": "k8s", "nodeName": name}]
    wireguard: dict[str, Any] = {}
    value = _annotation(annotations, ANN_WG_IPV4_ADDR, lambda v: _valid_network(4, v))
    if value:
        wireguard["interfaceIPv4Address"] = value
    value = _annotation(annotations, ANN_WG_IPV6_ADDR, lambda v: _valid_network(6, v))
    if value:
        wireguard["interfaceIPv6Address"] = value
    if wireguard:
        spec["wireguard"] = wireguard
    addresses: list[dict[str, str]] = []
    addresses.extend(
        {"address": bgp[field], "type": "CalicoNodeIP"} for field in ("ipv4Address", "ipv6Address") if bgp.get(field)
    )
    for addr in (node.get("status") or {}).get("addresses") or ():
        kind = addr.get("type")
        if kind in ("InternalIP", "ExternalIP"):
            address = addr.get("address") or ""
            # NodeAddress.Address is validated as an IP or CIDR ("net"); BIRD and Felix read it.
            try:
                cidr_or_ip(address)
            except ConversionError:
                raise ConversionError(f"Node {name}: invalid {kind} {address!r}") from None
            addresses.append({"address": address, "type": kind})
    if addresses:
        spec["addresses"] = addresses

    status: dict[str, Any] = {}
    for field, ann in (("wireguardPublicKey", ANN_WG_PUBLIC_KEY), ("wireguardPublicKeyV6", ANN_WG_PUBLIC_KEY_V6)):
        key = annotations.get(ann)
        if key:
            if not _valid_wireguard_key(key):
                raise ConversionError(f"Node {name}: invalid {field} {key!r}")
            status[field] = key
    pod_cidrs = (node.get("spec") or {}).get("podCIDRs")
    if pod_cidrs:
        if not isinstance(pod_cidrs, list):
            raise ConversionError(f"Node {name}: spec.podCIDRs must be a list")
        for cidr in pod_cidrs:
            strict_cidr(cidr)
        status["podCIDRs"] = list(pod_cidrs)
    value_out = v3_resource("Node", v3_md, spec)
    value_out["status"] = status  # NodeStatus is a struct: Go writes `"status":{}` when empty
    return value_out


_BGP_ORDER = ("asNumber", "ipv4Address", "ipv6Address", "ipv4IPIPTunnelAddr", "routeReflectorClusterID")


def _node_ipv4(v3: dict[str, Any]) -> str | None:
    """The host IP Felix gets: the BGP IPv4 address, else the first InternalIP, else ExternalIP."""
    spec = v3["spec"]
    bgp_addr = (spec.get("bgp") or {}).get("ipv4Address")
    if bgp_addr:
        # ParseCIDROrIP's first result: the address itself, not the masked network.
        return ip_address(bgp_addr.split("/")[0])[1]
    for wanted in ("InternalIP", "ExternalIP"):
        for addr in spec.get("addresses") or ():
            if addr["type"] != wanted:
                continue
            text = addr["address"].split("/")[0]
            try:
                version, ip = ip_address(text)
            except ConversionError:
                continue
            if version == 4:
                return ip
    return None


def felix_node(node: dict[str, Any]) -> list[tuple[str, Any]]:
    """Node for Felix (felixnodeprocessor): the v3 Node, host IP, tunnel config, WireGuard."""
    v3 = k8s_node_to_v3(node)
    name = v3["metadata"]["name"]
    spec = v3["spec"]
    out: list[tuple[str, Any]] = [(keys.resource_path("Node", name), v3)]
    host_ip = _node_ipv4(v3)
    if host_ip:
        out.append((keys.host_ip_path(name), ip_address(host_ip)[1]))
    ipip = (spec.get("bgp") or {}).get("ipv4IPIPTunnelAddr")
    for config, value in (
        ("IpInIpTunnelAddr", ipip),
        ("IPv4VXLANTunnelAddr", spec.get("ipv4VXLANTunnelAddr")),
        ("VXLANTunnelMACAddr", spec.get("vxlanTunnelMACAddr")),
        ("IPv6VXLANTunnelAddr", spec.get("ipv6VXLANTunnelAddr")),
        ("VXLANTunnelMACAddrV6", spec.get("vxlanTunnelMACAddrV6")),
    ):
        if value:
            if config in ("IpInIpTunnelAddr", "IPv4VXLANTunnelAddr", "IPv6VXLANTunnelAddr"):
                # cnet.ParseIP(...).String(): an address; a CIDR-shaped annotation fails to parse
                # there and upstream then drops the key.
                try:
                    value = ip_address(value)[1]
                except ConversionError:
                    continue
            out.append((keys.host_config_path(name, config), value))
    wg = _wireguard(spec.get("wireguard") or {}, v3["status"])
    if wg:
        out.append((keys.wireguard_path(name), wg))
    return out


def _wireguard(spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for field, src in (("interfaceIPv4Addr", "interfaceIPv4Address"), ("interfaceIPv6Addr", "interfaceIPv6Address")):
        text = spec.get(src)
        if text:
            try:
                value[field] = ip_address(text)[1]
            except ConversionError:
                pass
    if status.get("wireguardPublicKey"):
        value["publicKey"] = status["wireguardPublicKey"]
    if status.get("wireguardPublicKeyV6"):
        value["publicKeyV6"] = status["wireguardPublicKeyV6"]
    order = ("interfaceIPv4Addr", "publicKey", "interfaceIPv6Addr", "publicKeyV6")
    return {k: value[k] for k in order if k in value}


def bgp_node(node: dict[str, Any]) -> list[tuple[str, Any]]:
    """Node for confd: only the v3 Node (the bgp syncer has no processor for it)."""
    v3 = k8s_node_to_v3(node)
    return [(keys.resource_path("Node", v3["metadata"]["name"]), v3)]


# --- Service / EndpointSlice (passed through for Felix's BPF/service handling) -------------------


def _passthrough(kind: str, obj: dict[str, Any], type_meta: tuple[str, str]) -> list[tuple[str, Any]]:
    md = metadata(obj)
    ns = namespace_of(md)
    # The Kubernetes object itself is the value. resourceVersion goes (Typha carries it beside the
    # value, so a no-op update dedupes) and so do managedFields (server-side-apply bookkeeping that
    # changes on every write and that no consumer reads).
    slim_md = {k: v for k, v in md.items() if k not in ("resourceVersion", "managedFields")}
    # List items carry no apiVersion/kind, watch events do: set them, always first, so that a value
    # does not change (for every client, and between replicas) with how the object was last read.
    value: dict[str, Any] = {"apiVersion": type_meta[0], "kind": type_meta[1]}
    value.update((k, v) for k, v in obj.items() if k not in ("apiVersion", "kind"))
    value["metadata"] = slim_md
    return [(keys.resource_path(kind, md["name"], ns), value)]


def k8s_service(svc: dict[str, Any]) -> list[tuple[str, Any]]:
    return _passthrough("KubernetesService", svc, ("v1", "Service"))


def k8s_endpoint_slice(eps: dict[str, Any]) -> list[tuple[str, Any]]:
    return _passthrough("KubernetesEndpointSlice", eps, ("discovery.k8s.io/v1", "EndpointSlice"))
