"""Rebalancing under `typha serve --workers N`: the pod's limit against the total over its workers,
and only the most loaded worker moves a client (one per step), until the total is within the limit."""

from __future__ import annotations

import os
import random
import shutil
import time

from typha.config import TyphaConfig
from typha.daemon.workers import Supervisor
from typha.ops.rebalance import ClusterView, Rebalancer, RebalanceSettings, SiblingLoads, TyphaEndpoint
from typha.syncserver.server import SyncServer

from .test_rebalance import conn


def worker(tmp_path, index: int, clients: int) -> Rebalancer:
    server = SyncServer({})
    server.connections.update(conn(f"w{index}-{i}") for i in range(clients))
    rebalancer = Rebalancer(server, lambda: ClusterView(None, None), RebalanceSettings(syncers=1, lower=1),
                            own_endpoints={"a:1"}, siblings=SiblingLoads(str(tmp_path), index),
                            rng=random.Random(index))
    # Two other typhas and 7 nodes: limit 1 + 7·120//2//100 = 5 for the pod as a whole.
    assert rebalancer.apply(ClusterView(tuple(TyphaEndpoint(a, True) for a in ("a:1", "b:1", "c:1")), 7)) == 5
    return rebalancer


def settled(rebalancer: Rebalancer) -> int:
    return sum(1 for c in rebalancer.server.connections if c.reconnect is None)


def test_the_most_loaded_worker_sheds_until_the_pods_total_is_within_the_limit(tmp_path):
    first, second = worker(tmp_path, 0, 5), worker(tmp_path, 1, 3)
    # Each worker alone is within the limit of 5; together they hold 8.
    assert first.step() is None  # has not heard of its sibling yet
    moves = []
    for _ in range(10):
        for rebalancer in (second, first):
            moved = rebalancer.step()
            if moved is not None:
                moves.append(rebalancer.siblings.index)
                assert moved.reconnect.endpoint in ("b:1", "c:1", "")
    assert len(moves) == 3, moves
    assert settled(first) + settled(second) == 5
    assert moves[:2] == [0, 0], "the more loaded worker goes first"
    assert abs(settled(first) - settled(second)) <= 1


def test_a_dead_workers_stale_count_is_ignored(tmp_path):
    loads = SiblingLoads(str(tmp_path), 0, stale_secs=5)
    SiblingLoads(str(tmp_path), 1).publish(7)
    SiblingLoads(str(tmp_path), 2).publish(4)
    assert loads.others() == {1: 7, 2: 4}
    old = time.time() - 60
    os.utime(tmp_path / "2", (old, old))
    assert loads.others() == {1: 7}


def test_the_supervisor_gives_each_worker_the_shared_directory_and_its_index(monkeypatch):
    supervisor = Supervisor(TyphaConfig(), workers=2)
    envs = {child.role: supervisor._environment(child) for child in supervisor.children}
    assert "TYPHA_WORKER_LOADS_DIR" not in envs["ingest"]
    assert [envs[f"worker-{i}"]["TYPHA_WORKER_INDEX"] for i in range(2)] == ["0", "1"]
    for name, value in envs["worker-1"].items():
        monkeypatch.setenv(name, value)
    siblings = SiblingLoads.from_environment(stale_secs=5)
    assert siblings is not None
    assert siblings.index == 1
    assert siblings.directory == supervisor.loads_dir
    shutil.rmtree(supervisor.runtime_dir)
