"""Shared pieces of the Kubernetes/CRD → Calico model conversions: errors, CIDRs, selectors, rules.

Values are built as upstream's Go structs would JSON-encode them: the same field names, `omitempty`
fields left out when empty, and `null` where Go writes a nil slice or pointer that has no
`omitempty`. Typha runs every value through its ValidationFilter and turns an invalid one into a
delete; here an invalid object raises ConversionError instead, and the syncer withdraws its keys.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import orjson

from typha.model import selector as _selector
from typha.model.convert import grammar

# The one definition of a converter; typha.source.datastore imports it from here.
Converter = Callable[[dict[str, Any]], list[tuple[str, Any]]]

LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_SERVICE_ACCOUNT = "projectcalico.org/serviceaccount"
NAMESPACE_LABEL_PREFIX = "pcns."
SERVICE_ACCOUNT_LABEL_PREFIX = "pcsa."
NAMESPACE_PROFILE_PREFIX = "kns."
SERVICE_ACCOUNT_PROFILE_PREFIX = "ksa."
NAME_LABEL = "projectcalico.org/name"
METADATA_ANNOTATION = "projectcalico.org/metadata"
CALICO_API_VERSION = "projectcalico.org/v3"


class ConversionError(ValueError):
    """The object cannot be converted: upstream would fail to convert it or Typha would reject it."""


def metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """The object's metadata; its name must be a DNS-1123 subdomain.

    Both the API server (for built-in kinds) and Calico's validator (nameRegex, for its resources)
    hold names to that grammar, and names become parts of datastore keys, iptables comments and
    BIRD identifiers: a `/`, a newline or a quote in one must never get that far.
    """
    md = obj.get("metadata")
    if not isinstance(md, dict) or not md.get("name"):
        raise ConversionError("missing metadata.name")
    if not grammar.dns1123_subdomain(md["name"]):
        raise ConversionError(f"invalid name {md['name']!r}: not a DNS-1123 subdomain")
    return md


def namespace_of(md: dict[str, Any]) -> str:
    ns = md.get("namespace")
    if not ns:
        raise ConversionError(f"{md.get('name')}: missing metadata.namespace")
    if not grammar.dns1123_label(ns):
        raise ConversionError(f"{md.get('name')}: invalid namespace {ns!r}: not a DNS-1123 label")
    return str(ns)


def literal(value: Any, what: str) -> str:
    """`value` as a selector string literal; ConversionError when no literal can hold it."""
    if not isinstance(value, str):
        raise ConversionError(f"{what}: {value!r} is not a string")
    try:
        return _selector.quote_literal(value)
    except ValueError as exc:
        raise ConversionError(f"{what}: {exc}") from None


def label_term(key: Any, what: str) -> str:
    """A label name to paste into a selector: Kubernetes' grammar (a subset of the selector's)."""
    if not grammar.label_key(key) or not _selector.valid_label(key):
        raise ConversionError(f"{what}: invalid label key {key!r}")
    return str(key)


def spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec")
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ConversionError("spec is not an object")
    return spec


# --- IPs and CIDRs -----------------------------------------------------------------------------------
# Cached: the same CIDRs (pools, blocks, policy nets) recur on every re-list and every update.


@lru_cache(maxsize=8192)
def _net_or_ip(text: str) -> tuple[int, str]:
    try:
        if "/" in text:
            net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.ip_network(text, strict=False)
        else:
            net = ipaddress.ip_network(ipaddress.ip_address(text))
    except ValueError:
        raise ConversionError(f"invalid CIDR or IP {text!r}") from None
    return net.version, str(net)


def cidr_or_ip(text: Any) -> tuple[int, str]:
    """(version, masked CIDR) like cnet.ParseCIDROrIP: a bare IP is a /32 or /128."""
    if not isinstance(text, str):
        raise ConversionError(f"invalid CIDR or IP {text!r}")
    return _net_or_ip(text)


def strict_cidr(text: Any) -> tuple[int, str]:
    """(version, masked CIDR) like cnet.ParseCIDR, which needs the prefix length."""
    if not isinstance(text, str) or "/" not in text:
        raise ConversionError(f"invalid CIDR {text!r}")
    return _net_or_ip(text)


@lru_cache(maxsize=8192)
def _ip(text: str) -> tuple[int, str]:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ConversionError(f"invalid IP address {text!r}") from None
    return addr.version, str(addr)


def ip_address(text: Any) -> tuple[int, str]:
    """(version, canonical address), like cnet.ParseIP."""
    if not isinstance(text, str):
        raise ConversionError(f"invalid IP address {text!r}")
    return _ip(text)


# --- selectors -----------------------------------------------------------------------------------


def check_selector(text: str, what: str) -> str:
    """`text` unchanged if it parses (upstream keeps selector strings as written), else ConversionError."""
    try:
        _selector.parse(text)
    except _selector.SelectorError as exc:
        raise ConversionError(f"{what}: {exc}") from None
    except TypeError:
        raise ConversionError(f"{what}: selector must be a string, not {type(text).__name__}") from None
    return text


@lru_cache(maxsize=4096)
def _prefixed(text: str, prefix: str) -> str:
    return _selector.parse(text).with_label_prefix(prefix).canonical


def prefixed_selector(text: str, prefix: str, what: str) -> str:
    """parseSelectorAttachPrefix: re-serialised canonically with every label prefixed.

    Upstream returns "" for an unparsable selector, but the original then fails Typha's validation
    of the `orig_*` field, so an unparsable one is a ConversionError here.
    """
    check_selector(text, what)
    return _prefixed(text, prefix)


def prefix_and_append(current: str, new: str, prefix: str, what: str) -> str:
    """prefixAndAppendSelector."""
    if not new:
        return current
    prefixed = prefixed_selector(new, prefix, what)
    if not prefixed:
        return current
    return f"({current}) && {prefixed}" if current else prefixed


def _service_account_selector(sam: dict[str, Any], what: str) -> str:
    """parseServiceAccounts: `pcsa.` selector AND'd with a canonical `serviceaccount in {...}` clause."""
    updated = ""
    if sam.get("selector"):
        updated = prefixed_selector(sam["selector"], SERVICE_ACCOUNT_LABEL_PREFIX, what)
    names = sam.get("names") or []
    if not names:
        return updated
    if not isinstance(names, list) or not all(grammar.dns1123_subdomain(n) for n in names):
        raise ConversionError(f"{what}: invalid service account names {names!r}")
    clause = "{} in {{ {} }}".format(LABEL_SERVICE_ACCOUNT, ", ".join(literal(n, what) for n in names))
    try:
        clause = _selector.canonicalise(clause)
    except _selector.SelectorError as exc:
        raise ConversionError(f"{what}: bad service account names {names!r}: {exc}") from None
    return f"({updated}) && ({clause})" if updated else clause


