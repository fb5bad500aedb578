"""The incremental calculation: KV updates in, the node's desired policy/IP-set/route state out.

A `Calculator` is fed `(key, value-or-None)` in stream order and keeps, between updates:
- every endpoint and network set (all nodes), with effective labels = own labels over the
  `labelsToApply` of its profiles (docs/calico/felix.md §1.3.2);
- `local_index`: policy selectors x this node's endpoints → which policies are active (§1.3.3);
- `global_index`: IP-set selectors x all endpoints and network sets → IP-set members (§1.3.5);
- reference counts of IP sets (by active policy/profile rules) and profiles (by local endpoints).

An update touches only the items and selectors it concerns (see labels.py for the cost model) and
records what became dirty; `snapshot()` then resolves the per-endpoint policy lists for the renderer.

`snapshot()` is incremental too: it keeps each local endpoint's resolved policy lists and each IP
set's member set from the previous snapshot until an update touches them (the endpoint, a policy
matching it, a tier; a member of the set), so consecutive snapshots share every unchanged part as
the same object. The dataplane relies on that to find what an update changed without comparing
10,000-member sets or re-rendering every chain (`felix_client.dataplane.incremental`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from felix_client import validate
from felix_client.calc.hostendpoints import (
    NORMAL_POLICY,
    HostPolicyFlags,
    ResolvedHostEndpoint,
    parse_host_endpoint,
    policy_flags,
    resolve_interfaces,
    unbound_by_address,
)
from felix_client.calc.labels import LabelIndex
from felix_client.calc.model import (
    ENFORCED_KINDS,
    Endpoint,
    FelixSettings,
    IPSetSpec,
    ParsedPolicy,
    ParsedProfile,
    parse_endpoint,
    parse_network_set,
    parse_policy,
    parse_profile,
)
from felix_client.calc.routes import VTEP, Route, RouteCalculator
from felix_client.calc.services import ServiceIndex
from typha.model import keys

log = logging.getLogger(__name__)

# Felix's DefaultTierOrder: the default tier sorts after every tier with a smaller order.
DEFAULT_TIER_ORDER = 1_000_000.0


@dataclass(frozen=True, slots=True)
class TierPolicies:
    name: str
    default_pass: bool  # the tier's default action is Pass: no "End of tier" drop
    policies: tuple[ParsedPolicy, ...]


@dataclass(frozen=True, slots=True)
class ResolvedEndpoint:
    key: str
    iface: str
    active: bool
    ingress: tuple[TierPolicies, ...]
    egress: tuple[TierPolicies, ...]
    profile_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IPSetState:
    spec: IPSetSpec
    members: frozenset[str]


@dataclass
class DesiredState:
    """Everything the renderer and the dataplane need, at one point of the stream."""

    hostname: str
    endpoints: list[ResolvedEndpoint]  # this node's, sorted by interface name
    policies: dict[keys.PolicyKey, ParsedPolicy]  # active ones
    profiles: dict[str, ParsedProfile]  # active ones (unknown profiles: no rules)
    ipsets: dict[str, IPSetState]  # by kernel set name
    routes: list[Route]
    vteps: list[VTEP]
    masq_pools: list[str]
    all_pools: list[str]
    all_hosts: list[str]
    vxlan_hosts: list[str]
    ipip: bool
    vxlan: bool
    endpoint_to_host_action: str = "DROP"
    settings: FelixSettings = field(default_factory=FelixSettings)
    # IPv6 (docs/calico/felix.md §2: Felix renders and programs each family on its own, with the same
    # chain names and `cali60` sets). `ipv6` says whether the node has any IPv6 to police or route: an
    # IPv6 pool or block, or an endpoint with `ipv6_nets`; without one no ip6tables ruleset is programmed.
    ipv6: bool = False
    routes6: list[Route] = field(default_factory=list)
    masq_pools6: list[str] = field(default_factory=list)
    all_pools6: list[str] = field(default_factory=list)
    # IPv6 VXLAN (vxlan-v6.calico): on while an IPv6 pool uses VXLAN; the other nodes' IPv6 VTEPs and
    # the underlay addresses VXLAN may come from.
    vxlan6: bool = False
    vteps6: list[VTEP] = field(default_factory=list)
    vxlan_hosts6: list[str] = field(default_factory=list)
    # Whether this host has a VXLAN tunnel address of the family (None: whenever VXLAN is on). Felix
    # masquerades host traffic into a VXLAN device only then, while its NOTRACK rules and the UDP
    # masquerade's port exclusion need only VXLAN on.
    vxlan_tunnel_address: bool | None = None
    vxlan6_tunnel_address: bool | None = None

    def vxlan_on(self, version: int) -> bool:
        return self.vxlan if version == 4 else self.vxlan6

    def vxlan_tunnel(self, version: int) -> bool:
        given = self.vxlan_tunnel_address if version == 4 else self.vxlan6_tunnel_address
        return self.vxlan_on(version) and (given if given is not None else True)
    # This node's host endpoints in force, one per interface, sorted (calc/hostendpoints.py).
    host_endpoints: list[ResolvedHostEndpoint] = field(default_factory=list)


@dataclass
class Dirty:
    filter: bool = True
    routes: bool = True
    ipsets: set[IPSetSpec] = field(default_factory=set)

    def any(self) -> bool:
        return self.filter or self.routes or bool(self.ipsets)


class Calculator:
    def __init__(self, hostname: str, *, uplink: str = "eth0", endpoint_to_host_action: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.hostname = hostname
        self.endpoints: dict[str, Endpoint] = {}  # WEPs (all nodes) and network sets, by key path
        self.profile_labels: dict[str, dict[str, str]] = {}
        self.profile_rules: dict[str, ParsedProfile] = {}
        self.profile_members: dict[str, set[str]] = {}  # profile -> endpoint/netset keys using it
        self.policies: dict[keys.PolicyKey, ParsedPolicy] = {}
        self.policy_flags: dict[keys.PolicyKey, HostPolicyFlags] = {}  # doNotTrack/preDNAT/applyOnForward
        self.tiers: dict[str, tuple[float, bool]] = {}  # name -> (order, default action is Pass)
        self.local_index: LabelIndex[str, keys.PolicyKey] = LabelIndex()  # local endpoints x policies
        # This node's host endpoints x every policy (host-only ones included).
        self.hep_index: LabelIndex[str, keys.PolicyKey] = LabelIndex()
        self.hep_ids: dict[str, str] = {}  # host endpoint key path -> endpoint ID (resolution order)
        # The node's interfaces and their addresses, when known (`set_host_interfaces`).
        self.host_ifaces: dict[str, frozenset[str]] | None = None
        self._unbound_logged: set[str] = set()
        self._local_heps: set[str] = set()  # key paths of this node's host endpoints
        self.global_index: LabelIndex[str, IPSetSpec] = LabelIndex()  # all endpoints/netsets x IP sets
        self.active_policies: set[keys.PolicyKey] = set()
        self.active_profiles: dict[str, int] = {}  # profile -> local endpoints referencing it
        self.ipset_refs: dict[IPSetSpec, int] = {}
        self._contrib: dict[IPSetSpec, dict[str, tuple[str, ...]]] = {}
        self._members: dict[IPSetSpec, dict[str, int]] = {}  # member -> contributors (IPs can repeat)
        self.services = ServiceIndex()  # EndpointSlices by service, for rules' service matches
        self.routing = RouteCalculator(hostname, uplink)
        self.routing6 = RouteCalculator(hostname, uplink, version=6)
        self._v6_endpoints: set[str] = set()  # endpoints and network sets (any node) with IPv6 nets
        self.config: dict[tuple[str, str], Any] = {}  # ("host" | "global", name) -> value
        # FELIX_* settings, which beat the datastore's (FelixSettings.from_sources).
        self._env = dict(env or {})
        if endpoint_to_host_action:
            self._env["FELIX_DEFAULTENDPOINTTOHOSTACTION"] = endpoint_to_host_action
        self.dirty = Dirty()
        # The previous snapshot's parts, kept until an update touches them (module docstring).
        self._local: set[str] = set()  # local endpoint paths
        self._resolved: dict[str, ResolvedEndpoint] = {}
        self._set_states: dict[IPSetSpec, IPSetState] = {}
        self._ipsets_view: tuple[bool, dict[str, IPSetState]] | None = None  # (ipv6, snapshot's ipsets)
        self._active: dict[keys.PolicyKey, ParsedPolicy] = {}  # active policies with their values

    # -- input ------------------------------------------------------------------------------------

    def apply(self, updates: Iterable[tuple[str, Any]]) -> None:
        for path, value in updates:
            self.update(path, value)

    def update(self, path: str, value: Any) -> None:
        """One KV from the felix syncer; value None deletes. Keys we do not use are ignored."""
        try:
            key = keys.parse_key(path)
        except ValueError:
            return
        try:
            self._dispatch(path, key, value)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            if value is None:
                log.warning("failed to delete %s: %s", path, exc)
                return
            # A malformed value must not stop the agent, nor leave the previous value in force:
            # libcalico-go's validation filter turns an invalid value into a deletion, and so do we.
            # Values are parsed before any state changes, so the delete starts from a clean slate.
            validate.reject_object(type(key).__name__, path, str(exc))
            self.update(path, None)

    def _dispatch(self, path: str, key: keys.Key, value: Any) -> None:
        if isinstance(key, keys.WorkloadEndpointKey):
            self._set_endpoint(path, None if value is None else parse_endpoint(path, key.hostname, value))
        elif isinstance(key, keys.HostEndpointKey):
            hep = None if value is None else parse_host_endpoint(path, key.hostname, value)
            if hep is None:
                self.hep_ids.pop(path, None)
            else:
                self.hep_ids[path] = key.endpoint_id
            self._set_endpoint(path, hep)
        elif isinstance(key, keys.NetworkSetKey):
            self._set_endpoint(path, None if value is None else parse_network_set(path, value))
        elif isinstance(key, keys.PolicyKey):
            if key.kind in ENFORCED_KINDS:
                # doNotTrack and preDNAT policies apply to host endpoints only, never to workloads.
                flags = NORMAL_POLICY if value is None else policy_flags(value)
                self._set_policy(key, None if value is None else parse_policy(key, value), flags)
        elif isinstance(key, keys.ProfileLabelsKey):
            self._set_profile_labels(key.name, value)
        elif isinstance(key, keys.ProfileRulesKey):
            self._set_profile_rules(key.name, None if value is None else parse_profile(key.name, value))
        elif isinstance(key, keys.TierKey):
            self._set_tier(key.name, value)
        elif isinstance(key, keys.IPPoolKey):
            self._routing_for(key.cidr).set_pool(key.cidr, value)
            self._routing_changed()
        elif isinstance(key, keys.BlockKey):
            self._routing_for(key.cidr).set_block(key.cidr, value)
            self.dirty.routes = True
            self.dirty.filter = True  # the first IPv6 block switches the ip6tables ruleset on
        elif isinstance(key, keys.HostIPKey):
            self.routing.set_host_ip(key.hostname, value)
            self._routing_changed()
        elif isinstance(key, keys.HostConfigKey):
            self.routing.set_host_config(key.hostname, key.name, value)
            self.routing6.set_host_config(key.hostname, key.name, value)
            if key.hostname == self.hostname:
                self._set_config(key.name, value, host=True)
            self._routing_changed()
        elif isinstance(key, keys.GlobalConfigKey):
            self._set_config(key.name, value, host=False)
        elif isinstance(key, keys.ResourceKey) and key.kind == "Node":
            self.routing.set_node(key.name, value)
            self.routing6.set_node(key.name, value)
            self.dirty.routes = True
        elif isinstance(key, keys.ResourceKey) and key.kind == "KubernetesEndpointSlice":
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"EndpointSlice value is not an object: {value!r}")
            for spec in self.services.set_slice(path, value):
                if spec in self._members:
                    self._members[spec] = dict.fromkeys(self.services.members(spec), 1)
                    self.dirty.ipsets.add(spec)

    def _routing_for(self, cidr: str) -> RouteCalculator:
        return self.routing6 if ":" in cidr else self.routing

    def _routing_changed(self) -> None:
        # Pools and host IPs feed both routes and the static chains/sets (NAT, IPIP/VXLAN host sets).
        self.dirty.routes = True
        self.dirty.filter = True

    def _set_config(self, name: str, value: Any, *, host: bool) -> None:
        # Host-scoped config overrides global config (Felix's config precedence, minus env/file).
        slot = ("host", name) if host else ("global", name)
        if value is None:
            self.config.pop(slot, None)
        else:
            self.config[slot] = value
        self.dirty.filter = True
        if name == "ProgramClusterRoutes":
            self.routing.program_cluster_routes = str(self.config_value(name, "Enabled"))
            self.routing6.program_cluster_routes = self.routing.program_cluster_routes
            self.dirty.routes = True

    def config_value(self, name: str, default: Any = None) -> Any:
        return self.config.get(("host", name), self.config.get(("global", name), default))

    # -- endpoints and labels ---------------------------------------------------------------------

    def _is_local(self, ep: Endpoint) -> bool:
        """A workload endpoint of this node (host endpoints have their own index, `hep_index`)."""
        return not ep.is_netset and not ep.is_hep and ep.hostname == self.hostname

    def _is_local_hep(self, ep: Endpoint | None) -> bool:
        return ep is not None and ep.is_hep and ep.hostname == self.hostname

    def _effective_labels(self, ep: Endpoint) -> dict[str, str]:
        labels: dict[str, str] = {}
        # Own labels win; among profiles the first one listed wins (labelindex checks parents in order).
        for profile in reversed(ep.profile_ids):
            labels.update(self.profile_labels.get(profile, {}))
        labels.update(ep.labels)
        return labels

    def _set_endpoint(self, path: str, ep: Endpoint | None) -> None:
        old = self.endpoints.get(path)
        if old == ep:
            return
        old_profiles = old.profile_ids if old else ()
        new_profiles = ep.profile_ids if ep else ()
        for profile in set(old_profiles) - set(new_profiles):
            members = self.profile_members.get(profile)
            if members is not None:
                members.discard(path)
                if not members:
                    del self.profile_members[profile]
        for profile in new_profiles:
            self.profile_members.setdefault(profile, set()).add(path)
        if ep is None:
            del self.endpoints[path]
        else:
            self.endpoints[path] = ep
        if ep is not None and ep.nets6:
            if path not in self._v6_endpoints:
                self._v6_endpoints.add(path)
                self.dirty.filter = True
        elif path in self._v6_endpoints:
            self._v6_endpoints.discard(path)
            self.dirty.filter = True
        self._reindex(path, old, ep)

    def _reindex(self, path: str, old: Endpoint | None, ep: Endpoint | None) -> None:
        """Bring both indexes, IP-set members, active profiles and local routes in line with `ep`."""
        labels = self._effective_labels(ep) if ep is not None else None
        # IP sets (all nodes).
        before = set(self.global_index.selectors_matching(path))
        if labels is None:
            self.global_index.remove_item(path)
            after: set[Any] = set()
        else:
            self.global_index.update_item(path, labels)
            after = set(self.global_index.selectors_matching(path))
        for spec in before | after:
            self._refresh_contribution(spec, path)
        if self._is_local_hep(old) or self._is_local_hep(ep):
            self._reindex_hep(path, old, ep, labels)
            return
        # Policies and profiles (this node only).
        was_local = old is not None and self._is_local(old)
        is_local = ep is not None and self._is_local(ep)
        if not (was_local or is_local):
            return
        self.dirty.filter = True
        self._resolved.pop(path, None)
        if is_local:
            self._local.add(path)
        else:
            self._local.discard(path)
        if is_local:
            assert labels is not None
            assert ep is not None
            started, stopped = self.local_index.update_item(path, labels)
            self.routing.set_local_endpoint(path, ep.iface, ep.nets)
            self.routing6.set_local_endpoint(path, ep.iface, ep.nets6)
        else:
            started, stopped = set(), self.local_index.remove_item(path)
            self.routing.set_local_endpoint(path, "", ())
            self.routing6.set_local_endpoint(path, "", ())
        if old is None or ep is None or old.nets != ep.nets or old.nets6 != ep.nets6 or old.iface != ep.iface:
            self.dirty.routes = True
        for pk in started | stopped:
            self._refresh_policy_activity(pk)
        self._swap_profiles(old if was_local else None, ep if is_local else None)

    def _swap_profiles(self, old: Endpoint | None, new: Endpoint | None) -> None:
        """An endpoint's profile references move from `old`'s to `new`'s (None: not counted). References
        first, then releases: a profile kept across the update keeps its IP sets."""
        for profile in new.profile_ids if new else ():
            self._ref_profile(profile)
        for profile in old.profile_ids if old else ():
            self._unref_profile(profile)

    def _reindex_hep(self, path: str, old: Endpoint | None, ep: Endpoint | None,
                     labels: dict[str, str] | None) -> None:
        """A host endpoint of this node: which policies select it, and its profiles' references."""
        self.dirty.filter = True
        was_local, is_local = self._is_local_hep(old), self._is_local_hep(ep)
        if is_local:
            self._local_heps.add(path)
        else:
            self._local_heps.discard(path)
        if is_local and labels is not None:
            started, stopped = self.hep_index.update_item(path, labels)
        else:
            started, stopped = set(), self.hep_index.remove_item(path)
        for pk in started | stopped:
            self._refresh_policy_activity(pk)
        self._swap_profiles(old if was_local else None, ep if is_local else None)

    def set_host_interfaces(self, interfaces: Mapping[str, Iterable[str]] | None) -> None:
        """The node's interfaces and their addresses, which bind host endpoints to interfaces (Felix
        learns them from its interface monitor). None: unknown, see `resolve_interfaces`."""
        new = None if interfaces is None else {name: frozenset(addrs) for name, addrs in interfaces.items()}
        if new != self.host_ifaces:
            self.host_ifaces = new
            self.dirty.filter = True

    def has_local_host_endpoints(self) -> bool:
        return bool(self._local_heps)

    def _set_profile_labels(self, name: str, value: dict[str, str] | None) -> None:
        labels = dict(value or {})
        if self.profile_labels.get(name, {}) == labels:
            return
        if value is None:
            self.profile_labels.pop(name, None)
        else:
            self.profile_labels[name] = labels
        for path in sorted(self.profile_members.get(name, ())):
            ep = self.endpoints[path]
            self._reindex(path, ep, ep)

    # -- profiles ---------------------------------------------------------------------------------

    def _ref_profile(self, name: str) -> None:
        count = self.active_profiles.get(name, 0)
        self.active_profiles[name] = count + 1
        if count == 0 and name in self.profile_rules:
            self._ref_ipsets(self.profile_rules[name].ipsets())

    def _unref_profile(self, name: str) -> None:
        count = self.active_profiles.get(name, 0) - 1
        if count > 0:
            self.active_profiles[name] = count
            return
        self.active_profiles.pop(name, None)
        if name in self.profile_rules:
            self._unref_ipsets(self.profile_rules[name].ipsets())

    def _set_profile_rules(self, name: str, profile: ParsedProfile | None) -> None:
        old = self.profile_rules.get(name)
        if old == profile:
            return
        if profile is None:
            del self.profile_rules[name]
        else:
            self.profile_rules[name] = profile
        if name in self.active_profiles:
            # New references first, so a set both versions use is never torn down and rebuilt.
            self._ref_ipsets(profile.ipsets() if profile else [])
            self._unref_ipsets(old.ipsets() if old else [])
            self.dirty.filter = True

    # -- policies ---------------------------------------------------------------------------------

    def _set_tier(self, name: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self.tiers.pop(name, None)
        else:
            order = value.get("order")
            self.tiers[name] = (float("inf") if order is None else float(order), value.get("defaultAction") == "Pass")
        self.dirty.filter = True
        self._resolved.clear()  # tier order and default action shape every endpoint's lists

    def _tier_info(self, name: str) -> tuple[float, bool]:
        if name in self.tiers:
            return self.tiers[name]
        return (DEFAULT_TIER_ORDER if name == "default" else float("inf"), False)

    def _set_policy(self, key: keys.PolicyKey, policy: ParsedPolicy | None,
                    flags: HostPolicyFlags = NORMAL_POLICY) -> None:
        old = self.policies.get(key)
        if old == policy and self.policy_flags.get(key, NORMAL_POLICY) == flags:
            return
        was_active = key in self.active_policies
        # The endpoints it matched and will match carry the policy in their resolved lists.
        for path in self.local_index.matches(key):
            self._resolved.pop(path, None)
        if policy is None:
            self.policies.pop(key, None)
            self.policy_flags.pop(key, None)
            self.local_index.remove_selector(key)
            self.hep_index.remove_selector(key)
        else:
            self.policies[key] = policy
            self.policy_flags[key] = flags
            if flags.host_only:
                self.local_index.remove_selector(key)
            else:
                for path in self.local_index.add_selector(key, policy.selector):
                    self._resolved.pop(path, None)
            self.hep_index.add_selector(key, policy.selector)
        if was_active and policy is not None and self._policy_in_use(key):
            # Still active with a new value: swap its IP-set references (new first, see above).
            self._active[key] = policy
            self._ref_ipsets(policy.ipsets())
            self._unref_ipsets(old.ipsets() if old else [])
            self.dirty.filter = True
        else:
            self._refresh_policy_activity(key, old_value=old)

    def _policy_in_use(self, key: keys.PolicyKey) -> bool:
        return bool(self.local_index.matches(key)) or bool(self.hep_index.matches(key))

    def _refresh_policy_activity(self, key: keys.PolicyKey, old_value: ParsedPolicy | None = None) -> None:
        policy = self.policies.get(key)
        active = policy is not None and self._policy_in_use(key)
        was_active = key in self.active_policies
        # An endpoint starting or stopping to match changes its chains even if activity does not.
        self.dirty.filter = True
        if active:
            assert policy is not None
            self._active[key] = policy
        else:
            self._active.pop(key, None)
        if active and not was_active:
            self.active_policies.add(key)
            assert policy is not None
            self._ref_ipsets(policy.ipsets())
        elif was_active and not active:
            self.active_policies.discard(key)
            previous = old_value if old_value is not None else policy
            if previous is not None:
                self._unref_ipsets(previous.ipsets())

    # -- IP sets ----------------------------------------------------------------------------------

    def _ref_ipsets(self, specs: Iterable[IPSetSpec]) -> None:
        for spec in specs:
            count = self.ipset_refs.get(spec, 0)
            self.ipset_refs[spec] = count + 1
            if count:
                continue
            self.dirty.ipsets.add(spec)
            self._contrib[spec] = {}
            self._members[spec] = {}
            if spec.kind in ("service", "service-noport"):
                self.services.add_set(spec)
                self._members[spec] = dict.fromkeys(self.services.members(spec), 1)
                continue
            for path in self.global_index.add_selector(spec, spec.parsed_selector):
                self._refresh_contribution(spec, path)

    def _unref_ipsets(self, specs: Iterable[IPSetSpec]) -> None:
        for spec in specs:
            count = self.ipset_refs.get(spec, 0) - 1
            if count > 0:
                self.ipset_refs[spec] = count
                continue
            self.ipset_refs.pop(spec, None)
            if spec.kind in ("service", "service-noport"):
                self.services.remove_set(spec)
            else:
                self.global_index.remove_selector(spec)
            self._contrib.pop(spec, None)
            self._members.pop(spec, None)
            self.dirty.ipsets.add(spec)

    def _refresh_contribution(self, spec: IPSetSpec, path: str) -> None:
        contrib = self._contrib.get(spec)
        if contrib is None:
            return
        ep = self.endpoints.get(path)
        new: tuple[str, ...] = ()
        if ep is not None and path in self.global_index.matches(spec):
            if spec.kind == "selector":
                new = tuple(_member(n) for n in ep.family_nets(spec.version))
            elif spec.kind == "named-port":
                new = tuple(
                    f"{ip},{p.protocol}:{p.port}"
                    for p in ep.ports
                    if p.name == spec.port_name and p.protocol == spec.protocol
                    for ip in ep.family_ips(spec.version)
                )
        old = contrib.get(path, ())
        if old == new:
            return
        members = self._members[spec]
        for m in old:
            members[m] -= 1
            if not members[m]:
                del members[m]
        for m in new:
            members[m] = members.get(m, 0) + 1
        if new:
            contrib[path] = new
        else:
            contrib.pop(path, None)
        self.dirty.ipsets.add(spec)

    def ipset_members(self, spec: IPSetSpec) -> frozenset[str] | None:
        members = self._members.get(spec)
        return None if members is None else frozenset(members)

    # -- output -----------------------------------------------------------------------------------

    def _ordered_tiers(self, matching: Iterable[keys.PolicyKey]) -> list[tuple[str, bool, list[ParsedPolicy]]]:
        """(tier, default action is Pass, its policies in order) of the given policies, tiers in order."""
        by_tier: dict[str, list[ParsedPolicy]] = {}
        for pk in matching:
            policy = self.policies[pk]
            by_tier.setdefault(policy.tier, []).append(policy)
        return [(tier, self._tier_info(tier)[1], sorted(by_tier[tier], key=lambda p: p.sort_key))
                for tier in sorted(by_tier, key=lambda t: (self._tier_info(t)[0], t))]

    def _resolve(self, path: str, ep: Endpoint) -> ResolvedEndpoint:
        ingress: list[TierPolicies] = []
        egress: list[TierPolicies] = []
        for tier, default_pass, ordered in self._ordered_tiers(self.local_index.selectors_matching(path)):
            inbound = tuple(p for p in ordered if p.ingress)
            outbound = tuple(p for p in ordered if p.egress)
            if inbound:
                ingress.append(TierPolicies(tier, default_pass, inbound))
            if outbound:
                egress.append(TierPolicies(tier, default_pass, outbound))
        return ResolvedEndpoint(path, ep.iface, ep.active, tuple(ingress), tuple(egress), ep.profile_ids)

    def _resolve_hep(self, iface: str, hep_id: str, path: str, ep: Endpoint) -> ResolvedHostEndpoint:
        """The policies of one host endpoint, split as event_sequencer.go tierInfoToProtoTierInfo does:
        doNotTrack ones (either direction) and preDNAT ones (ingress only) in tiers whose default is
        Pass, the rest as normal policy and, with applyOnForward, forward policy too."""
        groups: dict[str, list[TierPolicies]] = {name: [] for name in (
            "ingress", "egress", "forward_ingress", "forward_egress", "prednat_ingress", "untracked_ingress",
            "untracked_egress")}
        for tier, default_pass, ordered in self._ordered_tiers(self.hep_index.selectors_matching(path)):
            members: dict[str, list[ParsedPolicy]] = {name: [] for name in groups}
            for policy in ordered:
                flags = self.policy_flags.get(policy.key, NORMAL_POLICY)
                if flags.untracked:
                    targets = [("untracked_ingress", policy.ingress), ("untracked_egress", policy.egress)]
                elif flags.pre_dnat:
                    targets = [("prednat_ingress", policy.ingress)]  # Felix never applies preDNAT egress
                else:
                    targets = [("ingress", policy.ingress), ("egress", policy.egress)]
                    if flags.apply_on_forward:
                        targets += [("forward_ingress", policy.ingress), ("forward_egress", policy.egress)]
                for name, governs in targets:
                    if governs:
                        members[name].append(policy)
            for name, policies in members.items():
                if policies:
                    passes = default_pass or name.startswith(("prednat", "untracked"))
                    groups[name].append(TierPolicies(tier, passes, tuple(policies)))
        return ResolvedHostEndpoint(
            iface=iface, endpoint_id=hep_id, profile_ids=ep.profile_ids,
            **{name: tuple(tiers) for name, tiers in groups.items()},
        )

    def host_endpoints(self) -> list[ResolvedHostEndpoint]:
        """This node's host endpoints in force, by interface (`resolve_interfaces`)."""
        paths = {self.hep_ids[path]: path for path in self._local_heps}  # not a walk of every endpoint
        heps = {hep_id: self.endpoints[path] for hep_id, path in paths.items()}
        for hep_id in unbound_by_address(heps, self.host_ifaces):
            if hep_id not in self._unbound_logged:
                self._unbound_logged.add(hep_id)
                log.warning("HostEndpoint %s has no interfaceName and this node's addresses are unknown: "
                            "not bound to any interface", hep_id)
        bound = resolve_interfaces(heps, self.host_ifaces)
        return [self._resolve_hep(iface, hep_id, paths[hep_id], heps[hep_id])
                for iface, hep_id in sorted(bound.items())]

    def _resolved_endpoint(self, path: str) -> ResolvedEndpoint:
        resolved = self._resolved.get(path)
        if resolved is None:
            resolved = self._resolved[path] = self._resolve(path, self.endpoints[path])
        return resolved

    def _set_state(self, spec: IPSetSpec) -> IPSetState:
        state = self._set_states.get(spec)
        if state is None:
            state = self._set_states[spec] = IPSetState(spec, frozenset(self._members.get(spec, {})))
        return state

    def _forget_set_states(self, specs: Iterable[IPSetSpec]) -> None:
        # Every change to a set's members or existence marks it in `dirty.ipsets`: a cached state is
        # stale while its spec is there, or once `take_dirty` has handed the spec out.
        for spec in specs:
            self._set_states.pop(spec, None)
            self._ipsets_view = None

    def snapshot(self) -> DesiredState:
        local = [self._resolved_endpoint(path) for path in self._local if self.endpoints[path].iface]
        local.sort(key=lambda r: (r.iface, r.key))
        profiles = {name: self.profile_rules.get(name) or ParsedProfile(name, (), ()) for name in self.active_profiles}
        self._forget_set_states(self.dirty.ipsets)  # (a released set is marked too: nothing stays behind)
        ipv6 = self.ipv6_in_use()
        if self._ipsets_view is None or self._ipsets_view[0] != ipv6:
            view = {spec.name: self._set_state(spec) for spec in self.ipset_refs if spec.version == 4 or ipv6}
            self._ipsets_view = (ipv6, view)
        ipsets = dict(self._ipsets_view[1])
        routing, routing6 = self.routing, self.routing6
        settings = FelixSettings.from_sources(self.config_value, self._env)
        return DesiredState(
            hostname=self.hostname,
            endpoints=local,
            policies=dict(self._active),
            profiles=profiles,
            ipsets=ipsets,
            routes=routing.routes(),
            vteps=routing.vteps(),
            masq_pools=routing.masq_pools(),
            all_pools=routing.all_pools(),
            all_hosts=routing.all_hosts(),
            vxlan_hosts=routing.vxlan_hosts(),
            ipip=routing.ipip_enabled,
            vxlan=routing.vxlan_enabled,
            endpoint_to_host_action=settings.endpoint_to_host_action,
            settings=settings,
            ipv6=ipv6,
            routes6=routing6.routes() if ipv6 else [],
            masq_pools6=routing6.masq_pools(),
            all_pools6=routing6.all_pools(),
            vxlan6=ipv6 and routing6.vxlan_enabled,
            vteps6=routing6.vteps() if ipv6 else [],
            vxlan_hosts6=routing6.vxlan_hosts() if ipv6 else [],
            vxlan_tunnel_address=bool(routing.vxlan_ips.get(self.hostname)),
            vxlan6_tunnel_address=ipv6 and bool(routing6.vxlan_ips.get(self.hostname)),
            host_endpoints=self.host_endpoints(),
        )

    def ipv6_in_use(self) -> bool:
        """Whether this node programs IPv6 (ip6tables, `cali60` sets, IPv6 routes): FelixConfiguration
        Ipv6Support (default true) and any IPv6 in the cluster (a pool, a block, or an endpoint or
        network set with IPv6 nets), or a host endpoint on this node (its policy governs the node's
        own IPv6 traffic too, as Felix's ip6tables would). Without any there is no IPv6 traffic to
        police, and a v4-only node keeps exactly the v4 state it always had; the v6 sets are kept up
        to date in the calculation all along, so turning IPv6 on needs no recalculation."""
        if str(self.config_value("Ipv6Support", "true")).lower() == "false":
            return False
        return bool(self.routing6.pools or self.routing6.blocks or self._v6_endpoints or self._local_heps)

    def take_dirty(self) -> Dirty:
        dirty, self.dirty = self.dirty, Dirty(filter=False, routes=False)
        self._forget_set_states(dirty.ipsets)
        if not self.ipv6_in_use():
            dirty.ipsets = {spec for spec in dirty.ipsets if spec.version == 4}
        return dirty


def _member(net: str) -> str:
    # ipset prints a /32 (IPv6: /128) entry of a hash:net set as a bare address.
    return net.removesuffix("/128") if ":" in net else net.removesuffix("/32")
