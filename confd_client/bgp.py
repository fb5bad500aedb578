"""The BGP model: what Calico's confd derives from the `bgp` syncer's KVs before it prints BIRD config.

Upstream confd (confd/pkg/backends/calico/client.go + bgp_processor.go) first rebuilds a v1 key space
in memory (`/calico/bgp/v1/...`) from the v3 Nodes, BGPConfigurations and BGPPeers, and the templates
then read it back through `getBGPConfig`. We keep the same two steps, without the string key space:

1. `BGPStore` mirrors the syncer KVs (v3 Nodes/BGPConfigurations/BGPPeers/BGPFilters, v1 IP pools,
   block affinities) and answers the questions the v1 keys answered (node IPs, AS numbers, listen ports).
2. `derive_peerings` is `updatePeersV1`: global, node-specific and selector peers, reverse peerings,
   dedupe (first emitted wins; a node peering loses to a global one for the same IP and port).
3. `bird_config` is `GetBirdBGPConfig`: everything one template family (v4 or v6) prints.

Quirks are copied on purpose (string comparison of IPs for `passive`, string sorts, Go `%v` of
bools); each is commented where it happens.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from typha.model.selector import parse as parse_selector

log = logging.getLogger(__name__)

# Calico's key prefixes, as the bgp syncer sends them.
NODE_PREFIX = "/calico/resources/v3/projectcalico.org/nodes/"
BGPCONFIG_PREFIX = "/calico/resources/v3/projectcalico.org/bgpconfigurations/"
BGPPEER_PREFIX = "/calico/resources/v3/projectcalico.org/bgppeers/"
BGPFILTER_PREFIX = "/calico/resources/v3/projectcalico.org/bgpfilters/"
POOL_PREFIX = "/calico/v1/ipam/v"  # v4/pool/<cidr> or v6/pool/<cidr>
AFFINITY_PREFIX = "/calico/ipam/v2/host/"

DEFAULT_AS = "64512"  # client.go globalDefaults
BIRD_INT_MAX = 2147483647  # template.BirdIntMaxValue
OVERRIDE_PREFERENCE = 200  # birdOverridePreference
DEFAULT_ROUTE_PRIORITY = 1024
MAX_BIRD_SYMBOL = 64
EXCLUDE_LB_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
_STANDARD_COMMUNITY = re.compile(r"^(\d+):(\d+)$")
_LARGE_COMMUNITY = re.compile(r"^(\d+):(\d+):(\d+)$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_seconds(text: Any) -> int | None:
    """Seconds of a Go duration string ("10s", "2m30s"), rounded half away from zero like math.Round."""
    if text is None:
        return None
    if isinstance(text, int | float):
        return int(text)  # not expected from the API, but harmless
    value = str(text).strip()
    sign = -1 if value.startswith("-") else 1
    value = value.lstrip("+-")
    if value == "0":
        return 0
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        return None
    return sign * int(total + 0.5)


def go_bool(value: bool) -> str:
    """Go's %v of a bool, which the filter calls print."""
    return "true" if value else "false"


def as_string(value: Any) -> str:
    """numorstring.ASNumber.String(): stored as an integer, printed in plain notation."""
    if value is None or value == "":
        return ""
    if isinstance(value, str) and "." in value:
        high, low = value.split(".", 1)
        return str((int(high) << 16) + int(low))
    return str(int(value))


def hash_to_ipv4(name: str) -> str:
    """template.HashToIPv4: the first four bytes of sha256(name), kept out of the multicast range."""
    digest = hashlib.sha256(name.encode()).digest()
    first = digest[0] - 32 if digest[0] > 223 else digest[0]
    return f"{first}.{digest[1]}.{digest[2]}.{digest[3]}"


def truncate_and_hash(name: str, max_len: int) -> str:
    """template.TruncateAndHashName: keep a prefix and append `_` + 16 upper-hex chars of sha256(name)."""
    if len(name) <= max_len:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest().upper()[:16]
    return f"{name[: max_len - len(digest) - 1]}_{digest}"