def _entity_selector(er: dict[str, Any], ns: str, what: str) -> str:
    """getEndpointSelector: the one selector a rule's source or destination matches endpoints with."""
    ns_text = er.get("namespaceSelector") or ""
    endpoint = er.get("selector") or ""
    not_selector = er.get("notSelector") or ""
    sam = er.get("serviceAccounts")
    sa_selector = _service_account_selector(sam, what) if isinstance(sam, dict) else ""

    ns_selector = ""
    if ns_text:
        ns_selector = prefixed_selector(ns_text, NAMESPACE_LABEL_PREFIX, f"{what} namespaceSelector")
        # In the v1 model all() would match every endpoint; the namespaceSelector all() means "any
        # namespaced endpoint", and global() means "no namespaced endpoint".
        ns_selector = ns_selector.replace("all()", f"has({LABEL_NAMESPACE})")
        ns_selector = ns_selector.replace("global()", f"!has({LABEL_NAMESPACE})")
    elif ns:
        ns_selector = f"{LABEL_NAMESPACE} == {literal(ns, what)}"

    if endpoint:
        check_selector(endpoint, f"{what} selector")
    parts = [s for s in (sa_selector, endpoint) if s]
    selector = parts[0] if len(parts) == 1 else ("(" + ") && (".join(parts) + ")" if parts else "")
    if ns_selector and (selector or not_selector or ns_text):
        selector = f"({ns_selector}) && ({selector})" if selector else ns_selector
    return selector


# --- ports and protocols -------------------------------------------------------------------------


def _port_number(text: str) -> int:
    # numorstring's allDigits/portRange are ASCII \d; the validator then refuses port 0.
    if not grammar.ascii_digits(text):
        raise ValueError(text)
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError(text)
    return value


