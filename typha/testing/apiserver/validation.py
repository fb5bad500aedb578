"""Object validation as the API server does it, for what typha reads and what every object carries.

Messages, field paths and the Status shape follow k8s.io/apimachinery/pkg/util/validation and the
kinds' `validation.go`: a 422 `Invalid` Status whose message lists every error
(`Pod "p" is invalid: [a, b]`, or without brackets for one) and whose `details.causes` carry one
`{reason, message, field}` per error. Covered: object names by kind (RFC 1123 subdomain or label,
RFC 1035 label for services, path segments for RBAC), label keys and values, annotation keys and
their 256 KiB total, NetworkPolicy ports, protocols, policy types and CIDRs, pod and node IPs.
Everything else is stored as written (the emulator has no schemas).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from typha.model.resources import Resource

_SUBDOMAIN_RE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL_RE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1035_RE = r"[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_RE = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE_RE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    f"'{_SUBDOMAIN_RE}')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    f"'{_LABEL_RE}')"
)
DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
    f"validation is '{_DNS1035_RE}')"
)
QUALIFIED_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    f"'{_QUALIFIED_RE}')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used "
    f"for validation is '{_LABEL_VALUE_RE}')"
)

_SUBDOMAIN = re.compile(f"^{_SUBDOMAIN_RE}$")
_LABEL = re.compile(f"^{_LABEL_RE}$")
_DNS1035 = re.compile(f"^{_DNS1035_RE}$")
_QUALIFIED = re.compile(f"^{_QUALIFIED_RE}$")
_LABEL_VALUE = re.compile(f"^{_LABEL_VALUE_RE}$")
_IANA_SVC_NAME = re.compile(r"^[-a-z0-9]+$")
_HAS_LETTER = re.compile(r"[a-z]")

TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024
_PROTOCOLS = ("SCTP", "TCP", "UDP")

# Kinds whose names are RFC 1123 labels or RFC 1035 labels; RBAC kinds take any path segment.
_LABEL_NAMED = frozenset({("", "Namespace")})
_DNS1035_NAMED = frozenset({("", "Service")})
_PATH_SEGMENT_NAMED = frozenset(
    {
        ("rbac.authorization.k8s.io", "Role"),
        ("rbac.authorization.k8s.io", "ClusterRole"),
        ("rbac.authorization.k8s.io", "RoleBinding"),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    }
)


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    kind: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, FieldValueTooLong
    detail: str
    value: Any = None

    def message(self) -> str:
        return f"{self.field}: {self.detail_message()}"

    def detail_message(self) -> str:
        """The message without the field path (a Status cause carries the path separately)."""
        if self.kind == "FieldValueRequired":
            return "Required value" + (f": {self.detail}" if self.detail else "")
        if self.kind == "FieldValueNotSupported":
            return f"Unsupported value: {_quote(self.value)}: {self.detail}"
        if self.kind == "FieldValueTooLong":
            return f"Too long: {self.detail}"
        if self.kind == "FieldValueForbidden":
            return f"Forbidden: {self.detail}"
        return f"Invalid value: {_quote(self.value)}: {self.detail}"

    def cause(self) -> dict[str, str]:
        return {"reason": self.kind, "message": self.detail_message(), "field": self.field}


def _invalid(field: str, value: Any, detail: str) -> FieldError:
    return FieldError(field, "FieldValueInvalid", detail, value)


def _name_errors(field: str, name: str, pattern: re.Pattern[str], message: str, limit: int) -> list[FieldError]:
    errs = []
    if len(name) > limit:
        errs.append(_invalid(field, name, f"must be no more than {limit} characters"))
    if not pattern.match(name):
        errs.append(_invalid(field, name, message))
    return errs


def object_name_errors(resource: Resource, name: str, field: str = "metadata.name") -> list[FieldError]:
    gk = (resource.group, resource.kind)
    if gk in _PATH_SEGMENT_NAMED:
        if name in (".", ".."):
            return [_invalid(field, name, f"may not be '{name}'")]
        for bad in ("/", "%"):
            if bad in name:
                return [_invalid(field, name, f"may not contain '{bad}'")]
        return []
    if gk in _LABEL_NAMED:
        return _name_errors(field, name, _LABEL, LABEL_MSG, 63)
    if gk in _DNS1035_NAMED:
        return _name_errors(field, name, _DNS1035, DNS1035_MSG, 63)
    return _name_errors(field, name, _SUBDOMAIN, SUBDOMAIN_MSG, 253)


def qualified_name_errors(field: str, key: Any) -> list[FieldError]:
    """apimachinery's IsQualifiedName: `[prefix/]name`, prefix a DNS subdomain, name ≤ 63 characters."""
    if not isinstance(key, str):
        return [_invalid(field, key, "must be a string")]
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            return [_invalid(field, key, "prefix part must be non-empty")]
        if len(prefix) > 253 or not _SUBDOMAIN.match(prefix):
            return [_invalid(field, key, "prefix part " + SUBDOMAIN_MSG)]
    else:
        return [
            _invalid(
                field,
                key,
                "a qualified name " + QUALIFIED_MSG.removeprefix("name part ").replace(
                    "(e.g. 'MyName',", "with an optional DNS subdomain prefix and '/' (e.g. 'MyName',"
                ),
            )
        ]
    if not name:
        return [_invalid(field, key, "name part must be non-empty")]
    if len(name) > 63:
        return [_invalid(field, key, "name part must be no more than 63 characters")]
    if not _QUALIFIED.match(name):
        return [_invalid(field, key, QUALIFIED_MSG)]
    return []