def filter_function_name(filter_name: str, direction: str, version: int) -> str:
    """'bgp_<name>_<direction>FilterV<n>', with the name shortened to fit BIRD's 64-char symbols."""
    overhead = len(f"bgp__{direction}FilterV{version}")
    return f"'bgp_{truncate_and_hash(filter_name, MAX_BIRD_SYMBOL - overhead)}_{direction}FilterV{version}'"


def split_ip_port(text: str) -> tuple[str, int]:
    """parseIPPort: `ip`, `ip:port` or `[v6]:port`; anything else is returned whole with port 0."""
    if text.startswith("["):
        end = text.find("]")
        if end > 0 and text[end + 1 : end + 2] == ":":
            host, port = text[1:end], text[end + 2 :]
        else:
            return text, 0
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        return text, 0
    try:
        number = int(port, 0)
    except ValueError:
        return text, 0
    return (host, number) if 0 <= number <= 65535 else (text, 0)


def parse_ip(text: str) -> str | None:
    """The Go string form of an IP (lowercase, compressed v6), or None when it does not parse."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def ip_version(text: str) -> int:
    return 6 if ":" in text else 4


@dataclass
class NodeBGP:
    """A Node as the v1 `/calico/bgp/v1/host/<n>/...` keys saw it (bgpnodeprocessor.go)."""

    name: str
    labels: dict[str, str]
    ipv4: str = ""
    ipv6: str = ""
    network_v4: str = ""
    network_v6: str = ""
    as_num: str = ""
    rr_cluster_id: str = ""
    wireguard_v4: str = ""
    wireguard_v6: str = ""
    has_bgp: bool = False

    def ip(self, version: int) -> str:
        return self.ipv4 if version == 4 else self.ipv6


def _address_and_network(cidr: Any) -> tuple[str, str]:
    if not cidr:
        return "", ""
    try:
        iface = ipaddress.ip_interface(str(cidr))
    except ValueError:
        log.warning("ignoring unparsable node address %r", cidr)
        return "", ""
    return str(iface.ip), str(iface.network)


def node_from_v3(name: str, value: Mapping[str, Any]) -> NodeBGP:
    labels = {str(k): str(v) for k, v in ((value.get("metadata") or {}).get("labels") or {}).items()}
    spec = value.get("spec") or {}
    bgp = spec.get("bgp") or None
    node = NodeBGP(name=name, labels=labels)
    if bgp is not None:
        node.has_bgp = True
        node.ipv4, node.network_v4 = _address_and_network(bgp.get("ipv4Address"))
        node.ipv6, node.network_v6 = _address_and_network(bgp.get("ipv6Address"))
        node.as_num = as_string(bgp.get("asNumber"))
        node.rr_cluster_id = str(bgp.get("routeReflectorClusterID") or "")
    wireguard = spec.get("wireguard") or {}
    node.wireguard_v4 = str(wireguard.get("interfaceIPv4Address") or "")
    node.wireguard_v6 = str(wireguard.get("interfaceIPv6Address") or "")
    return node


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


class BGPStore:
    """The syncer's KVs, kept as the client needs them; `apply` takes one update at a time."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeBGP] = {}
        self.bgp_configs: dict[str, dict[str, Any]] = {}
        self.peers: dict[str, dict[str, Any]] = {}
        self.filters: dict[str, dict[str, Any]] = {}
        self.pools: dict[int, dict[str, dict[str, Any]]] = {4: {}, 6: {}}
        # host -> version -> block key ("a.b.c.d-len") -> state; pending blocks are never stored.
        self.affinities: dict[str, dict[int, dict[str, str]]] = {}
        # BGP passwords: (secret name, key) -> value, from the agent's Secret side channel if it has one.
        self.secret_source: Callable[[str, str], str | None] | None = None
        # Services with their EndpointSlices, for per-Service routes (upstream's route generator).
        self.services_source: Callable[[], list[tuple[dict[str, Any], list[dict[str, Any]]]]] | None = None
        # Local workloads that peer with their node: the parsed endpoint-status files.
        self.local_workloads_source: Callable[[], list[dict[str, Any]]] | None = None

    def apply(self, key: str, value: Any) -> bool:
        """Apply one KV (value None = delete); returns whether the key is one this client uses."""
        if key.startswith(NODE_PREFIX):
            name = key[len(NODE_PREFIX) :]
            if value is None:
                self.nodes.pop(name, None)
            else:
                self.nodes[name] = node_from_v3(name, value)
            return True
        for prefix, table in (
            (BGPCONFIG_PREFIX, self.bgp_configs),
            (BGPPEER_PREFIX, self.peers),
            (BGPFILTER_PREFIX, self.filters),
        ):
            if key.startswith(prefix):
                name = key[len(prefix) :]
                if value is None:
                    table.pop(name, None)
                else:
                    table[name] = value
                return True
        if key.startswith(POOL_PREFIX):
            parts = key.split("/")  # ['', 'calico', 'v1', 'ipam', 'v4', 'pool', '<cidr>']
            if len(parts) == 7 and parts[4] in ("v4", "v6") and parts[5] == "pool":
                pools = self.pools[4 if parts[4] == "v4" else 6]
                if value is None:
                    pools.pop(parts[6], None)
                else:
                    pools[parts[6]] = value
                return True
            return False
        if key.startswith(AFFINITY_PREFIX):
            parts = key.split("/")  # ['', 'calico', 'ipam', 'v2', 'host', h, 'ipv4', 'block', cidr]
            if len(parts) != 9 or parts[6] not in ("ipv4", "ipv6") or parts[7] != "block":
                return False
            blocks = self.affinities.setdefault(parts[5], {}).setdefault(4 if parts[6] == "ipv4" else 6, {})
            state = None if value is None else str((value or {}).get("state") or "")
            # client.go updateCache: a pending affinity is not acted upon; treated as a delete.
            if value is None or state == "pending" or (value or {}).get("deleted"):
                blocks.pop(parts[8], None)
            else:
                blocks[parts[8]] = state or ""
            return True
        return False

    # -- the v1 keys upstream's templates read ------------------------------------------------------

    @property
    def global_config(self) -> dict[str, Any]:
        return (self.bgp_configs.get("default") or {}).get("spec") or {}

    def node_config(self, node: str) -> dict[str, Any] | None:
        cfg = self.bgp_configs.get(f"node.{node}")
        return None if cfg is None else (cfg.get("spec") or {})

    def global_as(self) -> str:
        return as_string(self.global_config.get("asNumber")) or DEFAULT_AS

    def node_as(self, node: str) -> str:
        """`getNodeOrGlobalValue(node, "as_num")`."""
        found = self.nodes.get(node)
        return (found.as_num if found is not None else "") or self.global_as()

    def global_listen_port(self) -> int:
        return int(self.global_config.get("listenPort") or 0)

    def node_listen_port(self, node: str) -> int | None:
        cfg = self.node_config(node)
        port = int((cfg or {}).get("listenPort") or 0)
        return port or None

    def listen_port(self, node: str) -> int:
        port = self.node_listen_port(node)
        return port if port is not None else self.global_listen_port()

    def nodes_matching(self, selector: str) -> list[str]:
        try:
            parsed = parse_selector(selector)
        except Exception as exc:  # a bad selector must not stop rendering (issue 4 acceptance)
            log.warning("skipping unparsable selector %r: %s", selector, exc)
            return []
        return sorted(name for name, node in self.nodes.items() if parsed.evaluate(node.labels))

    def node_ips(self) -> set[str]:
        return {ip for node in self.nodes.values() for ip in (node.ipv4, node.ipv6) if ip}

    def nodes_with_ip_port_and_as(self, ip: str, as_num: str, port: int) -> list[str]:
        wanted_as = as_num or self.global_as()
        names = []
        for name in sorted(self.nodes):
            node = self.nodes[name]
            if ip not in (node.ipv4, node.ipv6):
                continue
            if (node.as_num or self.global_as()) != wanted_as:
                continue
            if port:
                # Upstream's if/else-if, quirk included: a node port that matches still loses to a
                # different non-zero global port.
                node_port = self.node_listen_port(name)
                if node_port is not None and node_port != port:
                    continue
                if self.global_listen_port() and self.global_listen_port() != port:
                    continue
            names.append(name)
        return names

    def secret_value(self, ref: Mapping[str, Any] | None) -> str | None:
        """A BGP password from a Secret in calico's namespace, when the client has Secrets at all."""
        if not ref or self.secret_source is None:
            return None
        return self.secret_source(str(ref.get("name")), str(ref.get("key")))


