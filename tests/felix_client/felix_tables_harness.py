"""Felix's own rules tests as data (tests/felix_client/felix_tables/): inputs, what Felix renders, and
felix_client's renderer run on the same inputs, both brought to `iptables-save` form and compared.

Felix's tests feed `proto.Rule`s (the calculation graph's output: IP-set IDs, CIDRs, port ranges)
to its renderer with test marks (accept 0x80, pass 0x100, ...). The harness builds the same rule as
felix_client's renderer input (`ParsedRule` for the row's IP version, each side's lists of IP-set IDs
as `cali40`/`cali60` sets) and translates Felix's test marks into felix_client's bits, since the mark
allocation is not what is being compared.

`iptables-save` form: short options (`-s`, `-d`, `--sports`, `-j`), the address/interface/protocol
options first in `-s -d -i -o -p` order, marks in hex, MARK's `--set-mark` as the `--set-xmark`
the kernel reports, REJECT with its default reason, a limit's unit shortened and its default burst
left out, a LOG prefix cut to the 29 bytes the kernel keeps. Rule comments are dropped unless a row
checks them (Felix's tests compare a rule's match and action, not the `cali:` hash comments).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from felix_client.calc.graph import DesiredState, ResolvedEndpoint, TierPolicies
from felix_client.calc.hostendpoints import ResolvedHostEndpoint
from felix_client.calc.model import (
    SETTINGS_ENV,
    FelixSettings,
    ParsedPolicy,
    ParsedProfile,
    ParsedRule,
    Side,
    parse_rule,
    parse_rules,
)
from felix_client.names import (
    FROM_WL_DISPATCH,
    FROM_WORKLOAD_PREFIX,
    MARK_ACCEPT,
    MARK_DROP,
    MARK_PASS,
    MARK_SCRATCH0,
    MARK_SCRATCH1,
    TO_WL_DISPATCH,
    TO_WORKLOAD_PREFIX,
    endpoint_chain_name,
    ipset_name,
)
from felix_client.rules.endpoints import (
    PolicyGroup,
    TierGroups,
    dispatch_chains,
    enforced,
    render_endpoint_chain,
    render_policy_group_chain,
)
from felix_client.rules.hostendpoints import (
    ChainSpec,
    endpoint_chain_specs,
    host_dispatch_chains,
    render_host_endpoint_chain,
)
from felix_client.rules.policy import (
    RuleContext,
    _port_groups,
    render_policy_chains,
    render_profile_chains,
    render_rule,
)
from felix_client.rules.static import nat_outgoing_rules, render_nat, render_raw, static_chains
from typha.model import selector
from typha.model.keys import PolicyKey

DATA = Path(__file__).parent / "felix_tables"

_LONG = {"--source": "-s", "--destination": "-d", "--in-interface": "-i", "--out-interface": "-o",
         "--protocol": "-p", "--source-ports": "--sports", "--destination-ports": "--dports", "--jump": "-j",
         "--goto": "-g", "--set-mark": "--set-xmark"}
_HEAD_ORDER = ("-s", "-d", "-i", "-o", "-p")
_LIMIT_UNITS = {"second": "sec", "minute": "min"}
# iptables-save prints these protocols by name (xtables' built-in list), others by number.
_PROTOCOL_NAMES = {"1": "icmp", "6": "tcp", "17": "udp", "58": "icmpv6", "132": "sctp", "136": "udplite"}
_FELIX_MARK_ROLES = ("accept", "pass", "scratch0", "scratch1", "drop")
_OUR_MARKS = {"accept": MARK_ACCEPT, "pass": MARK_PASS, "scratch0": MARK_SCRATCH0, "scratch1": MARK_SCRATCH1,
              "drop": MARK_DROP}


class Unsupported(Exception):
    """The row's input cannot be expressed as felix_client renderer input (the reason says why)."""


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def mark_map(felix_marks: dict[str, int]) -> dict[int, int]:
    return {felix_marks[role]: _OUR_MARKS[role] for role in _FELIX_MARK_ROLES if role in felix_marks}


def _translate_mark(text: str, marks: dict[int, int]) -> str:
    value_text, _, mask_text = text.partition("/")

    def bits(number: int) -> int:
        out = 0
        for felix_bit, ours in marks.items():
            if number & felix_bit:
                out |= ours
                number &= ~felix_bit
        return out | number

    value, mask = bits(int(value_text, 0)), bits(int(mask_text or "0xffffffff", 0))
    return f"{value:#x}/{mask:#x}"


