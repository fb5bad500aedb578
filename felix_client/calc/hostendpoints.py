"""Host endpoints: parsing a HostEndpoint KV, the policy kinds that apply to one, and which host
endpoint governs which interface (felix/calc event_sequencer.go, felix/dataplane/linux/endpoint_mgr.go).

A HostEndpoint is an `Endpoint` with `is_hep`: its expected IPs are its addresses in selector and
named-port IP sets on every node (labelindex extractCIDRsFromHostEndpoint), and on its own node its
labels select policies as a workload's do. What differs is the policy kinds it takes (normal,
applyOnForward, preDNAT, doNotTrack, see `HostPolicyFlags`) and that it is bound to an interface only
when the node has one it names or one holding an address it expects (`resolve_interfaces`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from felix_client import validate
from felix_client.calc.model import Endpoint, _labels, _named_port, _profile_ids
from felix_client.names import ALL_INTERFACES
from felix_client.validate import Invalid

if TYPE_CHECKING:
    from felix_client.calc.graph import TierPolicies


@dataclass(frozen=True, slots=True)
class HostPolicyFlags:
    """The v1 policy fields that route a policy to host endpoints' other chains (GlobalNetworkPolicy
    doNotTrack, preDNAT, applyOnForward). Either of the first two makes the policy host-only: Felix
    never gives one to a workload (event_sequencer.go tierInfoToProtoTierInfo)."""

    untracked: bool = False
    pre_dnat: bool = False
    apply_on_forward: bool = False

    @property
    def host_only(self) -> bool:
        return self.untracked or self.pre_dnat


NORMAL_POLICY = HostPolicyFlags()


def policy_flags(value: Any) -> HostPolicyFlags:
    if not isinstance(value, dict):
        return NORMAL_POLICY
    for name in ("untracked", "pre_dnat", "apply_on_forward"):
        if value.get(name) not in (None, True, False):
            raise Invalid("bad-policy", f"{name} is not a boolean: {value.get(name)!r}")
    return HostPolicyFlags(bool(value.get("untracked")), bool(value.get("pre_dnat")),
                           bool(value.get("apply_on_forward")))


def _expected(values: Any, version: int) -> tuple[str, ...]:
    if values is None:
        return ()
    if not isinstance(values, list):
        raise Invalid("bad-ip", f"expected IPs are not a list: {values!r}")
    out: list[str] = []
    for text in values:
        address = validate.ip(text)
        if address.version != version:
            raise Invalid("bad-ip", f"expected_ipv{version}_addrs holds {text!r}")
        out.append(f"{address}/{address.max_prefixlen}")
    return tuple(out)


def parse_host_endpoint(path: str, hostname: str, value: dict[str, Any]) -> Endpoint:
    """A HostEndpoint (model.HostEndpoint: name, expected_ipv4/6_addrs, labels, profile_ids, ports).
    `iface` is the interface name, "*" for all interfaces, or "" (bound by expected IPs only)."""
    if not isinstance(value, dict):
        raise Invalid("bad-endpoint", f"host endpoint is not an object: {value!r}")
    name = value.get("name") or ""
    iface = name if name == "*" else (validate.interface_name(name) if name else "")
    nets = _expected(value.get("expected_ipv4_addrs"), 4)
    nets6 = _expected(value.get("expected_ipv6_addrs"), 6)
    if not iface and not nets and not nets6:
        # libcalico-go's validation refuses it too: it could never be bound to an interface.
        raise Invalid("bad-endpoint", "host endpoint with neither an interface name nor expected IPs")
    return Endpoint(
        key=path,
        hostname=hostname,
        iface=iface,
        active=True,  # host endpoints are always admin up
        nets=nets,
        profile_ids=_profile_ids(value.get("profile_ids")),
        labels=_labels(value.get("labels")),
        ports=tuple(_named_port(p) for p in value.get("ports") or ()),
        nets6=nets6,
        is_hep=True,
    )


def resolve_interfaces(heps: Mapping[str, Endpoint],
                       host_ifaces: Mapping[str, Iterable[str]] | None) -> dict[str, str]:
    """{interface: endpoint ID} of the host endpoints in force (endpoint_mgr.go resolveHostEndpoints):
    for each interface of the node the HostEndpoint naming it, else one expecting one of its
    addresses (a named one never matches by address); several candidates: the alphabetically first
    endpoint ID. The best `*` endpoint is bound to `ALL_INTERFACES`.

    `heps` maps endpoint ID to endpoint. `host_ifaces` maps the node's interfaces to their addresses;
    None when they are not known (offline rendering): then every named endpoint is bound to its
    interface (a rule for an interface the node lacks matches nothing) and an endpoint known only by
    its expected IPs cannot be bound - `unbound_by_address` lists those for the caller to report."""
    out: dict[str, str] = {}
    named = {ep.iface for ep in heps.values() if ep.iface and ep.iface != "*"}
    interfaces: dict[str, frozenset[str]] = (
        {iface: frozenset() for iface in named} if host_ifaces is None
        else {iface: frozenset(_canonical_ip(a) for a in addrs) for iface, addrs in host_ifaces.items()}
    )
    for iface, addrs in interfaces.items():
        best = ""
        for hep_id, ep in heps.items():
            if ep.iface == "*" or (best and best < hep_id):
                continue
            if ep.iface:
                if ep.iface == iface:
                    best = hep_id
                continue
            if any(net.split("/")[0] in addrs for net in ep.nets + ep.nets6):
                best = hep_id
        if best:
            out[iface] = best
    wildcard = sorted(hep_id for hep_id, ep in heps.items() if ep.iface == "*")
    if wildcard:
        out[ALL_INTERFACES] = wildcard[0]
    return out


def unbound_by_address(heps: Mapping[str, Endpoint], host_ifaces: Mapping[str, Iterable[str]] | None) -> list[str]:
    """Endpoint IDs that only an address could bind, when the node's addresses are unknown."""
    if host_ifaces is not None:
        return []
    return sorted(hep_id for hep_id, ep in heps.items() if not ep.iface)


def _canonical_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.split("/")[0]))
    except ValueError:
        return text


@dataclass(frozen=True, slots=True)
class ResolvedHostEndpoint:
    """One interface's host endpoint with its policies split as Felix's proto.HostEndpoint carries
    them: `ingress`/`egress` normal tiers (filter INPUT/OUTPUT, and egress again in mangle), the
    applyOnForward ones (`forward_*`, filter FORWARD), preDNAT (ingress only, mangle PREROUTING) and
    doNotTrack ones (`untracked_*`, raw). preDNAT and doNotTrack tiers never end in a drop: the normal
    policy still has its say in the filter table."""

    iface: str  # an interface name, or ALL_INTERFACES for a `*` endpoint
    endpoint_id: str
    profile_ids: tuple[str, ...]
    ingress: tuple[TierPolicies, ...] = ()
    egress: tuple[TierPolicies, ...] = ()
    forward_ingress: tuple[TierPolicies, ...] = ()
    forward_egress: tuple[TierPolicies, ...] = ()
    prednat_ingress: tuple[TierPolicies, ...] = ()
    untracked_ingress: tuple[TierPolicies, ...] = ()
    untracked_egress: tuple[TierPolicies, ...] = ()

    @property
    def has_prednat(self) -> bool:
        return bool(self.prednat_ingress)

    @property
    def has_untracked(self) -> bool:
        # Felix: a doNotTrack policy on a `*` endpoint is not supported and ignored (with a warning).
        return self.iface != ALL_INTERFACES and bool(self.untracked_ingress or self.untracked_egress)
