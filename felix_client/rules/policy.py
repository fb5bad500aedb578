"""Policy and profile rules: one Calico rule → the iptables rules of a policy or profile chain
(felix/rules/policy.go).

Rules are written in the order `iptables-save` prints their parts (`-s`/`-d`/`-i`/`-o`/`-p` first,
then matches in the order given), so the rendered text and a real dump compare line by line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from felix_client.calc.model import (
    ANY_NETS,
    STAGED_KINDS,
    FelixSettings,
    IPSetSpec,
    ParsedPolicy,
    ParsedProfile,
    ParsedRule,
    Side,
)
from felix_client.names import (
    KIND_SHORT,
    MARK_ACCEPT,
    MARK_DROP,
    MARK_PASS,
    MARK_SCRATCH0,
    MARK_SCRATCH1,
    MAX_LOG_PREFIX_LENGTH,
    MULTIPORT_SLOTS,
    escape_comment,
    policy_chain_name,
    profile_chain_name,
)
from felix_client.rules.table import comment_match, xmark


def _port_groups(ports: Iterable[int | str]) -> list[str]:
    """multiport argument strings of at most 15 slots each."""
    groups: list[str] = []
    current: list[str] = []
    used = 0
    for port in ports:
        text = str(port)
        slots = 2 if ":" in text else 1
        if current and used + slots > MULTIPORT_SLOTS:
            groups.append(",".join(current))
            current, used = [], 0
        current.append(text)
        used += slots
    if current:
        groups.append(",".join(current))
    return groups


_HEAD_ORDER = ("-s", "-d", "-p")


def _save_order(parts: Iterable[str], notes: Iterable[str] = ()) -> str:
    """One rule's parts in iptables-save order: `-s`, `-d`, `-p` (negated or not) first, then the
    comments (`notes`), then the other matches and the action in the order given."""
    parts = [p for p in parts if p]
    heads = sorted((p for p in parts if p.lstrip("! ")[:2] in _HEAD_ORDER),
                   key=lambda p: _HEAD_ORDER.index(p.lstrip("! ")[:2]))
    return " ".join((*heads, *notes, *(p for p in parts if p.lstrip("! ")[:2] not in _HEAD_ORDER)))


def _net(flag: str, net: str, version: int) -> str:
    """A `-s`/`-d` match (`flag` may carry a leading "! "), as iptables-save prints it: the family's
    catch-all matches every address and is left out, as it is of a Felix rule `-s 0.0.0.0/0`."""
    return "" if net == ANY_NETS[version] else f"{flag} {net}"


class _MatchBlocks:
    """Felix's matchBlockBuilder (felix/rules/policy.go): the scratch-mark blocks that OR the
    alternatives one iptables rule cannot hold - several port groups or named ports on a side,
    several CIDRs, CIDRs plus negated CIDRs. Scratch0 ends up set when every block matched (the
    first positive block writes it directly, later ones write scratch1 and AND it in); a negated
    block starts from scratch0 set and clears it on any match. The rule proper then also matches
    scratch0."""

    def __init__(self, notes: list[str]) -> None:
        self.notes = notes  # the comments each of the rule's iptables rules carries
        self.rules: list[str] = []
        self.used = False
        self._done_first_positive = False

    def _rule(self, *parts: str) -> None:
        self.rules.append(_save_order(parts, self.notes))

    def _start(self, initial: int) -> None:
        if not self.used:
            self._rule(xmark(initial, MARK_SCRATCH0 | MARK_SCRATCH1))
            self.used = True

    def _positive_mark(self) -> int:
        self._start(0)
        return MARK_SCRATCH1 if self._done_first_positive else MARK_SCRATCH0

    def _finish_positive(self) -> None:
        if self._done_first_positive:
            # scratch0 &&= scratch1
            self._rule(f"-m mark --mark 0x0/{MARK_SCRATCH1:#x}", xmark(0, MARK_SCRATCH0))
        self._done_first_positive = True

    def ports(self, protocol: str, groups: list[str], named: tuple[IPSetSpec, ...], direction: str) -> None:
        mark = self._positive_mark()
        ports_flag = "--sports" if direction == "src" else "--dports"
        for group in groups:
            self._rule(protocol, f"-m multiport {ports_flag} {group}", xmark(mark, mark))
        for spec in named:
            self._rule(f"-m set --match-set {spec.name} {direction},{direction}", xmark(mark, mark))
        self._finish_positive()

    def nets(self, nets: tuple[str, ...], direction: str, version: int) -> None:
        mark = self._positive_mark()
        flag = "-s" if direction == "src" else "-d"
        for net in nets:
            self._rule(_net(flag, net, version), xmark(mark, mark))
        self._finish_positive()

    def not_nets(self, nets: tuple[str, ...], direction: str, version: int) -> None:
        self._start(MARK_SCRATCH0)
        flag = "-s" if direction == "src" else "-d"
        for net in nets:
            self._rule(_net(flag, net, version), xmark(0, MARK_SCRATCH0))


@dataclass(frozen=True, slots=True)
class _SideMatch:
    """What of one side is left for the rule proper once the blocks took theirs."""

    nets: tuple[str, ...]
    not_nets: tuple[str, ...]
    port_groups: list[str]
    named_port_sets: tuple[IPSetSpec, ...]


def _side_blocks(side: Side, direction: str, protocol: str, blocks: _MatchBlocks) -> _SideMatch:
    """ProtoRuleToIptablesRules' port blocks for one side: several port groups or named ports."""
    groups = _port_groups(side.ports)
    if len(groups) + len(side.named_port_sets) > 1:
        blocks.ports(protocol, groups, side.named_port_sets, direction)
        return _SideMatch(side.nets, side.not_nets, [], ())
    return _SideMatch(side.nets, side.not_nets, groups, side.named_port_sets)


