"""Who this node peers with: the node-to-node mesh, global and node-specific BGPPeers, and each
peering as a BIRD `protocol bgp` (named `Mesh_…`, `Global_…`, `Node_…`, `Local_Workload_…`).

Upstream: updatePeersV1 (confd's bgp_processor.go) derives the v1 peerings: global, node-specific
and selector peers, reverse peerings, dedupe (first emitted wins; a node peering loses to a global
one for the same IP and port). buildPeerFromData / the mesh loop of GetBirdBGPConfig turn them
into what the template prints. Quirks are copied on purpose (string comparison of IPs for `passive`,
string sorts); each is commented where it happens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confd_client.bgp.filters import export_filter, import_filter
from confd_client.bgp.store import BGPStore
from confd_client.bgp.validate import Invalid
from confd_client.bgp.values import as_string, go_duration_seconds, ip_version, parse_ip, split_ip_port

log = logging.getLogger(__name__)

PeerKey = tuple[str, int]  # (ip, port), as the v1 key path named a peering


@dataclass
class Peering:
    """One v1 peering (`backends.BGPPeer` JSON in upstream's cache)."""

    ip: str
    port: int = 0
    as_num: str = ""
    rr_cluster_id: str = ""
    password: str | None = None
    source_addr: str = ""
    keep_next_hop: bool = False
    restart_time: str = ""
    keepalive_time: str = ""
    calico_node: bool = False
    num_allow_local_as: int = 0
    ttl_security: int = 0
    reachable_by: str = ""
    local_as_num: str = ""
    filters: list[str] = field(default_factory=list)
    next_hop_mode: str = ""
    passive_mode: bool = False
    local_bgp_peer: bool = False  # a local workload (endpoint-status file), named Local_Workload_<ip>


@dataclass
class BirdPeer:
    name: str
    ip: str
    type: str
    as_number: str
    port: str = ""
    local_as_number: str = ""
    source_addr: str = ""
    ttl_security: str = "off"
    import_filter: str = ""
    export_filter: str = ""
    passive: bool = False
    graceful_restart: str = ""
    keepalive_time: str = ""
    route_reflector: bool = False
    rr_cluster_id: str = ""
    password: str = ""
    next_hop_keep: bool = False
    next_hop_self: bool = False
    num_allow_local_as: str = ""
    reachable_by: str = ""


@dataclass(frozen=True)
class LocalSide:
    """This node's side of every session of one IP family."""

    version: int
    ip: str  # this node's address in the family ("" when it has none)
    as_number: str
    normal_route_priority: int
    cluster_id: str  # route reflector cluster ID, "" when not a reflector


# -- updatePeersV1 ----------------------------------------------------------------------------------


def _reachable_by(spec: Mapping[str, Any]) -> str:
    """The gateway a peer is reached through, in Go's form ("" when unset or not an address)."""
    text = str(spec.get("reachableBy") or "")
    return (parse_ip(text) or "") if text else ""


def _node_as_peers(
    store: BGPStore, node_name: str, versions: tuple[int, ...], spec: Mapping[str, Any]
) -> list[Peering]:
    """nodeAsBGPPeers: a Calico node as the far end of a selector or reverse peering."""
    node = store.nodes.get(node_name)
    if node is None:
        return []
    peers = []
    for version in versions:
        ip = parse_ip(node.ip(version)) if node.ip(version) else None
        if ip is None:
            continue
        peers.append(
            Peering(
                ip=ip,
                port=store.listen_port(node_name),
                as_num=node.as_num or store.global_as(),
                rr_cluster_id=node.rr_cluster_id,
                ttl_security=int(spec.get("ttlSecurity") or 0),
                reachable_by=_reachable_by(spec),
            )
        )
    return peers


def _set_common_fields(store: BGPStore, peers: list[Peering], spec: Mapping[str, Any], selector_peer: bool) -> None:
    """setPeerConfigFieldsFromV3Resource: the fields every peering of one BGPPeer shares."""
    password = store.secret_value((spec.get("password") or {}).get("secretKeyRef"), "spec.password")
    restart = go_duration_seconds(spec.get("maxRestartTime"))
    keepalive = go_duration_seconds(spec.get("keepaliveTime"))
    for peer in peers:
        peer.password = password
        peer.source_addr = str(spec.get("sourceAddress") or "UseNodeIP")
        if restart is not None:
            peer.restart_time = str(restart)
        if keepalive is not None:
            peer.keepalive_time = str(keepalive)
        peer.local_as_num = as_string(spec.get("localASNumber"))
        peer.filters = [str(name) for name in spec.get("filters") or []]
        peer.next_hop_mode = str(spec.get("nextHopMode") or "")
        if selector_peer:
            peer.keep_next_hop = bool(spec.get("keepOriginalNextHop"))
            peer.num_allow_local_as = int(spec.get("numAllowedLocalASNumbers") or 0)


def _local_nodes(store: BGPStore, spec: Mapping[str, Any]) -> list[str]:
    if spec.get("nodeSelector"):
        return store.nodes_matching(str(spec["nodeSelector"]))
    return [str(spec["node"])] if spec.get("node") else []


def _local_workload_peers(store: BGPStore, name: str, spec: Mapping[str, Any]) -> list[Peering]:
    """local_bgp_peer_watcher: one passive peering per address of each workload naming this BGPPeer."""
    if store.local_workloads_source is None:
        return []
    peers = []
    for status in store.local_workloads_source():
        if status.get("bgpPeerName") != name:
            continue
        for net in [*(status.get("ipv4Nets") or []), *(status.get("ipv6Nets") or [])]:
            ip = parse_ip(str(net).split("/", 1)[0])
            if ip is None:
                continue
            peers.append(Peering(ip=ip, as_num=as_string(spec.get("asNumber")) or "0", passive_mode=True,
                                 local_bgp_peer=True))
    restart = go_duration_seconds(spec.get("maxRestartTime"))
    keepalive = go_duration_seconds(spec.get("keepaliveTime"))
    password = store.secret_value((spec.get("password") or {}).get("secretKeyRef"), "spec.password")
    for peer in peers:
        # The workload connects to us: no source address, and we never dial it.
        peer.local_as_num = as_string(spec.get("localASNumber"))
        peer.filters = [str(f) for f in spec.get("filters") or []]
        peer.password = password
        peer.restart_time = "" if restart is None else str(restart)
        peer.keepalive_time = "" if keepalive is None else str(keepalive)
        peer.num_allow_local_as = int(spec.get("numAllowedLocalASNumbers") or 0)
    return peers


def _check_filters_kept(store: BGPStore, spec: Mapping[str, Any]) -> None:
    """A peer naming a rejected BGPFilter is rejected too: without the filter it would pass more."""
    for name in spec.get("filters") or []:
        if str(name) in store.rejected_filters:
            raise Invalid("spec.filters", f"BGPFilter {name} was rejected")


def _peerings_of(
    store: BGPStore, me: str, spec: Mapping[str, Any], name: str, global_pass: bool, node_ips: set[str]
) -> tuple[list[Peering], bool]:
    """The peerings one BGPPeer defines in one pass, and whether they are this node's."""
    node_selector, node = str(spec.get("nodeSelector") or ""), str(spec.get("node") or "")
    if spec.get("localWorkloadSelector"):
        # Local workload peers come from this node's endpoint-status files, not from node IPs.
        if global_pass or me in _local_nodes(store, spec):
            return _local_workload_peers(store, name, spec), True
        return [], False
    if node_selector:
        local_nodes = store.nodes_matching(node_selector)
    elif node:
        local_nodes = [node]
    else:
        local_nodes = []
    peers: list[Peering] = []
    selector_peer = bool(spec.get("peerSelector"))
    if selector_peer:
        for peer_node in store.nodes_matching(str(spec["peerSelector"])):
            peers.extend(_node_as_peers(store, peer_node, (4, 6), spec))
    else:
        host, port = split_ip_port(str(spec.get("peerIP") or ""))
        ip = parse_ip(host) if host else None
        if ip is None:
            raise Invalid("spec.peerIP", "not an IP address or [IP]:port")
        as_num = as_string(spec.get("asNumber"))
        if port == 0:
            matching = store.nodes_with_ip_port_and_as(ip, as_num, 0)
            if matching:
                port = store.listen_port(matching[0])
        reachable_by = _reachable_by(spec)
        if spec.get("reachableBy") and (not reachable_by or ip_version(reachable_by) != ip_version(ip)):
            raise Invalid("spec.reachableBy", "not an address of the peer's IP family")
        peers.append(
            Peering(
                ip=ip,
                port=port,
                as_num=as_num or "0",
                keep_next_hop=bool(spec.get("keepOriginalNextHop")),
                calico_node=ip in node_ips,
                ttl_security=int(spec.get("ttlSecurity") or 0),
                num_allow_local_as=int(spec.get("numAllowedLocalASNumbers") or 0),
                reachable_by=reachable_by,
            )
        )
    if peers:
        _set_common_fields(store, peers, spec, selector_peer)
    return peers, global_pass or me in local_nodes


def _reverse_peerings(store: BGPStore, me: str, spec: Mapping[str, Any]) -> list[Peering]:
    """The nodes a BGPPeer points at peer back with the nodes it is defined for."""
    if str(spec.get("reversePeering") or "") == "Manual" or spec.get("localWorkloadSelector"):
        return []
    if spec.get("peerSelector"):
        local_nodes = store.nodes_matching(str(spec["peerSelector"]))
        versions: tuple[int, ...] = (4, 6)
    else:
        host, port = split_ip_port(str(spec.get("peerIP") or ""))
        ip = parse_ip(host) if host else None
        if ip is None:
            return []
        local_nodes = store.nodes_with_ip_port_and_as(ip, as_string(spec.get("asNumber")), port)
        versions = (ip_version(ip),)
    if me not in local_nodes:
        return []
    if spec.get("nodeSelector"):
        peer_nodes = store.nodes_matching(str(spec["nodeSelector"]))
    elif spec.get("node"):
        peer_nodes = [str(spec["node"])]
    else:
        peer_nodes = store.nodes_matching("all()")
    peers = [peer for peer_node in peer_nodes for peer in _node_as_peers(store, peer_node, versions, spec)]
    if peers:
        _set_common_fields(store, peers, spec, True)
    return peers


def derive_peerings(store: BGPStore, me: str) -> tuple[dict[PeerKey, Peering], dict[PeerKey, Peering]]:
    """The v1 global peerings and this node's peerings, keyed by (ip, port), as updatePeersV1 emits them.

    A BGPPeer with a value that may not reach BIRD (a password BIRD cannot quote, a rejected filter,
    a malformed peerIP) contributes no peering at all.
    """
    global_peers: dict[PeerKey, Peering] = {}
    node_peers: dict[PeerKey, Peering] = {}

    def key_of(peer: Peering) -> PeerKey:
        # The v1 key path leaves out the default BGP port, so 179 and "no port" are one key.
        return (peer.ip, 0 if peer.port == 179 else peer.port)

    def emit(is_global: bool, peer: Peering) -> None:
        key = key_of(peer)
        if is_global:
            global_peers.setdefault(key, peer)
        elif key not in node_peers and key not in global_peers:
            node_peers[key] = peer

    node_ips = store.node_ips()
    # Go ranges over a map here; we go by name so that which duplicate wins is at least stable.
    ordered = [(name, store.peers[name].get("spec") or {}) for name in sorted(store.peers)]
    rejected: set[str] = set()
    for name, spec in ordered:
        try:
            _check_filters_kept(store, spec)
        except Invalid as exc:
            store.rejections.report("BGPPeer", name, exc)
            rejected.add(name)
    for global_pass in (True, False):
        for name, spec in ordered:
            is_global = not spec.get("nodeSelector") and not spec.get("node")
            if global_pass != is_global or name in rejected:
                continue
            try:
                peers, mine = _peerings_of(store, me, spec, name, global_pass, node_ips)
            except Invalid as exc:
                store.rejections.report("BGPPeer", name, exc)
                rejected.add(name)
                continue
            if mine:
                for peer in peers:
                    emit(global_pass, peer)
    for name, spec in ordered:
        if name in rejected:
            continue
        try:
            reverse = _reverse_peerings(store, me, spec)
        except Invalid as exc:
            store.rejections.report("BGPPeer", name, exc)
            continue
        for peer in reverse:
            emit(False, peer)
    return global_peers, node_peers


# -- buildPeerFromData and the mesh ----------------------------------------------------------------


def peer_name(prefix: str, ip: str, port: int) -> str:
    name = f"{prefix}_{ip.replace('.', '_').replace(':', '_')}"
    return f"{name}_port_{port}" if port > 0 else name


def bird_peer(store: BGPStore, local: LocalSide, peering: Peering, prefix: str) -> BirdPeer | None:
    """buildPeerFromData."""
    my_ip = local.ip
    if peering.ip == my_ip:
        return None  # never peer with ourselves
    peer = BirdPeer(
        name=peer_name(prefix, peering.ip, peering.port),
        ip=peering.ip,
        type=prefix.lower(),
        as_number=peering.as_num,
        port=str(peering.port) if peering.port > 0 else "",
        local_as_number=peering.local_as_num if peering.local_as_num not in ("", "0") else "",
        ttl_security=str(peering.ttl_security) if peering.ttl_security > 0 else "off",
        reachable_by=peering.reachable_by,
    )
    if peering.source_addr == "UseNodeIP":
        peer.source_addr = my_ip
    effective_as = peer.local_as_number or local.as_number
    same_as = peer.as_number == effective_as
    priority = local.normal_route_priority
    peer.import_filter = import_filter(store, peering.filters, local.version, same_as, priority)
    peer.export_filter = export_filter(store, peering.filters, local.version, same_as, priority)
    if peering.password is not None:
        peer.password = peering.password
    peer.graceful_restart = peering.restart_time
    peer.keepalive_time = peering.keepalive_time
    peer.passive = peering.passive_mode
    if peering.num_allow_local_as > 0:
        peer.num_allow_local_as = str(peering.num_allow_local_as)
    if peering.next_hop_mode == "Self":
        peer.next_hop_self = True
    elif peering.next_hop_mode == "Keep":
        peer.next_hop_keep = True
    if peering.keep_next_hop and not same_as:
        peer.next_hop_keep = True  # keepOriginalNextHop only means something towards eBGP peers
    if same_as and local.cluster_id and peering.rr_cluster_id != local.cluster_id:
        peer.route_reflector = True
        peer.rr_cluster_id = local.cluster_id
    # Passive only toward Calico nodes "above" us; the comparison is of strings, as upstream's is.
    if peer.type in ("global", "local_workload") and not peer.passive and peering.calico_node and peering.ip > my_ip:
        peer.passive = True
    return peer


def mesh_peers(store: BGPStore, local: LocalSide) -> list[BirdPeer]:
    """The node-to-node mesh: every other node with an address in the family, unless disabled."""
    if local.cluster_id:
        return []  # a route reflector does not take part in the full mesh
    glob = store.global_config
    mesh = glob.get("nodeToNodeMeshEnabled")
    if mesh is not None and not mesh:
        return []
    my_ip = local.ip
    restart = go_duration_seconds(glob.get("nodeMeshMaxRestartTime"))
    try:
        password = store.secret_value((glob.get("nodeMeshPassword") or {}).get("secretKeyRef"),
                                      "spec.nodeMeshPassword")
    except Invalid as exc:
        store.rejections.report("BGPConfiguration", "default", exc)
        return []
    peers = []
    for name, node in store.nodes.items():
        ip = node.ip(local.version)
        if not ip or ip == my_ip or node.rr_cluster_id:
            continue
        port = store.listen_port(name)
        as_num = node.as_num or local.as_number
        same_as = as_num == local.as_number
        peers.append(
            BirdPeer(
                name=peer_name("Mesh", ip, 0),
                ip=ip,
                type="mesh",
                as_number=as_num,
                port=str(port) if port else "",
                source_addr=my_ip,
                ttl_security="off",
                password=password or "",
                graceful_restart="" if restart is None else str(restart),
                # Only one side of each mesh session connects: string comparison, as upstream does.
                passive=ip > my_ip,
                import_filter=import_filter(store, [], local.version, same_as, local.normal_route_priority),
                export_filter=export_filter(store, [], local.version, same_as, local.normal_route_priority),
            )
        )
    return peers
