"""Everything one IP family's BIRD templates print: GetBirdBGPConfig (confd's template funcs).

The router ID, listen address and port, debug levels, direct interfaces, the peers (`peers`), the
BGPFilter functions (`filters`), prefix-advertisement communities, the IP pools' export and kernel
filters, WireGuard's kernel rejects, this node's blocks and the service routes (`services`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from confd_client.bgp.filters import BIRD_INT_MAX, OVERRIDE_PREFERENCE, filter_functions
from confd_client.bgp.peers import BirdPeer, LocalSide, bird_peer, derive_peerings, mesh_peers
from confd_client.bgp.services import cidr_key, service_cidrs, service_routes
from confd_client.bgp.store import DEFAULT_AS, BGPStore, NodeBGP
from confd_client.bgp.validate import LARGE_COMMUNITY, STANDARD_COMMUNITY, check_env
from confd_client.bgp.values import hash_to_ipv4, ip_version

DEFAULT_ROUTE_PRIORITY = 1024


@dataclass
class CommunityRule:
    cidr: str
    add_statements: list[str]


@dataclass
class BirdConfig:
    """What one family's templates print (types.BirdBGPConfig)."""

    version: int
    node_name: str
    node_ip: str = ""
    node_ipv6: str = ""
    router_id: str = ""
    as_number: str = DEFAULT_AS
    debug_mode: str = ""
    peer_debug_mode: str = ""
    listen_address: str = ""
    listen_port: str = ""
    direct_interfaces: str = ""
    normal_route_priority: int = DEFAULT_ROUTE_PRIORITY
    peers: list[BirdPeer] = field(default_factory=list)
    communities: list[CommunityRule] = field(default_factory=list)
    filter_functions: list[str] = field(default_factory=list)
    set_metric_for_bgp_routes: list[str] = field(default_factory=list)
    export_reject_disabled_pools: list[str] = field(default_factory=list)
    export_accept_pools: list[str] = field(default_factory=list)
    ibgp_tunnel_patterns: list[str] = field(default_factory=list)
    kernel_filter_pools: list[str] = field(default_factory=list)
    wireguard_kernel_filter: list[str] = field(default_factory=list)
    blocks: list[tuple[str, str]] = field(default_factory=list)  # (cidr, state) sorted by key
    static_routes: list[str] = field(default_factory=list)
    reject_cidrs: list[str] = field(default_factory=list)
    is_route_reflector: bool = False
    load_balancer_ips: list[str] = field(default_factory=list)
    external_ips: list[str] = field(default_factory=list)

    @property
    def family_ip(self) -> str:
        return self.node_ip if self.version == 4 else self.node_ipv6


def _communities(store: BGPStore, me: str, version: int) -> list[CommunityRule]:
    """prefix_advertisements: the node's BGPConfiguration wins over the default one when it has any."""
    node_cfg = store.node_config(me)
    spec = node_cfg if node_cfg is not None and node_cfg.get("prefixAdvertisements") is not None else None
    if spec is None:
        spec = store.global_config if store.global_config.get("prefixAdvertisements") is not None else None
    if spec is None:
        return []
    defined = spec.get("communities") or []
    rules = []
    for advert in spec.get("prefixAdvertisements") or []:
        cidr = str(advert.get("cidr") or "")
        if not cidr or (":" in cidr) != (version == 6):
            continue
        values: set[str] = set()
        for community in advert.get("communities") or []:
            community = str(community)
            if STANDARD_COMMUNITY.match(community) or LARGE_COMMUNITY.match(community):
                values.add(community)
                continue
            for named in defined:
                if str(named.get("name")) == community:
                    values.add(str(named.get("value")))
                    break
        statements = []
        for value in sorted(values):
            parts = value.split(":")
            if len(parts) == 2:
                statements.append(f"bgp_community.add(({parts[0]}, {parts[1]}));")
            elif len(parts) == 3:
                statements.append(f"bgp_large_community.add(({parts[0]}, {parts[1]}, {parts[2]}));")
        if statements:
            rules.append(CommunityRule(cidr=cidr, add_statements=statements))
    return rules