def save_form(rule: str, marks: dict[int, int] | None = None, *, comments: bool = False) -> str:
    """One rule (without `-A chain`) in iptables-save form; `marks` translates Felix's test marks."""
    tokens = shlex.split(rule)
    heads: dict[str, list[str]] = {}
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        tok = _LONG.get(tokens[i], tokens[i])
        negated = tok == "!" and i + 1 < len(tokens) and _LONG.get(tokens[i + 1], tokens[i + 1]) in _HEAD_ORDER
        if negated or tok in _HEAD_ORDER:
            option = _LONG.get(tokens[i + 1], tokens[i + 1]) if negated else tok
            value = tokens[i + 2] if negated else tokens[i + 1]
            value = _PROTOCOL_NAMES.get(value, value) if option == "-p" else value
            heads[option] = ["!", option, value] if negated else [option, value]
            i += 3 if negated else 2
            continue
        if tok == "-m" and tokens[i + 1] == "comment" and not comments:
            i += 4  # -m comment --comment TEXT
            continue
        if tok in ("--mark", "--set-xmark") and marks is not None:
            rest += [tok, _translate_mark(tokens[i + 1], marks)]
            i += 2
            continue
        if tok in ("--mark", "--set-xmark"):
            rest += [tok, _translate_mark(tokens[i + 1], {})]
            i += 2
            continue
        if tok in ("--dport", "--sport") and rest[-2:-1] != ["-m"]:
            protocol = heads.get("-p", ["-p", "?"])[-1]
            rest += ["-m", protocol]  # iptables loads the protocol's match for a bare --dport
        if tok == "--limit":
            number, _, unit = tokens[i + 1].partition("/")
            rest += [tok, f"{number}/{_LIMIT_UNITS.get(unit, unit)}"]
            i += 2
            continue
        if tok == "--limit-burst" and tokens[i + 1] == "5":
            i += 2
            continue
        if tok == "--log-prefix":
            rest += [tok, '"' + tokens[i + 1][:29] + '"']
            i += 2
            continue
        if tok == "--comment":
            rest += [tok, f'"{tokens[i + 1]}"']
            i += 2
            continue
        rest.append(tok)
        i += 1
    if rest[-2:] == ["-j", "REJECT"]:
        rest += ["--reject-with", "icmp-port-unreachable"]
    words = [w for option in _HEAD_ORDER if option in heads for w in heads[option]] + rest
    return " ".join(words)


# --- proto.Rule → felix_client's renderer input ---------------------------------------------------


@dataclass(frozen=True)
class GivenSet:
    """An IP set the row names by its ID (Felix's tests give IDs, not selectors)."""

    set_id: str
    kind: str = "selector"
    version: int = 4

    @property
    def name(self) -> str:
        return ipset_name(self.set_id, self.version)


def _ports(ranges: list[list[int]]) -> tuple[int | str, ...]:
    return tuple(first if first == last else f"{first}:{last}" for first, last in ranges)


_KNOWN_FIELDS = frozenset(
    {"Protocol", "NotProtocol", "Icmp", "NotIcmp", "DstIpPortSetIds", "Metadata"}
    | {f"{neg}{side}{what}" for neg in ("", "Not") for side in ("Src", "Dst")
       for what in ("Net", "IpSetIds", "Ports", "NamedPortIpSetIds")}
)


def _sets(ids: list[str], kind: str, version: int) -> Any:
    # GivenSet stands in for IPSetSpec: the renderer reads only a set's name.
    return tuple(GivenSet(i, kind, version) for i in ids)


def _side(rule: dict[str, Any], prefix: str, version: int) -> Side:
    return Side(
        nets=tuple(rule.get(f"{prefix}Net", ())),
        not_nets=tuple(rule.get(f"Not{prefix}Net", ())),
        ip_sets=_sets(rule.get(f"{prefix}IpSetIds", []), "selector", version),
        not_ip_sets=_sets(rule.get(f"Not{prefix}IpSetIds", []), "selector", version),
        ip_port_sets=_sets(rule.get(f"{prefix}IpPortSetIds", []), "service", version),
        ports=_ports(rule.get(f"{prefix}Ports", [])),
        not_ports=_ports(rule.get(f"Not{prefix}Ports", [])),
        named_port_sets=_sets(rule.get(f"{prefix}NamedPortIpSetIds", []), "named-port", version),
        not_named_port_sets=_sets(rule.get(f"Not{prefix}NamedPortIpSetIds", []), "named-port", version),
        version=version,
    )


