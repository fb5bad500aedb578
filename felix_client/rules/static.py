"""The tables as a whole: Felix's static chains in filter, nat, raw and mangle (felix/rules/static.go),
with the host-endpoint chains and the workload dispatch, endpoint, policy and profile chains of the
desired state. The static chains are Felix's for the iptables configurations without BPF, IPVS,
WireGuard or QoS DSCP (OpenStack's special cases included); tests/felix_client/felix_tables/
holds Felix's own expectations for them.

Each function renders one family (`version` 4: iptables, 6: ip6tables). As in Felix the IPv6 tables
have the same chain names; they use the `cali60` sets, the IPv6 rules of each policy, and differ in
the static parts: no IPIP (IPv4 only), ICMPv6 neighbour discovery and MLD allowed from workloads to
the host before policy (ICMPv6Filter), NAT-outgoing for the IPv6 pools with natOutgoing."""

from __future__ import annotations

import ipaddress

from felix_client.calc.graph import DesiredState
from felix_client.calc.model import FelixSettings, ParsedProfile, ProtoPort
from felix_client.names import (
    CHAIN_FORWARD,
    CHAIN_INPUT,
    CHAIN_OUTPUT,
    CHAIN_POSTROUTING,
    CHAIN_PREROUTING,
    CIDR_BLOCK,
    FAILSAFE_IN,
    FAILSAFE_OUT,
    FIP_DNAT,
    FIP_SNAT,
    FROM_HEP_FORWARD,
    FROM_HOST_ENDPOINT,
    FROM_WL_DISPATCH,
    FROM_WORKLOAD_PREFIX,
    HOSTS_SET,
    IPIP_DEVICE,
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
    VXLAN_HOSTS_SET_V6,
    VXLAN_V6_DEVICE,
    WL_TO_HOST,
    WORKLOAD_IFACE_PREFIX,
    endpoint_chain_name,
)
from felix_client.rules.endpoints import dispatch_chains, group_tiers, policy_group_chains, render_endpoint_chain
from felix_client.rules.hostendpoints import host_endpoint_chains
from felix_client.rules.policy import (
    deny_action,
    deny_word,
    render_policy_chains,
    render_profile_chains,
)
from felix_client.rules.table import ACCEPTED, Table, comment_match, xmark

# ICMPv6 types a workload may always send to its host (static.go ICMPv6Filter): multicast listener
# query, report and done (130-132), router solicitation (133), neighbour solicitation/advertisement
# (135, 136). Without them IPv6 stops working under a restrictive egress policy.
ICMPV6_HOST_TYPES = (130, 131, 132, 133, 135, 136)


def _allow(settings: FelixSettings) -> str:
    """IptablesFilterAllowAction: what the filter table's static chains do with an allowed packet."""
    return f"-j {settings.filter_allow_action}"


def _mangle_allow(settings: FelixSettings) -> str:
    """IptablesMangleAllowAction, for the mangle table's PREROUTING chain."""
    return f"-j {settings.mangle_allow_action}"


# The host-endpoint dispatch chains each table's static chains jump to (Felix: filter INPUT/OUTPUT
# and FORWARD; raw PREROUTING/OUTPUT for untracked policy; mangle PREROUTING for preDNAT policy and
# POSTROUTING for DNAT'd host traffic). The nat table has none.
_HEP_DISPATCH = {
    "filter": (FROM_HOST_ENDPOINT, TO_HOST_ENDPOINT, FROM_HEP_FORWARD, TO_HEP_FORWARD),
    "raw": (FROM_HOST_ENDPOINT, TO_HOST_ENDPOINT),
    "mangle": (FROM_HOST_ENDPOINT, TO_HOST_ENDPOINT),
    "nat": (),
}


