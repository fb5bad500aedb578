"""typha.ops.rebalance: Typha's connection-limit formula, endpoint counting, and who moves where."""

from __future__ import annotations

import random

import pytest

from typha.model.kv import SyncStatus
from typha.ops.rebalance import (
    ClusterView,
    LocalPeers,
    Rebalancer,
    RebalanceSettings,
    TyphaEndpoint,
    connection_limit,
    own_endpoints,
    pick_target,
    pick_victim,
    typha_endpoints,
)
from typha.snapcache.cache import Breadcrumb
from typha.syncproto.names import FEATURE_RECONNECT
from typha.syncserver.server import Connection, SyncServer


def limit(nodes: int | None, typhas: int | None, syncers: int = 4, lower: int = 400, upper: int = 10000) -> int:
    return connection_limit(syncers=syncers, typhas=typhas, nodes=nodes, lower=lower, upper=upper)


# -- the formula ------------------------------------------------------------------------------------


def test_reference_example():
    # docs/calico/typha.md §1: N=1000, T=6 => 4 * (1 + 1000*120/5/100) = 4 * 241 = 964.
    assert limit(1000, 6) == 964


def test_one_typha_or_unknown_cluster_means_upper():
    assert limit(1000, 1) == 10000
    assert limit(1000, 0) == 10000
    assert limit(None, 6) == 10000  # node count unknown (API error, watch not synced)
    assert limit(1000, None) == 10000  # EndpointSlices could not be listed


def test_clamped_to_lower_and_upper():
    assert limit(10, 3) == 400  # 4 * (1 + 6) = 28, below the floor
    assert limit(100_000, 2) == 10000  # 4 * (1 + 120000) is above the ceiling
    assert limit(10, 3, lower=1) == 28


