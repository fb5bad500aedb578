"""confd_client.render.Renderer: re-renders only the files a change reaches, and always what a full
render would print.

Each step applies one update, then renders incrementally and from scratch (`render_all` on the same
store); the texts must be equal, and the files rendered must be exactly the ones expected.
"""

from __future__ import annotations

from typing import Any

import pytest

from confd_client.bgp.store import BGPStore
from confd_client.render import FILES, Renderer, render_all
from typha.model.keys import block_affinity_path, ip_pool_path, resource_path

ME = "node-a"
ALL = sorted(FILES)


def node(name: str, ipv4: str, labels: dict[str, str] | None = None, **bgp: Any) -> tuple[str, Any]:
    value = {"kind": "Node", "metadata": {"name": name, "labels": labels or {}},
             "spec": {"bgp": {"ipv4Address": ipv4, **bgp}}}
    return resource_path("Node", name), value


def peer(name: str, **spec: Any) -> tuple[str, Any]:
    return resource_path("BGPPeer", name), {"kind": "BGPPeer", "metadata": {"name": name}, "spec": spec}


def block(host: str, cidr: str, state: str = "confirmed") -> tuple[str, Any]:
    return block_affinity_path(host, cidr), {"state": state}


def pool(cidr: str, **extra: Any) -> tuple[str, Any]:
    return ip_pool_path(cidr), {"cidr": cidr, **extra}


def bgpconfig(**spec: Any) -> tuple[str, Any]:
    return resource_path("BGPConfiguration", "default"), {"kind": "BGPConfiguration", "metadata": {"name": "default"},
                                               "spec": spec}


def delete(update: tuple[str, Any]) -> tuple[str, Any]:
    return update[0], None


# (update, the files the incremental render must redo)
STEPS: list[tuple[tuple[str, Any], list[str]]] = [
    (node("node-b", "10.0.0.2/24", {"rack": "1"}), ALL),
    (node("node-b", "10.0.0.2/24", {"rack": "1"}), []),  # the same value again
    (node("node-b", "10.0.0.2/24", {"rack": "2"}), []),  # another node's labels, no selector reads them
    (block("node-b", "10.65.1.0/26"), []),  # another node's block
    (block(ME, "10.65.0.0/26"), ["bird_aggr.cfg"]),
    (block(ME, "fd00:65::/122"), ["bird6_aggr.cfg"]),
    (pool("10.65.0.0/16", ipip_mode="always"), ["bird_ipam.cfg"]),
    (pool("fd00:65::/64", vxlan_mode="always"), ["bird6_ipam.cfg"]),
    (pool("10.66.0.0/16", disableBGPExport=True), ["bird_ipam.cfg"]),
    (block(ME, "10.65.0.64/26", "pending"), []),  # a pending affinity is not acted upon
    (peer("rack", peerSelector="rack == '2'", asNumber=64512), ALL),
    (node("node-b", "10.0.0.2/24", {"rack": "3"}), ALL),  # now a selector reads another node's labels
    (node(ME, "10.0.0.1/24", {"x": "y"}), ALL),
    (node(ME, "10.0.0.1/24", {"x": "z"}), ALL),  # this node's own labels
    (bgpconfig(asNumber=65001, serviceClusterIPs=[{"cidr": "10.96.0.0/12"}]), ALL),
    (block(ME, "10.65.0.0/26", "pending"), ["bird_aggr.cfg"]),  # treated as its deletion
    (delete(pool("10.66.0.0/16")), ["bird_ipam.cfg"]),
    (delete(block("node-b", "10.65.1.0/26")), []),
    (delete(peer("rack")), ALL),
    (delete(node("node-b", "")), ALL),
]


def test_each_change_renders_only_what_it_reaches_and_the_same_text_as_a_full_render():
    store = BGPStore()
    renderer = Renderer(ME, {})
    store.apply(*node(ME, "10.0.0.1/24"))
    renderer.render(store, store.take_changes())
    assert sorted(renderer.rendered) == ALL
    for update, expected in STEPS:
        store.apply(*update)
        files = renderer.render(store, store.take_changes())
        assert sorted(renderer.rendered) == sorted(expected), update
        assert files == render_all(store, ME, {}), update


def test_a_failed_render_renders_everything_next_time():
    store = BGPStore()
    renderer = Renderer(ME, {"CALICO_ROUTER_ID": "not an address"})
    store.apply(*node(ME, "10.0.0.1/24"))
    with pytest.raises(ValueError, match="CALICO_ROUTER_ID"):
        renderer.render(store, store.take_changes())
    renderer.env = {}
    store.apply(*block(ME, "10.65.0.0/26"))
    renderer.render(store, store.take_changes())
    assert sorted(renderer.rendered) == ALL