def port_v1(port: Any) -> int | str:
    """numorstring.Port as it marshals: a number 1-65535, "min:max", or an IANA_SVC_NAME port name."""
    if isinstance(port, bool):
        raise ConversionError(f"invalid port {port!r}")
    if isinstance(port, int):
        if not 1 <= port <= 65535:
            raise ConversionError(f"invalid port {port!r}")
        return port
    if not isinstance(port, str) or not port:
        raise ConversionError(f"invalid port {port!r}")
    try:
        if ":" in port:
            low_text, high_text = port.split(":", 1)
            low, high = _port_number(low_text), _port_number(high_text)
            if low > high:
                raise ValueError(port)
            return low if low == high else f"{low}:{high}"
        if grammar.ascii_digits(port):
            return _port_number(port)
    except ValueError:
        raise ConversionError(f"invalid port {port!r}") from None
    if not grammar.port_name(port):
        raise ConversionError(f"invalid port name {port!r}")
    return port


def ports_v1(ports: Any) -> list[int | str]:
    if not isinstance(ports, list):
        raise ConversionError(f"ports must be a list, not {ports!r}")
    return [port_v1(p) for p in ports]


def protocol_v1(protocol: Any) -> int | str:
    """numorstring.Protocol.ToV1() as the validator accepts it: a number 1-255 (a string of ASCII
    digits is one too, as Uint8OrString decodes it) or a protocol name, lower-cased."""
    if isinstance(protocol, bool):
        raise ConversionError(f"invalid protocol {protocol!r}")
    if isinstance(protocol, str) and grammar.ascii_digits(protocol) and len(protocol) <= 3:
        protocol = int(protocol)
    if isinstance(protocol, int):
        if not 1 <= protocol <= 255:
            raise ConversionError(f"invalid protocol number {protocol!r}")
        return protocol
    if isinstance(protocol, str) and protocol.lower() in grammar.PROTOCOL_NAMES_V1:
        return protocol.lower()
    raise ConversionError(f"invalid protocol {protocol!r}")


def _check_ports_protocol(rule: dict[str, Any], what: str) -> None:
    """validateBackendRule: numeric ports need a protocol that has ports (a rule with `-p icmp
    --dport 80` would make iptables-restore refuse the whole table)."""
    protocol = rule.get("protocol")
    for field in ("src_ports", "!src_ports", "dst_ports", "!dst_ports"):
        ports = rule.get(field)
        if not ports:
            continue
        if protocol is None:
            if not all(isinstance(p, str) and grammar.port_name(p) for p in ports):
                raise ConversionError(f"{what}: numeric {field} need protocol TCP, UDP or SCTP")
        elif protocol not in grammar.PORT_PROTOCOLS:
            raise ConversionError(f"{what}: {field} with protocol {protocol!r}, which has no ports")


# --- rules ---------------------------------------------------------------------------------------


def _nets(values: Any, what: str) -> list[str]:
    if not isinstance(values, list):
        raise ConversionError(f"{what} must be a list")
    return [cidr_or_ip(v)[1] for v in values]


def _entity_fields(rule: dict[str, Any], er: dict[str, Any], side: str, ns: str, what: str) -> None:
    """Fill one side ("src"/"dst") of a v1 Rule from a v3 EntityRule."""
    selector = _entity_selector(er, ns, what)
    if selector:
        rule[f"{side}_selector"] = check_selector(selector, what)
    if er.get("nets"):
        rule[f"{side}_nets"] = _nets(er["nets"], f"{what} nets")
    if er.get("ports"):
        rule[f"{side}_ports"] = ports_v1(er["ports"])
    services = er.get("services")
    if isinstance(services, dict):
        if services.get("name"):
            if not grammar.dns1123_subdomain(services["name"]):
                raise ConversionError(f"{what}: invalid service name {services['name']!r}")
            rule[f"{side}_service"] = services["name"]
        if services.get("namespace"):
            if not grammar.dns1123_label(services["namespace"]):
                raise ConversionError(f"{what}: invalid service namespace {services['namespace']!r}")
            rule[f"{side}_service_ns"] = services["namespace"]
    if er.get("notNets"):
        rule[f"!{side}_nets"] = _nets(er["notNets"], f"{what} notNets")
    if er.get("notSelector"):
        rule[f"!{side}_selector"] = check_selector(er["notSelector"], f"{what} notSelector")
    if er.get("notPorts"):
        rule[f"!{side}_ports"] = ports_v1(er["notPorts"])
    # The originals ride along unmodified for consumers that need them (Felix's rule scanner
    # re-derives namespace and service-account semantics from them).
    # (Each was parsed above, building the combined selector; the validator checks them again.)
    if er.get("selector"):
        rule[f"orig_{side}_selector"] = check_selector(er["selector"], f"{what} selector")
    if er.get("namespaceSelector"):
        rule[f"orig_{side}_namespace_selector"] = check_selector(er["namespaceSelector"], f"{what} namespaceSelector")
    if er.get("notSelector"):
        rule[f"!orig_{side}_selector"] = er["notSelector"]
    sam = er.get("serviceAccounts")
    if isinstance(sam, dict):
        if sam.get("names"):
            rule[f"orig_{side}_service_acct_names"] = list(sam["names"])
        if sam.get("selector"):
            rule[f"orig_{side}_service_acct_selector"] = check_selector(sam["selector"], f"{what} serviceAccounts")