def parsed_rule(rule: dict[str, Any], action: str, ip_version: int) -> ParsedRule:
    """Felix's renderer input (proto.Rule, already filtered to `ip_version`) as felix_client's."""
    unknown = sorted(set(rule) - _KNOWN_FIELDS)
    if unknown:
        raise Unsupported(f"proto.Rule fields {unknown} are not translated")
    icmp, not_icmp = rule.get("Icmp") or {}, rule.get("NotIcmp") or {}
    return ParsedRule(
        action=parse_rule({"action": action}).action,
        protocol=rule.get("Protocol"),
        not_protocol=rule.get("NotProtocol"),
        icmp_type=icmp.get("type"),
        icmp_code=icmp.get("code"),
        not_icmp_type=not_icmp.get("type"),
        not_icmp_code=not_icmp.get("code"),
        src=_side(rule, "Src", ip_version),
        dst=_side(rule, "Dst", ip_version),
        annotations=tuple(sorted((rule.get("Metadata") or {}).items())),
        version=ip_version,
    )


def v1_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """The datastore (v1 model) form of a rule holding only nets, for rows that go through the parser."""
    names = {"SrcNet": "src_nets", "DstNet": "dst_nets", "NotSrcNet": "!src_nets", "NotDstNet": "!dst_nets",
             "IpVersion": "ip_version"}
    unknown = set(rule) - set(names)
    if unknown:
        raise Unsupported(f"fields {sorted(unknown)} have no datastore form here")
    return {"action": "allow", **{names[k]: v for k, v in rule.items()}}


def settings(config: dict[str, Any]) -> FelixSettings:
    return FelixSettings.from_sources(config.get)


@dataclass
class Row:
    table: str
    index: int
    name: str
    check: Callable[[], tuple[list[str], list[str]]] = field(repr=False)  # (expected, got)

    @property
    def id(self) -> str:
        return f"{self.table} #{self.index}: {self.name}"

    def run(self) -> tuple[bool, str]:
        try:
            expected, got = self.check()
        except Unsupported as exc:
            return False, f"unsupported: {exc}"
        if expected == got:
            return True, ""
        return False, "expected:\n  " + "\n  ".join(expected) + "\ngot:\n  " + "\n  ".join(got)


def _context(owner: dict[str, Any], config: dict[str, Any]) -> RuleContext:
    kind = owner["kind"]
    short = {"GlobalNetworkPolicy": "gnp", "NetworkPolicy": "np", "Profile": "pro"}[kind]
    return RuleContext(settings(config), short, owner["name"], owner.get("namespace", ""), owner.get("tier", ""))


def _action_check(table: dict[str, Any], entry: dict[str, Any], owner: dict[str, Any],
                  marks: dict[int, int]) -> tuple[list[str], list[str]]:
    """One rule of `rule_matches` rendered with each of the table's actions, against the table's
    expected rules with the row's match put in."""
    expected: list[str] = []
    got: list[str] = []
    context = _context(owner, table.get("config", {}))
    for action in table["actions"]:
        rule = parsed_rule(entry["rule"], action, entry["ip_version"])
        if "policy" in table:
            spec = table["policy"]
            key = PolicyKey(kind=spec.get("kind", owner["kind"]), namespace="", name=spec.get("name", owner["name"]))
            inbound = spec["direction"] == "inbound"
            chains = render_policy_chains(_policy(key, owner.get("tier", ""), [rule] if inbound else [],
                                                  [] if inbound else [rule], entry["ip_version"]),
                                          entry["ip_version"], context.settings)
            for chain, want in spec["chains"].items():
                keep = len(want) == 1 and want[0].startswith("-m comment")  # Felix checks the empty chain's comment
                expected += [f"{chain}: " + save_form(r.replace("{match}", entry["match"]), marks, comments=keep)
                             for r in want]
                got += [f"{chain}: " + save_form(r, comments=keep) for r in chains.get(chain, ["<no such chain>"])]
            got += [f"{chain}: <not expected>" for chain in chains if chain not in spec["chains"]]
            continue
        expected += [save_form(r.replace("{match}", entry["match"]), marks) for r in table["expected"]]
        got += [save_form(r) for r in render_rule(rule, "c", context)]
    return expected, got


def _policy(key: PolicyKey, tier: str, inbound: list[ParsedRule], outbound: list[ParsedRule],
            version: int) -> ParsedPolicy:
    """A policy holding `inbound`/`outbound` (already parsed for `version`) as PolicyToIptablesChains' input."""
    rules = {"inbound6" if version == 6 else "inbound": tuple(inbound),
             "outbound6" if version == 6 else "outbound": tuple(outbound)}
    return ParsedPolicy(**{"inbound": (), "outbound": (), **rules}, key=key, tier=tier, order=None,
                        selector=selector.parse("all()"), ingress=True, egress=True)


