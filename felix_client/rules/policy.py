"""Policy and profile rules: one Calico rule → the iptables rules of a policy or profile chain
(felix/rules/policy.go).

Rules are written in the order `iptables-save` prints their parts (`-s`/`-d`/`-i`/`-o`/`-p` first,
then matches in the order given), so the rendered text and a real dump compare line by line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from felix_client.calc.model import FelixSettings, ParsedRule, Side
from felix_client.names import (
    MARK_ACCEPT,
    MARK_DROP,
    MARK_PASS,
    MAX_LOG_PREFIX_LENGTH,
    MULTIPORT_SLOTS,
    escape_comment,
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


@dataclass(frozen=True, slots=True)
class _Match:
    """The parts of one rendered rule, kept apart so they can be emitted in iptables-save order."""

    head: tuple[str, ...] = ()  # -s / -d / -p
    matches: tuple[str, ...] = ()
    negated: tuple[str, ...] = ()  # after every positive match of the rule, as Felix orders them


def _side_variants(side: Side, direction: str) -> list[_Match]:
    """The alternatives (ORed rules) one side of a rule expands to; `direction` is "src" or "dst"."""
    flag = "-s" if direction == "src" else "-d"
    ports_flag = "--sports" if direction == "src" else "--dports"
    head: list[str] = []
    common: list[str] = []
    negated: list[str] = []
    nets, not_nets = side.nets_set(), side.not_nets_set()
    if nets is not None:
        common.append(f"-m set --match-set {nets.name} {direction}")
    elif side.nets:
        head.append(f"{flag} {side.nets[0]}")
    if not_nets is not None:
        negated.append(f"-m set ! --match-set {not_nets.name} {direction}")
    elif side.not_nets:
        head.append(f"! {flag} {side.not_nets[0]}")
    if side.service_set is not None:
        # rule_scanner.go: a destination service is an ip,port set matched on dst,dst (DstIPPortSetIDs);
        # a source service an address set, one of the SrcIPSetIDs.
        dims = f"{direction},{direction}" if side.service_set.kind == "service" else direction
        common.append(f"-m set --match-set {side.service_set.name} {dims}")
    if side.not_selector_set is not None:
        negated.append(f"-m set ! --match-set {side.not_selector_set.name} {direction}")
    negated += [f"-m multiport ! {ports_flag} {group}" for group in _port_groups(side.not_ports)]
    negated += [f"-m set ! --match-set {spec.name} {direction},{direction}" for spec in side.not_named_port_sets]

    variants: list[_Match] = []
    if side.ports or not side.named_port_sets:
        selector = [f"-m set --match-set {side.selector_set.name} {direction}"] if side.selector_set else []
        groups: list[str | None] = [*_port_groups(side.ports)] or [None]
        for group in groups:
            ports = [f"-m multiport {ports_flag} {group}"] if group else []
            variants.append(_Match(tuple(head), (*common, *selector, *ports), tuple(negated)))
    for spec in side.named_port_sets:
        named = f"-m set --match-set {spec.name} {direction},{direction}"
        variants.append(_Match(tuple(head), (*common, named), tuple(negated)))
    return variants


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


def _marked(match: str, mark: int, comment: str, action: str) -> list[str]:
    """CombineMatchAndActionsForProtoRule: the match sets the action's mark bit, then a rule on the
    mark takes the action (for Deny Felix's MarkDrop, then the configured deny action)."""
    return [f"{match} {xmark(mark, mark)}", f"{comment_match(comment)} -m mark --mark {mark:#x}/{mark:#x} {action}"]


def render_rule(rule: ParsedRule, comment: str, context: RuleContext = DEFAULT_CONTEXT) -> list[str]:
    """The iptables rules (without `-A chain`) for one policy or profile rule."""
    out: list[str] = []
    icmp, not_icmp = _icmp(rule)
    notes = [comment_match(comment), *(comment_match(f"{k}={v}") for k, v in rule.annotations)]
    if rule.fail_closed:
        notes.append(comment_match("felix-client: invalid rule fails closed"))
    settings = context.settings
    if rule.action == "log" and settings.log_rate_limit:
        burst = settings.log_rate_limit_burst
        # iptables-save leaves out the default burst of 5.
        notes.append(f"-m limit --limit {settings.log_rate_limit}" + (f" --limit-burst {burst}" if burst != 5 else ""))
    for src in _side_variants(rule.src, "src"):
        for dst in _side_variants(rule.dst, "dst"):
            # iptables-save order: -s, -d, then -p; then the matches as given.
            heads = sorted(src.head + dst.head, key=lambda h: h.lstrip("! ")[:2] != "-s")
            head = " ".join((*heads, *_protocol_head(rule)))
            # CalculateRuleMatch's order: every positive match (source, destination, ICMP), then
            # every negated one in the same order.
            match = " ".join(x for x in (head, *notes, *src.matches, *dst.matches, *icmp, *src.negated,
                                         *dst.negated, *not_icmp) if x)
            if rule.action == "allow":
                out += _marked(match, MARK_ACCEPT, comment, "-j RETURN")
            elif rule.action == "next-tier":
                out += _marked(match, MARK_PASS, comment, "-j RETURN")
            elif rule.action == "deny":
                out += _marked(match, MARK_DROP, comment, context.deny())
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
