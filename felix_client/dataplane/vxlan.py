"""The VXLAN tunnel: this node's `vxlan.calico` device, and the neighbour and FDB entries of the others.

As felix/dataplane/linux/vxlan_mgr.go and vxlan_fdb.go do: the device is created with VNI 4096, UDP
port 4789, the node's underlay address as local address, learning off and the node's VTEP MAC; a
device whose VNI, port or local address differs is deleted and recreated (those cannot be changed
in place), a wrong MAC or MTU is set, and the device carries exactly the tunnel address as a /32.
Each remote VTEP gets one permanent neighbour entry (tunnel IP → MAC) and one FDB entry (MAC →
underlay IP); entries of VTEPs that left or moved are deleted.

Every function takes an open pyroute2 IPRoute/NetNS, so the caller decides the namespace.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from felix_client.calc.routes import VTEP
from felix_client.names import VXLAN_DEVICE, VXLAN_MTU, VXLAN_PORT, VXLAN_VNI

log = logging.getLogger("felix_client.dataplane.vxlan")

NTF_SELF = 0x02  # neighbour flag: an FDB entry of the device itself (there is no bridge master)


@dataclass(frozen=True)
class OwnVTEP:
    """This node's VXLAN tunnel endpoint (the calculation only lists the remote ones)."""

    tunnel_ip: str
    mac: str
    parent_ip: str
    port: int = VXLAN_PORT  # FelixConfiguration VXLANPort


def _iface_with_address(ipr: Any, ip: str) -> int | None:
    for addr in ipr.get_addr(family=socket.AF_INET):
        if addr.get_attr("IFA_ADDRESS") == ip:
            return int(addr["index"])
    return None


def _incompatible(link: Any, vtep: OwnVTEP) -> str | None:
    """Why an existing device cannot be kept (None: it can)."""
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return "not a VXLAN device"
    data = info.get_attr("IFLA_INFO_DATA")
    have = (data.get_attr("IFLA_VXLAN_ID"), data.get_attr("IFLA_VXLAN_PORT"), data.get_attr("IFLA_VXLAN_LOCAL"))
    want = (VXLAN_VNI, vtep.port, vtep.parent_ip)
    return None if have == want else f"(vni, port, local) {have} != {want}"


def ensure_device(ipr: Any, vtep: OwnVTEP) -> None:
    found = ipr.link_lookup(ifname=VXLAN_DEVICE)
    if found:
        (link,) = ipr.get_links(found[0])
        reason = _incompatible(link, vtep)
        if reason is not None:
            log.info("recreating %s: %s", VXLAN_DEVICE, reason)
            ipr.link("del", index=found[0])
            found = []
    if not found:
        parent = _iface_with_address(ipr, vtep.parent_ip)
        ipr.link("add", ifname=VXLAN_DEVICE, kind="vxlan", vxlan_id=VXLAN_VNI, vxlan_port=vtep.port,
                 vxlan_local=vtep.parent_ip, vxlan_learning=0, address=vtep.mac,
                 **({"vxlan_link": parent} if parent else {}))
        found = ipr.link_lookup(ifname=VXLAN_DEVICE)
    index = found[0]
    (link,) = ipr.get_links(index)
    if link.get_attr("IFLA_ADDRESS") != vtep.mac.lower():
        ipr.link("set", index=index, address=vtep.mac)
    for addr in ipr.get_addr(index=index, family=socket.AF_INET):
        address, prefix = addr.get_attr("IFA_ADDRESS"), addr["prefixlen"]
        if (address, prefix) != (vtep.tunnel_ip, 32):
            ipr.addr("del", index=index, address=address, prefixlen=prefix)
    if not ipr.get_addr(index=index, family=socket.AF_INET, address=vtep.tunnel_ip):
        ipr.addr("add", index=index, address=vtep.tunnel_ip, prefixlen=32)
    ipr.link("set", index=index, state="up", mtu=VXLAN_MTU)


def apply_vteps(ipr: Any, vteps: Sequence[VTEP]) -> None:
    found = ipr.link_lookup(ifname=VXLAN_DEVICE)
    if not found:
        return
    index = found[0]
    want_neigh = {v.tunnel_ip: v.mac for v in vteps}
    want_fdb = {v.mac: v.parent_ip for v in vteps}
    for msg in ipr.get_neighbours(family=socket.AF_INET, ifindex=index):
        dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
        if msg["ifindex"] == index and dst and want_neigh.get(dst) != mac:
            ipr.neigh("del", ifindex=index, dst=dst, family=socket.AF_INET)
    for msg in ipr.fdb("dump", ifindex=index):
        dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
        # Entries without a remote (the device's own address) are the kernel's, not ours.
        if msg["ifindex"] == index and dst and want_fdb.get(mac) != dst:
            ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst, flags=NTF_SELF)
    for vtep in vteps:
        ipr.neigh("replace", ifindex=index, dst=vtep.tunnel_ip, lladdr=vtep.mac, state="permanent")
        # Without NTF_SELF the kernel answers EOPNOTSUPP: the entry belongs to the device itself.
        ipr.fdb("replace", ifindex=index, lladdr=vtep.mac, dst=vtep.parent_ip, state="permanent", flags=NTF_SELF)