def test_integer_arithmetic_in_typhas_order():
    # 1 + floor(N*120/(T-1)/100), exactly as Go's integer division computes it.
    for nodes in range(0, 300, 7):
        for typhas in range(2, 9):
            expected = 3 * (1 + (nodes * 120 // (typhas - 1)) // 100)
            assert limit(nodes, typhas, syncers=3, lower=0) == expected
    assert limit(16, 3, syncers=1, lower=1) == 10  # the integration test's setting: 1 + 9


# -- endpoints --------------------------------------------------------------------------------------


def slice_(ports: list[tuple[str, int]], endpoints: list[dict]) -> dict:
    return {"ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports], "endpoints": endpoints}


def test_endpoints_count_every_address_of_the_named_port_ready_or_not():
    slices = [
        slice_([("calico-typha", 5473), ("metrics", 9093)], [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "targetRef": {"name": "typha-a"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
            {"addresses": ["10.0.0.3"]},  # no conditions: ready by the API's default
        ]),
        slice_([("other", 80)], [{"addresses": ["10.0.0.9"]}]),  # not the Sync port
        slice_([("calico-typha", 5473)], [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                                          {"addresses": ["fd00::7"]}]),
        slice_([("calico-typha", 5474)], [{"addresses": ["127.0.0.1"]}]),  # several typhas on one host
        slice_([("calico-typha", 5475)], [{"addresses": ["127.0.0.1"]}]),
    ]
    found = typha_endpoints(slices, "calico-typha")
    assert [e.address for e in found] == [
        "10.0.0.1:5473", "10.0.0.2:5473", "10.0.0.3:5473", "127.0.0.1:5474", "127.0.0.1:5475", "[fd00::7]:5473"]
    by_address = {e.address: e for e in found}
    assert not by_address["10.0.0.2:5473"].ready
    assert by_address["10.0.0.3:5473"].ready
    assert ClusterView(found, 10).typhas == 6
    assert typha_endpoints([], "calico-typha") == ()


def test_own_endpoints_of_a_specific_and_a_wildcard_address():
    assert own_endpoints("127.0.0.1", 7000) == {"127.0.0.1:7000"}
    assert own_endpoints("::1", 7000) == {"[::1]:7000"}
    assert "127.0.0.1:5473" in own_endpoints("", 5473)


# -- victim and target ------------------------------------------------------------------------------


def crumb(status: SyncStatus = SyncStatus.IN_SYNC) -> Breadcrumb:
    return Breadcrumb(sequence=1, timestamp=0.0, segment=None, start=0, end=0, kv_count=0, status=status,
                      digest=0, key_count=0, is_deltas=False)


def conn(name: str, *, reconnect: bool = True, behind: bool = False, status: SyncStatus = SyncStatus.IN_SYNC,
         writing: bool = False) -> Connection:
    position = crumb(status)
    if behind:
        position.next = crumb()
    return Connection(peer=name, hostname=name, syncer_type="felix",
                      features=frozenset({FEATURE_RECONNECT}) if reconnect else frozenset(), position=position,
                      writing_since=1.0 if writing else 0.0)


def test_victim_is_caught_up_and_prefers_clients_that_can_move():
    rng = random.Random(1)
    behind, resyncing, writing = conn("behind", behind=True), conn("resync", status=SyncStatus.RESYNC), conn(
        "writing", writing=True)
    legacy, modern = conn("legacy", reconnect=False), conn("modern")
    for _ in range(20):
        assert pick_victim([behind, resyncing, writing, legacy, modern], rng) is modern
    # Without a movable client, a caught-up one that can only be closed (Typha's behaviour for it).
    assert pick_victim([behind, legacy], rng) is legacy
    assert pick_victim([behind, resyncing, writing], rng) is None
    snapshotting = Connection(peer="new")  # no position yet: still in its handshake or snapshot
    assert pick_victim([snapshotting], rng) is None


def test_target_is_the_least_loaded_known_endpoint_counting_moves_in_flight():
    rng = random.Random(2)
    loads = {"a:1": 5, "b:1": 3, "c:1": None}
    assert pick_target(["a:1", "b:1", "c:1"], loads, {}, rng) == "b:1"
    assert pick_target(["a:1", "b:1", "c:1"], loads, {"b:1": 3}, rng) == "a:1"
    assert {pick_target(["a:1", "b:1"], loads, {"b:1": 2}, rng) for _ in range(50)} == {"a:1", "b:1"}
    assert pick_target(["c:1"], loads, {}, rng) == ""  # unknown load: let the client choose
    assert pick_target([], loads, {}, rng) == ""


# -- the governor, driven step by step --------------------------------------------------------------


def endpoints(*addresses: str) -> tuple[TyphaEndpoint, ...]:
    return tuple(TyphaEndpoint(a, ready=True) for a in addresses)


@pytest.fixture
def server() -> SyncServer:
    return SyncServer({})


def test_apply_sets_the_servers_admission_limit(server):
    rebalancer = Rebalancer(server, lambda: ClusterView(None, None), RebalanceSettings(syncers=1, lower=1))
    assert rebalancer.apply(ClusterView(endpoints("a:1", "b:1", "c:1"), 16)) == 10
    assert server.settings.max_connections == 10
    assert rebalancer.apply(ClusterView(None, 16)) == 10000  # API error: Upper, as Typha
    assert server.settings.max_connections == 10000


def test_step_moves_one_connection_at_a_time_to_the_least_loaded_peer(server):
    peer_b, peer_c = SyncServer({}), SyncServer({})
    peer_b.connections.update(conn(f"b{i}") for i in range(3))
    peer_c.connections.update(conn(f"c{i}") for i in range(1))
    peers = LocalPeers({"b:1": peer_b, "c:1": peer_c})
    rebalancer = Rebalancer(server, lambda: ClusterView(None, None), RebalanceSettings(syncers=1, lower=1),
                            own_endpoints={"a:1"}, peers=peers, rng=random.Random(3))
    clients = [conn(f"a{i}") for i in range(12)]
    server.connections.update(clients)
    rebalancer.apply(ClusterView(endpoints("a:1", "b:1", "c:1"), 16))  # limit 10

    first = rebalancer.step()
    assert first is not None
    assert first.reconnect is not None
    assert first.reconnect.endpoint == "c:1"
    assert "rebalancing" in first.reconnect.reason
    # The move is under way: 11 settled connections are still one too many, so a second one moves.
    # c:1 counts 1 connection + 1 on its way, still fewer than b:1's 3.
    second = rebalancer.step()
    assert second is not None
    assert second is not first
    assert second.reconnect.endpoint == "c:1"
    # 10 settled connections: nothing more to do while those two moves finish.
    assert rebalancer.step() is None
    assert rebalancer.moves_requested == 2

    # The first client moved (its old connection is gone) and another arrived: over the limit again.
    server.connections.discard(first)
    peer_c.connections.add(conn("a-moved"))
    server.connections.add(conn("late"))
    # c:1 now holds 2 plus the second move on its way (3), b:1 holds 3: either is least loaded.
    third = rebalancer.step()
    assert third is not None
    assert third not in (first, second)
    assert third.reconnect.endpoint in ("b:1", "c:1")
    fourth = rebalancer.step()
    assert fourth is None  # 12 connections, 2 moving: 10 settled


def test_step_never_names_ourselves_or_a_not_ready_endpoint_and_waits_for_a_caught_up_client(server):
    rebalancer = Rebalancer(server, lambda: ClusterView(None, None), RebalanceSettings(syncers=1, lower=1),
                            own_endpoints={"a:1"}, peers=LocalPeers({"a:1": server}))
    view = ClusterView((TyphaEndpoint("a:1", True), TyphaEndpoint("b:1", False), TyphaEndpoint("c:1", True)), 0)
    rebalancer.apply(view)  # limit 1
    assert rebalancer.other_endpoints() == ["c:1"]
    lagging = [conn(f"a{i}", behind=True) for i in range(3)]
    server.connections.update(lagging)
    assert rebalancer.step() is None  # nobody caught up: no random kill
    ready = conn("ready")
    server.connections.add(ready)
    assert rebalancer.step() is ready
    assert ready.reconnect is not None
    assert ready.reconnect.endpoint == ""


def test_no_moves_while_draining_or_under_the_limit(server):
    rebalancer = Rebalancer(server, lambda: ClusterView(None, None), RebalanceSettings(syncers=1, lower=1))
    server.connections.update(conn(f"a{i}") for i in range(5))
    assert rebalancer.step() is None  # limit is Upper until a poll says otherwise
    rebalancer.apply(ClusterView(endpoints("a:1", "b:1"), 1))  # limit 1 + 120//1//100 = 2
    server.draining = True
    assert rebalancer.step() is None
    server.draining = False
    assert rebalancer.step() is not None