def _positive(side: Side, left: _SideMatch, direction: str, version: int) -> list[str]:
    """CalculateRuleMatch's positive matches of one side, in its order: net, IP sets, (destination
    service,) ports, named port."""
    out = [_net("-s" if direction == "src" else "-d", net, version) for net in left.nets]
    out += [f"-m set --match-set {spec.name} {direction}" for spec in side.ip_sets]
    out += [f"-m set --match-set {spec.name} {direction},{direction}" for spec in side.ip_port_sets]
    ports_flag = "--sports" if direction == "src" else "--dports"
    out += [f"-m multiport {ports_flag} {group}" for group in left.port_groups]
    out += [f"-m set --match-set {spec.name} {direction},{direction}" for spec in left.named_port_sets]
    return out


def _negated(side: Side, left: _SideMatch, direction: str, version: int) -> list[str]:
    """CalculateRuleMatch's negated matches of one side: net, IP sets, port groups, named ports."""
    out = [_net("! -s" if direction == "src" else "! -d", net, version) for net in left.not_nets]
    out += [f"-m set ! --match-set {spec.name} {direction}" for spec in side.not_ip_sets]
    ports_flag = "--sports" if direction == "src" else "--dports"
    out += [f"-m multiport ! {ports_flag} {group}" for group in _port_groups(side.not_ports)]
    out += [f"-m set ! --match-set {spec.name} {direction},{direction}" for spec in side.not_named_port_sets]
    return out


def _protocol_name(protocol: str | int) -> str | int:
    # ICMPv6 as ip6tables-save prints it (/etc/protocols' name), so written and dumped rules compare.
    return "ipv6-icmp" if protocol == "icmpv6" else protocol


def _protocol_head(rule: ParsedRule) -> tuple[str, ...]:
    if rule.protocol is not None:
        return (f"-p {_protocol_name(rule.protocol)}",)
    if rule.not_protocol is not None:
        return (f"! -p {_protocol_name(rule.not_protocol)}",)
    return ()