def _icmp(rule: dict[str, Any], icmp: Any, prefix: str) -> None:
    if not isinstance(icmp, dict):
        return
    for field in ("type", "code"):
        value = icmp.get(field)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
                raise ConversionError(f"invalid ICMP {field} {value!r}")
            if field == "type" and value == 255:
                raise ConversionError("ICMP type 255 is not matchable")
            rule[f"{prefix}icmp_{field}"] = value


_RULE_ACTIONS = frozenset({"Allow", "Deny", "Log", "Pass"})


def _http_methods(methods: Any, what: str) -> list[str]:
    """validateHTTPMethods (no duplicates), and each an HTTP token: nothing that could end a line."""
    if not isinstance(methods, list) or len(set(map(str, methods))) != len(methods):
        raise ConversionError(f"{what}: invalid HTTP methods {methods!r}")
    if not all(isinstance(m, str) and grammar.printable(m, limit=64) and m.isascii() for m in methods):
        raise ConversionError(f"{what}: invalid HTTP methods {methods!r}")
    return methods


def _http_paths(paths: Any, what: str) -> list[dict[str, str]]:
    """validateHTTPPaths: exactly one of exact/prefix, starting with `/`, no `?`, `#` or blank."""
    if not isinstance(paths, list):
        raise ConversionError(f"{what}: invalid HTTP paths {paths!r}")
    for path in paths:
        if not isinstance(path, dict):
            raise ConversionError(f"{what}: invalid HTTP path {path!r}")
        exact, prefix = path.get("exact") or "", path.get("prefix") or ""
        value = exact or prefix
        if (exact and prefix) or not isinstance(value, str) or not value.startswith("/"):
            raise ConversionError(f"{what}: invalid HTTP path {path!r}")
        if not grammar.printable(value, limit=4096) or any(ch in value for ch in "?#"):
            raise ConversionError(f"{what}: invalid HTTP path {path!r}")
    return paths


def rule_v1(ar: dict[str, Any], ns: str, what: str) -> dict[str, Any]:
    """RuleAPIV3ToBackend: a v3 Rule dict → the v1 model Rule as it JSON-encodes."""
    if not isinstance(ar, dict):
        raise ConversionError(f"{what}: rule is not an object")
    rule: dict[str, Any] = {}
    action = ar.get("action") or ""
    if action:
        # Upstream's validator accepts only these (case as written); anything else reaching an agent
        # would be a rule it cannot render.
        if action not in _RULE_ACTIONS:
            raise ConversionError(f"{what}: invalid rule action {action!r}")
        rule["action"] = "next-tier" if action == "Pass" else action.lower()
    if ar.get("ipVersion") is not None:
        if ar["ipVersion"] not in (4, 6):
            raise ConversionError(f"{what}: invalid ipVersion {ar['ipVersion']!r}")
        rule["ip_version"] = ar["ipVersion"]
    if ar.get("protocol") is not None:
        rule["protocol"] = protocol_v1(ar["protocol"])
    if ar.get("notProtocol") is not None:
        rule["!protocol"] = protocol_v1(ar["notProtocol"])
    _icmp(rule, ar.get("icmp"), "")
    _icmp(rule, ar.get("notICMP"), "!")
    _entity_fields(rule, ar.get("source") or {}, "src", ns, f"{what} source")
    _entity_fields(rule, ar.get("destination") or {}, "dst", ns, f"{what} destination")
    _check_ports_protocol(rule, what)
    http = ar.get("http")
    if isinstance(http, dict):
        match: dict[str, Any] = {}
        if http.get("methods"):
            match["methods"] = _http_methods(http["methods"], what)
        if http.get("paths"):
            match["paths"] = _http_paths(http["paths"], what)
        rule["http"] = match
    md = ar.get("metadata")
    if isinstance(md, dict) and md.get("annotations") is not None:
        rule["metadata"] = {"annotations": dict(md["annotations"])} if md["annotations"] else {}
    return rule


def rules_v1(rules: Any, ns: str, what: str) -> list[dict[str, Any]]:
    if not rules:
        return []
    if not isinstance(rules, list):
        raise ConversionError(f"{what} rules must be a list")
    return [rule_v1(r, ns, f"{what} rule {i}") for i, r in enumerate(rules)]