def _cluster_route_policy(spec: Mapping[str, object]) -> tuple[bool, bool]:
    """(BIRD programs IPIP pools, BIRD programs unencapsulated pools) per programClusterRoutes."""
    value = spec.get("programClusterRoutes")
    return {
        "Disabled": (False, False),
        "Enabled": (True, True),
        "EnabledIPIPOnly": (True, False),
        "EnabledNoEncapOnly": (False, True),
    }.get(str(value) if value is not None else "", (False, True))


def _pool_statement(cidr: str, extra: str, action: str, comment: str = "") -> str:
    body = f"{extra} {action};" if extra else f"{action};"
    statement = f"  if (net ~ {cidr}) then {{ {body} }}"
    return f"{statement} # {comment}" if comment else statement


def _uses(mode: object) -> bool:
    return str(mode or "").lower() in ("always", "cross-subnet", "crosssubnet")


def pool_filters(store: BGPStore, cfg: BirdConfig, me: str) -> None:
    """processIPPools: export rejects/accepts and the kernel programming filter, each string-sorted.

    Sets these four fields of `cfg` afresh (nothing else reads the pools), so that a renderer may
    redo them alone on a copy of an earlier config when only the pools changed."""
    cfg.export_reject_disabled_pools, cfg.export_accept_pools, cfg.kernel_filter_pools = [], [], []
    bird_ipip, bird_noencap = _cluster_route_policy(store.global_config)
    cfg.ibgp_tunnel_patterns = ["*.cali", "*.calico"] + ([] if bird_ipip else ["tunl0"])
    node = store.nodes.get(me)
    # network_v4 exists only for a node with an IPv4 address; without it upstream emits no v4 kernel lines.
    local_subnet = None
    if node is not None:
        local_subnet = (node.network_v4 if cfg.version == 4 else node.network_v6) or None
    for value in store.pools[cfg.version].values():
        cidr = str(value.get("cidr") or "")
        if not cidr:
            continue
        vxlan = _uses(value.get("vxlan_mode"))
        ipip = _uses(value.get("ipip_mode"))
        programs = not vxlan and (bird_ipip if ipip else bird_noencap)
        if value.get("disableBGPExport"):
            cfg.export_reject_disabled_pools.append(_pool_statement(cidr, "", "reject", "BGP export is disabled."))
        else:
            cfg.export_accept_pools.append(_pool_statement(cidr, "", "accept"))
        if cfg.version == 4 and local_subnet is None:
            continue  # upstream: no network_v4 key, no kernel lines
        if vxlan:
            kernel = _pool_statement(cidr, "", "reject", "VXLAN routes are handled by Felix.")
        elif programs:
            extra = ""
            if cfg.version == 4:
                mode = str(value.get("ipip_mode") or "").lower()
                if mode == "always":
                    extra = 'krt_tunnel="tunl0";'
                elif mode == "cross-subnet":
                    extra = (
                        f"if (defined(bgp_next_hop)&&(bgp_next_hop ~ {local_subnet})) then "
                        'krt_tunnel=""; else krt_tunnel="tunl0";'
                    )
            kernel = _pool_statement(cidr, extra, "accept")
        else:
            kernel = _pool_statement(cidr, "", "reject", "Cluster routes are handled by Felix.")
        # IPv6 keeps only the rejects: the filter's final line accepts everything else anyway.
        if cfg.version == 6 and " accept; }" in kernel:
            continue
        cfg.kernel_filter_pools.append(kernel)
    cfg.kernel_filter_pools.sort()
    cfg.export_reject_disabled_pools.sort()
    cfg.export_accept_pools.sort()


def _wireguard(store: BGPStore, cfg: BirdConfig, me: str) -> None:
    def wg(node: NodeBGP) -> str:
        return node.wireguard_v4 if cfg.version == 4 else node.wireguard_v6

    mine = store.nodes.get(me)
    if mine is None or not wg(mine):
        return  # only a node that itself routes over WireGuard leaves those routes to Felix
    for name, node in store.nodes.items():
        ip = node.ip(cfg.version)
        if name == me or not ip or not wg(node):
            continue
        cfg.wireguard_kernel_filter.append(
            f"  if (defined(bgp_next_hop) && bgp_next_hop = {ip}) then {{ reject; }}"
            " # WireGuard routes handled by Felix."
        )
    cfg.wireguard_kernel_filter.sort()


