"""The VXLAN tunnels: this node's `vxlan.calico` (IPv4) and `vxlan-v6.calico` (IPv6) devices, and the
neighbour and FDB entries of the other nodes' VTEPs on them.

As felix/dataplane/linux/vxlan_mgr.go (one manager per family) and vxlan_fdb.go do: a device is
created with FelixConfiguration's VXLANVNI (4096) and VXLANPort (4789) - the same for both families,
which the kernel allows because one device is IPv4 and the other IPv6 - the node's underlay address
of its family as local address, learning off and the node's VTEP MAC of that family; a device whose
VNI, port or local address differs is deleted and recreated (those cannot be changed in place), a
wrong MAC or MTU is set, and the device carries exactly the tunnel address as a /32 (IPv6: a /128;
the kernel's link-local address stays). The IPv6 device's MTU is VXLANMTUV6, by default the parent
interface's MTU less 70 (Felix's ConfigureDefaultMTUs). Each remote VTEP gets one permanent
neighbour entry (tunnel IP → MAC) and one FDB entry (MAC → underlay IP); entries of VTEPs that left
or moved are deleted.

Every function takes an open pyroute2 IPRoute/NetNS, so the caller decides the namespace.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from felix_client.calc.model import FelixSettings
from felix_client.calc.routes import VTEP, RouteCalculator
from felix_client.names import (
    VXLAN_DEVICE,
    VXLAN_MTU,
    VXLAN_PORT,
    VXLAN_V6_DEVICE,
    VXLAN_V6_MTU_OVERHEAD,
    VXLAN_VNI,
)

log = logging.getLogger("felix_client.dataplane.vxlan")

NTF_SELF = 0x02  # neighbour flag: an FDB entry of the device itself (there is no bridge master)
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_DEVICES = {4: VXLAN_DEVICE, 6: VXLAN_V6_DEVICE}
_HOST_PREFIX = {4: 32, 6: 128}
_DEFAULT_PARENT_MTU = 1500  # when the parent interface cannot be found


@dataclass(frozen=True)
class OwnVTEP:
    """This node's VXLAN tunnel endpoint of one family (the calculation only lists the remote ones)."""

    tunnel_ip: str
    mac: str
    parent_ip: str
    port: int = VXLAN_PORT  # FelixConfiguration VXLANPort
    vni: int = VXLAN_VNI  # VXLANVNI
    mtu: int = 0  # VXLANMTU / VXLANMTUV6; 0: VXLAN_MTU (IPv4), the parent's MTU less 70 (IPv6)

    @property
    def version(self) -> int:
        return 6 if ":" in self.tunnel_ip else 4

    @property
    def device(self) -> str:
        return _DEVICES[self.version]


def own_vteps(routings: Iterable[RouteCalculator], settings: FelixSettings) -> list[OwnVTEP]:
    """This node's VTEPs (at most one per family) with the FelixConfiguration that shapes the devices."""
    out = []
    for routing in routings:
        vtep = routing.own_vtep()
        if vtep is not None:
            mtu = settings.vxlan_mtu_v6 if routing.version == 6 else settings.vxlan_mtu
            out.append(OwnVTEP(vtep.tunnel_ip, vtep.mac, vtep.parent_ip, settings.vxlan_port, settings.vxlan_vni, mtu))
    return out


def _same_ip(a: Any, b: Any) -> bool:
    # The kernel's spelling of an IPv6 address need not be ours.
    try:
        return bool(a and b and ipaddress.ip_address(a) == ipaddress.ip_address(b))
    except ValueError:
        return False


def _parent(ipr: Any, vtep: OwnVTEP) -> int | None:
    for addr in ipr.get_addr(family=_FAMILIES[vtep.version]):
        if _same_ip(addr.get_attr("IFA_ADDRESS"), vtep.parent_ip):
            return int(addr["index"])
    return None


def _mtu(ipr: Any, vtep: OwnVTEP, parent: int | None) -> int:
    if vtep.mtu:
        return vtep.mtu
    if vtep.version == 4:
        return VXLAN_MTU
    parent_mtu = _DEFAULT_PARENT_MTU
    if parent is not None:
        (link,) = ipr.get_links(parent)
        parent_mtu = int(link.get_attr("IFLA_MTU") or _DEFAULT_PARENT_MTU)
    return parent_mtu - VXLAN_V6_MTU_OVERHEAD