def order_v1(value: Any) -> float | None:
    """Policy/tier order is a *float64 upstream; keep it a float so equal orders encode equally."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConversionError(f"invalid order {value!r}")
    return float(value)


def policy_v1(
    spec: dict[str, Any],
    *,
    namespace: str,
    selector: str,
    what: str,
    staged_action: str | None = None,
) -> dict[str, Any]:
    """The v1 model Policy shared by every policy kind; `selector` is already namespaced/prefixed."""
    value: dict[str, Any] = {}
    if namespace:
        value["namespace"] = namespace
    tier = spec.get("tier") or "default"
    if not grammar.dns1123_label(tier):
        # Tier names become chain names and rule comments in the agents (tierNameRegex).
        raise ConversionError(f"{what}: invalid tier {tier!r}")
    value["tier"] = tier
    order = order_v1(spec.get("order"))
    if order is not None:
        value["order"] = order
    inbound = rules_v1(spec.get("ingress"), namespace, f"{what} ingress")
    if inbound:
        value["inbound_rules"] = inbound
    outbound = rules_v1(spec.get("egress"), namespace, f"{what} egress")
    if outbound:
        value["outbound_rules"] = outbound
    value["selector"] = check_selector(selector, f"{what} selector")
    types = spec.get("types")
    if types:
        if not isinstance(types, list) or any(t not in ("Ingress", "Egress") for t in types):
            raise ConversionError(f"{what}: invalid types {types!r}")
        value["types"] = [t.lower() for t in types]
    hints = spec.get("performanceHints")
    if hints:
        if any(h != "AssumeNeededOnEveryNode" for h in hints):
            raise ConversionError(f"{what}: invalid performanceHints {hints!r}")
        value["performance_hints"] = list(hints)
    if staged_action:
        value["staged_action"] = staged_action
    return value


# --- v3 resources --------------------------------------------------------------------------------


def go_json(value: Any) -> str:
    """encoding/json output for a string map: sorted keys, compact, with Go's HTML escaping."""
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def json_map(text: Any) -> dict[str, Any] | None:
    """A JSON object stored in an annotation, or None when it is absent or unparsable.

    Upstream logs and ignores such an annotation rather than rejecting the object.
    """
    if not isinstance(text, str):
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _ours(key: str) -> bool:
    return "projectcalico.org/" in key or "operator.tigera.io/" in key


def crd_metadata(md: dict[str, Any], namespaced: bool, *, v3: bool = False) -> dict[str, Any]:
    """The v3 ObjectMeta of a Calico custom resource (ConvertK8sResourceToCalicoResource).

    The v3 labels, annotations and creationTimestamp live in the `projectcalico.org/metadata`
    annotation when libcalico-go wrote a crd.projectcalico.org/v1 object; otherwise (and always for
    a projectcalico.org/v3 object, which libcalico-go uses as it is) the object's own metadata is
    used. resourceVersion is left out: Typha carries it beside the value, not in it, which is what lets
    the cache drop updates that change nothing else.
    """
    annotations = md.get("annotations") or {}
    stored = json_map(annotations.get(METADATA_ANNOTATION)) if not v3 and METADATA_ANNOTATION in annotations else None
    if stored is not None:
        labels: dict[str, Any] = dict(stored.get("labels") or {})
        labels.update((k, v) for k, v in (md.get("labels") or {}).items() if _ours(k))
        notes: dict[str, Any] = dict(stored.get("annotations") or {})
        notes.update((k, v) for k, v in annotations.items() if _ours(k) and k != METADATA_ANNOTATION)
        created = stored.get("creationTimestamp") or md.get("creationTimestamp")
    else:
        labels = dict(md.get("labels") or {})
        notes = {k: v for k, v in annotations.items() if v3 or k != METADATA_ANNOTATION}
        created = md.get("creationTimestamp")
    out: dict[str, Any] = {"name": md["name"]}
    if namespaced:
        out["namespace"] = md.get("namespace") or ""
    if md.get("uid"):
        out["uid"] = md["uid"]
    out["creationTimestamp"] = created
    if labels:
        out["labels"] = labels
    if notes:
        out["annotations"] = notes
    return out


def v3_resource(kind: str, md: dict[str, Any], spec: dict[str, Any], status: Any = None) -> dict[str, Any]:
    value: dict[str, Any] = {"kind": kind, "apiVersion": CALICO_API_VERSION, "metadata": md, "spec": spec}
    if status:
        value["status"] = status
    return value
