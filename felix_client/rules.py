"""Render the desired state as Felix-shaped iptables tables and ipset scripts (felix.md §2).

Output is text in `iptables-save` form (`*table`, `:chain` declarations, `-A` rules, `COMMIT`), which
is also valid `iptables-restore` input, and `ipset save`/`ipset restore` text. Rules are written in
the order `iptables-save` prints their parts (`-s`/`-d`/`-i`/`-o`/`-p` first, then matches in
the order given), so the rendered text and a real dump of the table compare line by line.

Deliberate differences from Felix, all with the same packet semantics:
- no `cali:<hash>` rule comments (Felix uses them to diff rules in place; the dataplane hashes whole
  chains and rewrites a chain that changed, `felix_client/dataplane/iptables.py`);
- a Deny rule is a single `-j DROP` (Felix first sets the 0x40000 mark, which nothing here reads);
- several CIDRs in one rule (or nets plus notNets) use a `hash:net` set instead of scratch-bit match
  blocks (felix.md §3.8 allows either);
- dispatch chains are flat rather than split into a prefix tree (fine up to a few hundred endpoints).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from felix_client import metrics, validate
from felix_client.calc.graph import DesiredState, ResolvedEndpoint, TierPolicies
from felix_client.calc.model import ParsedProfile, ParsedRule, Side
from felix_client.names import (
    CHAIN_FORWARD,
    CHAIN_INPUT,
    CHAIN_OUTPUT,
    CHAIN_POSTROUTING,
    CHAIN_PREROUTING,
    CIDR_BLOCK,
    FIP_DNAT,
    FIP_SNAT,
    FROM_HEP_FORWARD,
    FROM_HOST_ENDPOINT,
    FROM_WL_DISPATCH,
    FROM_WORKLOAD_PREFIX,
    HOSTS_SET,
    IPIP_DEVICE,
    IPSET_CREATE_OPTIONS,
    MARK_ACCEPT,
    MARK_ALL,
    MARK_CLEAR_FORWARD,
    MARK_PASS,
    MARK_SCRATCH0,
    MASQ_SET,
    MULTIPORT_SLOTS,
    NAT_OUTGOING,
    POOLS_SET,
    RPF_SKIP,
    TO_HEP_FORWARD,
    TO_HOST_ENDPOINT,
    TO_WL_DISPATCH,
    TO_WORKLOAD_PREFIX,
    VXLAN_DEVICE,
    VXLAN_HOSTS_SET,
    VXLAN_PORT,
    WL_TO_HOST,
    WORKLOAD_IFACE_PREFIX,
    endpoint_chain_name,
    escape_comment,
    policy_chain_name,
    profile_chain_name,
    temp_ipset_name,
)

log = logging.getLogger("felix_client.rules")

ACCEPTED = f"-m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x}"
NOT_PASSED = f"-m mark --mark 0x0/{MARK_PASS:#x}"
# What a rule that fails the last grammar check becomes: it can only narrow what the chain allows.
GUARD_DROP = '-m comment --comment "felix-client: rule failed validation" -j DROP'


def _comment(text: str) -> str:
    return f'-m comment --comment "{escape_comment(text)}"'


def _xmark(value: int, mask: int) -> str:
    return f"-j MARK --set-xmark {value:#x}/{mask:#x}"


@dataclass
class Table:
    """One table: built-in chains with their hook rules, then Calico's chains, in render order."""

    name: str
    builtins: list[str]
    chains: dict[str, list[str]]

    def add(self, chain: str, rule: str | None = None) -> None:
        rules = self.chains.setdefault(chain, [])
        if rule is not None:
            rules.append(rule)

    def render(self) -> str:
        lines = [f"*{self.name}"]
        lines += [f":{c} ACCEPT [0:0]" for c in self.builtins]
        lines += [f":{c} - [0:0]" for c in self.chains if c not in self.builtins]
        for chain, rules in self.chains.items():
            lines += [f"-A {chain} {rule}".rstrip() for rule in rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def guarded(self) -> Table:
        """This table with every rule checked against iptables' line grammar (`validate.check_rule_line`)
        and every chain name against Felix's: a failing rule becomes `GUARD_DROP` and a chain with a
        bad name is left out, each logged and counted. The checks before rendering make this a no-op;
        it is the last line of defence against text that would add or break `iptables-restore` lines."""
        chains: dict[str, list[str]] = {}
        for chain, rules_ in self.chains.items():
            if not validate.chain_name(chain):
                metrics.RENDER_GUARD_TRIPPED.labels("chain").inc()
                log.error("left out chain with an invalid name %r", chain)
                continue
            checked: list[str] = []
            for rule in rules_:
                problem = validate.check_rule_line(chain, rule)
                if problem is not None:
                    metrics.RENDER_GUARD_TRIPPED.labels("rule").inc()
                    log.error("replaced an invalid rule in %s with a DROP (%s): %r", chain, problem, rule)
                    rule = GUARD_DROP
                checked.append(rule)
            chains[chain] = checked
        return Table(self.name, self.builtins, chains)


# --- policy and profile rules -------------------------------------------------------------------


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
        for group in _port_groups(side.ports) or [None]:
            ports = [f"-m multiport {ports_flag} {group}"] if group else []
            variants.append(_Match(tuple(head), (*common, *selector, *ports, *negated)))
    for spec in side.named_port_sets:
        named = f"-m set --match-set {spec.name} {direction},{direction}"
        variants.append(_Match(tuple(head), (*common, named, *negated)))
    return variants


def _protocol_head(rule: ParsedRule) -> tuple[str, ...]:
    if rule.protocol is not None:
        return (f"-p {rule.protocol}",)
    if rule.not_protocol is not None:
        return (f"! -p {rule.not_protocol}",)
    return ()


def _icmp(rule: ParsedRule) -> tuple[str, ...]:
    out: list[str] = []
    if rule.icmp_type is not None:
        code = f"/{rule.icmp_code}" if rule.icmp_code is not None else ""
        out.append(f"-m icmp --icmp-type {rule.icmp_type}{code}")
    if rule.not_icmp_type is not None:
        code = f"/{rule.not_icmp_code}" if rule.not_icmp_code is not None else ""
        out.append(f"-m icmp ! --icmp-type {rule.not_icmp_type}{code}")
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
            notes = [_comment(comment), *(_comment(f"{k}={v}") for k, v in rule.annotations)]
            match = " ".join(x for x in (head, *notes, *src.matches, *dst.matches, *icmp) if x)
            if rule.action == "allow":
                out += [f"{match} {_xmark(MARK_ACCEPT, MARK_ACCEPT)}", f"{_comment(comment)} {ACCEPTED} -j RETURN"]
            elif rule.action == "next-tier":
                passed = f"-m mark --mark {MARK_PASS:#x}/{MARK_PASS:#x}"
                out += [f"{match} {_xmark(MARK_PASS, MARK_PASS)}", f"{_comment(comment)} {passed} -j RETURN"]
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
    return out or [_comment(comment)]


# --- endpoint chains ----------------------------------------------------------------------------


def _tier_rules(tiers: tuple[TierPolicies, ...], inbound: bool) -> list[str]:
    out: list[str] = []
    for tier in tiers:
        out.append(f"{_comment(f'Start of tier {tier.name}')} {_xmark(0, MARK_PASS)}")
        for policy in tier.policies:
            out.append(f"{NOT_PASSED} -j {policy_chain_name(policy.key, inbound)}")
            out.append(f"{_comment('Return if policy accepted')} {ACCEPTED} -j RETURN")
        if not tier.default_pass:
            drop = f"End of tier {tier.name}. Drop if no policies passed packet"
            out.append(f"{_comment(drop)} {NOT_PASSED} -j DROP")
    return out


def render_endpoint_chain(ep: ResolvedEndpoint, inbound: bool) -> list[str]:
    if not ep.active:
        return [f"{_comment('Endpoint admin disabled')} -j DROP"]
    out = [
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-m conntrack --ctstate INVALID -j DROP",
        _xmark(0, MARK_ACCEPT | MARK_PASS),
    ]
    if not inbound:
        # AllowVXLANPacketsFromWorkloads / AllowIPIPPacketsFromWorkloads default to false.
        out.append(
            f"-p udp {_comment('Drop VXLAN encapped packets originating in workloads')} "
            f"-m multiport --dports {VXLAN_PORT} -j DROP"
        )
        out.append(f"-p 4 {_comment('Drop IPinIP encapped packets originating in workloads')} -j DROP")
    out += _tier_rules(ep.ingress if inbound else ep.egress, inbound)
    for profile in ep.profile_ids:
        out.append(f"-j {profile_chain_name(profile, inbound)}")
        out.append(f"{_comment('Return if profile accepted')} {ACCEPTED} -j RETURN")
    out.append(f"{_comment('Drop if no profiles matched')} -j DROP")
    return out


# --- tables -------------------------------------------------------------------------------------


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
    felix.md §2.4). Each chain ends with the "Unknown interface" drop: a child that fell through
    would otherwise return (goto) past the root into cali-FORWARD and skip policy."""
    unknown = f"{_comment('Unknown interface')} -j DROP"
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


def render_filter(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> Table:
    wl = f"{iface_prefix}+"
    t = Table("filter", ["INPUT", "FORWARD", "OUTPUT"], {})
    t.add("INPUT", f"-j {CHAIN_INPUT}")
    t.add("FORWARD", f"-j {CHAIN_FORWARD}")
    t.add("FORWARD", f"{_comment('Policy explicitly accepted packet.')} {ACCEPTED} -j ACCEPT")
    t.add("FORWARD", _xmark(MARK_ACCEPT, MARK_ACCEPT))
    t.add("OUTPUT", f"-j {CHAIN_OUTPUT}")

    t.add(CHAIN_FORWARD, _xmark(0, MARK_CLEAR_FORWARD))
    t.add(CHAIN_FORWARD, f"-m mark --mark 0x0/{MARK_ACCEPT:#x} -j {FROM_HEP_FORWARD}")
    t.add(CHAIN_FORWARD, f"-i {wl} -j {FROM_WL_DISPATCH}")
    t.add(CHAIN_FORWARD, f"-o {wl} -j {TO_WL_DISPATCH}")
    t.add(CHAIN_FORWARD, f"-j {TO_HEP_FORWARD}")
    t.add(CHAIN_FORWARD, f"-j {CIDR_BLOCK}")

    if state.ipip:
        t.add(CHAIN_INPUT, f"-p 4 {_comment('Allow IPIP packets from Calico hosts')} "
              f"-m set --match-set {HOSTS_SET} src -m addrtype --dst-type LOCAL -j ACCEPT")
        t.add(CHAIN_INPUT, f"-p 4 {_comment('Drop IPIP packets from non-Calico hosts')} -j DROP")
    if state.vxlan:
        t.add(CHAIN_INPUT, f"-p udp {_comment('Allow IPv4 VXLAN packets from allowed hosts')} "
              f"-m multiport --dports {VXLAN_PORT} -m set --match-set {VXLAN_HOSTS_SET} src "
              "-m addrtype --dst-type LOCAL -j ACCEPT")
        t.add(CHAIN_INPUT, f"-p udp {_comment('Drop IPv4 VXLAN packets from non-allowed hosts')} "
              f"-m multiport --dports {VXLAN_PORT} -m addrtype --dst-type LOCAL -j DROP")
    t.add(CHAIN_INPUT, f"-i {wl} -g {WL_TO_HOST}")
    t.add(CHAIN_INPUT, f"{ACCEPTED} -j ACCEPT")
    t.add(CHAIN_INPUT, _xmark(0, MARK_ALL))
    t.add(CHAIN_INPUT, f"-j {FROM_HOST_ENDPOINT}")
    t.add(CHAIN_INPUT, f"{_comment('Host endpoint policy accepted packet.')} {ACCEPTED} -j ACCEPT")

    t.add(CHAIN_OUTPUT, f"{ACCEPTED} -j ACCEPT")
    t.add(CHAIN_OUTPUT, f"-o {wl} -j RETURN")  # host → workload traffic is not policed
    if state.ipip:
        t.add(CHAIN_OUTPUT, f"-p 4 {_comment('Allow IPIP packets to other Calico hosts')} "
              f"-m set --match-set {HOSTS_SET} dst -m addrtype --src-type LOCAL -j ACCEPT")
    if state.vxlan:
        t.add(CHAIN_OUTPUT, f"-p udp {_comment('Allow IPv4 VXLAN packets to other allowed hosts')} "
              f"-m multiport --dports {VXLAN_PORT} -m addrtype --src-type LOCAL "
              f"-m set --match-set {VXLAN_HOSTS_SET} dst -j ACCEPT")
    t.add(CHAIN_OUTPUT, _xmark(0, MARK_ALL))
    t.add(CHAIN_OUTPUT, f"-m conntrack ! --ctstate DNAT -j {TO_HOST_ENDPOINT}")
    t.add(CHAIN_OUTPUT, f"{_comment('Host endpoint policy accepted packet.')} {ACCEPTED} -j ACCEPT")

    t.add(WL_TO_HOST, f"-j {FROM_WL_DISPATCH}")
    t.add(WL_TO_HOST, f"{_comment('Configured DefaultEndpointToHostAction')} "
          f"-j {state.endpoint_to_host_action}")

    names = [ep.iface for ep in state.endpoints]
    for chain, rules_ in dispatch_chains(names, FROM_WL_DISPATCH, "-i", FROM_WORKLOAD_PREFIX).items():
        t.chains[chain] = rules_
    for chain, rules_ in dispatch_chains(names, TO_WL_DISPATCH, "-o", TO_WORKLOAD_PREFIX).items():
        t.chains[chain] = rules_

    for ep in state.endpoints:
        t.chains[endpoint_chain_name(ep.iface, True)] = render_endpoint_chain(ep, inbound=True)
        t.chains[endpoint_chain_name(ep.iface, False)] = render_endpoint_chain(ep, inbound=False)

    # Only chains some endpoint jumps to are programmed (Felix refcounts reachability): an
    # ingress-only policy gets no cali-po- chain.
    live = [ep for ep in state.endpoints if ep.active]  # an admin-down endpoint's chain is a bare DROP
    wanted_in = {p.key for ep in live for tier in ep.ingress for p in tier.policies}
    wanted_out = {p.key for ep in live for tier in ep.egress for p in tier.policies}
    for key in sorted(state.policies, key=lambda k: (k.kind, k.namespace, k.name)):
        policy = state.policies[key]
        if key in wanted_in:
            t.chains[policy_chain_name(key, True)] = render_rules(policy.inbound, f"{policy.description} ingress")
        if key in wanted_out:
            t.chains[policy_chain_name(key, False)] = render_rules(policy.outbound, f"{policy.description} egress")
    for name in sorted({p for ep in live for p in ep.profile_ids}):
        profile = state.profiles.get(name) or ParsedProfile(name, (), ())
        t.chains[profile_chain_name(name, True)] = render_rules(profile.inbound, f"Profile {name} ingress")
        t.chains[profile_chain_name(name, False)] = render_rules(profile.outbound, f"Profile {name} egress")

    # Hooks for features out of scope (host endpoints, CIDR blocking): empty, but they must exist.
    for chain in (FROM_HEP_FORWARD, TO_HEP_FORWARD, CIDR_BLOCK,
                  FROM_HOST_ENDPOINT, TO_HOST_ENDPOINT):
        t.add(chain)
    return t


def render_nat(state: DesiredState) -> Table:
    t = Table("nat", ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"], {})
    t.add("PREROUTING", f"-j {CHAIN_PREROUTING}")
    t.add("OUTPUT", f"-j {CHAIN_OUTPUT}")
    t.add("POSTROUTING", f"-j {CHAIN_POSTROUTING}")
    t.add(CHAIN_PREROUTING, f"-j {FIP_DNAT}")
    t.add(CHAIN_OUTPUT, f"-j {FIP_DNAT}")
    t.add(CHAIN_POSTROUTING, f"-j {FIP_SNAT}")
    t.add(CHAIN_POSTROUTING, f"-j {NAT_OUTGOING}")
    # Traffic the host itself sends into a tunnel leaves with the tunnel device's address.
    for enabled, device in ((state.ipip, IPIP_DEVICE), (state.vxlan, VXLAN_DEVICE)):
        if enabled:
            t.add(CHAIN_POSTROUTING, f"-o {device} -m addrtype ! --src-type LOCAL --limit-iface-out "
                  "-m addrtype --src-type LOCAL -j MASQUERADE --random-fully")
    t.add(NAT_OUTGOING)
    if state.masq_pools:
        t.add(NAT_OUTGOING, f"-m set --match-set {MASQ_SET} src -m set ! --match-set {POOLS_SET} dst "
              "-j MASQUERADE --random-fully")
    t.add(FIP_DNAT)
    t.add(FIP_SNAT)
    return t


def render_raw(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> Table:
    t = Table("raw", ["PREROUTING", "OUTPUT"], {})
    t.add("PREROUTING", f"-j {CHAIN_PREROUTING}")
    t.add(CHAIN_PREROUTING, _xmark(0, MARK_ALL))
    t.add(CHAIN_PREROUTING, f"-i {iface_prefix}+ {_xmark(MARK_SCRATCH0, MARK_SCRATCH0)}")
    scratch = f"-m mark --mark {MARK_SCRATCH0:#x}/{MARK_SCRATCH0:#x}"
    t.add(CHAIN_PREROUTING, f"{scratch} -j {RPF_SKIP}")
    # Anti-spoofing: a workload's packet must arrive on the interface its source's /32 route uses.
    t.add(CHAIN_PREROUTING, f"{scratch} -m rpfilter --validmark --invert -j DROP")
    t.add(CHAIN_PREROUTING, f"-m mark --mark 0x0/{MARK_SCRATCH0:#x} -j {FROM_HOST_ENDPOINT}")
    t.add(CHAIN_PREROUTING, f"{ACCEPTED} -j ACCEPT")
    t.add(RPF_SKIP)
    t.add(FROM_HOST_ENDPOINT)
    return t


def render_tables(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> dict[str, Table]:
    """Every table, each through `Table.guarded`."""
    return {
        "filter": render_filter(state, iface_prefix).guarded(),
        "nat": render_nat(state).guarded(),
        "raw": render_raw(state, iface_prefix).guarded(),
    }


def render_iptables(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> str:
    """All tables as one `iptables-save`/`iptables-restore` document."""
    return "".join(t.render() for t in render_tables(state, iface_prefix).values())


# --- IP sets ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IPSet:
    name: str
    type: str
    members: frozenset[str]


def desired_ipsets(state: DesiredState) -> dict[str, IPSet]:
    """Rule sets plus the pool/host sets the static chains use, each checked by `_guarded_set`."""
    out = {name: IPSet(name, s.spec.ipset_type, s.members) for name, s in state.ipsets.items()}
    out[MASQ_SET] = IPSet(MASQ_SET, "hash:net", frozenset(state.masq_pools))
    out[POOLS_SET] = IPSet(POOLS_SET, "hash:net", frozenset(state.all_pools))
    if state.ipip:
        out[HOSTS_SET] = IPSet(HOSTS_SET, "hash:net", frozenset(state.all_hosts))
    if state.vxlan:
        out[VXLAN_HOSTS_SET] = IPSet(VXLAN_HOSTS_SET, "hash:net", frozenset(state.vxlan_hosts))
    return {name: _guarded_set(out[name]) for name in sorted(out)}


def _guarded_set(s: IPSet) -> IPSet:
    """The last check before `ipset restore`: names, types and members against their grammar. The
    calculation only produces valid ones; a member that is not is left out (a rule matching a set
    matches less), logged and counted. A set with a bad name or type is a bug and stops the apply."""
    problem = validate.check_ipset(s.name, s.type)
    if problem is not None:
        metrics.RENDER_GUARD_TRIPPED.labels("ipset").inc()
        raise ValueError(f"refusing to program IP set {s.name!r}: {problem}")
    bad = {m for m in s.members if not validate.ipset_member(s.type, m)}
    if not bad:
        return s
    metrics.RENDER_GUARD_TRIPPED.labels("ipset-member").inc(len(bad))
    log.error("left out %d invalid members of IP set %s: %r", len(bad), s.name, sorted(bad)[:5])
    return IPSet(s.name, s.type, s.members - bad)


def _sorted_members(members: Iterable[str]) -> list[str]:
    return sorted(members)


def render_ipset_save(sets: dict[str, IPSet]) -> str:
    """The sets as `ipset save` prints them (the dry-run output)."""
    lines: list[str] = []
    for s in sets.values():
        lines.append(f"create {s.name} {s.type} {IPSET_CREATE_OPTIONS}")
        lines += [f"add {s.name} {m}" for m in _sorted_members(s.members)]
    return "\n".join(lines) + ("\n" if lines else "")


def render_ipset_restore(sets: dict[str, IPSet], existing: Iterable[str] = ()) -> str:
    """`ipset restore` input writing `sets`: a new set is created and filled in place; an existing one
    is rebuilt in a temporary set and swapped in, so the kernel never sees it half-filled
    (felix/ipsets/ipsets.go does the same with its `cali4t<n>` temporaries)."""
    present = set(existing)
    lines: list[str] = []
    temp = 0
    for s in sets.values():
        # "-exist" plus flush: a set we believe absent, or a temporary left by a crashed run, may
        # already be there; either way it ends up holding exactly the members below.
        if s.name not in present:
            lines.append(f"create {s.name} {s.type} {IPSET_CREATE_OPTIONS} -exist")
            lines.append(f"flush {s.name}")
            lines += [f"add {s.name} {m}" for m in _sorted_members(s.members)]
            continue
        tmp = temp_ipset_name(temp)
        temp += 1
        lines.append(f"create {tmp} {s.type} {IPSET_CREATE_OPTIONS} -exist")
        lines.append(f"flush {tmp}")
        lines += [f"add {tmp} {m}" for m in _sorted_members(s.members)]
        lines.append(f"swap {tmp} {s.name}")
        lines.append(f"destroy {tmp}")
    return "\n".join(lines) + ("\n" if lines else "")


def render_ipset_destroy(names: Iterable[str]) -> str:
    """Stale sets; run only after the iptables rules that used them are gone."""
    lines = [f"destroy {name}" for name in sorted(names)]
    return "\n".join(lines) + ("\n" if lines else "")


def render_routes(state: DesiredState) -> str:
    """Routes as `ip route` prints them, then VXLAN neighbour and FDB entries."""
    lines = [r.render() for r in state.routes]
    lines += [line for vtep in state.vteps for line in vtep.render()]
    return "\n".join(lines) + ("\n" if lines else "")
