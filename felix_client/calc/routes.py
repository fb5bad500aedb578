"""Routes, VXLAN neighbours and the pool-derived IP sets: from IP pools, IPAM blocks and node data.

Felix splits this over l3_route_resolver.go, vxlan_resolver.go and the route/tunnel managers. Here
one class keeps a route per IPAM block (recomputed only when an input it depends on changes) and the
endpoint-driven /32 routes per endpoint; the pool lists and VTEPs are derived on demand (few items).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from felix_client import validate
from felix_client.names import FELIX_ROUTE_PROTO, IPIP_DEVICE, VXLAN_DEVICE, VXLAN_V6_DEVICE

# Felix's kernel metric for workload routes (Calico's NormalRoutePriority). BIRD's calico_aggr() exports
# a /32 inside a local block only when its krt_metric is below this (an "elevated" route, 512, used for
# live migration), so a workload route with the kernel's default metric 0 would leak to every BGP peer.
NORMAL_ROUTE_PRIORITY = 1024
# The kernel gives an IPv6 route without a priority this metric (IP6_RT_PRIO_USER); Felix leaves it.
IPV6_DEFAULT_METRIC = 1024
_VXLAN_DEVICES = {4: VXLAN_DEVICE, 6: VXLAN_V6_DEVICE}
# Per family: the host-config keys of a node's VTEP (Felix's vxlan_resolver: IPv4VXLANTunnelAddr with
# VXLANTunnelMACAddr, IPv6VXLANTunnelAddr with VXLANTunnelMACAddrV6) and the Node's BGP address field.
_VTEP_ADDR_KEYS = {4: "IPv4VXLANTunnelAddr", 6: "IPv6VXLANTunnelAddr"}
_VTEP_MAC_KEYS = {4: "VXLANTunnelMACAddr", 6: "VXLANTunnelMACAddrV6"}
_NODE_ADDRESS_FIELDS = {4: "ipv4Address", 6: "ipv6Address"}


@dataclass(frozen=True, slots=True, order=True)
class Route:
    dst: str
    kind: str  # local | blackhole | ipip | vxlan | noencap
    dev: str = ""
    via: str = ""

    @property
    def version(self) -> int:
        return 6 if ":" in self.dst else 4

    @property
    def metric(self) -> int:
        """The kernel's route priority; the kernel keys a route by (destination, metric)."""
        if self.kind == "local":
            return NORMAL_ROUTE_PRIORITY
        return IPV6_DEFAULT_METRIC if self.version == 6 else 0

    def render(self) -> str:
        """The route as `ip route` prints it."""
        if self.kind == "blackhole":
            return f"blackhole {self.dst} proto {FELIX_ROUTE_PROTO}"
        dst = self.dst.removesuffix("/128") if self.version == 6 else self.dst.removesuffix("/32")
        if self.kind == "local":
            # Felix uses protocol "boot" (3) for workload routes, which `ip route` does not print.
            return f"{dst} dev {self.dev} scope link metric {self.metric}"
        if self.kind == "vxlan":
            return f"{dst} via {self.via} dev {self.dev} onlink"
        return f"{dst} via {self.via} dev {self.dev} proto {FELIX_ROUTE_PROTO} onlink"


@dataclass(frozen=True, slots=True, order=True)
class VTEP:
    node: str
    tunnel_ip: str
    mac: str
    parent_ip: str
    dev: str = VXLAN_DEVICE  # vxlan-v6.calico for an IPv6 VTEP

    def render(self) -> list[str]:
        return [
            f"neigh {self.tunnel_ip} dev {self.dev} lladdr {self.mac} PERMANENT",
            f"fdb {self.mac} dev {self.dev} dst {self.parent_ip}",
        ]


@dataclass(frozen=True, slots=True)
class Pool:
    cidr: str
    ipip: str  # never | always | cross-subnet
    vxlan: str
    masquerade: bool
    disabled: bool
    # Parsed once: every block lookup uses it.
    network: ipaddress.IPv4Network | ipaddress.IPv6Network = field(compare=False)


@functools.lru_cache(maxsize=1 << 16)
def _net_key(text: str) -> tuple[int, int]:
    # Cached: the same block, pool and endpoint CIDRs are sorted again at every snapshot.
    net = ipaddress.ip_network(text, strict=False)
    return (int(net.network_address), net.prefixlen)