# -- updatePeersV1 ----------------------------------------------------------------------------------


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
                reachable_by=str(spec.get("reachableBy") or ""),
            )
        )
    return peers


def _set_common_fields(store: BGPStore, peers: list[Peering], spec: Mapping[str, Any], selector_peer: bool) -> None:
    """setPeerConfigFieldsFromV3Resource: the fields every peering of one BGPPeer shares."""
    password = store.secret_value((spec.get("password") or {}).get("secretKeyRef"))
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
    for peer in peers:
        # The workload connects to us: no source address, and we never dial it.
        peer.local_as_num = as_string(spec.get("localASNumber"))
        peer.filters = [str(f) for f in spec.get("filters") or []]
        peer.password = store.secret_value((spec.get("password") or {}).get("secretKeyRef"))
        peer.restart_time = "" if restart is None else str(restart)
        peer.keepalive_time = "" if keepalive is None else str(keepalive)
        peer.num_allow_local_as = int(spec.get("numAllowedLocalASNumbers") or 0)
    return peers


def derive_peerings(store: BGPStore, me: str) -> tuple[dict[tuple[str, int], Peering], dict[tuple[str, int], Peering]]:
    """The v1 global peerings and this node's peerings, keyed by (ip, port), as updatePeersV1 emits them."""
    global_peers: dict[tuple[str, int], Peering] = {}
    node_peers: dict[tuple[str, int], Peering] = {}

    def key_of(peer: Peering) -> tuple[str, int]:
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
    ordered = [store.peers[name] for name in sorted(store.peers)]
    for global_pass in (True, False):
        for resource in ordered:
            spec = resource.get("spec") or {}
            name = (resource.get("metadata") or {}).get("name")
            node_selector, node = str(spec.get("nodeSelector") or ""), str(spec.get("node") or "")
            if global_pass != (not node_selector and not node):
                continue
            if spec.get("localWorkloadSelector"):
                # Local workload peers come from this node's endpoint-status files, not from node IPs.
                if global_pass or me in _local_nodes(store, spec):
                    for peer in _local_workload_peers(store, name, spec):
                        emit(global_pass, peer)
                continue
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
                    log.warning("BGPPeer %s: peerIP %r is malformed; skipped", name, spec.get("peerIP"))
                    continue
                as_num = as_string(spec.get("asNumber"))
                if port == 0:
                    matching = store.nodes_with_ip_port_and_as(ip, as_num, 0)
                    if matching:
                        port = store.listen_port(matching[0])
                reachable_by = str(spec.get("reachableBy") or "")
                if reachable_by:
                    via = parse_ip(reachable_by)
                    if via is None or ip_version(via) != ip_version(ip):
                        log.warning("BGPPeer %s: bad reachableBy %r; skipped", name, reachable_by)
                        continue
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
            if not peers:
                continue
            _set_common_fields(store, peers, spec, selector_peer)
            for peer in peers:
                if global_pass:
                    emit(True, peer)
                elif me in local_nodes:
                    emit(False, peer)

    # Reverse peerings: the nodes this BGPPeer points at peer back with the nodes it is defined for.
    for resource in ordered:
        spec = resource.get("spec") or {}
        if str(spec.get("reversePeering") or "") == "Manual" or spec.get("localWorkloadSelector"):
            continue
        if spec.get("peerSelector"):
            local_nodes = store.nodes_matching(str(spec["peerSelector"]))
            versions: tuple[int, ...] = (4, 6)
        else:
            host, port = split_ip_port(str(spec.get("peerIP") or ""))
            ip = parse_ip(host) if host else None
            if ip is None:
                continue
            local_nodes = store.nodes_with_ip_port_and_as(ip, as_string(spec.get("asNumber")), port)
            versions = (ip_version(ip),)
        if me not in local_nodes:
            continue
        if spec.get("nodeSelector"):
            peer_nodes = store.nodes_matching(str(spec["nodeSelector"]))
        elif spec.get("node"):
            peer_nodes = [str(spec["node"])]
        else:
            peer_nodes = store.nodes_matching("all()")
        peers = [peer for peer_node in peer_nodes for peer in _node_as_peers(store, peer_node, versions, spec)]
        if not peers:
            continue
        _set_common_fields(store, peers, spec, True)
        for peer in peers:
            emit(False, peer)
    return global_peers, node_peers


