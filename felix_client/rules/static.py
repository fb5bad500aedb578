"""The tables as a whole: Felix's static chains in filter, nat and raw, with the endpoint,
dispatch, policy and profile chains of the desired state (felix/rules/static.go).

Each function renders one family (`version` 4: iptables, 6: ip6tables). As in Felix the IPv6 tables
have the same chain names; they use the `cali60` sets, the IPv6 rules of each policy, and differ in
the static parts: no IPIP (IPv4 only), ICMPv6 neighbour discovery and MLD allowed from workloads to
the host before policy (ICMPv6Filter), NAT-outgoing for the IPv6 pools with natOutgoing."""

from __future__ import annotations

from felix_client.calc.graph import DesiredState
from felix_client.calc.model import FelixSettings, ParsedProfile
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
    KIND_SHORT,
    MARK_ACCEPT,
    MARK_ALL,
    MARK_CLEAR_FORWARD,
    MARK_SCRATCH0,
    MASQ_SET,
    MASQ_SET_V6,
    NAT_OUTGOING,
    POOLS_SET,
    POOLS_SET_V6,
    RPF_SKIP,
    TO_HEP_FORWARD,
    TO_HOST_ENDPOINT,
    TO_WL_DISPATCH,
    TO_WORKLOAD_PREFIX,
    VXLAN_DEVICE,
    VXLAN_HOSTS_SET,
    WL_TO_HOST,
    WORKLOAD_IFACE_PREFIX,
    endpoint_chain_name,
    policy_chain_name,
    profile_chain_name,
)
from felix_client.rules.endpoints import dispatch_chains, render_endpoint_chain
from felix_client.rules.hostendpoints import host_endpoint_chains
from felix_client.rules.policy import RuleContext, deny_action, deny_word, render_rules
from felix_client.rules.table import ACCEPTED, Table, comment_match, xmark

# ICMPv6 types a workload may always send to its host (static.go ICMPv6Filter): multicast listener
# query, report and done (130-132), router solicitation (133), neighbour solicitation/advertisement
# (135, 136). Without them IPv6 stops working under a restrictive egress policy.
ICMPV6_HOST_TYPES = (130, 131, 132, 133, 135, 136)