def node_blocks(store: BGPStore, me: str, version: int) -> list[tuple[str, str]]:
    """This node's affine blocks of one family as (cidr, state), in the v1 key order the templates keep.
    Only `bird_aggr.cfg` prints them."""
    blocks = store.affinities.get(me, {}).get(version, {})
    return [(key.replace("-", "/"), blocks[key]) for key in sorted(blocks)]


def bird_config(store: BGPStore, version: int, me: str, env: Mapping[str, str]) -> BirdConfig:
    """GetBirdBGPConfig for one IP family. Raises Invalid for a malformed CALICO_ROUTER_ID or
    CALICO_ADVERTISE_CLUSTER_IPS: the agent then keeps the config it has."""
    check_env(env)
    node = store.nodes.get(me)
    glob = store.global_config
    cfg = BirdConfig(version=version, node_name=me)
    if node is not None:
        cfg.node_ip, cfg.node_ipv6 = node.ipv4, node.ipv6
    cfg.as_number = store.node_as(me)
    node_cfg = store.node_config(me) or {}
    level = str(node_cfg.get("logSeverityScreen") or glob.get("logSeverityScreen") or "info").lower()
    if level not in ("debug", "info"):
        level = "none"
    if level == "debug":
        cfg.debug_mode, cfg.peer_debug_mode = "all", "debug all;"
    elif level == "info":
        cfg.debug_mode, cfg.peer_debug_mode = "{ states }", "debug { states, routes, filters, events };"
    router_id = env.get("CALICO_ROUTER_ID", "")
    if router_id == "hash":
        cfg.router_id = hash_to_ipv4(me)
    else:
        # IPv6 BIRD also needs a 4-octet router id, so bird6.cfg uses the IPv4 address too.
        cfg.router_id = router_id or cfg.node_ip
    if str(glob.get("bindMode") or "") == "NodeIP":
        cfg.listen_address = cfg.family_ip
    port = store.listen_port(me)
    cfg.listen_port = str(port) if port else ""
    ignored = [str(name) for name in glob.get("ignoredInterfaces") or []]
    cfg.direct_interfaces = ", ".join([*(f'-"{name}"' for name in ignored), '-"cali*"', '-"kube-ipvs*"', '"*"'])
    priority = glob.get(f"ipv{version}NormalRoutePriority")
    cfg.normal_route_priority = int(priority) if priority is not None else DEFAULT_ROUTE_PRIORITY
    cfg.set_metric_for_bgp_routes = [
        "  if (defined(source) && (source = RTS_BGP) && !defined(krt_metric)) then {",
        f"      krt_metric = {cfg.normal_route_priority};",
        "      if (defined(bgp_local_pref)) then {",
        f"          krt_metric = {BIRD_INT_MAX} - bgp_local_pref;",
        "      }",
        f"      if (krt_metric < {cfg.normal_route_priority}) then {{",
        f"          preference = {OVERRIDE_PREFERENCE};",
        "      }",
        "  }",
    ]

    cluster_id = node.rr_cluster_id if node is not None else ""
    cfg.is_route_reflector = bool(cluster_id)
    local = LocalSide(version, cfg.family_ip, cfg.as_number, cfg.normal_route_priority, cluster_id)
    peers = mesh_peers(store, local)
    global_peers, node_peers = derive_peerings(store, me)
    for prefix, table in (("Global", global_peers), ("Node", node_peers)):
        for peering in table.values():
            if ip_version(peering.ip) != version:
                continue
            peer = bird_peer(store, local, peering, "Local_Workload" if peering.local_bgp_peer else prefix)
            if peer is not None:
                peers.append(peer)
    cfg.peers = sorted(peers, key=lambda p: p.name)

    cfg.communities = _communities(store, me, version)
    pool_filters(store, cfg, me)
    _wireguard(store, cfg, me)
    cfg.filter_functions = filter_functions(store, version)

    cfg.blocks = node_blocks(store, me, version)

    routes, rejects = service_routes(store, me, env)
    cfg.load_balancer_ips = service_cidrs(glob, "serviceLoadBalancerIPs")
    cfg.external_ips = service_cidrs(glob, "serviceExternalIPs")
    # `ls /staticroutes` order: keys with `/` as `-`, string-sorted.
    cfg.static_routes = sorted((c for c in routes if (":" in c) == (version == 6)), key=cidr_key)
    cfg.reject_cidrs = sorted((c for c in rejects if (":" in c) == (version == 6)), key=cidr_key)
    return cfg