def _within(net: ipaddress.IPv4Network | ipaddress.IPv6Network,
            outer: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    # One calculator holds one family, so both are of it; subnet_of raises on mixed families.
    return net.version == outer.version and net.subnet_of(outer)  # type: ignore[arg-type]


def _sort_key(route: Route) -> tuple[int, int, str, str, str]:
    return (*_net_key(route.dst), route.kind, route.dev, route.via)


class RouteCalculator:
    """Routes, VTEPs and pool lists for one node and one IP family (`version`; Felix keeps a route
    resolver per family too). For IPv6 a node's address is its Node's `bgp.ipv6Address` (there is no
    IPv6 host-IP KV), its VTEP `IPv6VXLANTunnelAddr`/`VXLANTunnelMACAddrV6` on `vxlan-v6.calico`; IPIP
    has no IPv6 form, so an IPv6 pool routes with VXLAN or without encapsulation.

    Incremental: each block's route is computed once and cached; an update marks stale only the
    blocks whose route it can change (a block: itself; a pool: the blocks inside it; a node's IP or
    VTEP: that node's blocks; this node's subnet or ProgramClusterRoutes: all); `routes()` recomputes
    just those and moves only the routes that changed within a list kept sorted.
    """

    def __init__(self, hostname: str, uplink: str = "eth0", version: int = 4) -> None:
        self.hostname = hostname
        self.version = version
        self.uplink = uplink  # the underlay interface; the calculation cannot see the host's devices
        self.pools: dict[str, Pool] = {}
        self.blocks: dict[str, str] = {}  # block CIDR -> affine node ("" when not affine to a host)
        self.host_ips: dict[str, str] = {}
        self.host_subnets: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
        self.vxlan_ips: dict[str, str] = {}
        self.vxlan_macs: dict[str, str] = {}
        self.local_routes: dict[str, tuple[Route, ...]] = {}  # endpoint key -> its /32 routes
        # FelixConfiguration ProgramClusterRoutes: whether we or BIRD program remote IPIP and no-encap
        # blocks (docs/calico/felix.md §2.3). VXLAN routes are always ours.
        self._program_cluster_routes = "Enabled"
        self._block_nets: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
        self._host_addrs: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
        self._node_blocks: dict[str, set[str]] = {}  # node -> CIDRs of the blocks affine to it
        self._block_routes: dict[str, Route | None] = {}  # up to date except for the blocks in _stale
        self._stale: set[str] = set()
        # Every current route, counted (two endpoints may claim one /32), kept sorted by insertion so
        # that an update costs a bisect, not a sort of the whole table.
        self._counts: dict[Route, int] = {}
        self._ordered: list[tuple[tuple[int, int, str, str, str], Route]] = []
        self._output: list[Route] | None = None  # cached routes(); None after any change
        self.block_computations = 0  # how many block routes were (re)computed: incrementality, observable

    # -- inputs -----------------------------------------------------------------------------------

    @property
    def program_cluster_routes(self) -> str:
        return self._program_cluster_routes

    @program_cluster_routes.setter
    def program_cluster_routes(self, mode: str) -> None:
        if mode != self._program_cluster_routes:
            self._program_cluster_routes = mode
            self._invalidate(self.blocks)

    def _invalidate(self, blocks: Iterable[str]) -> None:
        self._stale.update(blocks)
        self._output = None

    def _add(self, route: Route) -> None:
        count = self._counts.get(route, 0)
        self._counts[route] = count + 1
        if not count:
            bisect.insort(self._ordered, (_sort_key(route), route))
            self._output = None

    def _remove(self, route: Route) -> None:
        count = self._counts[route] - 1
        if count:
            self._counts[route] = count
            return
        del self._counts[route]
        del self._ordered[bisect.bisect_left(self._ordered, (_sort_key(route), route))]
        self._output = None

    def set_pool(self, cidr: str, value: dict[str, Any] | None) -> None:
        network = ipaddress.ip_network(cidr)
        if network.version != self.version:
            return
        old = self.pools.get(cidr)
        if value is None:
            new = None
            self.pools.pop(cidr, None)
        else:
            new = self.pools[cidr] = Pool(
                cidr=cidr,
                # IPIP carries IPv4 only: an IPv6 pool never uses it (Calico's validation refuses it).
                ipip=(value.get("ipip_mode") or "never") if self.version == 4 else "never",
                vxlan=value.get("vxlan_mode") or "never",
                masquerade=bool(value.get("masquerade")),
                disabled=bool(value.get("disabled")),
                network=network,
            )
        if old != new:
            # Pools are few and rarely change; the blocks they contain are found by a scan of parsed nets.
            self._invalidate(b for b, net in self._block_nets.items() if _within(net, network))

    def set_block(self, cidr: str, value: dict[str, Any] | None) -> None:
        network = self._block_nets.get(cidr) or ipaddress.ip_network(cidr)
        if network.version != self.version:
            return
        old = self.blocks.get(cidr)
        if value is None or value.get("deleted"):
            new = None
        else:
            affinity = value.get("affinity") or ""
            new = affinity[5:] if affinity.startswith("host:") else ""
        if old == new:
            return  # e.g. an allocation changed: routes depend only on the affinity
        if old is not None:
            self._node_blocks.get(old, set()).discard(cidr)
        if new is None:
            self.blocks.pop(cidr, None)
            self._block_nets.pop(cidr, None)
            if (route := self._block_routes.pop(cidr, None)) is not None:
                self._remove(route)
            self._stale.discard(cidr)
            return
        self.blocks[cidr] = new
        self._block_nets[cidr] = network
        self._node_blocks.setdefault(new, set()).add(cidr)
        self._invalidate((cidr,))

    def set_host_ip(self, node: str, ip: str | None) -> None:
        ip = ip if ip and (":" in ip) == (self.version == 6) else None
        if self.host_ips.get(node) == ip:
            return
        if ip:
            self.host_ips[node] = ip
            self._host_addrs[node] = ipaddress.ip_address(ip)
        else:
            self.host_ips.pop(node, None)
            self._host_addrs.pop(node, None)
        self._invalidate(self._node_blocks.get(node, ()))

    def set_node(self, node: str, value: dict[str, Any] | None) -> None:
        """The v3 Node: its BGP address of this family with prefix, for CrossSubnet's same-subnet test;
        for IPv6 also the node's address itself (the next hop of its blocks)."""
        address = (((value or {}).get("spec") or {}).get("bgp") or {}).get(_NODE_ADDRESS_FIELDS[self.version])
        interface = ipaddress.ip_interface(address) if isinstance(address, str) and address else None
        if interface is not None and interface.version != self.version:
            raise validate.Invalid("bad-ip", f"{_NODE_ADDRESS_FIELDS[self.version]} {address!r} is of the other family")
        if self.version == 6:
            self.set_host_ip(node, str(interface.ip) if interface is not None else None)
        subnet = interface.network if interface is not None else None
        if self.host_subnets.get(node) == subnet:
            return
        if subnet is None:
            self.host_subnets.pop(node, None)
        else:
            self.host_subnets[node] = subnet
        if node == self.hostname:
            # Only our own subnet enters a route (is the peer in it?); other nodes' subnets do not.
            self._invalidate(self.blocks)

    def set_host_config(self, node: str, name: str, value: Any) -> None:
        addr_key = _VTEP_ADDR_KEYS[self.version]
        target = {addr_key: self.vxlan_ips, _VTEP_MAC_KEYS[self.version]: self.vxlan_macs}.get(name)
        if target is None:
            return
        if value:
            # Both reach netlink (the VXLAN device, neighbour and FDB entries): checked, not just copied.
            if name == addr_key:
                if validate.ip(value).version != self.version:
                    raise validate.Invalid("bad-ip", f"{name} {value!r} is not an IPv{self.version} address")
                target[node] = str(validate.ip(value))
            else:
                target[node] = validate.mac(value)
        else:
            target.pop(node, None)
        if name == addr_key:
            self._invalidate(self._node_blocks.get(node, ()))

    def set_local_endpoint(self, key: str, iface: str, nets: tuple[str, ...]) -> None:
        routes = tuple(Route(n, "local", dev=iface) for n in nets) if nets and iface else ()
        old = self.local_routes.get(key, ())
        if old == routes:
            return
        for route in routes:
            self._add(route)
        for route in old:
            self._remove(route)
        if routes:
            self.local_routes[key] = routes
        else:
            del self.local_routes[key]

    # -- outputs ----------------------------------------------------------------------------------

    def pool_of(self, cidr: str) -> Pool | None:
        net = self._block_nets.get(cidr) or ipaddress.ip_network(cidr)
        best: Pool | None = None
        for pool in self.pools.values():
            if _within(net, pool.network) and (best is None or pool.network.prefixlen > best.network.prefixlen):
                best = pool
        return best

    @property
    def ipip_enabled(self) -> bool:
        return any(p.ipip != "never" and not p.disabled for p in self.pools.values())

    @property
    def vxlan_enabled(self) -> bool:
        return any(p.vxlan != "never" and not p.disabled for p in self.pools.values())

    def _same_subnet(self, node: str) -> bool:
        mine = self.host_subnets.get(self.hostname)
        ip = self._host_addrs.get(node)
        return mine is not None and ip is not None and ip in mine

    def _block_route(self, cidr: str) -> Route | None:
        self.block_computations += 1
        node = self.blocks[cidr]
        if node == self.hostname:
            return Route(cidr, "blackhole")
        pool = self.pool_of(cidr)
        host_ip = self.host_ips.get(node)
        if pool is None or not node or host_ip is None:
            return None
        cross = self._same_subnet(node)
        if pool.vxlan == "always" or (pool.vxlan == "cross-subnet" and not cross):
            vtep = self.vxlan_ips.get(node)
            return Route(cidr, "vxlan", dev=_VXLAN_DEVICES[self.version], via=vtep) if vtep else None
        if pool.vxlan == "never" and not self._programs(pool):
            return None  # BIRD programs it from what it learns over BGP
        if pool.ipip == "always" or (pool.ipip == "cross-subnet" and not cross):
            return Route(cidr, "ipip", dev=IPIP_DEVICE, via=host_ip)
        return Route(cidr, "noencap", dev=self.uplink, via=host_ip)

    def routes(self) -> list[Route]:
        for cidr in self._stale:
            if cidr not in self.blocks:
                continue
            old, new = self._block_routes.get(cidr), self._block_route(cidr)
            if old != new:
                if new is not None:
                    self._add(new)
                if old is not None:
                    self._remove(old)
                self._block_routes[cidr] = new
        self._stale.clear()
        if self._output is None:
            self._output = [route for _, route in self._ordered]
        return list(self._output)

    def _programs(self, pool: Pool) -> bool:
        mode = self.program_cluster_routes
        if pool.ipip != "never":
            return mode in ("Enabled", "EnabledIPIPOnly")
        return mode in ("Enabled", "EnabledNoEncapOnly")

    def vtep_mac(self, node: str) -> str:
        """The node's VTEP MAC of this family: from its host config, else the one Felix derives
        (vxlan_resolver.go vtepMACForHost: "f" then the first 5 bytes of SHA-1 of the node name, with
        "-v6" appended for IPv6), which is also what that node's Felix puts on its device."""
        mac = self.vxlan_macs.get(node)
        if mac:
            return mac
        digest = hashlib.sha1((node + ("-v6" if self.version == 6 else "")).encode()).digest()
        return ":".join(f"{b:02x}" for b in b"f" + digest[:5])

    def _vtep(self, node: str) -> VTEP | None:
        # vxlan_resolver.go hasVTEPInfo: a tunnel address and a node address of this family.
        tunnel_ip, parent = self.vxlan_ips.get(node), self.host_ips.get(node)
        if not tunnel_ip or not parent:
            return None
        return VTEP(node, tunnel_ip, self.vtep_mac(node), parent, _VXLAN_DEVICES[self.version])

    def vteps(self) -> list[VTEP]:
        """The other nodes' VTEPs of this family (none while no pool of it uses VXLAN)."""
        if not self.vxlan_enabled:
            return []
        return sorted(v for node in self.vxlan_ips if node != self.hostname and (v := self._vtep(node)))

    def own_vtep(self) -> VTEP | None:
        """This node's VTEP of this family: what its `vxlan.calico` / `vxlan-v6.calico` device carries."""
        return self._vtep(self.hostname) if self.vxlan_enabled else None

    def masq_pools(self) -> list[str]:
        return sorted((p.cidr for p in self.pools.values() if p.masquerade and not p.disabled), key=_net_key)

    def all_pools(self) -> list[str]:
        return sorted(self.pools, key=_net_key)

    def all_hosts(self) -> list[str]:
        return sorted(set(self.host_ips.values()), key=_net_key)

    def vxlan_hosts(self) -> list[str]:
        return sorted({self.host_ips[n] for n in self.vxlan_ips if n in self.host_ips}, key=_net_key)

