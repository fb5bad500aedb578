"""Host endpoint chains and their dispatch chains, per table (felix/rules/endpoints.go
HostEndpointTo*Chains, dispatch.go hostDispatchChains; which ones exist: endpoint_mgr.go
updateHostEndpoints).

- filter: `cali-th-`/`cali-fh-` (host OUTPUT/INPUT through the interface, normal policy, failsafe
  ports first, profiles, then drop) and `cali-thfw-`/`cali-fhfw-` (forwarded traffic, applyOnForward
  policy only, accepted by default when there is none); dispatch chains `cali-to-host-endpoint`,
  `cali-from-host-endpoint`, `cali-to-hep-forward`, `cali-from-hep-forward`.
- mangle: `cali-th-` again (normal egress policy for traffic the host DNATs, RETURN instead of
  ACCEPT) for every host endpoint, `cali-fh-` with preDNAT policy for those that have some.
- raw: `cali-th-`/`cali-fh-` with doNotTrack policy (an accepted packet is also NOTRACKed), for
  host endpoints that have some (never a `*` one).

A `*` host endpoint is bound to `ALL_INTERFACES`: it is the dispatch chains' default (their last
rule goes to its chain) rather than a dispatch entry. With no host endpoint the dispatch chains are
empty and every packet returns from them unpoliced, as in Felix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from felix_client.calc.graph import DesiredState, TierPolicies
from felix_client.calc.hostendpoints import ResolvedHostEndpoint
from felix_client.calc.model import FelixSettings, ParsedProfile
from felix_client.names import (
    ALL_INTERFACES,
    FAILSAFE_IN,
    FAILSAFE_OUT,
    FROM_HEP_FORWARD,
    FROM_HOST_ENDPOINT,
    FROM_HOST_ENDPOINT_FORWARD_PREFIX,
    FROM_HOST_ENDPOINT_PREFIX,
    MARK_ACCEPT,
    MARK_PASS,
    TO_HEP_FORWARD,
    TO_HOST_ENDPOINT,
    TO_HOST_ENDPOINT_FORWARD_PREFIX,
    TO_HOST_ENDPOINT_PREFIX,
    WORKLOAD_IFACE_PREFIX,
    host_endpoint_chain_name,
    profile_chain_name,
)
from felix_client.rules import endpoints
from felix_client.rules.endpoints import (
    TierGroups,
    conntrack_rules,
    enforced,
    group_tiers,
    policy_group_chains,
    tier_rules,
)
from felix_client.rules.policy import deny_action, deny_word, render_policy_chains, render_profile_chains
from felix_client.rules.table import ACCEPTED, comment_match, xmark
from typha.model.keys import PolicyKey

# endpointChainType in endpoints.go.
NORMAL = "normal"
UNTRACKED = "untracked"
PREDNAT = "prednat"
FORWARD = "forward"

TABLES = ("filter", "mangle", "raw")


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """One endpoint chain to render: what endpointIptablesChain takes."""

    tiers: tuple[TierPolicies, ...]
    profile_ids: tuple[str, ...]
    inbound: bool  # policy/profile chains of the ingress (pi/pri) or egress (po/pro) direction
    failsafe: str  # the failsafe chain jumped to first, or ""
    chain_type: str
    allow: str  # the verdict of an accepted packet: ACCEPT or RETURN
    # Forward chains only: whether the endpoint has applyOnForward policy in either direction
    # (Felix's `len(tiers) == 0` is over both directions' tiers).
    any_forward_tiers: bool = False


def render_host_endpoint_chain(spec: ChainSpec, settings: FelixSettings | None = None,
                               tiers: tuple[TierGroups, ...] | None = None) -> list[str]:
    """endpointIptablesChain for a host endpoint (always admin up; no QoS controls). `tiers` are the
    chain's policy groups (Felix's TierPolicyGroups), by default `group_tiers` of `spec.tiers`."""
    settings = settings or FelixSettings()
    deny, word = deny_action(settings), deny_word(settings)
    out: list[str] = []
    if spec.chain_type != UNTRACKED:
        out += conntrack_rules(spec.allow, settings)
    if spec.failsafe:
        out.append(f"-j {spec.failsafe}")
    out.append(xmark(0, MARK_ACCEPT | MARK_PASS))
    # preDNAT and untracked chains never drop at the end of a tier: the filter table's normal policy
    # still has to see the packet.
    out += tier_rules(tiers if tiers is not None else group_tiers(spec.tiers, spec.inbound), spec.inbound, settings,
                      end_of_tier_drop=spec.chain_type in (NORMAL, FORWARD), untracked=spec.chain_type == UNTRACKED)
    if spec.chain_type == FORWARD and not spec.any_forward_tiers:
        out.append(f"{comment_match('Allow forwarded traffic by default')} {xmark(MARK_ACCEPT, MARK_ACCEPT)}")
        out.append(f"{comment_match('Return for accepted forward traffic')} -j RETURN")
    if spec.chain_type == NORMAL:
        for profile in spec.profile_ids:
            out.append(f"-j {profile_chain_name(profile, spec.inbound)}")
            out.append(f"{comment_match('Return if profile accepted')} {ACCEPTED} -j RETURN")
        # A host endpoint with no policy and no profile drops everything but its failsafe ports.
        out.append(f"{comment_match(f'{word} if no profiles matched')} {deny}")
    return out


def endpoint_chain_specs(hep: ResolvedHostEndpoint, table: str, mangle_allow: str = "ACCEPT",
                         filter_allow: str = "ACCEPT") -> dict[str, ChainSpec]:
    """The endpoint chains one host endpoint has in `table`, by name. `mangle_allow` is
    IptablesMangleAllowAction (the preDNAT chain's verdict), `filter_allow` IptablesFilterAllowAction
    (the filter chains' verdict for established traffic); both ACCEPT by default, as in Felix."""
    iface = hep.iface
    th = host_endpoint_chain_name(TO_HOST_ENDPOINT_PREFIX, iface)
    fh = host_endpoint_chain_name(FROM_HOST_ENDPOINT_PREFIX, iface)
    if table == "filter":
        any_forward = bool(hep.forward_ingress or hep.forward_egress)
        return {
            th: ChainSpec(hep.egress, hep.profile_ids, False, FAILSAFE_OUT, NORMAL, filter_allow),
            fh: ChainSpec(hep.ingress, hep.profile_ids, True, FAILSAFE_IN, NORMAL, filter_allow),
            host_endpoint_chain_name(TO_HOST_ENDPOINT_FORWARD_PREFIX, iface):
                ChainSpec(hep.forward_egress, hep.profile_ids, False, "", FORWARD, filter_allow, any_forward),
            host_endpoint_chain_name(FROM_HOST_ENDPOINT_FORWARD_PREFIX, iface):
                ChainSpec(hep.forward_ingress, hep.profile_ids, True, "", FORWARD, filter_allow, any_forward),
        }
    if table == "mangle":
        # HostEndpointToMangleEgressChains: RETURN, not ACCEPT - other mangle rules may still
        # need to see allowed traffic.
        specs = {th: ChainSpec(hep.egress, hep.profile_ids, False, FAILSAFE_OUT, NORMAL, "RETURN")}
        if hep.has_prednat:
            specs[fh] = ChainSpec(hep.prednat_ingress, (), True, FAILSAFE_IN, PREDNAT, mangle_allow)
        return specs
    if table == "raw":
        if not hep.has_untracked:
            return {}
        return {
            th: ChainSpec(hep.untracked_egress, (), False, FAILSAFE_OUT, UNTRACKED, "ACCEPT"),
            fh: ChainSpec(hep.untracked_ingress, (), True, FAILSAFE_IN, UNTRACKED, "ACCEPT"),
        }
    raise ValueError(f"no host endpoint chains in table {table!r}")


# --- dispatch -----------------------------------------------------------------------------------


def dispatch_tree(names: Iterable[str], root: str, flag: str, endpoint_prefix: str,
                  end_rules: list[str]) -> dict[str, list[str]]:
    """The host endpoints' dispatch tree: the workload dispatch's shape (`endpoints.dispatch_tree`)
    with host endpoint chain names, which are hashed when long."""
    return endpoints.dispatch_tree(names, root, flag, lambda name: host_endpoint_chain_name(endpoint_prefix, name),
                                   end_rules)


def host_dispatch_chains(names: Iterable[str], default_iface: str, directions: str, apply_on_forward: bool,
                         iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> dict[str, list[str]]:
    """hostDispatchChains: `directions` is "from", "to" or "to+from"; `default_iface` (a bound `*`
    endpoint, or "") takes what no interface rule matched. Traffic the host sends to its own
    workloads never meets a `*` endpoint's egress policy, except in the filter table's dispatch
    (`apply_on_forward`), where the workload dispatch has already run."""
    names = list(names)
    from_end: list[str] = []
    to_end: list[str] = []
    from_fwd_end: list[str] = []
    to_fwd_end: list[str] = []
    if default_iface:
        from_end = [f"-g {host_endpoint_chain_name(FROM_HOST_ENDPOINT_PREFIX, default_iface)}"]
        from_fwd_end = [f"-g {host_endpoint_chain_name(FROM_HOST_ENDPOINT_FORWARD_PREFIX, default_iface)}"]
        if not apply_on_forward:
            skip = comment_match("Skip egress WHEP policy for traffic to local workload")
            to_end.append(f"-o {iface_prefix}+ {skip} -j RETURN")
        to_end.append(f"-g {host_endpoint_chain_name(TO_HOST_ENDPOINT_PREFIX, default_iface)}")
        to_fwd_end = [f"-g {host_endpoint_chain_name(TO_HOST_ENDPOINT_FORWARD_PREFIX, default_iface)}"]
    chains: dict[str, list[str]] = {}
    if directions not in ("from", "to", "to+from"):
        raise ValueError(f"bad dispatch directions {directions!r}")
    if directions in ("from", "to+from"):
        chains.update(dispatch_tree(names, FROM_HOST_ENDPOINT, "-i", FROM_HOST_ENDPOINT_PREFIX, from_end))
    if directions in ("to", "to+from"):
        chains.update(dispatch_tree(names, TO_HOST_ENDPOINT, "-o", TO_HOST_ENDPOINT_PREFIX, to_end))
    if directions == "to+from" and apply_on_forward:
        chains.update(dispatch_tree(names, FROM_HEP_FORWARD, "-i", FROM_HOST_ENDPOINT_FORWARD_PREFIX, from_fwd_end))
        chains.update(dispatch_tree(names, TO_HEP_FORWARD, "-o", TO_HOST_ENDPOINT_FORWARD_PREFIX, to_fwd_end))
    return chains


def _split_default(ifaces: Iterable[str]) -> tuple[list[str], str]:
    names = list(ifaces)
    if ALL_INTERFACES in names:
        names.remove(ALL_INTERFACES)
        return names, ALL_INTERFACES
    return names, ""


def table_dispatch_chains(heps: list[ResolvedHostEndpoint], table: str,
                          iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> dict[str, list[str]]:
    """Each table's dispatch chains, as updateHostEndpoints asks for them."""
    if table == "filter":
        names, default = _split_default(h.iface for h in heps)
        return host_dispatch_chains(names, default, "to+from", True, iface_prefix)
    if table == "mangle":
        prednat, prednat_default = _split_default(h.iface for h in heps if h.has_prednat)
        names, default = _split_default(h.iface for h in heps)
        return {**host_dispatch_chains(prednat, prednat_default, "from", False, iface_prefix),
                **host_dispatch_chains(names, default, "to", False, iface_prefix)}
    if table == "raw":
        untracked = [h.iface for h in heps if h.has_untracked]
        return host_dispatch_chains(untracked, "", "to+from", False, iface_prefix)
    raise ValueError(f"no host endpoint chains in table {table!r}")


# --- a whole table's share ----------------------------------------------------------------------


def host_endpoint_chains(state: DesiredState, table: str, version: int = 4, *,
                         iface_prefix: str = WORKLOAD_IFACE_PREFIX,
                         mangle_allow: str = "ACCEPT") -> dict[str, list[str]]:
    """Everything host endpoints add to `table`: the dispatch chains (always, empty without host
    endpoints), each bound endpoint's chains, and the policy and profile chains those jump to
    (Felix puts every policy chain in every table and programs the ones referenced)."""
    settings = state.settings
    chains = table_dispatch_chains(state.host_endpoints, table, iface_prefix)
    wanted_policies: set[tuple[PolicyKey, bool]] = set()
    wanted_profiles: set[tuple[str, bool]] = set()
    for hep in state.host_endpoints:
        for name, spec in endpoint_chain_specs(hep, table, mangle_allow, settings.filter_allow_action).items():
            chains[name] = render_host_endpoint_chain(spec, settings)
            chains.update(policy_group_chains(group_tiers(spec.tiers, spec.inbound)))
            wanted_policies |= {(p.key, spec.inbound) for tier in spec.tiers for p in enforced(tier)}
            if spec.chain_type == NORMAL:
                wanted_profiles |= {(profile, spec.inbound) for profile in spec.profile_ids}
    for key, inbound in sorted(wanted_policies, key=lambda item: (item[0].kind, item[0].namespace, item[0].name,
                                                                   item[1])):
        chains.update(render_policy_chains(state.policies[key], version, settings, (inbound,)))
    for name, inbound in sorted(wanted_profiles):
        profile = state.profiles.get(name) or ParsedProfile(name, (), ())
        chains.update(render_profile_chains(profile, version, settings, (inbound,)))
    return chains
