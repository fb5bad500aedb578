"""IPv6 routes and BIRD6 (issue #14 item 1): what felix-client programs for an IPv6 block is what
confd's bird6 configuration exports, and nothing more.

BIRD6 learns alien kernel routes (`learn` in the kernel template) and passes each through
`calico_aggr()`: the block itself is exported, a route beneath it only when its kernel metric is
below Calico's NormalRoutePriority (an elevated route, used for live migration). So felix-client's
per-pod /128 routes must carry that metric (not the kernel's default 0 of IPv4, nor anything lower),
and must not claim BIRD's own protocol number, or BIRD would treat them as its own.
"""

from __future__ import annotations

import re

from confd_client.bgp.store import BGPStore
from confd_client.render import render_all
from felix_client.calc import Calculator
from felix_client.names import FELIX_ROUTE_PROTO, RTPROT_BOOT
from typha.model import keys
from typha.model.convert.k8s import veth_name

NODE = "node-1"
BLOCK6 = "fd65::/122"
RTPROT_BIRD = 12  # rtnetlink's protocol number for routes BIRD itself installs


def bird6_aggr() -> str:
    store = BGPStore()
    store.apply(f"/calico/ipam/v2/host/{NODE}/ipv6/block/fd65::-122", {"state": "confirmed", "deleted": False})
    return render_all(store, NODE, {})["bird6_aggr.cfg"]


def felix_routes6() -> list:
    calc = Calculator(NODE)
    calc.apply([
        (keys.ip_pool_path("fd65::/48"), {"cidr": "fd65::/48", "ipip_mode": "never", "vxlan_mode": "never"}),
        (keys.block_path(BLOCK6), {"cidr": BLOCK6, "affinity": f"host:{NODE}", "deleted": False}),
        (keys.workload_endpoint_path(NODE, "k8s", "demo/a", "eth0"),
         {"state": "active", "name": veth_name("demo", "a"), "ipv4_nets": ["10.65.0.2/32"],
          "ipv6_nets": ["fd65::2/128"], "profile_ids": ["kns.demo"], "labels": {}}),
    ])
    return calc.snapshot().routes6


def test_bird6_exports_the_block_and_not_felix_pod_routes():
    aggr = bird6_aggr()
    assert f"if ( net = {BLOCK6} ) then {{ accept; }}" in aggr
    match = re.search(rf"if \( net ~ {re.escape(BLOCK6)} && krt_metric < (\d+) \) then {{ accept; }}", aggr)
    assert match, aggr
    threshold = int(match[1])
    assert f"if ( net ~ {BLOCK6} ) then {{ reject; }}" in aggr

    routes = felix_routes6()
    local = [r for r in routes if r.kind == "local"]
    blackhole = [r for r in routes if r.kind == "blackhole"]
    assert [r.dst for r in local] == ["fd65::2/128"]
    assert [r.dst for r in blackhole] == [BLOCK6]
    # The /128 is inside the block and not elevated: calico_aggr rejects it, only the block leaves the node.
    assert all(r.metric >= threshold for r in local)
    # Both are alien to BIRD (learned, filtered), never mistaken for BIRD's own routes.
    assert RTPROT_BIRD not in (FELIX_ROUTE_PROTO, RTPROT_BOOT)
