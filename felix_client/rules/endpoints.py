"""Workload endpoint chains (cali-tw-/cali-fw-) and the dispatch chains that reach them
(felix/rules/endpoints.go, dispatch.go)."""

from __future__ import annotations

from felix_client.calc.graph import ResolvedEndpoint, TierPolicies
from felix_client.calc.model import STAGED_KINDS, FelixSettings, ParsedPolicy
from felix_client.names import (
    MARK_ACCEPT,
    MARK_PASS,
    policy_chain_name,
    profile_chain_name,
)
from felix_client.rules.policy import deny_action, deny_word
from felix_client.rules.table import ACCEPTED, NOT_PASSED, comment_match, xmark


def enforced(tier: TierPolicies) -> list[ParsedPolicy]:
    """The tier's policies that get a jump: Felix's renderer skips staged ones (they never set a
    verdict mark); a tier with none of these has no end-of-tier drop either."""
    return [policy for policy in tier.policies if policy.key.kind not in STAGED_KINDS]


def _tier_rules(tiers: tuple[TierPolicies, ...], inbound: bool, settings: FelixSettings) -> list[str]:
    out: list[str] = []
    for tier in tiers:
        if not tier.policies:  # Felix renders a tier only when it has policies in this direction
            continue
        out.append(f"{comment_match(f'Start of tier {tier.name}')} {xmark(0, MARK_PASS)}")
        policies = enforced(tier)
        for policy in policies:
            out.append(f"{NOT_PASSED} -j {policy_chain_name(policy.key, inbound)}")
            out.append(f"{comment_match('Return if policy accepted')} {ACCEPTED} -j RETURN")
        if policies and not tier.default_pass:
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


def render_endpoint_chain(ep: ResolvedEndpoint, inbound: bool, settings: FelixSettings | None = None) -> list[str]:
    settings = settings or FelixSettings()
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
    out += _tier_rules(ep.ingress if inbound else ep.egress, inbound, settings)
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


def dispatch_chains(names: list[str], root: str, flag: str, target: str) -> dict[str, list[str]]:
    """Felix's dispatch.go shape: a shallow tree keyed by the first character after the names' common
    prefix, so a packet for the last of hundreds of endpoints passes ~16 + n/16 rules, not n. A
    group of one gets its rule in the root chain directly (so two endpoints give a flat chain, as in
    docs/calico/felix.md §2.4). Each chain ends with the "Unknown interface" drop: a child that fell through
    would otherwise return (goto) past the root into cali-FORWARD and skip policy."""
    unknown = f"{comment_match('Unknown interface')} -j DROP"
    names = sorted(set(names))
    if not names:
        return {root: [unknown]}
    common = _common_prefix(names) if len(names) > 1 else names[0][:-1]
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name[: len(common) + 1], []).append(name)
    chains: dict[str, list[str]] = {root: []}
    for prefix, members in groups.items():
        if len(members) == 1:
            chains[root].append(f"{flag} {members[0]} -g {target}{members[0]}")
            continue
        child = f"{root}-{prefix[len(common):]}"
        chains[root].append(f"{flag} {prefix}+ -g {child}")
        chains[child] = [f"{flag} {name} -g {target}{name}" for name in members] + [unknown]
    chains[root].append(unknown)
    return chains
