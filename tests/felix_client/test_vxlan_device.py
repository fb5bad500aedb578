"""`felix_client.dataplane.vxlan` against the kernel, in a network namespace this test creates:
the device is created, repaired in place (MAC, MTU, addresses) or recreated (VNI/port/local), and
the VTEP entries are exactly the desired ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from felix_client.calc.routes import VTEP
from felix_client.dataplane.vxlan import OwnVTEP, apply_vteps, ensure_device

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "bridge")), reason="needs iproute2"),
]

ME = OwnVTEP("10.70.0.1", "66:a5:00:00:00:01", "10.201.0.1")


def run(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30,
                          check=True).stdout


def link(ns: str) -> dict[str, Any]:
    (out,) = json.loads(run(ns, "ip", "-j", "-d", "addr", "show", "dev", "vxlan.calico"))
    return out


@pytest.fixture
def node() -> Iterator[str]:
    name = f"fxvx-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        run(name, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        for addr in ("10.201.0.1/24", "10.201.0.9/24"):
            run(name, "ip", "addr", "add", addr, "dev", "eth0")
        run(name, "ip", "link", "set", "eth0", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def ensure(ns: str, vtep: OwnVTEP) -> None:
    from pyroute2 import NetNS

    with NetNS(ns) as ipr:
        ensure_device(ipr, vtep)


def vteps(ns: str, entries: list[VTEP]) -> None:
    from pyroute2 import NetNS

    with NetNS(ns) as ipr:
        apply_vteps(ipr, entries)


def test_device_created_then_repaired_in_place_or_recreated(node: str) -> None:
    ensure(node, ME)
    dev = link(node)
    info = dev["linkinfo"]["info_data"]
    assert (info["id"], info["port"], info["local"], info["learning"]) == (4096, 4789, "10.201.0.1", False)
    assert (dev["address"], dev["mtu"], dev["operstate"] != "DOWN") == (ME.mac, 1410, True)
    assert [(a["local"], a["prefixlen"]) for a in dev["addr_info"] if a["family"] == "inet"] == [("10.70.0.1", 32)]
    index = dev["ifindex"]

    # Drift that can be repaired in place: MAC, MTU, a stray address; and a new tunnel IP.
    run(node, "ip", "link", "set", "vxlan.calico", "address", "66:a5:00:00:00:99", "mtu", "1300")
    run(node, "ip", "addr", "add", "192.0.2.7/24", "dev", "vxlan.calico")
    moved = OwnVTEP("10.70.0.5", ME.mac, ME.parent_ip)
    ensure(node, moved)
    dev = link(node)
    assert (dev["ifindex"], dev["address"], dev["mtu"]) == (index, ME.mac, 1410)
    assert [(a["local"], a["prefixlen"]) for a in dev["addr_info"] if a["family"] == "inet"] == [("10.70.0.5", 32)]

    # A new underlay address cannot be changed in place: the device is recreated.
    ensure(node, OwnVTEP(moved.tunnel_ip, moved.mac, "10.201.0.9"))
    dev = link(node)
    assert dev["linkinfo"]["info_data"]["local"] == "10.201.0.9"
    assert dev["ifindex"] != index

    # Something else under our name (not a VXLAN device) is replaced too.
    run(node, "ip", "link", "del", "vxlan.calico")
    run(node, "ip", "link", "add", "vxlan.calico", "type", "veth", "peer", "name", "vx-peer")
    ensure(node, ME)
    assert link(node)["linkinfo"]["info_kind"] == "vxlan"


def test_vtep_entries_are_exactly_the_desired_ones(node: str) -> None:
    ensure(node, ME)
    two = VTEP("node-2", "10.70.1.1", "66:a5:00:00:00:02", "10.201.0.2")
    three = VTEP("node-3", "10.70.2.1", "66:a5:00:00:00:03", "10.201.0.3")
    vteps(node, [two, three])
    # A stray entry someone added, and node-3 leaving while node-2 gets a new MAC.
    run(node, "bridge", "fdb", "add", "66:a5:00:00:00:77", "dev", "vxlan.calico", "dst", "10.201.0.77")
    two_new = VTEP("node-2", "10.70.1.1", "66:a5:00:00:00:22", "10.201.0.2")
    vteps(node, [two_new])
    neigh = json.loads(run(node, "ip", "-j", "neigh", "show", "dev", "vxlan.calico"))
    assert [(n["dst"], n["lladdr"], n["state"]) for n in neigh] == [("10.70.1.1", two_new.mac, ["PERMANENT"])]
    fdb = [f for f in json.loads(run(node, "bridge", "-j", "fdb", "show", "dev", "vxlan.calico")) if f.get("dst")]
    assert [(f["mac"], f["dst"], f.get("state")) for f in fdb] == [(two_new.mac, "10.201.0.2", "permanent")]


ME6 = OwnVTEP("fd65::1", "66:a6:00:00:00:01", "fd20::1")


def link6(ns: str) -> dict[str, Any]:
    (out,) = json.loads(run(ns, "ip", "-j", "-d", "addr", "show", "dev", "vxlan-v6.calico"))
    return out


def test_ipv6_device_beside_the_ipv4_one(node: str) -> None:
    """vxlan-v6.calico: the same VNI and port as vxlan.calico (the kernel tells them apart by family),
    the IPv6 underlay address as local address, the tunnel address as a /128, and Felix's default MTU
    for it: the parent's MTU less 70."""
    run(node, "ip", "-6", "addr", "add", "fd20::1/64", "dev", "eth0", "nodad")
    run(node, "ip", "link", "set", "eth0", "mtu", "1480")
    ensure(node, ME)
    ensure(node, ME6)
    dev = link6(node)
    info = dev["linkinfo"]["info_data"]
    assert (info["id"], info["port"], info["local6"], info["learning"]) == (4096, 4789, "fd20::1", False)
    assert (dev["address"], dev["mtu"]) == (ME6.mac, 1480 - 70)
    assert [(a["local"], a["prefixlen"]) for a in dev["addr_info"]
            if a["family"] == "inet6" and a.get("scope") != "link"] == [("fd65::1", 128)]
    assert link(node)["linkinfo"]["info_data"]["local"] == "10.201.0.1"  # the IPv4 device is untouched

    # A stray IPv6 address goes; the kernel's link-local one stays; VXLANMTUV6 wins over the default.
    run(node, "ip", "-6", "addr", "add", "2001:db8::7/64", "dev", "vxlan-v6.calico", "nodad")
    link_local = [a["local"] for a in link6(node)["addr_info"] if a.get("scope") == "link"]
    ensure(node, OwnVTEP(ME6.tunnel_ip, ME6.mac, ME6.parent_ip, mtu=1300))
    dev = link6(node)
    assert dev["mtu"] == 1300
    assert [a["local"] for a in dev["addr_info"] if a.get("scope") != "link"] == ["fd65::1"]
    assert [a["local"] for a in dev["addr_info"] if a.get("scope") == "link"] == link_local

    from pyroute2 import NetNS

    two = VTEP("node-2", "fd65::1:1", "66:a6:00:00:00:02", "fd20::2", "vxlan-v6.calico")
    with NetNS(node) as ipr:
        apply_vteps(ipr, [two], 6)
        apply_vteps(ipr, [], 4)  # the IPv4 device's (empty) entries do not touch the IPv6 ones
    neigh = json.loads(run(node, "ip", "-j", "-6", "neigh", "show", "dev", "vxlan-v6.calico"))
    assert [(n["dst"], n["lladdr"], n["state"]) for n in neigh] == [("fd65::1:1", two.mac, ["PERMANENT"])]
    fdb = [f for f in json.loads(run(node, "bridge", "-j", "fdb", "show", "dev", "vxlan-v6.calico")) if f.get("dst")]
    assert [(f["mac"], f["dst"]) for f in fdb] == [(two.mac, "fd20::2")]


def test_remove_device_deletes_only_that_family(node: str) -> None:
    from pyroute2 import NetNS

    from felix_client.dataplane.vxlan import remove_device

    run(node, "ip", "-6", "addr", "add", "fd20::1/64", "dev", "eth0", "nodad")
    ensure(node, ME)
    ensure(node, ME6)
    with NetNS(node) as ipr:
        assert remove_device(ipr, 6)
        assert not remove_device(ipr, 6)  # already gone
    links = run(node, "ip", "link", "show")
    assert "vxlan-v6.calico" not in links and "vxlan.calico" in links