def _icmp(rule: ParsedRule) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the ICMP match, the negated one). IPv6 rules match ICMPv6 types with the icmp6 match (Felix's
    ICMPV6Type/NotICMPV6Type)."""
    match, flag = ("-m icmp6", "--icmpv6-type") if rule.version == 6 else ("-m icmp", "--icmp-type")
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    if rule.icmp_type is not None:
        code = f"/{rule.icmp_code}" if rule.icmp_code is not None else ""
        positive = (f"{match} {flag} {rule.icmp_type}{code}",)
    if rule.not_icmp_type is not None:
        code = f"/{rule.not_icmp_code}" if rule.not_icmp_code is not None else ""
        negative = (f"{match} ! {flag} {rule.not_icmp_type}{code}",)
    return positive, negative


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What a rule's rendering needs beyond the rule: the settings, and the owner for the
    LogPrefix specifiers (`%k` kind short name, `%n` name, `%p` namespace/name, `%t` tier)."""

    settings: FelixSettings = field(default_factory=FelixSettings)
    kind: str = "unknown"
    name: str = "unknown"
    namespace: str = ""
    tier: str = ""

    def log_prefix(self) -> str:
        """generateLogPrefix in felix/rules/policy.go with the ": " Felix's LOG action appends, cut to
        the 29 bytes --log-prefix holds: what iptables-nft stores of a longer one (iptables-legacy
        refuses it, and with it the whole table)."""
        prefix = self.settings.log_prefix
        if "%" in prefix:
            values = {"%k": self.kind, "%n": self.name, "%t": self.tier,
                      "%p": f"{self.namespace}/{self.name}" if self.namespace else self.name}
            prefix = _LOG_SPECIFIER.sub(lambda m: values[m.group(0)], prefix)
        return f"{escape_comment(prefix)}: "[:MAX_LOG_PREFIX_LENGTH]

    def deny(self) -> str:
        return deny_action(self.settings)


_LOG_SPECIFIER = re.compile("%[tknp]")
DEFAULT_CONTEXT = RuleContext()


def deny_action(settings: FelixSettings) -> str:
    """IptablesFilterDenyAction in iptables-save form (the kernel adds REJECT's default reason)."""
    return "-j REJECT --reject-with icmp-port-unreachable" if settings.filter_deny_action == "REJECT" else "-j DROP"


def deny_word(settings: FelixSettings) -> str:
    """The action's name as Felix's comments spell it ("Drop if no profiles matched")."""
    return "Reject" if settings.filter_deny_action == "REJECT" else "Drop"


def _marked(match: str, mark: int, notes: list[str], action: str) -> list[str]:
    """CombineMatchAndActionsForProtoRule: the match sets the action's mark bit, then a rule on the
    mark takes the action (for Deny Felix's MarkDrop, then the configured deny action). Both carry the
    rule's comments: Felix puts the metadata annotations on every rule of a Calico rule."""
    return [f"{match} {xmark(mark, mark)}", " ".join((*notes, f"-m mark --mark {mark:#x}/{mark:#x} {action}"))]


