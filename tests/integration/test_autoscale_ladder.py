"""The autoscaler's pure parts: the operator's replica ladder and which nodes count."""

from __future__ import annotations

import pytest

from typha.ops.autoscale import counts_as_schedulable, replicas_for


@pytest.mark.parametrize(
    ("nodes", "replicas"),
    [
        (0, 1), (1, 1), (2, 1),  # one or two nodes: a single Typha
        (3, 2), (4, 2),  # leave a node free for rescheduling, but have redundancy
        (5, 3), (199, 3), (200, 3), (399, 3), (400, 4), (401, 4), (599, 4), (600, 5),
        (1000, 7), (2000, 12), (3600, 20),  # docs/calico/typha.md §1 examples; no cap in the operator
    ],
)
def test_ladder(nodes: int, replicas: int) -> None:
    assert replicas_for(nodes) == replicas


def test_ladder_is_monotonic_and_matches_formula_above_minimums() -> None:
    previous = 0
    for nodes in range(0, 5000):
        value = replicas_for(nodes)
        assert value >= previous
        previous = value
        if nodes >= 5:
            assert value == max(3, nodes // 200 + 2)


def test_which_nodes_count() -> None:
    assert counts_as_schedulable({"metadata": {"name": "a"}})
    assert counts_as_schedulable({"metadata": {"name": "a"}, "spec": {"unschedulable": False}})
    assert not counts_as_schedulable({"metadata": {"name": "a"}, "spec": {"unschedulable": True}})
    assert not counts_as_schedulable({"metadata": {"name": "vk", "labels": {"type": "virtual-kubelet"}}})
    assert counts_as_schedulable({"metadata": {"name": "b", "labels": {"type": "worker"}}})