def render_filter(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX, version: int = 4) -> Table:
    wl = f"{iface_prefix}+"
    v4 = version == 4
    settings = state.settings
    deny, word = deny_action(settings), deny_word(settings)
    t = Table("filter", ["INPUT", "FORWARD", "OUTPUT"], {})
    t.add("INPUT", f"-j {CHAIN_INPUT}")
    t.add("FORWARD", f"-j {CHAIN_FORWARD}")
    t.add("FORWARD", f"{comment_match('Policy explicitly accepted packet.')} {ACCEPTED} -j ACCEPT")
    t.add("FORWARD", xmark(MARK_ACCEPT, MARK_ACCEPT))
    t.add("OUTPUT", f"-j {CHAIN_OUTPUT}")

    t.add(CHAIN_FORWARD, xmark(0, MARK_CLEAR_FORWARD))
    t.add(CHAIN_FORWARD, f"-m mark --mark 0x0/{MARK_ACCEPT:#x} -j {FROM_HEP_FORWARD}")
    t.add(CHAIN_FORWARD, f"-i {wl} -j {FROM_WL_DISPATCH}")
    t.add(CHAIN_FORWARD, f"-o {wl} -j {TO_WL_DISPATCH}")
    t.add(CHAIN_FORWARD, f"-j {TO_HEP_FORWARD}")
    t.add(CHAIN_FORWARD, f"-j {CIDR_BLOCK}")

    if state.ipip and v4:
        t.add(CHAIN_INPUT, f"-p 4 {comment_match('Allow IPIP packets from Calico hosts')} "
              f"-m set --match-set {HOSTS_SET} src -m addrtype --dst-type LOCAL -j ACCEPT")
        t.add(CHAIN_INPUT, f"-p 4 {comment_match(f'{word} IPIP packets from non-Calico hosts')} {deny}")
    if state.vxlan and v4:
        t.add(CHAIN_INPUT, f"-p udp {comment_match('Allow IPv4 VXLAN packets from allowed hosts')} "
              f"-m multiport --dports {settings.vxlan_port} -m set --match-set {VXLAN_HOSTS_SET} src "
              "-m addrtype --dst-type LOCAL -j ACCEPT")
        t.add(CHAIN_INPUT, f"-p udp {comment_match(f'{word} IPv4 VXLAN packets from non-allowed hosts')} "
              f"-m multiport --dports {settings.vxlan_port} -m addrtype --dst-type LOCAL {deny}")
    t.add(CHAIN_INPUT, f"-i {wl} -g {WL_TO_HOST}")
    t.add(CHAIN_INPUT, f"{ACCEPTED} -j ACCEPT")
    t.add(CHAIN_INPUT, xmark(0, MARK_ALL))
    t.add(CHAIN_INPUT, f"-j {FROM_HOST_ENDPOINT}")
    t.add(CHAIN_INPUT, f"{comment_match('Host endpoint policy accepted packet.')} {ACCEPTED} -j ACCEPT")

    t.add(CHAIN_OUTPUT, f"{ACCEPTED} -j ACCEPT")
    t.add(CHAIN_OUTPUT, f"-o {wl} -j RETURN")  # host → workload traffic is not policed
    if state.ipip and v4:
        t.add(CHAIN_OUTPUT, f"-p 4 {comment_match('Allow IPIP packets to other Calico hosts')} "
              f"-m set --match-set {HOSTS_SET} dst -m addrtype --src-type LOCAL -j ACCEPT")
    if state.vxlan and v4:
        t.add(CHAIN_OUTPUT, f"-p udp {comment_match('Allow IPv4 VXLAN packets to other allowed hosts')} "
              f"-m multiport --dports {settings.vxlan_port} -m addrtype --src-type LOCAL "
              f"-m set --match-set {VXLAN_HOSTS_SET} dst -j ACCEPT")
    t.add(CHAIN_OUTPUT, xmark(0, MARK_ALL))
    t.add(CHAIN_OUTPUT, f"-m conntrack ! --ctstate DNAT -j {TO_HOST_ENDPOINT}")
    t.add(CHAIN_OUTPUT, f"{comment_match('Host endpoint policy accepted packet.')} {ACCEPTED} -j ACCEPT")

    if not v4:
        for icmp_type in ICMPV6_HOST_TYPES:
            t.add(WL_TO_HOST, f"-p ipv6-icmp -m icmp6 --icmpv6-type {icmp_type} -j ACCEPT")
    t.add(WL_TO_HOST, f"-j {FROM_WL_DISPATCH}")
    t.add(WL_TO_HOST, f"{comment_match('Configured DefaultEndpointToHostAction')} "
          f"-j {state.endpoint_to_host_action}")

    names = [ep.iface for ep in state.endpoints]
    for chain, rules_ in dispatch_chains(names, FROM_WL_DISPATCH, "-i", FROM_WORKLOAD_PREFIX).items():
        t.chains[chain] = rules_
    for chain, rules_ in dispatch_chains(names, TO_WL_DISPATCH, "-o", TO_WORKLOAD_PREFIX).items():
        t.chains[chain] = rules_

    for ep in state.endpoints:
        t.chains[endpoint_chain_name(ep.iface, True)] = render_endpoint_chain(ep, True, settings)
        t.chains[endpoint_chain_name(ep.iface, False)] = render_endpoint_chain(ep, False, settings)

    # Only chains some endpoint jumps to are programmed (Felix refcounts reachability): an
    # ingress-only policy gets no cali-po- chain.
    live = [ep for ep in state.endpoints if ep.active]  # an admin-down endpoint's chain is a bare DROP
    wanted_in = {p.key for ep in live for tier in ep.ingress for p in tier.policies}
    wanted_out = {p.key for ep in live for tier in ep.egress for p in tier.policies}
    for key in sorted(state.policies, key=lambda k: (k.kind, k.namespace, k.name)):
        policy = state.policies[key]
        context = RuleContext(settings, KIND_SHORT.get(key.kind, key.kind), key.name, key.namespace, policy.tier)
        if key in wanted_in:
            t.chains[policy_chain_name(key, True)] = render_rules(policy.rules(True, version),
                                                                  f"{policy.description} ingress", context)
        if key in wanted_out:
            t.chains[policy_chain_name(key, False)] = render_rules(policy.rules(False, version),
                                                                   f"{policy.description} egress", context)
    for name in sorted({p for ep in live for p in ep.profile_ids}):
        profile = state.profiles.get(name) or ParsedProfile(name, (), ())
        context = RuleContext(settings, "pro", name)
        t.chains[profile_chain_name(name, True)] = render_rules(profile.rules(True, version),
                                                                f"Profile {name} ingress", context)
        t.chains[profile_chain_name(name, False)] = render_rules(profile.rules(False, version),
                                                                 f"Profile {name} egress", context)

    # Hooks for features out of scope (CIDR blocking): empty, but they must exist.
    t.add(CIDR_BLOCK)
    t.chains.update(_host_endpoint_chains(state, "filter", version))
    if state.host_endpoints:
        t.chains.update(_minimal_failsafe_chains("filter"))
    return t