def label_errors(field: str, labels: dict[str, Any]) -> list[FieldError]:
    errs: list[FieldError] = []
    for key, value in labels.items():
        errs += qualified_name_errors(field, key)
        if len(value) > 63:
            errs.append(_invalid(field, value, "must be no more than 63 characters"))
        if not _LABEL_VALUE.match(value):
            errs.append(_invalid(field, value, LABEL_VALUE_MSG))
    return errs


def annotation_errors(field: str, annotations: dict[str, Any]) -> list[FieldError]:
    errs: list[FieldError] = []
    total = 0
    for key, value in annotations.items():
        errs += qualified_name_errors(field, key.lower())
        total += len(key) + len(value)
    if total > TOTAL_ANNOTATION_SIZE_LIMIT:
        errs.append(
            FieldError(field, "FieldValueTooLong", f"must have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes")
        )
    return errs


def metadata_errors(resource: Resource, meta: dict[str, Any]) -> list[FieldError]:
    errs = object_name_errors(resource, str(meta.get("name", "")))
    if meta.get("labels"):
        errs += label_errors("metadata.labels", meta["labels"])
    if meta.get("annotations"):
        errs += annotation_errors("metadata.annotations", meta["annotations"])
    return errs


def _ip_errors(field: str, value: Any) -> list[FieldError]:
    try:
        ipaddress.ip_address(value if isinstance(value, str) else "")
    except ValueError:
        return [_invalid(field, value, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")]
    return []


def _cidr_errors(field: str, value: Any) -> list[FieldError]:
    try:
        ipaddress.ip_network(value if isinstance(value, str) else "", strict=False)
        if not isinstance(value, str) or "/" not in value:
            raise ValueError
    except ValueError:
        return [_invalid(field, value, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")]
    return []


def _pod_errors(obj: dict[str, Any]) -> list[FieldError]:
    status = obj.get("status") or {}
    errs: list[FieldError] = []
    if status.get("podIP"):
        errs += _ip_errors("status.podIP", status["podIP"])
    pod_ips = status.get("podIPs") or []
    families = []
    for i, entry in enumerate(pod_ips):
        ip = entry.get("ip") if isinstance(entry, dict) else None
        field = f"status.podIPs[{i}].ip"
        found = _ip_errors(field, ip)
        errs += found
        if not found:
            families.append(ipaddress.ip_address(str(ip)).version)
    if len(pod_ips) > 2 or len(set(families)) != len(families):
        errs.append(_invalid("status.podIPs", pod_ips, "may specify no more than one IP for each IP family"))
    if status.get("podIP") and pod_ips and isinstance(pod_ips[0], dict) and pod_ips[0].get("ip") != status["podIP"]:
        errs.append(_invalid("status.podIPs[0].ip", pod_ips[0].get("ip"), "must be equal to status.podIP"))
    return errs


def _node_errors(obj: dict[str, Any]) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errs: list[FieldError] = []
    if spec.get("podCIDR"):
        errs += _cidr_errors("spec.podCIDR", spec["podCIDR"])
    for i, cidr in enumerate(spec.get("podCIDRs") or []):
        errs += _cidr_errors(f"spec.podCIDRs[{i}]", cidr)
    for i, addr in enumerate((obj.get("status") or {}).get("addresses") or []):
        if isinstance(addr, dict) and addr.get("type") in ("InternalIP", "ExternalIP"):
            errs += _ip_errors(f"status.addresses[{i}].address", addr.get("address"))
    return errs


def _port_errors(field: str, port: dict[str, Any]) -> list[FieldError]:
    errs: list[FieldError] = []
    protocol = port.get("protocol")
    if protocol is not None and protocol not in _PROTOCOLS:
        supported = 'supported values: "SCTP", "TCP", "UDP"'
        errs.append(FieldError(f"{field}.protocol", "FieldValueNotSupported", supported, protocol))
    value = port.get("port")
    end = port.get("endPort")
    if isinstance(value, bool):
        errs.append(_invalid(f"{field}.port", value, "must be an integer or a string"))
    elif isinstance(value, int):
        if not 1 <= value <= 65535:
            errs.append(_invalid(f"{field}.port", value, "must be between 1 and 65535, inclusive"))
        if end is not None and (not isinstance(end, int) or end < value):
            errs.append(_invalid(f"{field}.endPort", end, "must be greater than or equal to `port`"))
    elif isinstance(value, str):
        errs += _port_name_errors(f"{field}.port", value)
        if end is not None:
            errs.append(_invalid(f"{field}.endPort", end, "may not be specified when `port` is non-numeric"))
    elif value is None and end is not None:
        detail = "may not be specified when `port` is not specified"
        errs.append(FieldError(f"{field}.endPort", "FieldValueRequired", detail))
    return errs


def _port_name_errors(field: str, name: str) -> list[FieldError]:
    """IsValidPortName (an IANA_SVC_NAME): ≤ 15 characters, lowercase alphanumerics and '-'."""
    for check, detail in (
        (len(name) <= 15, "must be no more than 15 characters"),
        (bool(_IANA_SVC_NAME.match(name)), "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"),
        ("--" not in name, "must not contain consecutive hyphens"),
        (bool(_HAS_LETTER.search(name)), "must contain at least one letter (a-z)"),
        (not name.startswith("-") and not name.endswith("-"), "must not begin or end with a hyphen"),
    ):
        if not check:
            return [_invalid(field, name, detail)]
    return []


_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def label_selector_errors(field: str, selector: Any) -> list[FieldError]:
    """apimachinery's ValidateLabelSelector: matchLabels as labels, matchExpressions' keys, operators
    and values."""
    if not isinstance(selector, dict):
        return []
    errs: list[FieldError] = []
    match_labels = selector.get("matchLabels")
    if isinstance(match_labels, dict):
        errs += label_errors(f"{field}.matchLabels", {k: str(v) for k, v in match_labels.items()})
    for i, expr in enumerate(selector.get("matchExpressions") or []):
        if not isinstance(expr, dict):
            continue
        path = f"{field}.matchExpressions[{i}]"
        operator, values = expr.get("operator"), expr.get("values") or []
        if operator in ("In", "NotIn") and not values:
            detail = "must be specified when `operator` is 'In' or 'NotIn'"
            errs.append(FieldError(f"{path}.values", "FieldValueRequired", detail))
        elif operator in ("Exists", "DoesNotExist") and values:
            detail = "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
            errs.append(FieldError(f"{path}.values", "FieldValueForbidden", detail))
        elif operator not in _SELECTOR_OPERATORS:
            errs.append(_invalid(f"{path}.operator", operator, "not a valid selector operator"))
        errs += qualified_name_errors(f"{path}.key", expr.get("key"))
    return errs


def _peer_errors(field: str, peer: dict[str, Any]) -> list[FieldError]:
    """ValidateNetworkPolicyPeer: each part validated, then the count of parts (in that order)."""
    selectors = [k for k in ("podSelector", "namespaceSelector") if peer.get(k) is not None]
    errs: list[FieldError] = []
    for key in selectors:
        errs += label_selector_errors(f"{field}.{key}", peer[key])
    block = peer.get("ipBlock")
    if isinstance(block, dict):
        errs += _cidr_errors(f"{field}.ipBlock.cidr", block.get("cidr"))
        for i, cidr in enumerate(block.get("except") or []):
            errs += _cidr_errors(f"{field}.ipBlock.except[{i}]", cidr)
    if block is None and not selectors:
        errs.append(FieldError(field, "FieldValueRequired", "must specify a peer"))
    elif block is not None and selectors:
        errs.append(FieldError(field, "FieldValueForbidden", "may not specify both ipBlock and another peer"))
    return errs


def _network_policy_errors(obj: dict[str, Any]) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errs = label_selector_errors("spec.podSelector", spec.get("podSelector"))
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            if not isinstance(rule, dict):
                continue
            for j, port in enumerate(rule.get("ports") or []):
                if isinstance(port, dict):
                    errs += _port_errors(f"spec.{direction}[{i}].ports[{j}]", port)
            for j, peer in enumerate(rule.get(peers_key) or []):
                if isinstance(peer, dict):
                    errs += _peer_errors(f"spec.{direction}[{i}].{peers_key}[{j}]", peer)
    for i, ptype in enumerate(spec.get("policyTypes") or []):
        if ptype not in ("Ingress", "Egress"):
            supported = 'supported values: "Egress", "Ingress"'
            errs.append(FieldError(f"spec.policyTypes[{i}]", "FieldValueNotSupported", supported, ptype))
    return errs


_KIND_CHECKS = {
    ("", "Pod"): _pod_errors,
    ("", "Node"): _node_errors,
    ("networking.k8s.io", "NetworkPolicy"): _network_policy_errors,
}


def object_errors(resource: Resource, obj: dict[str, Any]) -> list[FieldError]:
    """Every validation error of a normalized object (metadata already a dict of the right shapes)."""
    errs = metadata_errors(resource, obj["metadata"])
    check = _KIND_CHECKS.get((resource.group, resource.kind))
    if check is not None:
        errs += check(obj)
    return errs


def invalid_message(kind: str, name: str, errs: list[FieldError]) -> str:
    messages = [e.message() for e in errs]
    joined = messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"
    return f'{kind} "{name}" is invalid: {joined}'
