"""Policy and profile rules: one Calico rule → the iptables rules of a policy or profile chain
(felix/rules/policy.go).

Rules are written in the order `iptables-save` prints their parts (`-s`/`-d`/`-i`/`-o`/`-p` first,
then matches in the order given), so the rendered text and a real dump compare line by line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from felix_client.calc.model import ParsedRule, Side
from felix_client.names import (
    MARK_ACCEPT,
    MARK_PASS,
    MULTIPORT_SLOTS,
)
from felix_client.rules.table import ACCEPTED, comment_match, xmark


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
    negated += [f"-m set ! --match-set {spec.name} {direction},{direction}" for spec in side.not_named_port_sets]
    negated += [f"-m multiport ! {ports_flag} {group}" for group in _port_groups(side.not_ports)]

    variants: list[_Match] = []
    if side.ports or not side.named_port_sets:
        selector = [f"-m set --match-set {side.selector_set.name} {direction}"] if side.selector_set else []
        groups: list[str | None] = [*_port_groups(side.ports)] or [None]
        for group in groups:
            ports = [f"-m multiport {ports_flag} {group}"] if group else []
            variants.append(_Match(tuple(head), (*common, *selector, *ports, *negated)))
    for spec in side.named_port_sets:
        named = f"-m set --match-set {spec.name} {direction},{direction}"
        variants.append(_Match(tuple(head), (*common, named, *negated)))
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


def _icmp(rule: ParsedRule) -> tuple[str, ...]:
    # IPv6 rules match ICMPv6 types with the icmp6 match (Felix's ICMPV6Type/NotICMPV6Type).
    match, flag = ("-m icmp6", "--icmpv6-type") if rule.version == 6 else ("-m icmp", "--icmp-type")
    out: list[str] = []
    if rule.icmp_type is not None:
        code = f"/{rule.icmp_code}" if rule.icmp_code is not None else ""
        out.append(f"{match} {flag} {rule.icmp_type}{code}")
    if rule.not_icmp_type is not None:
        code = f"/{rule.not_icmp_code}" if rule.not_icmp_code is not None else ""
        out.append(f"{match} ! {flag} {rule.not_icmp_type}{code}")
    return tuple(out)


def render_rule(rule: ParsedRule, comment: str) -> list[str]:
    """The iptables rules (without `-A chain`) for one policy or profile rule."""
    out: list[str] = []
    icmp = _icmp(rule)
    for src in _side_variants(rule.src, "src"):
        for dst in _side_variants(rule.dst, "dst"):
            # iptables-save order: -s, -d, then -p; then the matches as given.
            heads = sorted(src.head + dst.head, key=lambda h: h.lstrip("! ")[:2] != "-s")
            head = " ".join((*heads, *_protocol_head(rule)))
            notes = [comment_match(comment), *(comment_match(f"{k}={v}") for k, v in rule.annotations)]
            match = " ".join(x for x in (head, *notes, *src.matches, *dst.matches, *icmp) if x)
            if rule.action == "allow":
                out += [f"{match} {xmark(MARK_ACCEPT, MARK_ACCEPT)}", f"{comment_match(comment)} {ACCEPTED} -j RETURN"]
            elif rule.action == "next-tier":
                passed = f"-m mark --mark {MARK_PASS:#x}/{MARK_PASS:#x}"
                out += [f"{match} {xmark(MARK_PASS, MARK_PASS)}", f"{comment_match(comment)} {passed} -j RETURN"]
            elif rule.action == "deny":
                out.append(f"{match} -j DROP")
            elif rule.action == "log":
                out.append(f'{match} -j LOG --log-prefix "calico-packet: " --log-level 5')
    return out


def render_rules(rules: Iterable[ParsedRule], comment: str) -> list[str]:
    out = [r for rule in rules for r in render_rule(rule, comment)]
    # Felix strips a trailing RETURN: the chain ends there anyway.
    if out and out[-1].endswith("-j RETURN"):
        out.pop()
    # An empty chain still gets one comment-only rule, as Felix writes (e.g. the ksa. profiles).
    return out or [comment_match(comment)]