def _host_endpoint_chains(state: DesiredState, table_name: str, version: int) -> dict[str, list[str]]:
    """The table's host-endpoint dispatch chains (empty without host endpoints), with the chains
    of each host endpoint and the policy/profile chains they jump to (rules/hostendpoints.py)."""
    return host_endpoint_chains(state, table_name, version)


def render_nat(state: DesiredState, version: int = 4) -> Table:
    t = Table("nat", ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"], {})
    t.add("PREROUTING", f"-j {CHAIN_PREROUTING}")
    t.add("OUTPUT", f"-j {CHAIN_OUTPUT}")
    t.add("POSTROUTING", f"-j {CHAIN_POSTROUTING}")
    t.add(CHAIN_PREROUTING, f"-j {FIP_DNAT}")
    t.add(CHAIN_OUTPUT, f"-j {FIP_DNAT}")
    t.add(CHAIN_POSTROUTING, f"-j {FIP_SNAT}")
    t.add(CHAIN_POSTROUTING, f"-j {NAT_OUTGOING}")
    # Traffic the host itself sends into a tunnel leaves with the tunnel device's address.
    # With VXLAN on, UDP is masqueraded to source ports clear of the VXLAN port: a reply to the
    # port itself would hit the "VXLAN packets from non-allowed hosts" drop (Calico issue 12244).
    local = "-m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL"
    udp_ports = masq_port_range_excluding(state.settings.vxlan_port) if state.vxlan else ""
    for enabled, device in ((state.ipip, IPIP_DEVICE), (state.vxlan, VXLAN_DEVICE)):
        if enabled and version == 4:
            if udp_ports:
                t.add(CHAIN_POSTROUTING, f"-o {device} -p udp {local} -j MASQUERADE --to-ports {udp_ports} "
                      "--random-fully")
            t.add(CHAIN_POSTROUTING, f"-o {device} {local} -j MASQUERADE --random-fully")
    t.add(NAT_OUTGOING)
    if state.masq_pools if version == 4 else state.masq_pools6:
        for rule in nat_outgoing_rules(state.settings, version):
            t.add(NAT_OUTGOING, rule)
    t.add(FIP_DNAT)
    t.add(FIP_SNAT)
    return t


def render_raw(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX, version: int = 4) -> Table:
    t = Table("raw", ["PREROUTING", "OUTPUT"], {})
    t.add("PREROUTING", f"-j {CHAIN_PREROUTING}")
    t.add(CHAIN_PREROUTING, xmark(0, MARK_ALL))
    # VXLAN flows use different source ports each way: tracking them only fills conntrack with
    # unreplied entries (StaticRawPreroutingChain / StaticRawOutputChain).
    notrack = f"-p udp -m udp --dport {state.settings.vxlan_port} -j NOTRACK"
    if state.vxlan:
        t.add(CHAIN_PREROUTING, notrack)
    t.add(CHAIN_PREROUTING, f"-i {iface_prefix}+ {xmark(MARK_SCRATCH0, MARK_SCRATCH0)}")
    scratch = f"-m mark --mark {MARK_SCRATCH0:#x}/{MARK_SCRATCH0:#x}"
    t.add(CHAIN_PREROUTING, f"{scratch} -j {RPF_SKIP}")
    # Anti-spoofing: a workload's packet must arrive on the interface its source's /32 route uses.
    t.add(CHAIN_PREROUTING, f"{scratch} -m rpfilter --validmark --invert -j DROP")
    t.add(CHAIN_PREROUTING, f"-m mark --mark 0x0/{MARK_SCRATCH0:#x} -j {FROM_HOST_ENDPOINT}")
    t.add(CHAIN_PREROUTING, f"{ACCEPTED} -j ACCEPT")
    t.add(RPF_SKIP)
    # The OUTPUT hook also runs untracked host endpoint egress policy (cali-to-host-endpoint).
    output_hook = state.vxlan or any(hep.has_untracked for hep in state.host_endpoints)
    if output_hook:
        t.add("OUTPUT", f"-j {CHAIN_OUTPUT}")
        t.add(CHAIN_OUTPUT, xmark(0, MARK_ALL))
        t.add(CHAIN_OUTPUT, f"-j {TO_HOST_ENDPOINT}")
        if state.vxlan:
            t.add(CHAIN_OUTPUT, notrack)
        t.add(CHAIN_OUTPUT, f"{ACCEPTED} -j ACCEPT")
    hep_chains = _host_endpoint_chains(state, "raw", version)
    if not output_hook:
        del hep_chains[TO_HOST_ENDPOINT]  # nothing would reach it
    t.chains.update(hep_chains)
    if any(hep.has_untracked for hep in state.host_endpoints):
        t.chains.update(_minimal_failsafe_chains("raw"))
    return t


# Stand-in until the static chains' own rendering lands (another branch owns it): Felix's default
# FailsafeInboundHostPorts/FailsafeOutboundHostPorts, so the host endpoint chains' jumps have targets.
_FAILSAFE_IN = (("tcp", 22), ("udp", 68), ("tcp", 179), ("tcp", 2379), ("tcp", 2380), ("tcp", 5473),
                ("tcp", 6443), ("tcp", 6666), ("tcp", 6667))
_FAILSAFE_OUT = (("udp", 53), ("udp", 67), ("tcp", 179), ("tcp", 2379), ("tcp", 2380), ("tcp", 5473),
                 ("tcp", 6443), ("tcp", 6666), ("tcp", 6667))


def _minimal_failsafe_chains(table_name: str) -> dict[str, list[str]]:
    """failsafeInChain/failsafeOutChain (static.go): in raw also the replies (source ports)."""
    def rules(ports: tuple[tuple[str, int], ...], flag: str) -> list[str]:
        return [f"-p {proto} -m multiport --{flag} {port} -j ACCEPT" for proto, port in ports]

    chain_in, chain_out = rules(_FAILSAFE_IN, "dports"), rules(_FAILSAFE_OUT, "dports")
    if table_name == "raw":
        chain_in += rules(_FAILSAFE_OUT, "sports")
        chain_out += rules(_FAILSAFE_IN, "sports")
    return {"cali-failsafe-in": chain_in, "cali-failsafe-out": chain_out}


def masq_port_range_excluding(port: int) -> str:
    """masqPortRangeExcluding (felix/rules/static.go): the wider side of `port` within 1024-65535,
    as one range (MASQUERADE takes one)."""
    if not 0 < port <= 65535:
        return ""
    low, high = 1024, 65535
    return f"{low}-{port - 1}" if port - low >= high - port else f"{port + 1}-{high}"


def nat_outgoing_rules(settings: FelixSettings, version: int = 4) -> list[str]:
    """NATOutgoingChain (felix/rules/nat.go): pool traffic leaving the pools is masqueraded - or
    SNATed to NATOutgoingAddress - with TCP and UDP first confined to NATPortRange when set, and
    all of it only out of IptablesNATOutgoingInterfaceFilter when set. For IPv6 the family's own
    sets; NATOutgoingAddress is an IPv4 address and there is no IPv6 hosts set yet, so IPv6 always
    masquerades and excludes only the pools."""
    masq, pools = (MASQ_SET, POOLS_SET) if version == 4 else (MASQ_SET_V6, POOLS_SET_V6)
    match = f"-m set --match-set {masq} src -m set ! --match-set {pools} dst"
    if settings.nat_outgoing_exclusions == "IPPoolsAndHostIPs" and version == 4:
        match += f" -m set ! --match-set {HOSTS_SET} dst"
    address = settings.nat_outgoing_address if version == 4 else ""
    out = f"-o {settings.nat_outgoing_interface} " if settings.nat_outgoing_interface else ""

    def action(ports: str) -> str:
        if address:
            return f"-j SNAT --to-source {address}{':' + ports if ports else ''} --random-fully"
        return f"-j MASQUERADE{' --to-ports ' + ports if ports else ''} --random-fully"

    rules: list[str] = []
    if settings.nat_port_range is not None:
        ports = "{}-{}".format(*settings.nat_port_range)
        for protocol in ("tcp", "udp"):
            rules += [f"{out}-p {protocol} {match} {action(ports)}", f"{out}-p {protocol} {match} -j RETURN"]
    rules.append(f"{out}{match} {action('')}")
    return rules


def render_tables(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX,
                  version: int = 4) -> dict[str, Table]:
    """Every table of one family, each through `Table.guarded`."""
    return {
        "filter": render_filter(state, iface_prefix, version).guarded(),
        "nat": render_nat(state, version).guarded(),
        "raw": render_raw(state, iface_prefix, version).guarded(),
    }


def render_iptables(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX, version: int = 4) -> str:
    """All tables of one family as one `iptables-save`/`iptables-restore` (or ip6tables) document."""
    return "".join(t.render() for t in render_tables(state, iface_prefix, version).values())


def render_ip6tables(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> str:
    """The IPv6 tables (`ip6tables.save`); empty on a node that does not use IPv6."""
    return render_iptables(state, iface_prefix, 6) if state.ipv6 else ""