def render_rule(rule: ParsedRule, comment: str, context: RuleContext = DEFAULT_CONTEXT) -> list[str]:
    """The iptables rules (without `-A chain`) for one policy or profile rule: ProtoRuleToIptablesRules
    with CombineMatchAndActionsForProtoRule, in iptables-save form."""
    icmp, not_icmp = _icmp(rule)
    notes = [comment_match(comment), *(comment_match(f"{k}={v}") for k, v in rule.annotations)]
    action_notes = list(notes)  # the annotations go on every rule; the fail-closed note marks the match
    if rule.fail_closed:
        notes.append(comment_match("felix-client: invalid rule fails closed"))
    protocol = _protocol_head(rule)
    blocks = _MatchBlocks(notes)
    # The order Felix builds its blocks in: source ports, destination ports, source CIDRs,
    # destination CIDRs, then the negated CIDR blocks (positive blocks first, see _MatchBlocks).
    positive_protocol = protocol[0] if rule.protocol is not None else ""
    src = _side_blocks(rule.src, "src", positive_protocol, blocks)
    dst = _side_blocks(rule.dst, "dst", positive_protocol, blocks)
    if len(src.nets) > 1:
        blocks.nets(src.nets, "src", rule.version)
        src = _SideMatch((), src.not_nets, src.port_groups, src.named_port_sets)
    if len(dst.nets) > 1:
        blocks.nets(dst.nets, "dst", rule.version)
        dst = _SideMatch((), dst.not_nets, dst.port_groups, dst.named_port_sets)
    # One -s (or ! -s) fits in the rule; more than one between nets and notNets needs a block.
    if len(src.nets) + len(src.not_nets) > 1:
        blocks.not_nets(src.not_nets, "src", rule.version)
        src = _SideMatch(src.nets, (), src.port_groups, src.named_port_sets)
    if len(dst.nets) + len(dst.not_nets) > 1:
        blocks.not_nets(dst.not_nets, "dst", rule.version)
        dst = _SideMatch(dst.nets, (), dst.port_groups, dst.named_port_sets)

    # CalculateRuleMatch's order: every positive match (source, destination, ICMP), then every negated
    # one in the same order; iptables-save prints -s, -d and -p (negated or not) first.
    matches = [*_positive(rule.src, src, "src", rule.version), *_positive(rule.dst, dst, "dst", rule.version),
               *icmp, *_negated(rule.src, src, "src", rule.version),
               *_negated(rule.dst, dst, "dst", rule.version), *not_icmp]
    if blocks.used:
        matches.append(f"-m mark --mark {MARK_SCRATCH0:#x}/{MARK_SCRATCH0:#x}")
    settings = context.settings
    limit: list[str] = []
    if rule.action == "log" and settings.log_rate_limit:
        burst = settings.log_rate_limit_burst
        # iptables-save leaves out the default burst of 5.
        limit.append(f"-m limit --limit {settings.log_rate_limit}" + (f" --limit-burst {burst}" if burst != 5 else ""))
    # Felix's LOG rule is its limit match combined with the rule's match.
    match = _save_order((*protocol, *limit, *matches), notes)
    out = blocks.rules
    if rule.action == "allow":
        out += _marked(match, MARK_ACCEPT, action_notes, "-j RETURN")
    elif rule.action == "next-tier":
        out += _marked(match, MARK_PASS, action_notes, "-j RETURN")
    elif rule.action == "deny":
        out += _marked(match, MARK_DROP, action_notes, context.deny())
    elif rule.action == "log":
        out.append(f'{match} -j LOG --log-prefix "{context.log_prefix()}" --log-level 5')
    return out


def render_rules(rules: Iterable[ParsedRule], comment: str, context: RuleContext = DEFAULT_CONTEXT) -> list[str]:
    out = [r for rule in rules for r in render_rule(rule, comment, context)]
    # Felix strips a trailing RETURN: the chain ends there anyway.
    if out and out[-1].endswith("-j RETURN"):
        out.pop()
    # An empty chain still gets one comment-only rule, as Felix writes (e.g. the ksa. profiles).
    return out or [comment_match(comment)]


def render_policy_chains(policy: ParsedPolicy, version: int, settings: FelixSettings,
                         directions: Iterable[bool] = (True, False)) -> dict[str, list[str]]:
    """PolicyToIptablesChains: a policy's cali-pi-/cali-po- chains (inbound, outbound, as asked), the
    first rule carrying "<Kind> <name> ingress|egress". A staged policy renders no chain at all, as in
    Felix: it is never enforced (felix_client's calculation drops staged kinds before they get here)."""
    key = policy.key
    if key.kind in STAGED_KINDS:
        return {}
    context = RuleContext(settings, KIND_SHORT.get(key.kind, key.kind), key.name, key.namespace, policy.tier)
    return {policy_chain_name(key, inbound): render_rules(
                policy.rules(inbound, version), f"{policy.description} {'ingress' if inbound else 'egress'}", context)
            for inbound in directions}


def render_profile_chains(profile: ParsedProfile, version: int, settings: FelixSettings,
                          directions: Iterable[bool] = (True, False)) -> dict[str, list[str]]:
    """ProfileToIptablesChains: a profile's cali-pri-/cali-pro- chains, commented "Profile <name> ..."."""
    context = RuleContext(settings, "pro", profile.name)
    return {profile_chain_name(profile.name, inbound): render_rules(
                profile.rules(inbound, version), f"Profile {profile.name} {'ingress' if inbound else 'egress'}",
                context)
            for inbound in directions}
