"""The calculation's value types: endpoints, parsed policies and rules, IP-set specs, Felix's names.

Everything here is derived from one KV value at a time (no cross-object state), so it can be parsed
once when the KV arrives and shared by the calculation and the renderer.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from felix_client import validate
from felix_client.names import (
    DEFAULT_MARK_MASK,
    KIND_SHORT,
    SET_ID_NAMED_PORT,
    SET_ID_SELECTOR,
    SET_ID_SERVICE,
    SET_ID_SERVICE_NO_PORT,
    VXLAN_PORT,
    VXLAN_VNI,
    Marks,
    ipset_name,
)
from felix_client.validate import Invalid
from typha.model import selector as sel
from typha.model.keys import PolicyKey

ANY_NET = "0.0.0.0/0"
ANY_NETS = {4: ANY_NET, 6: "::/0"}  # the catch-all of each family

# Staged policies are never enforced (they only feed flow logs); the rest are out of scope (docs/calico/felix.md §3).
ENFORCED_KINDS = frozenset(KIND_SHORT)
# libcalico-go's KindIsStaged: the kinds Felix's renderer skips (no policy chain, no jump to one).
STAGED_KINDS = frozenset({"StagedNetworkPolicy", "StagedGlobalNetworkPolicy", "StagedKubernetesNetworkPolicy"})

_PORT_PROTOCOLS = frozenset({"tcp", "udp", "sctp", "udplite", 6, 17, 132, 136})
_NAMED_PORT_PROTOCOLS = {"tcp": "tcp", "udp": "udp", "sctp": "sctp", 6: "tcp", 17: "udp", 132: "sctp"}
_PROTOCOL_NUMBERS: dict[str | int, int] = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132, "udplite": 136}
_ICMP_PROTOCOLS = frozenset({"icmp", 1})
_ICMPV6_PROTOCOLS = frozenset({"icmpv6", 58})
_ACTIONS = {"": "allow", "allow": "allow", "deny": "deny", "next-tier": "next-tier", "pass": "next-tier",
            "log": "log"}


# --- IP sets ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IPSetSpec:
    """One IP set a rule needs.

    kind "selector": IPs of every endpoint (any node) and network-set CIDRs matching `selector`.
    kind "named-port": `ip,proto:port` of matching endpoints that have a named port `port_name`/`protocol`.
    kind "service": `ip,proto:port` of every address and port of the EndpointSlices of `service`
    ("namespace/name"): a rule's destination service (rule_scanner.go, ServiceIncludePorts).
    kind "service-noport": the addresses alone: a rule's source service.
    """

    kind: str
    selector: str = ""  # canonical form
    protocol: str = ""
    port_name: str = ""
    service: str = ""
    # The family: a rule rendered for IPv6 uses the IPv6 set of the same ID ("cali60" + ID), holding
    # the IPv6 addresses of the same endpoints (Felix keeps one set per family and ID).
    version: int = 4

    @property
    def set_id(self) -> str:
        if self.kind == "selector":
            return sel.make_unique_id(SET_ID_SELECTOR, self.selector)
        if self.kind == "named-port":
            # labelindex IPSetData.UniqueID: the selector's ID, protocol and port name, hashed again.
            selector_id = sel.make_unique_id(SET_ID_SELECTOR, self.selector)
            return sel.make_unique_id(SET_ID_NAMED_PORT, f"{selector_id},{self.protocol},{self.port_name}")
        if self.kind == "service":
            return sel.make_unique_id(SET_ID_SERVICE, self.service)
        if self.kind == "service-noport":
            return sel.make_unique_id(SET_ID_SERVICE_NO_PORT, self.service)
        raise ValueError(f"unknown IP set kind {self.kind!r}")

    @property
    def name(self) -> str:
        return ipset_name(self.set_id, self.version)

    @property
    def ipset_type(self) -> str:
        return "hash:ip,port" if self.kind in ("named-port", "service") else "hash:net"

    @property
    def parsed_selector(self) -> sel.Selector:
        return sel.parse(self.selector)


def _family_nets(values: Any, version: int = 4) -> tuple[tuple[str, ...], bool]:
    """(the CIDRs of family `version`, whether any other-family ones were left out) of a nets list;
    Invalid for a bad one."""
    if values is None:
        return (), False
    if not isinstance(values, list | tuple):
        raise Invalid("bad-cidr", f"nets must be a list, not {values!r}")
    out: list[str] = []
    dropped = False
    for text in values:
        net = validate.cidr(text)
        if net.version == version:
            out.append(str(net))
        else:
            dropped = True
    return tuple(out), dropped


# --- rules --------------------------------------------------------------------------------------

# The v1 model rule's fields (libcalico-go lib/backend/model/rule.go), by what becomes of them. Each
# one in _MATCH_FIELDS changes what the rule matches or does; _INFORMATIONAL_FIELDS are the v3
# originals passed through for other consumers (the selectors above already carry their meaning,
# and Felix's iptables renderer reads them no more than we do). Any other field (the deprecated
# tags, or one newer than this code) makes the rule refused: a match we do not understand must not
# be dropped while the action stays.
_MATCH_FIELDS = frozenset(
    {"action", "ip_version", "protocol", "!protocol", "icmp_type", "icmp_code", "!icmp_type", "!icmp_code",
     "http", "metadata", "src_service", "src_service_ns", "dst_service", "dst_service_ns"}
    | {f"{neg}{side}_{what}" for neg in ("", "!") for side in ("src", "dst")
       for what in ("net", "nets", "selector", "ports")}
)
_INFORMATIONAL_FIELDS = frozenset(
    {f"{neg}orig_{side}_selector" for neg in ("", "!") for side in ("src", "dst")}
    | {f"orig_{side}_{what}" for side in ("src", "dst")
       for what in ("namespace_selector", "service_acct_names", "service_acct_selector")}
)
RULE_FIELDS = _MATCH_FIELDS | _INFORMATIONAL_FIELDS


@dataclass(frozen=True, slots=True)
class Side:
    """The source or destination half of a rule as Felix's renderer input (proto.Rule) holds it, with
    selectors already turned into IP sets. Each set list is rendered in order, one `--match-set` per
    set, all ANDed; nets and ports alternatives are ORed (policy.py renders scratch-mark blocks for
    them where one rule cannot hold them)."""

    nets: tuple[str, ...] = ()  # SrcNet/DstNet, in the rule's order
    not_nets: tuple[str, ...] = ()
    # SrcIpSetIds/DstIpSetIds: the selector (negation folded in; left out when named ports already
    # carry it, as rule_scanner does), then a source service's address set.
    ip_sets: tuple[IPSetSpec, ...] = ()
    not_ip_sets: tuple[IPSetSpec, ...] = ()  # NotSrcIpSetIds/NotDstIpSetIds: `! --match-set`
    ip_port_sets: tuple[IPSetSpec, ...] = ()  # DstIpPortSetIds: a destination service, matched dst,dst
    ports: tuple[int | str, ...] = ()  # numbers and "lo:hi" ranges
    not_ports: tuple[int | str, ...] = ()
    named_port_sets: tuple[IPSetSpec, ...] = ()
    not_named_port_sets: tuple[IPSetSpec, ...] = ()
    version: int = 4

    def ipsets(self) -> list[IPSetSpec]:
        return [*self.ip_sets, *self.not_ip_sets, *self.ip_port_sets, *self.named_port_sets,
                *self.not_named_port_sets]


@dataclass(frozen=True, slots=True)
class ParsedRule:
    action: str  # allow | deny | next-tier | log
    protocol: str | int | None = None
    not_protocol: str | int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_type: int | None = None
    not_icmp_code: int | None = None
    src: Side = field(default_factory=Side)
    dst: Side = field(default_factory=Side)
    # Rule metadata annotations, rendered as comments on each of the rule's iptables rules as Felix
    # does (policy.go), sorted by key (Felix's map order is random).
    annotations: tuple[tuple[str, str], ...] = ()
    version: int = 4  # the family this rule was filtered and is rendered for
    # An invalid Deny/Pass rule standing in as an unconditional deny (`fail_closed`).
    fail_closed: bool = False

    def ipsets(self) -> list[IPSetSpec]:
        return self.src.ipsets() + self.dst.ipsets()


def _canonical(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise Invalid("bad-selector", f"{what} is not a string: {text!r}")
    try:
        return sel.canonicalise(text)
    except sel.SelectorError as exc:
        raise Invalid("bad-selector", f"{what} {text!r}: {exc}") from None


def _combined_selector(positive: str, negative: str) -> tuple[str, str]:
    """(positive canonical, negative-only canonical): rule_scanner folds a notSelector into a positive
    selector as `(pos) && (!(neg))`; a notSelector alone stays a negated match (it must also match
    traffic from outside Calico, which a set of endpoints could not express)."""
    if positive and negative:
        _canonical(positive, "selector"), _canonical(negative, "notSelector")  # each valid on its own
        return _canonical(f"({positive}) && (!({negative}))", "selector"), ""
    if positive:
        return _canonical(positive, "selector"), ""
    if negative:
        return "", _canonical(negative, "notSelector")
    return "", ""


def _split_ports(values: Any) -> tuple[tuple[int | str, ...], tuple[str, ...]]:
    if values is None:
        return (), ()
    if not isinstance(values, list | tuple):
        raise Invalid("bad-port", f"ports must be a list, not {values!r}")
    numeric: list[int | str] = []
    named: list[str] = []
    for value in values:
        port = validate.port(value)
        if isinstance(port, int) or port[0].isdigit():
            numeric.append(port)
        else:
            named.append(port)
    return tuple(numeric), tuple(named)


def _nets_field(rule: dict[str, Any], name: str) -> list[Any] | None:
    """`<name>_nets` plus the older single `<name>_net` (model.Rule.AllSrcNets and friends)."""
    nets, single = rule.get(f"{name}_nets"), rule.get(f"{name}_net")
    if single is None:
        return nets
    if nets is not None and not isinstance(nets, list):
        raise Invalid("bad-cidr", f"{name}_nets must be a list, not {nets!r}")
    return [*(nets or []), single]


def _service(rule: dict[str, Any], side: str, version: int = 4) -> IPSetSpec | None:
    name, namespace = rule.get(f"{side}_service"), rule.get(f"{side}_service_ns")
    if name is None and namespace is None:
        return None
    if not name:
        # Felix would ignore a namespace without a name; that would drop a match the rule asked for.
        raise Invalid("bad-service", f"{side} service namespace {namespace!r} without a service name")
    service = f"{validate.k8s_name(namespace) if namespace else ''}/{validate.k8s_name(name)}"
    return IPSetSpec("service" if side == "dst" else "service-noport", service=service, version=version)


def _side(rule: dict[str, Any], side: str, protocol: str, version: int = 4) -> Side:
    """One side ("src" or "dst") of a v1 rule, with felix/rules/policy.go FilterRuleToIPVersion(version)
    applied: other-family CIDRs are left out, and a nets or notNets list that held only such CIDRs
    makes the rule skipped (Felix renders it for the other family only)."""
    other = 6 if version == 4 else 4
    nets, dropped = _family_nets(_nets_field(rule, side), version)
    if dropped and not nets:
        raise Invalid("other-ip-family", f"{side} nets hold only IPv{other} CIDRs")
    not_nets, not_dropped = _family_nets(_nets_field(rule, f"!{side}"), version)
    if not_dropped and not not_nets:
        raise Invalid("other-ip-family", f"{side} notNets hold only IPv{other} CIDRs")
    any_net = ANY_NETS[version]
    if any_net in not_nets:
        # filterNets: a negated catch-all can never match; Felix drops the rule with a warning.
        raise Invalid("negated-catch-all", f"{side} notNets hold {any_net}")
    positive, negative = _combined_selector(rule.get(f"{side}_selector") or "", rule.get(f"!{side}_selector") or "")
    ports, named = _split_ports(rule.get(f"{side}_ports"))
    not_ports, not_named = _split_ports(rule.get(f"!{side}_ports"))
    named_selector = positive or "all()"
    ip_sets: list[IPSetSpec] = []
    # rule_scanner.go: with only named ports the named-port sets already carry the selector.
    if positive and (ports or not named):
        ip_sets.append(IPSetSpec("selector", selector=positive, version=version))
    service = _service(rule, side, version)
    if service is not None and side == "src":
        ip_sets.append(service)  # a source service is one more of SrcIpSetIds, after the selector
    return Side(
        nets=nets,
        not_nets=not_nets,
        ip_sets=tuple(ip_sets),
        not_ip_sets=(IPSetSpec("selector", selector=negative, version=version),) if negative else (),
        ip_port_sets=(service,) if service is not None and side == "dst" else (),
        ports=ports,
        not_ports=not_ports,
        named_port_sets=tuple(IPSetSpec("named-port", named_selector, protocol, n, version=version) for n in named),
        not_named_port_sets=tuple(IPSetSpec("named-port", named_selector, protocol, n, version=version)
                                  for n in not_named),
        version=version,
    )


def _icmp_fields(rule: dict[str, Any], prefix: str) -> tuple[int | None, int | None]:
    icmp_type, icmp_code = rule.get(f"{prefix}icmp_type"), rule.get(f"{prefix}icmp_code")
    if icmp_code is not None and icmp_type is None:
        # Calico's validation refuses a code without a type; Felix would render neither, dropping the match.
        raise Invalid("bad-icmp", f"{prefix}icmp_code {icmp_code!r} without a type")
    return (None if icmp_type is None else validate.icmp_type(icmp_type),
            None if icmp_code is None else validate.icmp_code(icmp_code))


def _annotations(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    annotations = value.get("annotations") if isinstance(value, dict) else None
    if annotations is None and isinstance(value, dict):
        return ()
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise Invalid("bad-metadata", f"rule metadata is not a map of strings: {value!r}")
    return tuple(sorted(annotations.items()))


def parse_rule(rule: Any, version: int = 4) -> ParsedRule:
    """A v1 model rule as rendered for IP `version`; `Invalid` when it is not rendered for that family
    (see its reason: "other-ip-family" when Felix renders it for the other family only)."""
    if not isinstance(rule, dict):
        raise Invalid("bad-rule", f"rule is not an object: {rule!r}")
    unknown = sorted(set(rule) - RULE_FIELDS)
    if unknown:
        raise Invalid("unsupported-field", f"fields felix-client cannot render: {', '.join(unknown)}")
    action = rule.get("action") or ""
    if action not in _ACTIONS:
        raise Invalid("bad-action", f"invalid action {action!r}")
    action = _ACTIONS[action]
    ip_version = rule.get("ip_version")
    if ip_version not in (None, 4, 6) or isinstance(ip_version, bool):
        raise Invalid("bad-ip-version", f"invalid ip_version {ip_version!r}")
    if ip_version is not None and ip_version != version:
        raise Invalid("other-ip-family", f"ip_version {ip_version}")
    protocol = None if rule.get("protocol") is None else validate.protocol(rule["protocol"])
    not_protocol = None if rule.get("!protocol") is None else validate.protocol(rule["!protocol"])
    if protocol is not None and not_protocol is not None:
        # iptables takes one -p. "p and not q" is p when they differ and matches nothing when equal.
        if _PROTOCOL_NUMBERS.get(protocol, protocol) == _PROTOCOL_NUMBERS.get(not_protocol, not_protocol):
            raise Invalid("never-matches", f"protocol {protocol!r} and notProtocol {not_protocol!r}")
        not_protocol = None
    # ICMP belongs to IPv4 and ICMPv6 to IPv6: the rule is rendered for that family only.
    if protocol in (_ICMPV6_PROTOCOLS if version == 4 else _ICMP_PROTOCOLS):
        raise Invalid("other-ip-family", f"protocol {'ICMPv6' if version == 4 else 'ICMP'}")
    icmp_type, icmp_code = _icmp_fields(rule, "")
    not_icmp_type, not_icmp_code = _icmp_fields(rule, "!")
    icmp_protocols = _ICMP_PROTOCOLS if version == 4 else _ICMPV6_PROTOCOLS
    if (icmp_type is not None or not_icmp_type is not None) and protocol not in icmp_protocols:
        # Calico's validation requires the ICMP protocol; iptables' icmp match would refuse the table.
        raise Invalid("bad-icmp", f"ICMP match with protocol {protocol!r}")
    if rule.get("http") is not None and action in ("allow", "next-tier"):
        # Felix's iptables rules leave HTTP matches to Dikastes (the ALP sidecar); without it the
        # rule would allow every request. A Deny or Log rule is kept: without the match it is stricter.
        raise Invalid("http-match", f"HTTP match on an {action} rule (needs application layer policy)")
    named_protocol = _NAMED_PORT_PROTOCOLS.get(protocol if protocol is not None else "tcp", "tcp")
    src = _side(rule, "src", named_protocol, version)
    dst = _side(rule, "dst", named_protocol, version)
    has_ports = any(rule.get(f"{neg}{side}_ports") for neg in ("", "!") for side in ("src", "dst"))
    if has_ports and protocol not in _PORT_PROTOCOLS:
        # Calico's validation refuses ports without a port protocol; iptables would refuse the
        # multiport match and with it the whole table.
        raise Invalid("ports-without-protocol", f"ports with protocol {protocol!r}")
    return ParsedRule(
        action=action,
        protocol=protocol,
        not_protocol=not_protocol,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
        not_icmp_type=not_icmp_type,
        not_icmp_code=not_icmp_code,
        src=src,
        dst=dst,
        annotations=_annotations(rule.get("metadata")),
        version=version,
    )


def parse_rules(rules: Any, owner: str = "", version: int = 4) -> tuple[ParsedRule, ...]:
    """The rules that are rendered for one family; each one left out is logged (once) and counted."""
    return parse_rules_by_family(rules, owner, (version,))[version]


def parse_rules_by_family(rules: Any, owner: str = "",
                          versions: tuple[int, ...] = (4, 6)) -> dict[int, tuple[ParsedRule, ...]]:
    """The rules rendered for each family (Felix renders a policy once per family, filtering each rule
    with FilterRuleToIPVersion). A rule left out is logged (once) and counted once per reason: a rule
    broken for both families the same way counts once, not twice."""
    if rules is None:
        return dict.fromkeys(versions, ())
    if not isinstance(rules, list | tuple):
        raise Invalid("bad-rule", f"{owner}: rules are not a list")
    out: dict[int, list[ParsedRule]] = {v: [] for v in versions}
    for i, rule in enumerate(rules):
        reported: set[str] = set()
        for version in versions:
            try:
                out[version].append(parse_rule(rule, version))
            except Invalid as exc:
                closed = fail_closed(rule, exc.reason, version)
                if exc.reason not in reported or exc.reason == "other-ip-family":
                    reported.add(exc.reason)
                    where = f"{owner} (IPv6)" if version == 6 else owner
                    validate.reject_rule(where, exc.reason,
                                         f"rule {i}: {exc}" + ("; rendered as a drop" if closed else ""))
                if closed is not None:
                    out[version].append(closed)
    return {v: tuple(rules_) for v, rules_ in out.items()}


# Reasons for which Felix itself renders nothing for this family (the rule cannot match an IPv4
# packet), so skipping the rule is exactly Felix's behaviour whatever its action.
_SKIP_IS_EXACT = frozenset({"other-ip-family", "negated-catch-all", "never-matches"})


def fail_closed(rule: Any, reason: str, version: int = 4) -> ParsedRule | None:
    """What an unrenderable rule becomes. Leaving out an Allow only narrows what the chain allows,
    but leaving out a Deny or a Pass lets its packets reach later rules that may allow them: those
    (and a rule whose action cannot be read) become an unconditional deny of the same direction,
    which can only narrow too. None: leave the rule out."""
    if reason in _SKIP_IS_EXACT:
        return None
    if isinstance(rule, dict) and rule.get("action") in (None, "", "allow", "log"):
        return None
    return ParsedRule(action="deny", fail_closed=True, version=version)


# --- policies and profiles ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    key: PolicyKey
    tier: str
    order: float | None
    selector: sel.Selector
    ingress: bool  # governs ingress (types)
    egress: bool
    inbound: tuple[ParsedRule, ...]
    outbound: tuple[ParsedRule, ...]
    inbound6: tuple[ParsedRule, ...] = ()  # the same rules filtered and parsed for IPv6
    outbound6: tuple[ParsedRule, ...] = ()

    def rules(self, inbound: bool, version: int = 4) -> tuple[ParsedRule, ...]:
        if version == 6:
            return self.inbound6 if inbound else self.outbound6
        return self.inbound if inbound else self.outbound

    @property
    def sort_key(self) -> tuple[float, str]:
        # docs/calico/felix.md §1.3.6: order (nil = +inf), ties broken by the string "name/namespace/kind" (a
        # string, not a tuple: "a-b/..." sorts before "a/..." because '-' < '/').
        order = float("inf") if self.order is None else self.order
        return (order, f"{self.key.name}/{self.key.namespace}/{self.key.kind}")

    @property
    def description(self) -> str:
        # The rule comment Felix writes: "<Kind> <ns>/<name>" (namespaced) or "<Kind> <name>".
        name = f"{self.key.namespace}/{self.key.name}" if self.key.namespace else self.key.name
        return f"{self.key.kind} {name}"

    def ipsets(self) -> list[IPSetSpec]:
        out: list[IPSetSpec] = []
        for version in (4, 6):
            for rule in ((self.rules(True, version) if self.ingress else ())
                         + (self.rules(False, version) if self.egress else ())):
                out.extend(rule.ipsets())
        return out


def parse_policy(key: PolicyKey, value: dict[str, Any]) -> ParsedPolicy:
    inbound = value.get("inbound_rules") or []
    outbound = value.get("outbound_rules") or []
    types = value.get("types")
    if types:
        ingress, egress = "ingress" in types, "egress" in types
    else:
        # api/pkg/defaults/networkpolicy.go: the API server defaults types before storing; a value
        # without them (a CRD written directly) gets the same defaulting here.
        egress = bool(outbound)
        ingress = bool(inbound) or not outbound
    order = value.get("order")
    tier = value.get("tier") or "default"
    if not isinstance(tier, str):
        raise Invalid("bad-tier", f"tier is not a name: {tier!r}")
    inbound_rules = parse_rules_by_family(inbound, f"{key.kind} {key.namespace}/{key.name} inbound")
    outbound_rules = parse_rules_by_family(outbound, f"{key.kind} {key.namespace}/{key.name} outbound")
    return ParsedPolicy(
        key=key,
        tier=tier,
        order=None if order is None else float(order),
        selector=sel.parse(value.get("selector") or ""),
        ingress=ingress,
        egress=egress,
        inbound=inbound_rules[4],
        outbound=outbound_rules[4],
        inbound6=inbound_rules[6],
        outbound6=outbound_rules[6],
    )


@dataclass(frozen=True, slots=True)
class ParsedProfile:
    name: str
    inbound: tuple[ParsedRule, ...]
    outbound: tuple[ParsedRule, ...]
    inbound6: tuple[ParsedRule, ...] = ()
    outbound6: tuple[ParsedRule, ...] = ()

    def rules(self, inbound: bool, version: int = 4) -> tuple[ParsedRule, ...]:
        if version == 6:
            return self.inbound6 if inbound else self.outbound6
        return self.inbound if inbound else self.outbound

    def ipsets(self) -> list[IPSetSpec]:
        return [s for rule in self.inbound + self.outbound + self.inbound6 + self.outbound6 for s in rule.ipsets()]


def parse_profile(name: str, value: dict[str, Any] | None) -> ParsedProfile:
    value = value or {}
    inbound = parse_rules_by_family(value.get("inbound_rules"), f"Profile {name} inbound")
    outbound = parse_rules_by_family(value.get("outbound_rules"), f"Profile {name} outbound")
    return ParsedProfile(name, inbound[4], outbound[4], inbound[6], outbound[6])


# --- endpoints ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NamedPort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A WorkloadEndpoint (or, with `is_netset`, a NetworkSet: labels and CIDRs only; with `is_hep`, a
    HostEndpoint)."""

    key: str
    hostname: str
    iface: str
    active: bool
    nets: tuple[str, ...]  # IPv4 CIDRs (/32 for endpoints)
    profile_ids: tuple[str, ...]
    labels: dict[str, str]
    ports: tuple[NamedPort, ...] = ()
    is_netset: bool = False
    nets6: tuple[str, ...] = ()  # IPv6 CIDRs (/128 for endpoints): `ipv6_nets`, or a network set's v6 nets
    is_hep: bool = False  # a HostEndpoint: nets are its expected IPs (calc/hostendpoints.py)

    def family_nets(self, version: int = 4) -> tuple[str, ...]:
        return self.nets6 if version == 6 else self.nets

    @property
    def ips(self) -> tuple[str, ...]:
        return self.family_ips(4)

    def family_ips(self, version: int = 4) -> tuple[str, ...]:
        return tuple(n.split("/")[0] for n in self.family_nets(version))