# -- GetBirdBGPConfig --------------------------------------------------------------------------------


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


def _filter_lines(store: BGPStore, filters: list[str], version: int, same_as: bool, direction: str) -> list[str]:
    """The calls of BGPFilter functions a peer's import or export filter makes, in BGPPeer order."""
    lines = []
    for name in filters:
        resource = store.filters.get(name)
        if resource is None:
            continue
        rules = (resource.get("spec") or {}).get(f"{direction}V{version}") or []
        if not rules:
            continue
        fn = filter_function_name(name, direction, version)
        if any(rule.get("peerType") for rule in rules):
            lines.append(f"{fn}({go_bool(same_as)});")
        else:
            lines.append(f"{fn}();")
    return lines


def _import_filter(store: BGPStore, filters: list[str], version: int, same_as: bool, priority: int) -> str:
    lines = _filter_lines(store, filters, version, same_as, "import")
    lines += [
        f"if (defined(bgp_local_pref)&&(bgp_local_pref > {BIRD_INT_MAX - priority})) then",
        f"  preference = {OVERRIDE_PREFERENCE};",
        "accept;",
    ]
    return "\n    ".join(lines)


def _export_filter(store: BGPStore, filters: list[str], version: int, same_as: bool, priority: int) -> str:
    # Give every route both krt_metric and bgp_local_pref: filters match on the latter, and
    # calico_aggr() lets elevated /32s (krt_metric below the normal priority) escape aggregation.
    lines = [
        "if (defined(source) && source = RTS_BGP && defined(bgp_local_pref)) then {",
        f"  krt_metric = {BIRD_INT_MAX} - bgp_local_pref;",
        "} else {",
        f"  if (!defined(krt_metric)) then {{ krt_metric = {priority}; }}",
        f"  bgp_local_pref = {BIRD_INT_MAX} - krt_metric;",
        "}",
    ]
    lines += _filter_lines(store, filters, version, same_as, "export")
    lines += [f"calico_export_to_bgp_peers({go_bool(same_as)});", "reject;"]
    return "\n    ".join(lines)


