"""The calculation's value types: endpoints, parsed policies and rules, IP-set specs, Felix's names.

Everything here is derived from one KV value at a time (no cross-object state), so it can be parsed
once when the KV arrives and shared by the calculation and the renderer.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from typha.model import selector as sel
from typha.model.keys import PolicyKey

# felix/rules/rule_defs.go: chain names are capped at 28 characters (iptables allows 28 + NUL).
MAX_CHAIN_NAME_LENGTH = 28
# ipset names are capped at 31 characters; Felix cuts "cali40" + the set ID there.
MAX_IPSET_NAME_LENGTH = 31
IPSET_PREFIX = "cali40"
ANY_NET = "0.0.0.0/0"

KIND_SHORT = {
    "KubernetesNetworkPolicy": "knp",
    "NetworkPolicy": "np",
    "GlobalNetworkPolicy": "gnp",
}
# Staged policies are never enforced (they only feed flow logs); the rest are out of scope (docs/calico/felix.md §3).
ENFORCED_KINDS = frozenset(KIND_SHORT)

_PORT_PROTOCOLS = frozenset({"tcp", "udp", "sctp", "udplite", 6, 17, 132, 136})
_NAMED_PORT_PROTOCOLS = {"tcp": "tcp", "udp": "udp", "sctp": "sctp", 6: "tcp", 17: "udp", 132: "sctp"}


def length_limited_id(prefix: str, suffix: str, max_length: int = MAX_CHAIN_NAME_LENGTH) -> str:
    """hashutils.GetLengthLimitedID: prefix + suffix, or prefix + "_" + b64url(sha256(suffix)) cut to fit."""
    # A suffix that itself starts with the separator is hashed too, so it cannot pose as a hash.
    if len(prefix) + len(suffix) <= max_length and not suffix.startswith("_"):
        return prefix + suffix
    digest = base64.urlsafe_b64encode(hashlib.sha256(suffix.encode()).digest()).rstrip(b"=").decode()
    return prefix + "_" + digest[: max_length - len(prefix) - 1]


def policy_id(key: PolicyKey) -> str:
    """types.PolicyID.ID(): `<kind short>/<namespace>/<name>` (the namespace is empty for global kinds)."""
    return f"{KIND_SHORT.get(key.kind, key.kind.lower())}/{key.namespace}/{key.name}"


def policy_chain_name(key: PolicyKey, inbound: bool) -> str:
    return length_limited_id("cali-pi-" if inbound else "cali-po-", policy_id(key))


def profile_chain_name(profile: str, inbound: bool) -> str:
    return length_limited_id("cali-pri-" if inbound else "cali-pro-", profile)


def ipset_name(set_id: str) -> str:
    return (IPSET_PREFIX + set_id)[:MAX_IPSET_NAME_LENGTH]


# --- IP sets ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IPSetSpec:
    """One IP set a rule needs.

    kind "selector": IPs of every endpoint (any node) and network-set CIDRs matching `selector`.
    kind "named-port": `ip,proto:port` of matching endpoints that have a named port `port_name`/`protocol`.
    kind "nets": a literal CIDR list. Felix uses scratch-bit match blocks for several CIDRs or nets plus
    notNets; a hash:net set is the equivalent docs/calico/felix.md §3.8 allows, and keeps one rule per match.
    """

    kind: str
    selector: str = ""  # canonical form
    protocol: str = ""
    port_name: str = ""
    nets: tuple[str, ...] = ()

    @property
    def set_id(self) -> str:
        if self.kind == "selector":
            return sel.make_unique_id("s", self.selector)
        if self.kind == "named-port":
            # labelindex IPSetData.UniqueID: the selector's ID, protocol and port name, hashed again.
            selector_id = sel.make_unique_id("s", self.selector)
            return sel.make_unique_id("n", f"{selector_id},{self.protocol},{self.port_name}")
        return sel.make_unique_id("c", ",".join(self.nets))

    @property
    def name(self) -> str:
        return ipset_name(self.set_id)

    @property
    def ipset_type(self) -> str:
        return "hash:ip,port" if self.kind == "named-port" else "hash:net"

    @property
    def parsed_selector(self) -> sel.Selector:
        return sel.parse(self.selector)


def _v4_nets(values: Any) -> tuple[tuple[str, ...], bool]:
    """(IPv4 CIDRs, whether any IPv6 ones were dropped) of a nets list."""
    out: list[str] = []
    dropped = False
    for text in values or ():
        net = ipaddress.ip_network(text, strict=False)
        if net.version == 4:
            out.append(str(net))
        else:
            dropped = True
    return tuple(out), dropped


# --- rules --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Side:
    """The source or destination half of a rule, with selectors already turned into IP sets."""

    nets: tuple[str, ...] = ()
    not_nets: tuple[str, ...] = ()
    selector_set: IPSetSpec | None = None  # positive selector (negation folded in)
    not_selector_set: IPSetSpec | None = None  # only a notSelector: `! --match-set`
    ports: tuple[int | str, ...] = ()  # numbers and "lo:hi" ranges
    not_ports: tuple[int | str, ...] = ()
    named_port_sets: tuple[IPSetSpec, ...] = ()
    not_named_port_sets: tuple[IPSetSpec, ...] = ()

    def ipsets(self) -> list[IPSetSpec]:
        out: list[IPSetSpec] = []
        # With only named ports the named-port sets already carry the selector: no selector set needed.
        if self.selector_set is not None and (self.ports or not self.named_port_sets):
            out.append(self.selector_set)
        if self.not_selector_set is not None:
            out.append(self.not_selector_set)
        out.extend(self.named_port_sets)
        out.extend(self.not_named_port_sets)
        for spec in (self.nets_set(), self.not_nets_set()):
            if spec is not None:
                out.append(spec)
        return out

    def nets_set(self) -> IPSetSpec | None:
        """The set standing for `nets`, or None when one `-s`/`-d` does (zero or one CIDR)."""
        return _cidr_set(self.nets) if len(self.nets) > 1 else None

    def not_nets_set(self) -> IPSetSpec | None:
        """The set for `notNets`; a single one is a `! -s` unless `nets` already took the -s."""
        if not self.not_nets or (len(self.not_nets) == 1 and not self.nets):
            return None
        return _cidr_set(self.not_nets)


def _cidr_set(nets: tuple[str, ...]) -> IPSetSpec:
    return IPSetSpec("nets", nets=tuple(sorted(set(nets))))


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

    def ipsets(self) -> list[IPSetSpec]:
        return self.src.ipsets() + self.dst.ipsets()


def _combined_selector(positive: str, negative: str) -> tuple[str, str]:
    """(positive canonical, negative-only canonical): rule_scanner folds a notSelector into a positive
    selector as `(pos) && (!(neg))`; a notSelector alone stays a negated match (it must also match
    traffic from outside Calico, which a set of endpoints could not express)."""
    if positive and negative:
        return sel.canonicalise(f"({positive}) && (!({negative}))"), ""
    if positive:
        return sel.canonicalise(positive), ""
    if negative:
        return "", sel.canonicalise(negative)
    return "", ""


def _split_ports(values: Any) -> tuple[tuple[int | str, ...], tuple[str, ...]]:
    numeric: list[int | str] = []
    named: list[str] = []
    for port in values or ():
        if isinstance(port, int) or (isinstance(port, str) and port.replace(":", "").isdigit()):
            numeric.append(port)
        else:
            named.append(str(port))
    return tuple(numeric), tuple(named)


def _side(rule: dict[str, Any], side: str, protocol: str) -> tuple[Side, bool]:
    """One side of a v1 rule; the flag is True when the side can never match IPv4 traffic."""
    nets, dropped = _v4_nets(rule.get(f"{side}_nets"))
    if dropped and not nets:
        return Side(), True  # only IPv6 CIDRs: the rule is IPv6-only
    not_nets, _ = _v4_nets(rule.get(f"!{side}_nets"))
    if ANY_NET in not_nets:
        return Side(), True  # excludes every address: the rule can never match
    if ANY_NET in nets:
        nets = ()  # matches every address: no match needed (and hash:net cannot hold a /0)
    positive, negative = _combined_selector(rule.get(f"{side}_selector") or "", rule.get(f"!{side}_selector") or "")
    ports, named = _split_ports(rule.get(f"{side}_ports"))
    not_ports, not_named = _split_ports(rule.get(f"!{side}_ports"))
    named_selector = positive or "all()"
    return Side(
        nets=nets,
        not_nets=not_nets,
        selector_set=IPSetSpec("selector", selector=positive) if positive else None,
        not_selector_set=IPSetSpec("selector", selector=negative) if negative else None,
        ports=ports,
        not_ports=not_ports,
        named_port_sets=tuple(IPSetSpec("named-port", named_selector, protocol, n) for n in named),
        not_named_port_sets=tuple(IPSetSpec("named-port", named_selector, protocol, n) for n in not_named),
    ), False


def parse_rule(rule: dict[str, Any]) -> ParsedRule | None:
    """A v1 model rule, or None when it can never match IPv4 traffic (IPv6-only)."""
    if rule.get("ip_version") == 6:
        return None
    protocol = rule.get("protocol")
    named_protocol = _NAMED_PORT_PROTOCOLS.get(protocol if protocol is not None else "tcp", "tcp")
    src, src_never = _side(rule, "src", named_protocol)
    dst, dst_never = _side(rule, "dst", named_protocol)
    if src_never or dst_never:
        return None
    if protocol in ("icmpv6", 58):
        return None
    has_ports = any(rule.get(f"{neg}{side}_ports") for neg in ("", "!") for side in ("src", "dst"))
    if has_ports and protocol not in _PORT_PROTOCOLS:
        # Calico's validation refuses ports without a port protocol; iptables would refuse the
        # multiport match and with it the whole table, so such a rule is dropped, not rendered.
        return None
    return ParsedRule(
        action=rule.get("action") or "allow",
        protocol=protocol,
        not_protocol=rule.get("!protocol"),
        icmp_type=rule.get("icmp_type"),
        icmp_code=rule.get("icmp_code"),
        not_icmp_type=rule.get("!icmp_type"),
        not_icmp_code=rule.get("!icmp_code"),
        src=src,
        dst=dst,
    )


def parse_rules(rules: Any) -> tuple[ParsedRule, ...]:
    return tuple(r for r in (parse_rule(rule) for rule in rules or ()) if r is not None)


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
        for rule in (self.inbound if self.ingress else ()) + (self.outbound if self.egress else ()):
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
    return ParsedPolicy(
        key=key,
        tier=value.get("tier") or "default",
        order=None if order is None else float(order),
        selector=sel.parse(value.get("selector") or ""),
        ingress=ingress,
        egress=egress,
        inbound=parse_rules(inbound),
        outbound=parse_rules(outbound),
    )


@dataclass(frozen=True, slots=True)
class ParsedProfile:
    name: str
    inbound: tuple[ParsedRule, ...]
    outbound: tuple[ParsedRule, ...]

    def ipsets(self) -> list[IPSetSpec]:
        return [s for rule in self.inbound + self.outbound for s in rule.ipsets()]


def parse_profile(name: str, value: dict[str, Any] | None) -> ParsedProfile:
    value = value or {}
    return ParsedProfile(name, parse_rules(value.get("inbound_rules")), parse_rules(value.get("outbound_rules")))


# --- endpoints ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NamedPort:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A WorkloadEndpoint (or, with `is_netset`, a NetworkSet: labels and CIDRs only)."""

    key: str
    hostname: str
    iface: str
    active: bool
    nets: tuple[str, ...]  # IPv4 CIDRs (/32 for endpoints)
    profile_ids: tuple[str, ...]
    labels: dict[str, str]
    ports: tuple[NamedPort, ...] = ()
    is_netset: bool = False

    @property
    def ips(self) -> tuple[str, ...]:
        return tuple(n.split("/")[0] for n in self.nets)


def parse_endpoint(path: str, hostname: str, value: dict[str, Any]) -> Endpoint:
    nets, _ = _v4_nets(value.get("ipv4_nets"))
    ports = tuple(
        NamedPort(p["name"], str(p.get("protocol") or "tcp").lower(), int(p["port"]))
        for p in value.get("ports") or ()
        if p.get("name") and p.get("port")
    )
    return Endpoint(
        key=path,
        hostname=hostname,
        iface=value.get("name") or "",
        active=(value.get("state") or "active") == "active",
        nets=nets,
        profile_ids=tuple(value.get("profile_ids") or ()),
        labels=dict(value.get("labels") or {}),
        ports=ports,
    )


def parse_network_set(path: str, value: dict[str, Any]) -> Endpoint:
    nets, _ = _v4_nets(value.get("nets"))
    return Endpoint(
        key=path,
        hostname="",
        iface="",
        active=True,
        nets=nets,
        profile_ids=tuple(value.get("profile_ids") or ()),
        labels=dict(value.get("labels") or {}),
        is_netset=True,
    )