def _host_endpoint_chains(state: DesiredState, table_name: str, version: int,
                          iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> dict[str, list[str]]:
    """The host-endpoint dispatch chains of `table_name` with each host endpoint's chains and the
    policy/profile chains they jump to (rules/hostendpoints.py), the one place each table gets them.
    Without host endpoints every dispatch chain is empty, as Felix's are: the packet returns to the
    static chain, which lets it through (the host is not policed)."""
    if not _HEP_DISPATCH[table_name]:
        return {}
    chains = host_endpoint_chains(state, table_name, version, iface_prefix=iface_prefix,
                                  mangle_allow=state.settings.mangle_allow_action)
    for chain in _HEP_DISPATCH[table_name]:  # the static chains jump to every one of them
        chains.setdefault(chain, [])
    return chains


def _failsafe(ports: tuple[ProtoPort, ...], port_option: str, net_option: str, version: int) -> list[str]:
    """One failsafe rule per port (failsafeInChain / failsafeOutChain): a port with a net of the other
    family is left out. Always ACCEPT (Felix's Allow(), not the configured allow action). A /0 net
    matches everything and iptables-save leaves it out, so it is not written."""
    out: list[str] = []
    for p in ports:
        head = ""
        if p.net:
            net = ipaddress.ip_network(p.net, strict=False)
            if net.version != version:
                continue
            head = f"{net_option} {net} " if net.prefixlen else ""
        out.append(f"{head}-p {p.protocol} -m multiport {port_option} {p.port} -j ACCEPT")
    return out


def failsafe_chains(settings: FelixSettings, table_name: str, version: int) -> dict[str, list[str]]:
    """cali-failsafe-in and cali-failsafe-out of one table. In raw, before conntrack, each also lets
    the replies of the other direction's failsafe connections through (so that a doNotTrack policy
    cannot untrack half a connection)."""
    inbound, outbound = settings.failsafe_inbound_host_ports, settings.failsafe_outbound_host_ports
    fs_in = _failsafe(inbound, "--dports", "-s", version)
    fs_out = _failsafe(outbound, "--dports", "-d", version)
    if table_name == "raw":
        fs_in += _failsafe(outbound, "--sports", "-s", version)
        fs_out += _failsafe(inbound, "--sports", "-d", version)
    return {FAILSAFE_IN: fs_in, FAILSAFE_OUT: fs_out}


def _filter_static(state: DesiredState, wl: str, version: int) -> dict[str, list[str]]:
    """StaticFilterTableChains: cali-FORWARD, cali-INPUT, cali-wl-to-host, cali-OUTPUT and the
    failsafe chains."""
    v4 = version == 4
    settings = state.settings
    allow, deny, word = _allow(settings), deny_action(settings), deny_word(settings)
    forward = [
        xmark(0, MARK_CLEAR_FORWARD),
        f"-m mark --mark 0x0/{MARK_ACCEPT:#x} -j {FROM_HEP_FORWARD}",
        f"-i {wl} -j {FROM_WL_DISPATCH}",
        f"-o {wl} -j {TO_WL_DISPATCH}",
        f"-j {TO_HEP_FORWARD}",
        f"-j {CIDR_BLOCK}",
    ]

    inp: list[str] = []
    if state.ipip and v4:
        inp += [f"-p 4 {comment_match('Allow IPIP packets from Calico hosts')} "
                f"-m set --match-set {HOSTS_SET} src -m addrtype --dst-type LOCAL {allow}",
                f"-p 4 {comment_match(f'{word} IPIP packets from non-Calico hosts')} {deny}"]
    if state.vxlan and v4:
        # Felix drops (not the configured deny action) IPv4 VXLAN from other hosts.
        inp += [f"-p udp {comment_match('Allow IPv4 VXLAN packets from allowed hosts')} "
                f"-m multiport --dports {settings.vxlan_port} -m set --match-set {VXLAN_HOSTS_SET} src "
                f"-m addrtype --dst-type LOCAL {allow}",
                f"-p udp {comment_match('Drop IPv4 VXLAN packets from non-allowed hosts')} "
                f"-m multiport --dports {settings.vxlan_port} -m addrtype --dst-type LOCAL -j DROP"]
    if state.vxlan6 and not v4:
        inp += [f"-p udp {comment_match('Allow IPv6 VXLAN packets from allowed hosts')} "
                f"-m multiport --dports {settings.vxlan_port} -m set --match-set {VXLAN_HOSTS_SET_V6} src "
                f"-m addrtype --dst-type LOCAL {allow}",
                f"-p udp {comment_match('Drop IPv6 VXLAN packets from non-allowed hosts')} "
                f"-m multiport --dports {settings.vxlan_port} -m addrtype --dst-type LOCAL -j DROP"]
    inp += [
        f"-i {wl} -g {WL_TO_HOST}",
        f"{ACCEPTED} {allow}",  # already accepted by untracked (raw) or preDNAT (mangle) policy
        xmark(0, MARK_ALL),
        f"-j {FROM_HOST_ENDPOINT}",
        f"{comment_match('Host endpoint policy accepted packet.')} {ACCEPTED} {allow}",
    ]

    to_host: list[str] = []
    if not v4:
        to_host += [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} {allow}" for t in ICMPV6_HOST_TYPES]
    if settings.openstack_active(wl[:-1]):
        # OpenStack's workloads reach the metadata service, DHCP and DNS on the host before policy.
        metadata = _metadata_ip(settings)
        if v4 and metadata:
            to_host.append(f"-d {metadata}/32 -p tcp -m multiport --dports {settings.metadata_port} {allow}")
        client, server = (68, 67) if v4 else (546, 547)
        to_host += [f"-p udp -m multiport --sports {client} -m multiport --dports {server} {allow}",
                    f"-p udp -m multiport --dports 53 {allow}"]
    to_host += [f"-j {FROM_WL_DISPATCH}",
                f"{comment_match('Configured DefaultEndpointToHostAction')} -j {state.endpoint_to_host_action}"]

    out = [f"{ACCEPTED} {allow}", f"-o {wl} -j RETURN"]  # host → workload traffic is not policed
    if state.ipip and v4:
        out.append(f"-p 4 {comment_match('Allow IPIP packets to other Calico hosts')} "
                   f"-m set --match-set {HOSTS_SET} dst -m addrtype --src-type LOCAL {allow}")
    if state.vxlan and v4:
        out.append(f"-p udp {comment_match('Allow IPv4 VXLAN packets to other allowed hosts')} "
                   f"-m multiport --dports {settings.vxlan_port} -m addrtype --src-type LOCAL "
                   f"-m set --match-set {VXLAN_HOSTS_SET} dst {allow}")
    if state.vxlan6 and not v4:
        out.append(f"-p udp {comment_match('Allow IPv6 VXLAN packets to other allowed hosts')} "
                   f"-m multiport --dports {settings.vxlan_port} -m addrtype --src-type LOCAL "
                   f"-m set --match-set {VXLAN_HOSTS_SET_V6} dst {allow}")
    # DNAT'd host traffic gets its host endpoint policy in mangle POSTROUTING, where the output
    # interface is known.
    out += [xmark(0, MARK_ALL), f"-m conntrack ! --ctstate DNAT -j {TO_HOST_ENDPOINT}",
            f"{comment_match('Host endpoint policy accepted packet.')} {ACCEPTED} {allow}"]
    failsafe = failsafe_chains(settings, "filter", version)
    return {CHAIN_FORWARD: forward, CHAIN_INPUT: inp, WL_TO_HOST: to_host, FAILSAFE_IN: failsafe[FAILSAFE_IN],
            CHAIN_OUTPUT: out, FAILSAFE_OUT: failsafe[FAILSAFE_OUT]}


def _metadata_ip(settings: FelixSettings) -> str:
    """OpenStack's metadata server as an IPv4 address ("" for a hostname: Felix's ParseIP gives nil)."""
    try:
        address = ipaddress.ip_address(settings.metadata_addr)
    except ValueError:
        return ""
    return str(address) if address.version == 4 else ""


def _nat_static(state: DesiredState, wl: str, version: int) -> dict[str, list[str]]:
    """StaticNATTableChains: cali-PREROUTING, cali-POSTROUTING, cali-OUTPUT."""
    settings = state.settings
    pre = [f"-j {FIP_DNAT}"]
    metadata = _metadata_ip(settings)
    if version == 4 and settings.openstack_active(wl[:-1]) and metadata:
        # OpenStack: the well-known metadata address is the metadata server's.
        pre.append(f"-d 169.254.169.254/32 -p tcp -m multiport --dports 80 "
                   f"-j DNAT --to-destination {metadata}:{settings.metadata_port}")
    post = [f"-j {FIP_SNAT}", f"-j {NAT_OUTGOING}"]
    # Traffic the host itself sends into a tunnel leaves with the tunnel device's address.
    # With VXLAN on, UDP is masqueraded to source ports clear of the VXLAN port: a reply to the
    # port itself would hit the "VXLAN packets from non-allowed hosts" drop (Calico issue 12244).
    local = "-m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL"
    # The port exclusion follows VXLAN being on; the vxlan device's masquerade needs this host's
    # tunnel address too (Felix keys the two on different facts).
    udp_ports = masq_port_range_excluding(state.settings.vxlan_port) if state.vxlan_on(version) else ""
    tunnels = ((state.ipip, IPIP_DEVICE), (state.vxlan_tunnel(4), VXLAN_DEVICE)) if version == 4 else (
        (state.vxlan_tunnel(6), VXLAN_V6_DEVICE),)
    for enabled, device in tunnels:
        if enabled:
            if udp_ports:
                post.append(f"-o {device} -p udp {local} -j MASQUERADE --to-ports {udp_ports} --random-fully")
            post.append(f"-o {device} {local} -j MASQUERADE --random-fully")
    return {CHAIN_PREROUTING: pre, CHAIN_POSTROUTING: post, CHAIN_OUTPUT: [f"-j {FIP_DNAT}"]}


def _raw_static(state: DesiredState, wl: str, version: int) -> dict[str, list[str]]:
    """StaticRawTableChains (without WireGuard's incoming-mark chain: felix_client has no WireGuard):
    the failsafe chains, cali-PREROUTING and cali-OUTPUT."""
    # VXLAN flows use different source ports each way: tracking them only fills conntrack with
    # unreplied entries.
    notrack = [f"-p udp -m udp --dport {state.settings.vxlan_port} -j NOTRACK"] if state.vxlan_on(version) else []
    scratch = f"-m mark --mark {MARK_SCRATCH0:#x}/{MARK_SCRATCH0:#x}"
    # OpenStack: a DHCPv4 request from 0.0.0.0 passes before the RPF check, which some kernels'
    # rpfilter match fails for it (accepted in raw only: policy still sees it).
    dhcp = (["-s 0.0.0.0/32 -p udp -m multiport --sports 68 -m multiport --dports 67 -j ACCEPT"]
            if version == 4 and state.settings.openstack_active(wl[:-1]) else [])
    pre = [
        xmark(0, MARK_ALL),
        *notrack,
        f"-i {wl} {xmark(MARK_SCRATCH0, MARK_SCRATCH0)}",
        f"{scratch} -j {RPF_SKIP}",
        *dhcp,
        # Anti-spoofing: a workload's packet must arrive on the interface its source's route uses.
        # Always DROP: the kernel refuses REJECT outside INPUT, FORWARD and OUTPUT.
        f"{scratch} -m rpfilter --validmark --invert -j DROP",
        f"-m mark --mark 0x0/{MARK_SCRATCH0:#x} -j {FROM_HOST_ENDPOINT}",  # untracked policy
        f"{ACCEPTED} -j ACCEPT",
    ]
    out = [xmark(0, MARK_ALL), f"-j {TO_HOST_ENDPOINT}", *notrack, f"{ACCEPTED} -j ACCEPT"]
    return {**failsafe_chains(state.settings, "raw", version), CHAIN_PREROUTING: pre, CHAIN_OUTPUT: out}


def _mangle_static(state: DesiredState, version: int) -> dict[str, list[str]]:
    """StaticMangleTableChains: the failsafe chains, cali-PREROUTING (preDNAT host endpoint policy)
    and cali-POSTROUTING (host endpoint policy for DNAT'd host traffic, whose output interface is
    only known here). Felix's DSCP rule (QoS controls) is not rendered: felix_client has no QoS."""
    settings = state.settings
    allow = _mangle_allow(settings)
    pre = [
        f"-m conntrack --ctstate RELATED,ESTABLISHED {allow}",
        f"{ACCEPTED} {allow}",  # accepted by untracked policy in raw
        f"-j {FROM_HOST_ENDPOINT}",
        f"{comment_match('Host endpoint policy accepted packet.')} {ACCEPTED} {allow}",
    ]
    # RETURN, not ACCEPT, in POSTROUTING: later mangle rules may still have to see allowed traffic.
    post = [
        f"{ACCEPTED} -j RETURN",  # forwarded traffic (filter FORWARD set the mark) has had its policy
        xmark(0, MARK_ALL),
        f"-m conntrack --ctstate DNAT -j {TO_HOST_ENDPOINT}",
        f"{comment_match('Host endpoint policy accepted packet.')} {ACCEPTED} -j RETURN",
    ]
    return {**failsafe_chains(settings, "mangle", version), CHAIN_PREROUTING: pre, CHAIN_POSTROUTING: post}


def static_chains(state: DesiredState, table_name: str, version: int = 4,
                  iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> dict[str, list[str]]:
    """Felix's static chains of one table and family (StaticFilterTableChains, StaticNATTableChains,
    StaticRawTableChains, StaticMangleTableChains) by name, in Felix's order."""
    wl = f"{iface_prefix}+"
    if table_name == "filter":
        return _filter_static(state, wl, version)
    if table_name == "nat":
        return _nat_static(state, wl, version)
    if table_name == "raw":
        return _raw_static(state, wl, version)
    if table_name == "mangle":
        return _mangle_static(state, version)
    raise ValueError(f"no static chains for table {table_name!r}")


def _targets(chains: dict[str, list[str]]) -> set[str]:
    return {words[i + 1] for rules_ in chains.values() for rule in rules_
            for words in [rule.split()] for i, w in enumerate(words[:-1]) if w in ("-j", "-g")}


def _assemble(t: Table, state: DesiredState, version: int, static: dict[str, list[str]],
              rest: dict[str, list[str]] | None = None, iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> Table:
    """After the kernel chains' hooks: the static chains, the table's host-endpoint chains, then
    `rest`. The failsafe chains are programmed only while a host endpoint chain jumps to them:
    Felix programs only the chains something refers to."""
    t.chains.update(static)
    t.chains.update(_host_endpoint_chains(state, t.name, version, iface_prefix))
    t.chains.update(rest or {})
    used = _targets(t.chains)
    for chain in (FAILSAFE_IN, FAILSAFE_OUT):
        if chain not in used:
            t.chains.pop(chain, None)
    return t


def render_filter(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX, version: int = 4) -> Table:
    settings = state.settings
    t = Table("filter", ["INPUT", "FORWARD", "OUTPUT"], {})
    t.add("INPUT", f"-j {CHAIN_INPUT}")
    t.add("FORWARD", f"-j {CHAIN_FORWARD}")
    # StaticFilterForwardAppendRules; the mark tells mangle POSTROUTING the packet was forwarded.
    t.add("FORWARD", f"{comment_match('Policy explicitly accepted packet.')} {ACCEPTED} {_allow(settings)}")
    t.add("FORWARD", xmark(MARK_ACCEPT, MARK_ACCEPT))
    t.add("OUTPUT", f"-j {CHAIN_OUTPUT}")
    # Service loop prevention (ServiceLoopPrevention) is not rendered: the chain is empty, but jumped to.
    chains: dict[str, list[str]] = {CIDR_BLOCK: []}

    names = [ep.iface for ep in state.endpoints]
    chains.update(dispatch_chains(names, FROM_WL_DISPATCH, "-i", FROM_WORKLOAD_PREFIX))
    chains.update(dispatch_chains(names, TO_WL_DISPATCH, "-o", TO_WORKLOAD_PREFIX))

    for ep in state.endpoints:
        chains[endpoint_chain_name(ep.iface, True)] = render_endpoint_chain(ep, True, settings)
        chains[endpoint_chain_name(ep.iface, False)] = render_endpoint_chain(ep, False, settings)
        if ep.active:  # the policy-group chains its endpoint chains jump to (shared between endpoints)
            chains.update(policy_group_chains(group_tiers(ep.ingress, True)))
            chains.update(policy_group_chains(group_tiers(ep.egress, False)))

    # Only chains some endpoint jumps to are programmed (Felix refcounts reachability): an
    # ingress-only policy gets no cali-po- chain.
    live = [ep for ep in state.endpoints if ep.active]  # an admin-down endpoint's chain is a bare DROP
    wanted_in = {p.key for ep in live for tier in ep.ingress for p in tier.policies}
    wanted_out = {p.key for ep in live for tier in ep.egress for p in tier.policies}
    for key in sorted(state.policies, key=lambda k: (k.kind, k.namespace, k.name)):
        directions = [inbound for inbound, wanted in ((True, wanted_in), (False, wanted_out)) if key in wanted]
        chains.update(render_policy_chains(state.policies[key], version, settings, directions))
    for name in sorted({p for ep in live for p in ep.profile_ids}):
        profile = state.profiles.get(name) or ParsedProfile(name, (), ())
        chains.update(render_profile_chains(profile, version, settings))
    return _assemble(t, state, version, static_chains(state, "filter", version, iface_prefix), chains,
                     iface_prefix)


def render_nat(state: DesiredState, version: int = 4, iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> Table:
    t = Table("nat", ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"], {})
    t.add("PREROUTING", f"-j {CHAIN_PREROUTING}")
    t.add("OUTPUT", f"-j {CHAIN_OUTPUT}")
    t.add("POSTROUTING", f"-j {CHAIN_POSTROUTING}")
    masq = state.masq_pools if version == 4 else state.masq_pools6
    # Floating IPs (OpenStack) are not rendered: their chains are empty, but jumped to.
    rest = {NAT_OUTGOING: nat_outgoing_rules(state.settings, version) if masq else [], FIP_DNAT: [], FIP_SNAT: []}
    return _assemble(t, state, version, static_chains(state, "nat", version, iface_prefix), rest)


def render_raw(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX, version: int = 4) -> Table:
    t = Table("raw", ["PREROUTING", "OUTPUT"], {})
    t.add("PREROUTING", f"-j {CHAIN_PREROUTING}")
    t.add("OUTPUT", f"-j {CHAIN_OUTPUT}")
    # Workloads allowed to skip the RPF check (allowSpoofedSourcePrefixes) are not rendered: empty chain.
    return _assemble(t, state, version, static_chains(state, "raw", version, iface_prefix), {RPF_SKIP: []},
                     iface_prefix)


def render_mangle(state: DesiredState, version: int = 4, iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> Table:
    t = Table("mangle", ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"], {})
    t.add("PREROUTING", f"-j {CHAIN_PREROUTING}")
    t.add("POSTROUTING", f"-j {CHAIN_POSTROUTING}")
    return _assemble(t, state, version, static_chains(state, "mangle", version), iface_prefix=iface_prefix)


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
    """Every table of one family, its marks where IptablesMarkMask puts them (`Table.remarked`),
    each through `Table.guarded`."""
    marks = state.settings.marks
    return {
        "filter": render_filter(state, iface_prefix, version).remarked(marks).guarded(),
        "nat": render_nat(state, version, iface_prefix).remarked(marks).guarded(),
        "raw": render_raw(state, iface_prefix, version).remarked(marks).guarded(),
        "mangle": render_mangle(state, version, iface_prefix).remarked(marks).guarded(),
    }


def render_iptables(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX, version: int = 4) -> str:
    """All tables of one family as one `iptables-save`/`iptables-restore` (or ip6tables) document."""
    return "".join(t.render() for t in render_tables(state, iface_prefix, version).values())


def render_ip6tables(state: DesiredState, iface_prefix: str = WORKLOAD_IFACE_PREFIX) -> str:
    """The IPv6 tables (`ip6tables.save`); empty on a node that does not use IPv6."""
    return render_iptables(state, iface_prefix, 6) if state.ipv6 else ""