def _named_port(value: Any) -> NamedPort:
    if not isinstance(value, dict):
        raise Invalid("bad-port", f"endpoint port is not an object: {value!r}")
    protocol = str(value.get("protocol") or "tcp").lower()
    if protocol not in ("tcp", "udp", "sctp"):
        # The protocol is written into `ip,proto:port` IP-set members.
        raise Invalid("bad-protocol", f"invalid named-port protocol {value.get('protocol')!r}")
    return NamedPort(validate.port_name(value.get("name")), protocol, validate.endpoint_port_number(value.get("port")))


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise Invalid("bad-labels", f"labels are not a map of strings: {value!r}")
    return dict(value)


def _profile_ids(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise Invalid("bad-profile", f"profile_ids are not a list of names: {value!r}")
    return tuple(value)


def parse_endpoint(path: str, hostname: str, value: dict[str, Any]) -> Endpoint:
    """A WorkloadEndpoint; `Invalid` (the update becomes a deletion, as in Felix's validation filter)
    when a value that reaches the kernel is outside its grammar."""
    nets, _ = _family_nets(value.get("ipv4_nets"))
    nets6, _ = _family_nets(value.get("ipv6_nets"), 6)
    ports = tuple(_named_port(p) for p in value.get("ports") or ())
    name = value.get("name") or ""
    return Endpoint(
        key=path,
        hostname=hostname,
        iface=validate.interface_name(name) if name else "",
        active=(value.get("state") or "active") == "active",
        nets=nets,
        profile_ids=_profile_ids(value.get("profile_ids")),
        labels=_labels(value.get("labels")),
        ports=ports,
        nets6=nets6,
    )


def parse_network_set(path: str, value: dict[str, Any]) -> Endpoint:
    nets, _ = _family_nets(value.get("nets"))
    nets6, _ = _family_nets(value.get("nets"), 6)
    return Endpoint(
        key=path,
        hostname="",
        iface="",
        active=True,
        nets=nets,
        profile_ids=_profile_ids(value.get("profile_ids")),
        labels=_labels(value.get("labels")),
        is_netset=True,
        nets6=nets6,
    )


# --- FelixConfiguration -------------------------------------------------------------------------

# The settings FelixSettings reads, as FELIX_* environment variables (Felix upper-cases the name).
SETTINGS_ENV = tuple(f"FELIX_{name.upper()}" for name in (
    "DefaultEndpointToHostAction", "IptablesFilterDenyAction", "LogPrefix", "LogActionRateLimit",
    "LogActionRateLimitBurst", "NATOutgoingExclusions", "NATOutgoingAddress", "NATPortRange", "VXLANPort",
    "IptablesNATOutgoingInterfaceFilter", "AllowVXLANPacketsFromWorkloads", "AllowIPIPPacketsFromWorkloads",
    "FailsafeInboundHostPorts", "FailsafeOutboundHostPorts", "IptablesFilterAllowAction", "IptablesMangleAllowAction",
    "ClusterType", "MetadataAddr", "MetadataPort", "DisableConntrackInvalidCheck",
    "VXLANVNI", "VXLANMTU", "VXLANMTUV6", "IptablesMarkMask"))
_LOG_RATE = re.compile(r"[1-9][0-9]{0,3}/(second|minute|hour|day)")
# iptables-save prints a limit's unit shortened.
_LOG_RATE_UNIT = {"second": "sec", "minute": "min", "hour": "hour", "day": "day"}


@dataclass(frozen=True, slots=True)
class ProtoPort:
    """One failsafe port (config.ProtoPort): protocol, port and an optional CIDR (`net`, "" = any)."""

    protocol: str
    port: int
    net: str = ""


def _port_list(value: Any) -> tuple[ProtoPort, ...]:
    """Felix's port-list parameter (PortListParam.Parse): comma-separated `<port>`, `<proto>:<port>` or
    `<proto>:<net>:<port>`, an IPv6 net in brackets (`tcp:[fd00::/64]:22`); "none" is the empty list
    (config_params.go). The datastore sends FelixConfiguration's list in this form (protoPortSliceToString)."""
    text = str(value).strip()
    if text.lower() == "none":
        return ()
    out: list[ProtoPort] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        net = ""
        if "[" in item and "]:" in item:
            start, end = item.index("["), item.index("]:")
            net, item = item[start + 1:end], item[:start] + item[end + 2:]
        parts = item.split(":")
        if len(parts) > 3:
            raise ValueError("ports should be <protocol>:<net>:<number>, <protocol>:<number> or <number>")
        protocol = parts[0].lower() if len(parts) > 1 else "tcp"
        if len(parts) == 3:
            net = parts[1]
        if protocol not in ("tcp", "udp"):
            raise ValueError(f"unknown protocol: {protocol}")
        port = int(parts[-1])
        if not 0 <= port <= 65535:
            raise ValueError("ports must be in range 0-65535")
        if net:
            # cnet.ParseCIDROrIP, then the network's String(): a bare IP is its /32 or /128.
            net = str(ipaddress.ip_network(net, strict=False))
        out.append(ProtoPort(protocol, port, net))
    return tuple(out)


# config_params.go FailsafeInboundHostPorts / FailsafeOutboundHostPorts defaults: SSH, DHCP, BGP, etcd,
# Typha, the Kubernetes API server and kube-proxy's ports (and DNS outbound).
FAILSAFE_INBOUND_DEFAULT = _port_list("tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667")
FAILSAFE_OUTBOUND_DEFAULT = _port_list("udp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667")


@dataclass(frozen=True, slots=True)
class FelixSettings:
    """The FelixConfiguration fields the renderer reads, with Felix's defaults (felix/config/config_params.go)."""

    endpoint_to_host_action: str = "DROP"  # DefaultEndpointToHostAction: DROP | RETURN | ACCEPT
    filter_deny_action: str = "DROP"  # IptablesFilterDenyAction: DROP | REJECT
    log_prefix: str = "calico-packet"  # LogPrefix, with %t %k %n %p specifiers
    log_rate_limit: str = ""  # LogActionRateLimit, in iptables-save's spelling ("10/min"); "" = none
    log_rate_limit_burst: int = 5  # LogActionRateLimitBurst
    nat_outgoing_exclusions: str = "IPPoolsOnly"  # or IPPoolsAndHostIPs
    nat_outgoing_address: str = ""  # NATOutgoingAddress: SNAT to it instead of MASQUERADE
    nat_port_range: tuple[int, int] | None = None  # NATPortRange
    vxlan_port: int = VXLAN_PORT  # VXLANPort: the device's UDP port and every rule about VXLAN packets
    nat_outgoing_interface: str = ""  # IptablesNATOutgoingInterfaceFilter: NAT outgoing only out of it
    allow_vxlan_from_workloads: bool = False  # AllowVXLANPacketsFromWorkloads
    allow_ipip_from_workloads: bool = False  # AllowIPIPPacketsFromWorkloads
    # The host-endpoint failsafe ports (cali-failsafe-in/-out, rules.static) and the actions the static
    # chains use for an allowed packet (IptablesFilterAllowAction, IptablesMangleAllowAction: ACCEPT | RETURN).
    failsafe_inbound_host_ports: tuple[ProtoPort, ...] = FAILSAFE_INBOUND_DEFAULT
    failsafe_outbound_host_ports: tuple[ProtoPort, ...] = FAILSAFE_OUTBOUND_DEFAULT
    filter_allow_action: str = "ACCEPT"
    mangle_allow_action: str = "ACCEPT"
    # DisableConntrackInvalidCheck: endpoint chains leave out their ctstate INVALID drop (Felix's
    # appendConntrackRules), for hosts with asymmetric routing where conntrack misjudges packets.
    disable_conntrack_invalid: bool = False
    # OpenStack's special cases (metadata service, DHCP, DNS from workloads): on when openstack_active.
    cluster_type: str = ""  # ClusterType, e.g. "k8s,bgp" or "openstack"
    metadata_addr: str = "127.0.0.1"  # MetadataAddr: a hostname or IP; rules only for an IPv4 address
    metadata_port: int = 8775  # MetadataPort

    def openstack_active(self, iface_prefix: str) -> bool:
        """Config.OpenstackActive: ClusterType says OpenStack, or the metadata address or port is not
        the default, or the workload interfaces are OpenStack's `tap` ones."""
        return ("openstack" in self.cluster_type.lower()
                or self.metadata_addr not in ("", "127.0.0.1")
                or self.metadata_port not in (0, 8775)
                or iface_prefix == "tap")
    vxlan_vni: int = VXLAN_VNI  # VXLANVNI: both families' devices
    vxlan_mtu: int = 0  # VXLANMTU; 0: felix_client's VXLAN_MTU
    vxlan_mtu_v6: int = 0  # VXLANMTUV6; 0: the parent interface's MTU less VXLAN_V6_MTU_OVERHEAD, as Felix
    iptables_mark_mask: int = DEFAULT_MARK_MASK  # IptablesMarkMask: where `marks` are allocated from

    @property
    def marks(self) -> Marks:
        """The mark bits Felix allocates from IptablesMarkMask (a bad mask never gets this far)."""
        return Marks.from_mask(self.iptables_mark_mask)

    @classmethod
    def from_sources(cls, lookup: Callable[[str], Any], env: Mapping[str, str] | None = None) -> FelixSettings:
        """Felix's precedence (config.SourcesInDescendingOrder): a `FELIX_<NAME>` environment variable,
        then the per-host FelixConfiguration (`node.<name>`), then the global one (`default`) - `lookup`
        gives the datastore value, host before global. An invalid value is logged once and the next
        source (in the end Felix's default) is used, as Felix does for parameters that are not
        die-on-fail; for the die-on-fail ones Felix would exit, and its default is the safe reading."""
        env = env if env is not None else {}
        default = cls()

        def pick(name: str, parse: Callable[[Any], Any], fallback: Any) -> Any:
            for source, value in (("environment", env.get(f"FELIX_{name.upper()}")), ("datastore", lookup(name))):
                if value is None or value == "":
                    continue
                try:
                    return parse(value)
                except (ValueError, TypeError) as exc:
                    # Counted and logged once like any unusable KV: the value is treated as absent.
                    validate.reject_object("FelixConfiguration", f"{source} {name}", f"{value!r}: {exc}")
            return fallback

        return cls(
            endpoint_to_host_action=pick("DefaultEndpointToHostAction", _one_of("DROP", "RETURN", "ACCEPT"),
                                         default.endpoint_to_host_action),
            filter_deny_action=pick("IptablesFilterDenyAction", _one_of("DROP", "REJECT"), default.filter_deny_action),
            log_prefix=pick("LogPrefix", _log_prefix, default.log_prefix),
            log_rate_limit=pick("LogActionRateLimit", _log_rate, default.log_rate_limit),
            log_rate_limit_burst=pick("LogActionRateLimitBurst", _int_in(0, 9999), default.log_rate_limit_burst),
            nat_outgoing_exclusions=pick("NATOutgoingExclusions", _one_of("IPPoolsOnly", "IPPoolsAndHostIPs"),
                                         default.nat_outgoing_exclusions),
            nat_outgoing_address=pick("NATOutgoingAddress", _ipv4, default.nat_outgoing_address),
            nat_port_range=pick("NATPortRange", _port_range, default.nat_port_range),
            vxlan_port=pick("VXLANPort", _int_in(1, 65535), default.vxlan_port),
            nat_outgoing_interface=pick("IptablesNATOutgoingInterfaceFilter", _iface_param,
                                        default.nat_outgoing_interface),
            allow_vxlan_from_workloads=pick("AllowVXLANPacketsFromWorkloads", _bool,
                                            default.allow_vxlan_from_workloads),
            allow_ipip_from_workloads=pick("AllowIPIPPacketsFromWorkloads", _bool, default.allow_ipip_from_workloads),
            failsafe_inbound_host_ports=pick("FailsafeInboundHostPorts", _port_list,
                                             default.failsafe_inbound_host_ports),
            failsafe_outbound_host_ports=pick("FailsafeOutboundHostPorts", _port_list,
                                              default.failsafe_outbound_host_ports),
            filter_allow_action=pick("IptablesFilterAllowAction", _one_of("ACCEPT", "RETURN"),
                                     default.filter_allow_action),
            mangle_allow_action=pick("IptablesMangleAllowAction", _one_of("ACCEPT", "RETURN"),
                                     default.mangle_allow_action),
            disable_conntrack_invalid=pick("DisableConntrackInvalidCheck", _bool, default.disable_conntrack_invalid),
            cluster_type=pick("ClusterType", _cluster_type, default.cluster_type),
            metadata_addr=pick("MetadataAddr", _hostname, default.metadata_addr),
            metadata_port=pick("MetadataPort", _int_in(0, 65535), default.metadata_port),
            vxlan_vni=pick("VXLANVNI", _int_in(1, 0xFFFFFF), default.vxlan_vni),  # the kernel's 24-bit VNI
            # At least IPv6's minimum link MTU; a VXLAN device refuses more than 65535 less its overhead.
            vxlan_mtu=pick("VXLANMTU", _int_in(0, 65485), default.vxlan_mtu),
            vxlan_mtu_v6=pick("VXLANMTUV6", _mtu_v6, default.vxlan_mtu_v6),
            iptables_mark_mask=pick("IptablesMarkMask", _mark_mask, default.iptables_mark_mask),
        )


def _mtu_v6(value: Any) -> int:
    number = _int_in(0, 65465)(value)
    if 0 < number < 1280:
        raise ValueError("below IPv6's minimum MTU of 1280")
    return number


def _mark_mask(value: Any) -> int:
    # Felix's mark-bitmask parameter (a 32-bit number, hex or decimal) that its mark allocation can use.
    mask = int(str(value), 0)
    Marks.from_mask(mask)  # ValueError: outside 32 bits, or too few bits for Felix's marks
    return mask


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        for choice in choices:  # Felix's oneof() is case-insensitive and yields the canonical spelling
            if str(value).lower() == choice.lower():
                return choice
        raise ValueError(f"not one of {', '.join(choices)}")
    return parse


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = int(str(value), 0)
        if not low <= number <= high:
            raise ValueError(f"not in {low}..{high}")
        return number
    return parse


def _log_prefix(value: Any) -> str:
    # The prefix lands inside a quoted iptables argument; Felix's validation allows only these.
    text = str(value)
    if not re.fullmatch(r"[-a-zA-Z0-9 ._:%/]{1,64}", text):
        raise ValueError("not a valid log prefix")
    return text


def _log_rate(value: Any) -> str:
    match = _LOG_RATE.fullmatch(str(value))
    if not match:
        raise ValueError("not <1-9999>/<second|minute|hour|day>")
    number = str(value).split("/", 1)[0]
    return f"{number}/{_LOG_RATE_UNIT[match.group(1)]}"


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text not in ("true", "false"):
        raise ValueError("not true or false")
    return text == "true"


def _iface_param(value: Any) -> str:
    # Felix's "iface-param": an interface name, or a prefix with iptables' trailing "+".
    text = str(value)
    if not re.fullmatch(r"[a-zA-Z0-9:._+-]{1,15}", text):
        raise ValueError("not an interface name")
    return text


def _cluster_type(value: Any) -> str:
    text = str(value)
    if not re.fullmatch(r"[a-zA-Z0-9,_.-]{1,256}", text):
        raise ValueError("not a cluster type list")
    return text


def _hostname(value: Any) -> str:
    # Felix's "hostname" parameter: a DNS name or an IP address.
    text = str(value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9.-]{0,251}[a-zA-Z0-9])?", text):
        raise ValueError("not a hostname or IP address")
    return text


def _ipv4(value: Any) -> str:
    address = ipaddress.ip_address(str(value))
    if address.version != 4:
        raise ValueError("not an IPv4 address")
    return str(address)


def _port_range(value: Any) -> tuple[int, int]:
    low, _, high = str(value).partition(":")
    first, last = int(low), int(high or low)
    if not 0 < first <= last <= 65535:
        raise ValueError("not a port range within 1..65535")
    return first, last