def _incompatible(link: Any, vtep: OwnVTEP) -> str | None:
    """Why an existing device cannot be kept (None: it can)."""
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return "not a VXLAN device"
    data = info.get_attr("IFLA_INFO_DATA")
    local = data.get_attr("IFLA_VXLAN_LOCAL6" if vtep.version == 6 else "IFLA_VXLAN_LOCAL")
    have = (data.get_attr("IFLA_VXLAN_ID"), data.get_attr("IFLA_VXLAN_PORT"))
    want = (vtep.vni, vtep.port)
    if have != want or not _same_ip(local, vtep.parent_ip):
        return f"(vni, port, local) {(*have, local)} != {(*want, vtep.parent_ip)}"
    return None


def ensure_device(ipr: Any, vtep: OwnVTEP) -> None:
    device, family = vtep.device, _FAMILIES[vtep.version]
    found = ipr.link_lookup(ifname=device)
    if found:
        (link,) = ipr.get_links(found[0])
        reason = _incompatible(link, vtep)
        if reason is not None:
            log.info("recreating %s: %s", device, reason)
            ipr.link("del", index=found[0])
            found = []
    parent = _parent(ipr, vtep)
    if not found:
        local = {"vxlan_local6" if vtep.version == 6 else "vxlan_local": vtep.parent_ip}
        ipr.link("add", ifname=device, kind="vxlan", vxlan_id=vtep.vni, vxlan_port=vtep.port, vxlan_learning=0,
                 address=vtep.mac, **local, **({"vxlan_link": parent} if parent else {}))
        found = ipr.link_lookup(ifname=device)
    index = found[0]
    (link,) = ipr.get_links(index)
    if link.get_attr("IFLA_ADDRESS") != vtep.mac.lower():
        ipr.link("set", index=index, address=vtep.mac)
    prefix = _HOST_PREFIX[vtep.version]
    present = False
    for addr in ipr.get_addr(index=index, family=family):
        address, length = addr.get_attr("IFA_ADDRESS"), addr["prefixlen"]
        if length == prefix and _same_ip(address, vtep.tunnel_ip):
            present = True
        elif not (vtep.version == 6 and ipaddress.ip_address(address).is_link_local):
            # The kernel's IPv6 link-local address is left alone, as Felix's ensureAddressOnLink does.
            ipr.addr("del", index=index, address=address, prefixlen=length)
    if not present:
        ipr.addr("add", index=index, address=vtep.tunnel_ip, prefixlen=prefix)
    ipr.link("set", index=index, state="up", mtu=_mtu(ipr, vtep, parent))


def remove_device(ipr: Any, version: int) -> bool:
    """Delete the family's device, if present, as Felix's cleanUpVXLANDevice does when no pool of the
    family uses VXLAN (its routes and entries go with it). Whether there was one."""
    found = ipr.link_lookup(ifname=_DEVICES[version])
    if not found:
        return False
    log.info("VXLAN (IPv%d) is not in use: deleting %s", version, _DEVICES[version])
    ipr.link("del", index=found[0])
    return True


def apply_vteps(ipr: Any, vteps: Sequence[VTEP], version: int = 4) -> None:
    """Exactly `vteps` (the other nodes' VTEPs of family `version`) in the neighbour and FDB tables of
    that family's device."""
    found = ipr.link_lookup(ifname=_DEVICES[version])
    if not found:
        return
    index, family = found[0], _FAMILIES[version]
    want_neigh = {ipaddress.ip_address(v.tunnel_ip): v.mac for v in vteps}
    want_fdb = {v.mac: ipaddress.ip_address(v.parent_ip) for v in vteps}
    for msg in ipr.get_neighbours(family=family, ifindex=index):
        dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
        if msg["ifindex"] == index and dst and want_neigh.get(ipaddress.ip_address(dst)) != mac:
            ipr.neigh("del", ifindex=index, dst=dst, family=family)
    for msg in ipr.fdb("dump", ifindex=index):
        dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
        # Entries without a remote (the device's own address) are the kernel's, not ours.
        if msg["ifindex"] == index and dst and want_fdb.get(mac) != ipaddress.ip_address(dst):
            ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst, flags=NTF_SELF)
    for vtep in vteps:
        ipr.neigh("replace", ifindex=index, dst=vtep.tunnel_ip, lladdr=vtep.mac, state="permanent", family=family)
        # Without NTF_SELF the kernel answers EOPNOTSUPP: the entry belongs to the device itself.
        ipr.fdb("replace", ifindex=index, lladdr=vtep.mac, dst=vtep.parent_ip, state="permanent", flags=NTF_SELF)
