"""RouteCalculator is incremental: cached block routes equal a from-scratch calculation after any
sequence of updates, and an update recomputes only the blocks it can affect (issue #5 "Incremental")."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from felix_client.calc.routes import RouteCalculator

ME = "node-1"
NODES = [ME, "node-2", "node-3"]
POOLS = ["10.65.0.0/16", "10.65.0.0/20", "10.66.0.0/16"]  # one nested pool: the longest prefix wins
BLOCKS = ["10.65.0.0/26", "10.65.1.0/26", "10.65.32.0/26", "10.66.0.0/26", "10.66.1.0/26", "10.67.0.0/26"]
MODES = ["never", "always", "cross-subnet"]

pool_value = st.one_of(st.none(), st.fixed_dictionaries({
    "ipip_mode": st.sampled_from(MODES), "vxlan_mode": st.sampled_from(MODES),
    "masquerade": st.booleans(), "disabled": st.booleans()}))
block_value = st.one_of(st.none(), st.builds(lambda n: {"affinity": f"host:{n}" if n else ""},
                                             st.sampled_from(["", *NODES])))
node_value = st.one_of(st.none(), st.sampled_from(["192.168.56.11/24", "192.168.57.11/24"]).map(
    lambda a: {"spec": {"bgp": {"ipv4Address": a}}}))
op = st.one_of(
    st.tuples(st.just("pool"), st.sampled_from(POOLS), pool_value),
    st.tuples(st.just("block"), st.sampled_from(BLOCKS), block_value),
    st.tuples(st.just("host_ip"), st.sampled_from(NODES), st.sampled_from([None, "192.168.56.12", "192.168.57.13"])),
    st.tuples(st.just("node"), st.sampled_from(NODES), node_value),
    st.tuples(st.just("vxlan_ip"), st.sampled_from(NODES), st.sampled_from([None, "10.65.1.1", "10.66.1.1"])),
    st.tuples(st.just("endpoint"), st.sampled_from(["a", "b"]), st.sampled_from([(), ("10.65.0.2/32",),
                                                                                 ("10.65.0.3/32", "10.66.0.2/32")])),
    st.tuples(st.just("mode"), st.just(""), st.sampled_from(["Enabled", "Disabled", "EnabledIPIPOnly"])),
    st.tuples(st.just("routes"), st.just(""), st.none()),
)


def feed(calc: RouteCalculator, kind: str, name: str, value: Any) -> None:
    if kind == "pool":
        calc.set_pool(name, value)
    elif kind == "block":
        calc.set_block(name, value)
    elif kind == "host_ip":
        calc.set_host_ip(name, value)
    elif kind == "node":
        calc.set_node(name, value)
    elif kind == "vxlan_ip":
        calc.set_host_config(name, "IPv4VXLANTunnelAddr", value)
    elif kind == "endpoint":
        calc.set_local_endpoint(name, f"cali{name}", value)
    elif kind == "mode":
        calc.program_cluster_routes = value
    elif kind == "routes":
        calc.routes()  # an apply in between: the cache must not go stale across it


@settings(max_examples=500, deadline=None)
@given(st.lists(op, max_size=40))
def test_incremental_routes_equal_a_fresh_calculation(ops: list[tuple[str, str, Any]]) -> None:
    calc = RouteCalculator(ME)
    latest: dict[tuple[str, str], Any] = {}
    # A populated cluster first, its routes cached: then every random op changes something cached.
    encaps = [{"vxlan_mode": "cross-subnet"}, {"ipip_mode": "always"}, {}]
    base: list[tuple[str, str, Any]] = [("pool", p, e) for p, e in zip(POOLS, encaps, strict=True)]
    base += [("block", b, {"affinity": f"host:{NODES[i % 3]}"}) for i, b in enumerate(BLOCKS)]
    base += [("host_ip", n, f"192.168.56.{11 + i}") for i, n in enumerate(NODES)]
    base += [("vxlan_ip", n, f"10.65.{i}.1") for i, n in enumerate(NODES)]
    base += [("node", ME, {"spec": {"bgp": {"ipv4Address": "192.168.57.11/24"}}}), ("routes", "", None)]
    ops = base + ops

    def from_scratch() -> list[Any]:
        fresh = RouteCalculator(ME)
        for (kind, name), value in latest.items():
            feed(fresh, kind, name, value)
        return fresh.routes()

    for kind, name, value in ops:
        feed(calc, kind, name, value)
        if kind == "routes":
            assert calc.routes() == from_scratch()
        else:
            latest[(kind, name)] = value
    assert calc.routes() == from_scratch()


def test_an_update_recomputes_only_the_blocks_it_touches() -> None:
    calc = RouteCalculator(ME)
    calc.set_pool("10.65.0.0/16", {"vxlan_mode": "always"})
    calc.set_pool("10.66.0.0/16", {})
    for node, ip in (("node-2", "192.168.56.12"), ("node-3", "192.168.56.13")):
        calc.set_host_ip(node, ip)
        calc.set_host_config(node, "IPv4VXLANTunnelAddr", "10.65.200.1")
    for i in range(200):
        calc.set_block(f"10.65.{i}.0/26", {"affinity": f"host:node-{2 + i % 2}"})
        calc.set_block(f"10.66.{i}.0/26", {"affinity": f"host:node-{2 + i % 2}"})
    assert len(calc.routes()) == 400
    count = calc.block_computations

    def recomputed(change: Any) -> int:
        nonlocal count
        change()
        calc.routes()
        done, count = calc.block_computations - count, calc.block_computations
        return done

    assert recomputed(lambda: calc.routes()) == 0
    assert recomputed(lambda: calc.set_local_endpoint("ep", "cali1", ("10.65.0.2/32",))) == 0
    # Block 7 moves from node-3 to node-2: just that block.
    assert recomputed(lambda: calc.set_block("10.65.7.0/26", {"affinity": "host:node-2"})) == 1
    assert recomputed(lambda: calc.set_block("10.65.7.0/26", {"affinity": "host:node-2", "x": 1})) == 0
    assert recomputed(lambda: calc.set_host_ip("node-2", "192.168.56.22")) == 201  # node-2's blocks only
    new_vtep = "10.65.201.1"
    assert recomputed(lambda: calc.set_host_config("node-3", "IPv4VXLANTunnelAddr", new_vtep)) == 199  # node-3's
    assert recomputed(lambda: calc.set_host_config("node-3", "VXLANTunnelMACAddr", "66:00:00:00:00:01")) == 0
    assert recomputed(lambda: calc.set_pool("10.66.0.0/16", {"ipip_mode": "always"})) == 200  # its blocks
    assert recomputed(lambda: calc.set_node("node-2", {"spec": {"bgp": {"ipv4Address": "192.168.56.22/24"}}})) == 0
    assert recomputed(lambda: calc.set_node(ME, {"spec": {"bgp": {"ipv4Address": "192.168.56.11/24"}}})) == 400
    assert recomputed(lambda: calc.set_block("10.65.7.0/26", None)) == 0
    assert len(calc.routes()) == 400  # 399 blocks and the endpoint's /32
