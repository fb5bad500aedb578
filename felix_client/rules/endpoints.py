"""Workload endpoint chains (cali-tw-/cali-fw-) and the dispatch chains that reach them
(felix/rules/endpoints.go, dispatch.go)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from felix_client.calc.graph import ResolvedEndpoint, TierPolicies
from felix_client.calc.model import STAGED_KINDS, FelixSettings, ParsedPolicy
from felix_client.names import (
    MARK_ACCEPT,
    MARK_PASS,
    MAX_CHAIN_NAME_LENGTH,
    policy_chain_name,
    profile_chain_name,
)
from felix_client.rules.policy import deny_action, deny_word
from felix_client.rules.table import ACCEPTED, NOT_PASSED, comment_match, xmark
from typha.model.keys import PolicyKey

# Felix's policy-group chains (rules.PolicyGroupInboundPrefix/OutboundPrefix), named by a 20-character UID.
POLICY_GROUP_INBOUND_PREFIX = "cali-gi-"
POLICY_GROUP_OUTBOUND_PREFIX = "cali-go-"
_GROUP_UID_LENGTH = MAX_CHAIN_NAME_LENGTH - len(POLICY_GROUP_INBOUND_PREFIX)
# PolicyGroupToIptablesChains checks for a verdict (and returns) only every fifth jump.
_RETURN_STRIDE = 5


def _staged(key: PolicyKey) -> bool:
    return key.kind in STAGED_KINDS


def enforced(tier: TierPolicies) -> list[ParsedPolicy]:
    """The tier's policies that get a jump: Felix's renderer skips staged ones (they never set a
    verdict mark); a tier with none of these has no end-of-tier drop either."""
    return [policy for policy in tier.policies if not _staged(policy.key)]


@dataclass(frozen=True, slots=True)
class PolicyGroup:
    """Felix's rules.PolicyGroup: consecutive policies of a tier with one selector, in one direction.
    Any endpoint one of them applies to gets them all, so two or more enforced policies share a
    chain (`chain_name`) that every such endpoint jumps to; a smaller group is inlined."""

    inbound: bool
    selector: str  # the selector string Felix groups on (its normalised form)
    policies: tuple[PolicyKey, ...]

    @property
    def enforced(self) -> tuple[PolicyKey, ...]:
        return tuple(key for key in self.policies if not _staged(key))

    @property
    def inlined(self) -> bool:
        return len(self.enforced) <= 1

    @property
    def chain_name(self) -> str:
        """PolicyGroup.ChainName: the prefix and UniqueID, the URL-safe base64 of the SHA3-224 of
        the selector, direction, policy count and each policy ID (types.PolicyID.String), each
        line-terminated."""
        lines = [self.selector, "inbound" if self.inbound else "outbound", str(len(self.policies))]
        lines += [f"{{Name: {k.name}, Namespace: {k.namespace}, Kind: {k.kind}}}" for k in self.policies]
        digest = hashlib.sha3_224("".join(f"{line}\n" for line in lines).encode()).digest()
        uid = base64.urlsafe_b64encode(digest).decode().rstrip("=")[:_GROUP_UID_LENGTH]
        return (POLICY_GROUP_INBOUND_PREFIX if self.inbound else POLICY_GROUP_OUTBOUND_PREFIX) + uid


@dataclass(frozen=True, slots=True)
class TierGroups:
    """Felix's rules.TierPolicyGroups for one direction."""

    name: str
    default_pass: bool
    groups: tuple[PolicyGroup, ...]


def group_tiers(tiers: Iterable[TierPolicies], inbound: bool) -> tuple[TierGroups, ...]:
    """The endpoint manager's groupPolicies: each tier's policies split where the (normalised)
    selector changes."""
    out: list[TierGroups] = []
    for tier in tiers:
        groups: list[PolicyGroup] = []
        for policy in tier.policies:
            text = policy.selector.canonical
            if groups and groups[-1].selector == text:
                groups[-1] = replace(groups[-1], policies=(*groups[-1].policies, policy.key))
            else:
                groups.append(PolicyGroup(inbound, text, (policy.key,)))
        out.append(TierGroups(tier.name, tier.default_pass, tuple(groups)))
    return tuple(out)


def render_policy_group_chain(group: PolicyGroup) -> list[str]:
    """PolicyGroupToIptablesChains: a jump to each enforced policy, later ones only while no verdict
    (accept or pass mark) is set, and a return on a verdict before every fifth jump."""
    verdict = MARK_ACCEPT | MARK_PASS
    out: list[str] = []
    for count, key in enumerate(group.enforced):
        if count and count % _RETURN_STRIDE == 0:
            out.append(f"{comment_match('Return on verdict')} -m mark ! --mark 0x0/{verdict:#x} -j RETURN")
        match = "" if count % _RETURN_STRIDE == 0 else f"-m mark --mark 0x0/{verdict:#x} "
        out.append(f"{match}-j {policy_chain_name(key, group.inbound)}")
    return out


def policy_group_chains(tiers: Iterable[TierGroups]) -> dict[str, list[str]]:
    """The group chains the endpoint chains of these tiers jump to (the ones not inlined)."""
    return {group.chain_name: render_policy_group_chain(group)
            for tier in tiers for group in tier.groups if not group.inlined}