def _peer_name(prefix: str, ip: str, port: int) -> str:
    name = f"{prefix}_{ip.replace('.', '_').replace(':', '_')}"
    return f"{name}_port_{port}" if port > 0 else name


def _bird_peer(store: BGPStore, cfg: BirdConfig, peering: Peering, prefix: str, cluster_id: str) -> BirdPeer | None:
    """buildPeerFromData."""
    my_ip = cfg.family_ip
    if peering.ip == my_ip:
        return None  # never peer with ourselves
    peer = BirdPeer(
        name=_peer_name(prefix, peering.ip, peering.port),
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
    effective_as = peer.local_as_number or cfg.as_number
    same_as = peer.as_number == effective_as
    peer.import_filter = _import_filter(store, peering.filters, cfg.version, same_as, cfg.normal_route_priority)
    peer.export_filter = _export_filter(store, peering.filters, cfg.version, same_as, cfg.normal_route_priority)
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
    if same_as and cluster_id and peering.rr_cluster_id != cluster_id:
        peer.route_reflector = True
        peer.rr_cluster_id = cluster_id
    # Passive only toward Calico nodes "above" us; the comparison is of strings, as upstream's is.
    if peer.type in ("global", "local_workload") and not peer.passive and peering.calico_node and peering.ip > my_ip:
        peer.passive = True
    return peer


def _mesh_peers(store: BGPStore, cfg: BirdConfig, me: str, cluster_id: str) -> list[BirdPeer]:
    if cluster_id:
        return []  # a route reflector does not take part in the full mesh
    mesh = store.global_config.get("nodeToNodeMeshEnabled")
    if mesh is not None and not mesh:
        return []
    my_ip = cfg.family_ip
    restart = go_duration_seconds(store.global_config.get("nodeMeshMaxRestartTime"))
    password = store.secret_value((store.global_config.get("nodeMeshPassword") or {}).get("secretKeyRef"))
    peers = []
    for name, node in store.nodes.items():
        ip = node.ip(cfg.version)
        if not ip or ip == my_ip or node.rr_cluster_id:
            continue
        port = store.listen_port(name)
        as_num = node.as_num or cfg.as_number
        same_as = as_num == cfg.as_number
        peers.append(
            BirdPeer(
                name=_peer_name("Mesh", ip, 0),
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
                import_filter=_import_filter(store, [], cfg.version, same_as, cfg.normal_route_priority),
                export_filter=_export_filter(store, [], cfg.version, same_as, cfg.normal_route_priority),
            )
        )
    return peers


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
            if _STANDARD_COMMUNITY.match(community) or _LARGE_COMMUNITY.match(community):
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


def _cluster_route_policy(spec: Mapping[str, Any]) -> tuple[bool, bool]:
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


def _uses(mode: Any) -> bool:
    return str(mode or "").lower() in ("always", "cross-subnet", "crosssubnet")


def _pools(store: BGPStore, cfg: BirdConfig, me: str) -> None:
    """processIPPools: export rejects/accepts and the kernel programming filter, each string-sorted."""
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


def _condition_cidr(rule: Mapping[str, Any], version: int) -> str:
    operators = {"Equal": "=", "NotEqual": "!=", "In": "~", "NotIn": "!~"}
    op = operators.get(str(rule.get("matchOperator") or ""))
    if op is None:
        raise ValueError(f"unexpected operator {rule.get('matchOperator')!r}")
    cidr = str(rule["cidr"])
    prefix = rule.get("prefixLength")
    if prefix:
        network = ipaddress.ip_network(cidr, strict=False)
        low = network.prefixlen
        high = 32 if network.version == 4 else 128
        if prefix.get("min") is not None:
            low = max(low, int(prefix["min"]))
        if prefix.get("max") is not None:
            high = min(high, int(prefix["max"]))
        cidr = f"[ {cidr}{{{low},{high}}} ]"
    return f"(net {op} {cidr})"


def _community_tuple(value: str) -> tuple[str, str]:
    parts = str(value).split(":")
    if len(parts) == 2:
        return f"({parts[0]}, {parts[1]})", "bgp_community"
    if len(parts) == 3:
        return f"({parts[0]}, {parts[1]}, {parts[2]})", "bgp_large_community"
    raise ValueError(f"invalid community {value!r}")


def _filter_rule(rule: Mapping[str, Any], version: int) -> str:
    action = str(rule.get("action") or "")
    if action not in ("Accept", "Reject"):
        raise ValueError(f"unexpected action {action!r}")
    conditions = []
    if rule.get("cidr"):
        conditions.append(_condition_cidr(rule, version))
    if rule.get("source"):
        if rule["source"] != "RemotePeers":
            raise ValueError(f"unexpected source {rule['source']!r}")
        conditions.append("((defined(source))&&(source ~ [ RTS_BGP ]))")
    if rule.get("interface"):
        conditions.append(f'((defined(ifname))&&(ifname ~ "{rule["interface"]}"))')
    communities = (rule.get("communities") or {}).get("values") or []
    if communities:
        value, attribute = _community_tuple(communities[0])
        conditions.append(f"({value} ~ {attribute})")
    as_path = [as_string(asn) for asn in rule.get("asPathPrefix") or []]
    if as_path:
        conditions.append(f"(bgp_path ~ [= {' '.join(as_path)} * =])")
    if rule.get("priority") is not None:
        local_pref = BIRD_INT_MAX - int(rule["priority"])
        conditions.append(f"(defined(bgp_local_pref)&&(bgp_local_pref = {local_pref}))")
    body = []
    for operation in rule.get("operations") or []:
        if operation.get("addCommunity"):
            value, attribute = _community_tuple(operation["addCommunity"]["value"])
            body.append(f"{attribute}.add({value});")
        elif operation.get("prependASPath"):
            # BIRD prepends one AS at a time, so the last prepend ends up first: go in reverse.
            for asn in reversed(operation["prependASPath"].get("prefix") or []):
                body.append(f"bgp_path.prepend({as_string(asn)});")
        elif operation.get("setPriority"):
            body.append(f"bgp_local_pref = {BIRD_INT_MAX - int(operation['setPriority']['value'])};")
        else:
            raise ValueError("BGPFilter operation has no field set")
    body.append(f"{action.lower()};")
    statement = " ".join(body)
    if conditions:
        statement = f"if ({'&&'.join(conditions)}) then {{ {statement} }}"
    peer_type = rule.get("peerType")
    if peer_type == "iBGP":
        statement = f"if (is_same_as) then {{ {statement} }}"
    elif peer_type == "eBGP":
        statement = f"if (!is_same_as) then {{ {statement} }}"
    return f"  {statement}"


def filter_functions(store: BGPStore, version: int) -> list[str]:
    """bgpFilterBIRDFuncs: a function per direction of every BGPFilter, sorted by key."""
    lines: list[str] = []
    for name in sorted(store.filters):
        spec = store.filters[name].get("spec") or {}
        directions = [d for d in ("import", "export") if spec.get(f"{d}V{version}")]
        if not directions:
            continue
        block = [f"# v{version} BGPFilter {name}"]
        try:
            for direction in directions:
                rules = spec[f"{direction}V{version}"]
                fn = filter_function_name(name, direction, version)
                params = "bool is_same_as" if any(rule.get("peerType") for rule in rules) else ""
                block.append(f"function {fn}({params}) {{")
                block.extend(_filter_rule(rule, version) for rule in rules)
                block.append("}")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping BGPFilter %s: %s", name, exc)
            continue
        lines.extend(block)
    return lines or [f"# No v{version} BGPFilters configured"]


def _service_cidrs(spec: Mapping[str, Any], field_name: str) -> list[str]:
    return [str(item.get("cidr")) for item in spec.get(field_name) or [] if item.get("cidr")]


def bird_config(store: BGPStore, version: int, me: str, env: Mapping[str, str]) -> BirdConfig:
    """GetBirdBGPConfig for one IP family."""
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
    peers = _mesh_peers(store, cfg, me, cluster_id)
    global_peers, node_peers = derive_peerings(store, me)
    for prefix, table in (("Global", global_peers), ("Node", node_peers)):
        for peering in table.values():
            if ip_version(peering.ip) != version:
                continue
            peer = _bird_peer(store, cfg, peering, "Local_Workload" if peering.local_bgp_peer else prefix, cluster_id)
            if peer is not None:
                peers.append(peer)
    cfg.peers = sorted(peers, key=lambda p: p.name)

    cfg.communities = _communities(store, me, version)
    _pools(store, cfg, me)
    _wireguard(store, cfg, me)
    cfg.filter_functions = filter_functions(store, version)

    blocks = store.affinities.get(me, {}).get(version, {})
    cfg.blocks = [(key.replace("-", "/"), blocks[key]) for key in sorted(blocks)]

    routes, rejects = service_routes(store, me, env)
    cfg.load_balancer_ips = _service_cidrs(glob, "serviceLoadBalancerIPs")
    cfg.external_ips = _service_cidrs(glob, "serviceExternalIPs")
    # `ls /staticroutes` order: keys with `/` as `-`, string-sorted.
    cfg.static_routes = sorted((c for c in routes if (":" in c) == (version == 6)), key=_cidr_key)
    cfg.reject_cidrs = sorted((c for c in rejects if (":" in c) == (version == 6)), key=_cidr_key)
    return cfg


def _cidr_key(cidr: str) -> str:
    """The `ls` key of a static route: the CIDR with `/` as `-`, so that sorting matches upstream's."""
    return cidr.replace("/", "-")


def _networks(cidrs: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for cidr in cidrs:
        try:
            nets.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            log.warning("ignoring unparsable service CIDR %r", cidr)
    return nets


def _within(ip: str, nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network], single: bool = False) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(
        address.version == net.version and address in net and (not single or net.prefixlen == net.max_prefixlen)
        for net in nets
    )


def _full_length(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def _advertise_service(
    svc: Mapping[str, Any], slices: list[dict[str, Any]], me: str, lb_nets: list[Any], ext_nets: list[Any]
) -> bool:
    """routes.go advertiseThisService (the node's exclusion label is checked by the caller)."""
    spec = svc.get("spec") or {}
    if spec.get("type", "ClusterIP") not in ("ClusterIP", "NodePort", "LoadBalancer"):
        return False
    cluster_ip = str(spec.get("clusterIP") or "")
    if cluster_ip in ("", "None"):
        return False
    policy = spec.get("externalTrafficPolicy")
    if policy == "Cluster":
        lb_ips = [str(spec.get("loadBalancerIP") or "")]
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        lb_ips += [str(i.get("ip") or "") for i in ingress]
        if spec.get("type") == "LoadBalancer" and any(_within(ip, lb_nets, single=True) for ip in lb_ips if ip):
            return True
        if any(_within(str(ip), ext_nets, single=True) for ip in spec.get("externalIPs") or []):
            return True
    if policy != "Local":
        return False  # the whole service range is advertised from every node instead
    # A local endpoint of the service's own family (a v4 endpoint does not make a v6 service local).
    svc_v6 = ":" in cluster_ip
    for item in slices:
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False or endpoint.get("nodeName") != me:
                continue
            if any((":" in str(address)) == svc_v6 for address in endpoint.get("addresses") or []):
                return True
    return False


def service_routes(store: BGPStore, me: str, env: Mapping[str, str]) -> tuple[set[str], set[str]]:
    """(/calico/staticroutes, /calico/rejectcidrs): service ranges from BGPConfiguration + per-Service IPs.

    Ranges are advertised from every node unless the node opts out with the exclude-from-external-
    load-balancers label; they are always kept out of the kernel (reject). Single LB addresses are
    advertised per Service only, never as a range from every node.
    """
    glob = store.global_config
    cluster = [env["CALICO_ADVERTISE_CLUSTER_IPS"]] if env.get("CALICO_ADVERTISE_CLUSTER_IPS") else _service_cidrs(
        glob, "serviceClusterIPs")
    external = _service_cidrs(glob, "serviceExternalIPs")
    lb = _service_cidrs(glob, "serviceLoadBalancerIPs")
    ranges = [*cluster, *external]
    ranges += [c for c in lb if not c.endswith("/128" if ":" in c else "/32")]
    node = store.nodes.get(me)
    excluded = node is not None and node.labels.get(EXCLUDE_LB_LABEL) == "true"
    rejects = set(ranges)
    if excluded:
        return set(), rejects
    routes = set(ranges)
    if store.services_source is None:
        return routes, rejects
    lb_nets, ext_nets = _networks(lb), _networks(external)
    for svc, slices in store.services_source():
        if not _advertise_service(svc, slices, me, lb_nets, ext_nets):
            continue
        spec = svc.get("spec") or {}
        ips = [str(spec.get("clusterIP"))] if cluster else []
        ips += [str(ip) for ip in spec.get("externalIPs") or [] if _within(str(ip), ext_nets)]
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ips += [str(i["ip"]) for i in ingress if i.get("ip") and _within(str(i["ip"]), lb_nets)]
        routes.update(_full_length(ip) for ip in ips)
    return routes, rejects
