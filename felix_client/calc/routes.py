"""Routes, VXLAN neighbours and the pool-derived IP sets: from IP pools, IPAM blocks and node data.

Felix splits this over l3_route_resolver.go, vxlan_resolver.go and the route/tunnel managers; the
inputs are few (pools, blocks, one record per node) so one small class recomputes its whole output
when any of them changes, and the endpoint-driven /32 routes are kept per endpoint.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

# Felix's route protocol for the routes it owns (RTPROT 80, shown as "proto 80").
FELIX_ROUTE_PROTO = 80
IPIP_DEVICE = "tunl0"
VXLAN_DEVICE = "vxlan.calico"


@dataclass(frozen=True, slots=True, order=True)
class Route:
    dst: str
    kind: str  # local | blackhole | ipip | vxlan | noencap
    dev: str = ""
    via: str = ""

    def render(self) -> str:
        """The route as `ip route` prints it."""
        if self.kind == "blackhole":
            return f"blackhole {self.dst} proto {FELIX_ROUTE_PROTO}"
        dst = self.dst.removesuffix("/32")
        if self.kind == "local":
            # Felix uses protocol "boot" (3) for workload routes, which `ip route` does not print.
            return f"{dst} dev {self.dev} scope link"
        if self.kind == "vxlan":
            return f"{dst} via {self.via} dev {self.dev} onlink"
        return f"{dst} via {self.via} dev {self.dev} proto {FELIX_ROUTE_PROTO} onlink"


@dataclass(frozen=True, slots=True, order=True)
class VTEP:
    node: str
    tunnel_ip: str
    mac: str
    parent_ip: str

    def render(self) -> list[str]:
        return [
            f"neigh {self.tunnel_ip} dev {VXLAN_DEVICE} lladdr {self.mac} PERMANENT",
            f"fdb {self.mac} dev {VXLAN_DEVICE} dst {self.parent_ip}",
        ]


@dataclass(frozen=True, slots=True)
class Pool:
    cidr: str
    ipip: str  # never | always | cross-subnet
    vxlan: str
    masquerade: bool
    disabled: bool

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)


def _sort_key(route: Route) -> tuple[int, int, str, str, str]:
    net = ipaddress.ip_network(route.dst, strict=False)
    return (int(net.network_address), net.prefixlen, route.kind, route.dev, route.via)


class RouteCalculator:
    def __init__(self, hostname: str, uplink: str = "eth0") -> None:
        self.hostname = hostname
        self.uplink = uplink  # the underlay interface; the calculation cannot see the host's devices
        self.pools: dict[str, Pool] = {}
        self.blocks: dict[str, str] = {}  # block CIDR -> affine node ("" when not affine to a host)
        self.host_ips: dict[str, str] = {}
        self.host_subnets: dict[str, ipaddress.IPv4Network] = {}
        self.vxlan_ips: dict[str, str] = {}
        self.vxlan_macs: dict[str, str] = {}
        self.local_routes: dict[str, tuple[Route, ...]] = {}  # endpoint key -> its /32 routes
        # FelixConfiguration ProgramClusterRoutes: whether we or BIRD program remote IPIP and no-encap
        # blocks (felix.md §2.3). VXLAN routes are always ours.
        self.program_cluster_routes = "Enabled"

    # -- inputs -----------------------------------------------------------------------------------

    def set_pool(self, cidr: str, value: dict[str, Any] | None) -> None:
        if ipaddress.ip_network(cidr).version != 4:
            return
        if value is None:
            self.pools.pop(cidr, None)
            return
        self.pools[cidr] = Pool(
            cidr=cidr,
            ipip=value.get("ipip_mode") or "never",
            vxlan=value.get("vxlan_mode") or "never",
            masquerade=bool(value.get("masquerade")),
            disabled=bool(value.get("disabled")),
        )

    def set_block(self, cidr: str, value: dict[str, Any] | None) -> None:
        if ipaddress.ip_network(cidr).version != 4:
            return
        if value is None or value.get("deleted"):
            self.blocks.pop(cidr, None)
            return
        affinity = value.get("affinity") or ""
        self.blocks[cidr] = affinity[5:] if affinity.startswith("host:") else ""

    def set_host_ip(self, node: str, ip: str | None) -> None:
        if ip and ":" not in ip:
            self.host_ips[node] = ip
        else:
            self.host_ips.pop(node, None)

    def set_node(self, node: str, value: dict[str, Any] | None) -> None:
        """The v3 Node: only its BGP IPv4 address with prefix, for CrossSubnet's same-subnet test."""
        address = (((value or {}).get("spec") or {}).get("bgp") or {}).get("ipv4Address")
        if address:
            self.host_subnets[node] = ipaddress.IPv4Interface(address).network
        else:
            self.host_subnets.pop(node, None)

    def set_host_config(self, node: str, name: str, value: Any) -> None:
        target = {"IPv4VXLANTunnelAddr": self.vxlan_ips, "VXLANTunnelMACAddr": self.vxlan_macs}.get(name)
        if target is None:
            return
        if value:
            target[node] = str(value)
        else:
            target.pop(node, None)

    def set_local_endpoint(self, key: str, iface: str, nets: tuple[str, ...]) -> None:
        if not nets or not iface:
            self.local_routes.pop(key, None)
        else:
            self.local_routes[key] = tuple(Route(n, "local", dev=iface) for n in nets)

    # -- outputs ----------------------------------------------------------------------------------

    def pool_of(self, cidr: str) -> Pool | None:
        net = ipaddress.IPv4Network(cidr)
        best: Pool | None = None
        for pool in self.pools.values():
            if net.subnet_of(pool.network) and (best is None or pool.network.prefixlen > best.network.prefixlen):
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
        ip = self.host_ips.get(node)
        return mine is not None and ip is not None and ipaddress.IPv4Address(ip) in mine

    def routes(self) -> list[Route]:
        out: list[Route] = [r for routes in self.local_routes.values() for r in routes]
        for cidr, node in self.blocks.items():
            if node == self.hostname:
                out.append(Route(cidr, "blackhole"))
                continue
            pool = self.pool_of(cidr)
            host_ip = self.host_ips.get(node)
            if pool is None or not node or host_ip is None:
                continue
            cross = self._same_subnet(node)
            if pool.vxlan == "always" or (pool.vxlan == "cross-subnet" and not cross):
                vtep = self.vxlan_ips.get(node)
                if vtep:
                    out.append(Route(cidr, "vxlan", dev=VXLAN_DEVICE, via=vtep))
            elif pool.vxlan == "never" and not self._programs(pool):
                continue  # BIRD programs it from what it learns over BGP
            elif pool.ipip == "always" or (pool.ipip == "cross-subnet" and not cross):
                out.append(Route(cidr, "ipip", dev=IPIP_DEVICE, via=host_ip))
            else:
                out.append(Route(cidr, "noencap", dev=self.uplink, via=host_ip))
        return sorted(set(out), key=_sort_key)

    def _programs(self, pool: Pool) -> bool:
        mode = self.program_cluster_routes
        if pool.ipip != "never":
            return mode in ("Enabled", "EnabledIPIPOnly")
        return mode in ("Enabled", "EnabledNoEncapOnly")

    def vteps(self) -> list[VTEP]:
        if not self.vxlan_enabled:
            return []
        out = []
        for node, tunnel_ip in self.vxlan_ips.items():
            mac, parent = self.vxlan_macs.get(node), self.host_ips.get(node)
            if node != self.hostname and mac and parent:
                out.append(VTEP(node, tunnel_ip, mac, parent))
        return sorted(out)

    def masq_pools(self) -> list[str]:
        return sorted((p.cidr for p in self.pools.values() if p.masquerade and not p.disabled), key=_net_key)

    def all_pools(self) -> list[str]:
        return sorted(self.pools, key=_net_key)

    def all_hosts(self) -> list[str]:
        return sorted(set(self.host_ips.values()), key=_net_key)

    def vxlan_hosts(self) -> list[str]:
        return sorted({self.host_ips[n] for n in self.vxlan_ips if n in self.host_ips}, key=_net_key)


def _net_key(text: str) -> tuple[int, int]:
    net = ipaddress.ip_network(text, strict=False)
    return (int(net.network_address), net.prefixlen)