def metadata_rows() -> list[Row]:
    """felix/rules/policy_test.go Describe "rule metadata tests" (without flow logs): a rule's metadata
    annotations as comments on each of its iptables rules, and the owner comment of policy and profile
    chains (with hashed chain names)."""
    data = load("policy_test.json")
    marks = mark_map(data["marks"])
    rows: list[Row] = []
    for index, entry in enumerate(data["rule_metadata"]):
        def check(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            version = entry["ip_version"]
            if entry["call"] == "rule":
                rendered = [save_form(r, comments=True) for r in render_rule(parsed_rule(entry["rule"], "", version),
                                                                             "c")]
                want = [f'--comment "{c}"' for c in entry["every_rule_has_comments"]]
                # Felix's loop over the rules passes vacuously on none; a rule that renders nothing fails here.
                return (["rules: some", *(f"{i}: {w}" for i in range(len(rendered)) for w in want)],
                        ["rules: some" if rendered else "rules: none",
                         *(f"{i}: {w}" for i, r in enumerate(rendered) for w in want if w in r)])
            owner = entry["owner"]
            inbound = [parsed_rule(r["rule"], r["action"], version) for r in entry["inbound"]]
            outbound = [parsed_rule(r["rule"], r["action"], version) for r in entry["outbound"]]
            if entry["call"] == "policy":
                chains = render_policy_chains(_policy(PolicyKey(owner["kind"], "", owner["name"]), owner["tier"],
                                                      inbound, outbound, version), version, settings({}))
            else:
                chains = render_profile_chains(ParsedProfile(owner["name"], tuple(inbound), tuple(outbound)),
                                               version, settings({}))
            expected = [f"{c}: {save_form(r, marks, comments=True)}"
                        for c, want in entry["chains"].items() for r in want]
            got = [f"{c}: {save_form(r, comments=True)}" for c in entry["chains"]
                   for r in chains.get(c, ["<no such chain>"])]
            return expected, got + [f"{c}: <not expected>" for c in chains if c not in entry["chains"]]

        rows.append(Row("rule metadata tests", index, entry["name"], check))
    return rows


def policy_rows() -> list[Row]:
    """felix/rules/policy_test.go."""
    data = load("policy_test.json")
    marks = mark_map(data["marks"])
    rows: list[Row] = []

    # A Felix table that checks several configurations per row is several entries here, joined
    # back into one row (it passes when every check does).
    groups: dict[str, list[dict[str, Any]]] = {}
    for table in data["action_tables"]:
        groups.setdefault(table.get("felix_table", table["name"]), []).append(table)
    for felix_table, tables in groups.items():
        for index, entry in enumerate(data["rule_matches"]):
            def check(tables: list[dict[str, Any]] = tables,
                      entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
                expected: list[str] = []
                got: list[str] = []
                for table in tables:
                    want, have = _action_check(table, entry, table.get("owner", data["owner"]), marks)
                    expected += want
                    got += have
                return expected, got

            rows.append(Row(felix_table, index, f"{entry['name']} (IPv{entry['ip_version']})", check))

    for index, entry in enumerate(data["filtered"]):
        def check_filtered(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            parsed = parse_rules([v1_rule(entry["rule"])], "felix-tables", entry["ip_version"])
            return [], [save_form(r) for rule in parsed for r in render_rule(rule, "c")]

        rows.append(Row("Rules with catch-all negated CIDRs should be filtered out", index,
                        f"{entry['name']} (IPv{entry['ip_version']})", check_filtered))

    for index, entry in enumerate(data["other_version"]):
        def check_other(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            # ProtoRulesToIptablesRules skips a rule of the other IP version (by IpVersion or by its CIDRs):
            # in felix_client the parser filters each rule for the family it renders.
            parsed = parse_rules([v1_rule(entry["rule"])], "felix-tables", entry["ip_version"])
            return [], [save_form(r) for rule in parsed for r in render_rule(rule, "c")]

        # The two Its of each CIDR field share a name in Felix; the row's name says which family renders.
        rows.append(Row("with default renderer", index, f"{entry['name']} (IPv{entry['ip_version']})", check_other))

    nets = data["cidr_split_nets"]
    for index, entry in enumerate(data["cidr_split"]):
        def check_cidr(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            counts = dict(zip(("SrcNet", "NotSrcNet", "DstNet", "NotDstNet"), entry["counts"], strict=True))
            rule = parsed_rule({k: nets[k][:n] for k, n in counts.items() if n}, "allow", 4)
            return ([save_form(r.removeprefix("-A test "), marks) for r in entry["expected"]],
                    [save_form(r) for r in render_rule(rule, "c")])

        rows.append(Row("CIDR split tests", index, entry["name"], check_cidr))

    for index, entry in enumerate(data["port_split"]):
        def check_split(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            # SplitPortList's groups, as the multiport arguments they become.
            expected = [",".join(str(p) for p in _ports(split)) for split in entry["splits"]]
            return expected, _port_groups(_ports(entry["ports"]))

        rows.append(Row("Port split tests", index, entry["name"], check_split))

    for index, entry in enumerate(data["named_ports"]):
        def check_named(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            rule = parsed_rule(entry["rule"], "allow", 4)
            return ([save_form(r.removeprefix("-A test "), marks) for r in entry["expected"]],
                    [save_form(r) for r in render_rule(rule, "c")])

        rows.append(Row("Named port tests", index, entry["name"], check_named))
    return rows


def dispatch_rows() -> list[Row]:
    """felix/rules/dispatch_test.go: workload dispatch chains (KubeIPVSSupportEnabled false)."""
    data = load("dispatch_test.json")
    rows: list[Row] = []
    for index, entry in enumerate(data["workload_dispatch"]):
        def check(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            names = entry["interfaces"] or []
            chains = {**dispatch_chains(names, FROM_WL_DISPATCH, "-i", FROM_WORKLOAD_PREFIX),
                      **dispatch_chains(names, TO_WL_DISPATCH, "-o", TO_WORKLOAD_PREFIX)}
            expected = [f"{chain}: {save_form(rule, comments=True)}"
                        for chain in sorted(entry["chains"]) for rule in entry["chains"][chain]]
            got = [f"{chain}: {save_form(rule, comments=True)}" for chain in sorted(chains) for rule in chains[chain]]
            return expected, got

        rows.append(Row("workload rendering tests", index, entry["name"], check))
    return rows


def _policy_ids(items: list[Any]) -> list[tuple[str, str, str, str]]:
    """A tier's policy list as (kind, namespace, name, selector): a name (a GlobalNetworkPolicy), a
    `{"name", "kind"}` object, or a Felix PolicyGroup `{"group": {"selector", "policies"}}` (its policies
    in order; the groups themselves reach the renderer through `_groups`)."""
    out: list[tuple[str, str, str, str]] = []
    for item in items:
        if isinstance(item, str):
            out.append(("GlobalNetworkPolicy", "", item, "all()"))
        elif "group" in item:
            group = item["group"]
            out += [(p.get("kind") or "GlobalNetworkPolicy", p.get("namespace", ""), p["name"], group["selector"])
                    for p in group["policies"]]
        else:
            out.append((item["kind"], item.get("namespace", ""), item["name"], "all()"))
    return out


def _groups(spec: dict[str, Any], inbound: bool) -> TierGroups:
    """The tier as Felix's test hands it to the renderer: a policy given alone is a group of its own
    (tiersToSinglePolGroups), a `{"group"}` item is that PolicyGroup, selector string as written."""
    groups: list[PolicyGroup] = []
    for item in spec["ingress" if inbound else "egress"]:
        if isinstance(item, dict) and "group" in item:
            group = item["group"]
            groups.append(PolicyGroup(inbound, group["selector"], tuple(_policy_key(p) for p in group["policies"])))
        else:
            kind, namespace, name, _ = _policy_ids([item])[0]
            groups.append(PolicyGroup(inbound, "all()", (PolicyKey(kind, namespace, name),)))
    return TierGroups(spec["name"], spec["default_action"] == "Pass", tuple(groups))


def _policy_key(policy: dict[str, Any]) -> PolicyKey:
    # A PolicyGroup test's policy ID as written (Kind may be empty, as in Felix's test).
    return PolicyKey(policy.get("kind", ""), policy.get("namespace", ""), policy["name"])


def _tier(spec: dict[str, Any], inbound: bool) -> TierPolicies:
    policies = tuple(
        ParsedPolicy(key=PolicyKey(kind, namespace, name), tier=spec["name"], order=None,
                     selector=selector.parse(sel), ingress=inbound, egress=not inbound, inbound=(), outbound=())
        for kind, namespace, name, sel in _policy_ids(spec["ingress" if inbound else "egress"]))
    return TierPolicies(spec["name"], spec["default_action"] == "Pass", policies)


def endpoint_rows() -> list[Row]:
    """felix/rules/endpoints_test.go: workload endpoint chains (DROP, no IPVS, no flow logs)."""
    data = load("endpoints_test.json")
    marks = mark_map(data["marks"])
    rows: list[Row] = []
    for index, entry in enumerate(data["workload_endpoints"]):
        def check(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            if "qos_controls" in entry:
                raise Unsupported("QoSControls (packet rate and connection limits) are not an input of "
                                  "felix_client's endpoint chains: it has no QoS controls")
            unread = sorted(name for name in entry.get("config", {}) if f"FELIX_{name.upper()}" not in SETTINGS_ENV)
            if unread:
                raise Unsupported(f"FelixConfiguration {', '.join(unread)} is not read")
            ep = ResolvedEndpoint(
                key=f"/calico/v1/host/h/workload/k8s/w/endpoint/{entry['iface']}", iface=entry["iface"],
                active=entry["admin_up"], ingress=tuple(_tier(t, True) for t in entry["tiers"]),
                egress=tuple(_tier(t, False) for t in entry["tiers"]), profile_ids=tuple(entry["profiles"]))
            config = settings(entry.get("config", {}))
            groups = {inbound: tuple(_groups(t, inbound) for t in entry["tiers"]) for inbound in (True, False)}
            chains = {endpoint_chain_name(ep.iface, True): render_endpoint_chain(ep, True, config, groups[True]),
                      endpoint_chain_name(ep.iface, False): render_endpoint_chain(ep, False, config, groups[False])}
            expected = [f"{chain}: {save_form(rule, marks, comments=True)}"
                        for chain in sorted(entry["chains"]) for rule in entry["chains"][chain]]
            got = [f"{chain}: {save_form(rule, comments=True)}" for chain in sorted(chains) for rule in chains[chain]]
            return expected, got

        rows.append(Row("workload endpoint chains", index, entry["name"], check))
    return rows


def policy_group_rows() -> list[Row]:
    """felix/rules/endpoints_test.go: DescribeTable "PolicyGroup chains" (PolicyGroupToIptablesChains)
    and Describe "PolicyGroups" (UniqueID, HasNonStagedPolicies)."""
    data = load("endpoints_test.json")
    marks = mark_map(data["marks"])
    rows: list[Row] = []
    for index, entry in enumerate(data["policy_group_chains"]):
        def check_chain(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            group = PolicyGroup(entry["direction"] == "inbound", entry["selector"],
                                tuple(_policy_key(p) for p in entry["policies"]))
            return ([f"{entry['chain']}: {save_form(rule, marks, comments=True)}" for rule in entry["rules"]],
                    [f"{group.chain_name}: {save_form(rule, comments=True)}"
                     for rule in render_policy_group_chain(group)])

        rows.append(Row("PolicyGroup chains", index, entry["name"], check_chain))
    for index, entry in enumerate(data["policy_groups"]):
        def check_group(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            if entry["check"] == "unique_ids":
                # Each UID the same on a second call; and (beyond Felix's test, whose clash check never
                # records a UID) different groups, different UIDs.
                groups = [PolicyGroup(g["direction"] == "inbound", g["selector"],
                                      tuple(_policy_key(p) for p in g["policies"])) for g in entry["groups"]]
                names = [g.chain_name for g in groups]
                return (["stable", "distinct"],
                        ["stable" if names == [g.chain_name for g in groups] else "unstable",
                         "distinct" if len(set(names)) == len(set(groups)) else "clash"])
            # HasNonStagedPolicies is, in felix_client, whether a tier of those policies has any policy
            # its endpoint chain jumps to (rules.endpoints.enforced).
            expected = [str(case["expected"]) for case in entry["cases"]]
            tiers = [TierPolicies("default", False, tuple(
                ParsedPolicy(key=PolicyKey(p["kind"], p.get("namespace", ""), p["name"]), tier="default", order=None,
                             selector=selector.parse("all()"), ingress=True, egress=False, inbound=(), outbound=())
                for p in case["policies"])) for case in entry["cases"]]
            return expected, [str(bool(enforced(tier))) for tier in tiers]

        rows.append(Row("PolicyGroups", index, entry["name"], check_group))
    return rows


def host_dispatch_rows() -> list[Row]:
    """felix/rules/dispatch_test.go: the host endpoint dispatch tables (FromHostDispatchChains for
    preDNAT, HostDispatchChains without and with applyOnForward, and with a default interface)."""
    rows: list[Row] = []
    for table in load("dispatch_test.json")["host_dispatch"]:
        directions = "from" if table["call"] == "FromHostDispatchChains" else "to+from"
        for index, entry in enumerate(table["entries"]):
            def check(table: dict[str, Any] = table, entry: dict[str, Any] = entry,
                      directions: str = directions) -> tuple[list[str], list[str]]:
                chains = host_dispatch_chains(entry["interfaces"] or [], table["default_iface"], directions,
                                              bool(table["apply_on_forward"]))
                expected = [f"{chain}: {save_form(rule, comments=True)}"
                            for chain in sorted(entry["chains"]) for rule in entry["chains"][chain] or ["<empty>"]]
                got = [f"{chain}: {save_form(rule, comments=True)}"
                       for chain in sorted(chains) for rule in chains[chain] or ["<empty>"]]
                return expected, got

            rows.append(Row(table["table"], index, entry["name"], check))
    return rows


# The FelixConfiguration fields a host endpoint row may set that reach the renderer.
_HEP_CONFIG = {"IptablesMangleAllowAction"}


def host_endpoint_rows() -> list[Row]:
    """felix/rules/endpoints_test.go: host endpoint chains (HostEndpointToFilterChains,
    HostEndpointToRawChains, HostEndpointToMangleIngressChains), each row's chains by name."""
    data = load("endpoints_test.json")
    marks = mark_map(data["marks"])
    rows: list[Row] = []
    for index, entry in enumerate(data["host_endpoints"]):
        def check(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            config = dict(entry.get("config", {}))
            unread = sorted(name for name in config
                            if f"FELIX_{name.upper()}" not in SETTINGS_ENV and name not in _HEP_CONFIG)
            if unread:
                raise Unsupported(f"FelixConfiguration {', '.join(unread)} is not read")
            mangle_allow = config.pop("IptablesMangleAllowAction", "ACCEPT")
            tiers = entry["tiers"]

            def side(role: str, inbound: bool) -> tuple[TierPolicies, ...]:
                # preDNAT and untracked tiers pass by default, as the calculation makes them.
                return tuple(replace(t, default_pass=t.default_pass or role in ("prednat", "untracked"))
                             for t in (_tier(spec, inbound) for spec in tiers.get(role, [])) if t.policies)

            hep = ResolvedHostEndpoint(
                iface=entry["iface"], endpoint_id="hep", profile_ids=tuple(entry["profiles"]),
                ingress=side("normal", True), egress=side("normal", False),
                forward_ingress=side("forward", True), forward_egress=side("forward", False),
                prednat_ingress=side("prednat", True),
                untracked_ingress=side("untracked", True), untracked_egress=side("untracked", False))
            specs = endpoint_chain_specs(hep, entry["table"], mangle_allow)
            expected = [f"{chain}: {save_form(rule, marks, comments=True)}"
                        for chain in sorted(entry["chains"]) for rule in entry["chains"][chain]]
            def single_groups(spec: ChainSpec) -> tuple[TierGroups, ...]:
                # Felix's test gives each policy its own group (tiersToSinglePolGroups).
                return tuple(TierGroups(t.name, t.default_pass, tuple(PolicyGroup(spec.inbound, "all()", (p.key,))
                                                                      for p in t.policies)) for t in spec.tiers)

            got = [f"{chain}: {save_form(rule, comments=True)}" for chain in sorted(entry["chains"])
                   for rule in (render_host_endpoint_chain(specs[chain], settings(config), single_groups(specs[chain]))
                                if chain in specs else ["<no such chain>"])]
            return expected, got

        rows.append(Row("host endpoint chains", index, entry["name"], check))
    return rows


def nat_rows() -> list[Row]:
    """felix/rules/nat_test.go: the cali-nat-outgoing chain."""
    rows: list[Row] = []
    for index, entry in enumerate(load("nat_test.json")["nat_outgoing"]):
        def check(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            unread = sorted(name for name in entry["config"] if f"FELIX_{name.upper()}" not in SETTINGS_ENV)
            if unread:
                raise Unsupported(f"FelixConfiguration {', '.join(unread)} is not read")
            got = nat_outgoing_rules(settings(entry["config"])) if entry["active"] else []
            return [save_form(r) for r in entry["rules"]], [save_form(r) for r in got]

        rows.append(Row("NAT", index, entry["name"], check))
    return rows


def static_rows() -> list[Row]:
    """felix/rules/static_test.go: the VXLAN rows of the IPIP-enabled configuration."""
    data = load("static_test.json")
    marks = mark_map(data["marks"])
    rows: list[Row] = []
    for index, entry in enumerate(data["vxlan"]):
        def check(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            given = entry["state"]
            state = DesiredState(hostname="h", endpoints=[], policies={}, profiles={}, ipsets={}, routes=[], vteps=[],
                                 masq_pools=[], all_pools=[], all_hosts=[], vxlan_hosts=[],
                                 ipip=given["ipip_tunnel_address"], vxlan=given["vxlan"],
                                 vxlan_tunnel_address=given["vxlan_tunnel_address"],
                                 settings=settings({"VXLANPort": given["vxlan_port"]}))
            table = render_nat(state) if entry["table"] == "nat" else render_raw(state)
            return ([save_form(rule, marks) for rule in entry["rules"]],
                    [save_form(rule) for rule in table.chains.get(entry["chain"], ["<no such chain>"])])

        rows.append(Row("Static (VXLAN)", index, entry["name"], check))
    return rows


# --- static chains (static_test.go) ------------------------------------------------------------

_STATIC_STATE = {"ipip", "vxlan", "vxlan6", "vxlan6_tunnel_address", "iface_prefix"}
# iptables-save leaves out a match on the whole address space; the two names of ICMPv6 are one protocol.
_ANY_NET = {"-s 0.0.0.0/0", "-d 0.0.0.0/0", "-s ::/0", "-d ::/0"}
# iptables-save prints a bare address as a /32 (/128) network.
_BARE_ADDRESS = re.compile(r"(-[sd]) ([0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:]*)(?= )")


def _static_form(rule: str, marks: dict[int, int] | None = None) -> str:
    text = save_form(rule, marks, comments=True)
    for any_net in _ANY_NET:
        text = text.replace(any_net + " ", "")
    text = _BARE_ADDRESS.sub(lambda m: f"{m[1]} {m[2]}/{128 if ':' in m[2] else 32}", text)
    return text.replace("-p ipv6-icmp ", "-p icmpv6 ")


def _static_state(entry: dict[str, Any]) -> tuple[DesiredState, str]:
    given, config = entry["state"], entry["config"]
    unknown = sorted(set(given) - _STATIC_STATE)
    if unknown:
        raise Unsupported(f"state {unknown}: felix_client's desired state has no such input")
    unread = sorted(name for name in config if f"FELIX_{name.upper()}" not in SETTINGS_ENV)
    if unread:
        raise Unsupported(f"FelixConfiguration {', '.join(unread)} is not read")
    config_settings = settings(config)
    state = DesiredState(hostname="h", endpoints=[], policies={}, profiles={}, ipsets={}, routes=[], vteps=[],
                         masq_pools=[], all_pools=[], all_hosts=[], vxlan_hosts=[], ipip=given.get("ipip", False),
                         vxlan=given.get("vxlan", False), vxlan6=given.get("vxlan6", False),
                         vxlan6_tunnel_address=given.get("vxlan6_tunnel_address", False), settings=config_settings,
                         endpoint_to_host_action=config_settings.endpoint_to_host_action)
    return state, given.get("iface_prefix", "cali")


def static_chain_rows() -> list[Row]:
    """felix/rules/static_test.go: Felix's static chains of each table, per configuration."""
    data = load("static_test.json")
    marks = mark_map(data["marks"])
    rows: list[Row] = []
    for index, entry in enumerate(data["chains"]):
        def check(entry: dict[str, Any] = entry) -> tuple[list[str], list[str]]:
            state, prefix = _static_state(entry)
            chains = static_chains(state, entry["table"], entry["version"], prefix)
            if "chain_names" in entry:
                return sorted(entry["chain_names"]), sorted(chains)
            if "chains" in entry:
                return ([f"{c}: {_static_form(r, marks)}" for c, want in entry["chains"].items() for r in want],
                        [f"{c}: {_static_form(r)}" for c in entry["chains"]
                         for r in chains.get(c, ["<no such chain>"])])
            chain = entry["chain"]
            have = [_static_form(r) for r in chains[chain]] if chain in chains else ["<no such chain>"]
            if "no_action" in entry:
                target = f"-j {entry['no_action']}"
                return [], [r for r in have if r.endswith(target) or f"{target} " in r]
            if "contains" in entry:
                want = [_static_form(r, marks) for r in entry["contains"]]
                return want, [r for r in want if r in have] if set(want) <= set(have) else have
            if entry["rules"] is None:
                return ["<no such chain>"], have
            return [_static_form(r, marks) for r in entry["rules"]], have

        rows.append(Row("Static chains", index, entry["name"], check))
    return rows


def all_rows() -> list[Row]:
    return (policy_rows() + metadata_rows() + dispatch_rows() + endpoint_rows() + nat_rows() + static_rows()
            + static_chain_rows() + host_dispatch_rows() + host_endpoint_rows() + policy_group_rows())