def tier_rules(tiers: Iterable[TierGroups], inbound: bool, settings: FelixSettings, *,
               end_of_tier_drop: bool = True, untracked: bool = False) -> list[str]:
    """endpointIptablesChain's policy part: per tier, clear the pass mark, jump to each group (or to
    the policy of an inlined one) while nothing passed, return once accepted; then, unless the tier
    passes by default or (`end_of_tier_drop` false) the chain is preDNAT or untracked, deny what no
    policy passed - only when some policy of the tier is enforced."""
    out: list[str] = []
    for tier in tiers:
        if not tier.groups:  # Felix renders a tier only when it has policies in this direction
            continue
        out.append(f"{comment_match(f'Start of tier {tier.name}')} {xmark(0, MARK_PASS)}")
        any_enforced = False
        for group in tier.groups:
            any_enforced |= bool(group.enforced)
            targets = ([policy_chain_name(key, inbound) for key in group.enforced] if group.inlined
                       else [group.chain_name])
            for target in targets:
                out.append(f"{NOT_PASSED} -j {target}")
                if untracked:
                    out.append(f"{ACCEPTED} -j NOTRACK")  # an untracked allow is "NOTRACK and allow"
                out.append(f"{comment_match('Return if policy accepted')} {ACCEPTED} -j RETURN")
        if end_of_tier_drop and any_enforced and not tier.default_pass:
            drop = f"End of tier {tier.name}. {deny_word(settings)} if no policies passed packet"
            out.append(f"{comment_match(drop)} {NOT_PASSED} {deny_action(settings)}")
    return out


def conntrack_rules(allow: str, settings: FelixSettings) -> list[str]:
    """appendConntrackRules: established traffic takes the chain's allow verdict (with RETURN, the
    accept mark tells the caller), then the INVALID drop unless DisableConntrackInvalidCheck."""
    out: list[str] = []
    if allow != "ACCEPT":
        out.append(f"-m conntrack --ctstate RELATED,ESTABLISHED {xmark(MARK_ACCEPT, MARK_ACCEPT)}")
    out.append(f"-m conntrack --ctstate RELATED,ESTABLISHED -j {allow}")
    if not settings.disable_conntrack_invalid:
        out.append(f"-m conntrack --ctstate INVALID {deny_action(settings)}")
    return out


def render_endpoint_chain(ep: ResolvedEndpoint, inbound: bool, settings: FelixSettings | None = None,
                          tiers: tuple[TierGroups, ...] | None = None) -> list[str]:
    """WorkloadEndpointToIptablesChains' chain for one direction. `tiers` are the endpoint's policy
    groups in that direction (Felix's TierPolicyGroups); by default `group_tiers` of its tiers."""
    settings = settings or FelixSettings()
    if tiers is None:
        tiers = group_tiers(ep.ingress if inbound else ep.egress, inbound)
    deny, word = deny_action(settings), deny_word(settings)
    if not ep.active:
        return [f"{comment_match('Endpoint admin disabled')} {deny}"]
    out = conntrack_rules(settings.filter_allow_action, settings)
    out.append(xmark(0, MARK_ACCEPT | MARK_PASS))
    # Unless AllowVXLANPacketsFromWorkloads / AllowIPIPPacketsFromWorkloads (both false by default).
    if not inbound and not settings.allow_vxlan_from_workloads:
        out.append(
            f"-p udp {comment_match(f'{word} VXLAN encapped packets originating in workloads')} "
            f"-m multiport --dports {settings.vxlan_port} {deny}"
        )
    if not inbound and not settings.allow_ipip_from_workloads:
        out.append(f"-p 4 {comment_match(f'{word} IPinIP encapped packets originating in workloads')} {deny}")
    out += tier_rules(tiers, inbound, settings)
    for profile in ep.profile_ids:
        out.append(f"-j {profile_chain_name(profile, inbound)}")
        out.append(f"{comment_match('Return if profile accepted')} {ACCEPTED} -j RETURN")
    out.append(f"{comment_match(f'{word} if no profiles matched')} {deny}")
    return out


def _common_prefix(names: list[str]) -> str:
    first, last = min(names), max(names)
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    return first[:i]


def dispatch_tree(names: Iterable[str], root: str, flag: str, chain_for: Callable[[str], str],
                  end_rules: list[str]) -> dict[str, list[str]]:
    """Felix's dispatch.go shape (buildSingleDispatchChainTree), for workload and host endpoints: a
    shallow tree keyed by the first character after the names' common prefix, so a packet for the
    last of hundreds of endpoints passes ~16 + n/16 rules, not n. A group of one gets its rule
    (`flag NAME -g chain_for(NAME)`) in the root chain directly (so two endpoints give a flat chain,
    as in docs/calico/felix.md §2.4); a larger group gets a child chain `<root>-<char>` behind a
    wildcard match. Every chain ends with `end_rules`: gotos never come back to the root."""
    ordered = sorted(set(names))
    chains: dict[str, list[str]] = {}
    root_rules: list[str] = []
    if ordered:
        common = _common_prefix(ordered)
        groups: dict[str, list[str]] = {}
        for name in ordered:
            groups.setdefault(name[: len(common) + 1], []).append(name)
        for prefix, members in groups.items():
            if len(members) == 1:
                root_rules.append(f"{flag} {members[0]} -g {chain_for(members[0])}")
                continue
            child = f"{root}-{prefix[len(common):]}"
            root_rules.append(f"{flag} {prefix}+ -g {child}")
            chains[child] = [f"{flag} {name} -g {chain_for(name)}" for name in members] + list(end_rules)
    chains[root] = root_rules + list(end_rules)
    return chains


def dispatch_chains(names: list[str], root: str, flag: str, target: str) -> dict[str, list[str]]:
    """The workload dispatch chains (`target` + interface name). Each chain ends with the "Unknown
    interface" drop: a child that fell through would otherwise return (goto) past the root into
    cali-FORWARD and skip policy."""
    unknown = f"{comment_match('Unknown interface')} -j DROP"
    return dispatch_tree(names, root, flag, lambda name: f"{target}{name}", [unknown])
