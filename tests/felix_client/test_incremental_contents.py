"""The contents-only apply path (felix_client.dataplane.incremental) against the whole render.

A generated cluster takes random churn (pods created, deleted and relabelled on every node, policies
edited: ports and the tier they admit); after each write the calculation's snapshot is compared with
the previous one. Where the change is one of contents only, the tables spliced from the changed
chains must be exactly what a whole render gives, and every IP set it does not name must be as
before; a fresh calculation fed the final objects gives the same snapshot as the incremental one.
"""

from __future__ import annotations

import random
from typing import Any

from felix_client import rules
from felix_client.calc import Calculator
from felix_client.calc.graph import DesiredState
from felix_client.dataplane import Dataplane, incremental, iptables
from felix_client.names import WORKLOAD_IFACE_PREFIX, policy_chain_name
from typha.demo import cluster as gen
from typha.model.convert import FELIX_CONVERTERS
from typha.model.resources import for_object
from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator

NODE = gen.node_name(0)


class Feed:
    """An API store and a Calculator fed the felix syncer's KVs of every write, as typha would."""

    def __init__(self) -> None:
        self.api = KubeAPIEmulator()
        self.calc = Calculator(NODE)
        self.paths: dict[tuple[str, str, str], list[str]] = {}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # as last stored

    def _kvs(self, stored: dict[str, Any]) -> list[tuple[str, Any]]:
        converter = FELIX_CONVERTERS.get(for_object(stored["apiVersion"], stored["kind"]).key)
        return [] if converter is None else list(converter(stored))

    def _id(self, obj: dict[str, Any]) -> tuple[str, str, str]:
        return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]

    def _take(self, ident: tuple[str, str, str], kvs: list[tuple[str, Any]], stored: dict[str, Any] | None) -> None:
        if stored is None:
            self.objects.pop(ident, None)
        else:
            self.objects[ident] = stored
        gone = [(path, None) for path in self.paths.get(ident, []) if path not in dict(kvs)]
        self.calc.apply([*gone, *kvs])
        self.paths[ident] = [path for path, _ in kvs]

    def write(self, obj: dict[str, Any]) -> None:
        stored = self.api.upsert(obj)
        self._take(self._id(stored), self._kvs(stored), stored)

    def op(self, op: tuple[str, Any]) -> None:
        what, arg = op
        if what in ("create", "policy"):
            self.write(arg)
        elif what == "delete":
            self.api.delete("v1", "Pod", arg[1], arg[0])
            self._take(("Pod", arg[0], arg[1]), [], None)
        elif what == "relabel":
            namespace, name, labels = arg
            stored = self.api.patch("v1", "Pod", name, {"metadata": {"labels": labels}}, namespace)
            self._take(self._id(stored), self._kvs(stored), stored)


def spec() -> gen.ClusterSpec:
    return gen.ClusterSpec(nodes=4, pods_per_node=6, policies=8)


def fed_cluster() -> tuple[gen.Cluster, Feed]:
    cluster, feed = gen.Cluster(spec()), Feed()
    for obj in cluster.initial_objects():
        feed.write(obj)
    return cluster, feed


def whole(state: DesiredState) -> tuple[dict[str, rules.Table], dict[str, rules.IPSet]]:
    return rules.render_tables(state, WORKLOAD_IFACE_PREFIX), rules.desired_ipsets(state)


def test_contents_changes_render_what_a_whole_render_does() -> None:
    rng = random.Random(16)
    cluster, feed = fed_cluster()
    state = feed.calc.snapshot()
    tables, sets = whole(state)
    seen = {"contents": 0, "whole": 0, "sets": 0}
    for _ in range(300):
        feed.op(cluster.churn_op(rng, edit_policy=rng.random() < 0.5, steady=True))
        if rng.random() < 0.5:
            feed.calc.take_dirty()  # as the agent does before its snapshot; the cache must not care
        new = feed.calc.snapshot()
        new_tables, new_sets = whole(new)
        change = incremental.contents_change(state, new)
        if change is None:
            seen["whole"] += 1
        else:
            spliced = incremental.render_chains(new, change, tables, WORKLOAD_IFACE_PREFIX)
            assert spliced is not None
            assert spliced == new_tables
            assert list(spliced["filter"].chains) == list(new_tables["filter"].chains)  # same order
            assert {n for n in new_sets if sets.get(n) != new_sets[n]} <= change.ipsets
            assert change.removed_ipsets == sets.keys() - new_sets.keys()
            # The changed sets, checking only their new members, are what the whole render checks.
            assert Dataplane._changed_sets(new, change, sets) == {n: new_sets[n] for n in change.ipsets}
            seen["contents"] += 1
            seen["sets"] += bool(change.ipsets)
        state, tables, sets = new, new_tables, new_sets
    # Both paths were exercised, and set-member changes among the contents-only ones.
    assert min(seen.values()) >= 10, seen

    # The snapshot kept part by part is the one a calculation fed only the final objects gives.
    fresh = Feed()
    for obj in feed.objects.values():
        fresh.write({k: v for k, v in obj.items() if k != "status"} | {"metadata": {
            k: v for k, v in obj["metadata"].items() if k not in ("resourceVersion", "uid", "creationTimestamp")}})
    assert whole(fresh.calc.snapshot()) == whole(feed.calc.snapshot())


def test_a_port_edit_is_one_chain_and_an_endpoint_is_not_contents() -> None:
    cluster, feed = fed_cluster()
    feed.calc.take_dirty()  # as the agent does before each snapshot
    state = feed.calc.snapshot()
    tables, _ = whole(state)
    edited = gen.policy(0, spec(), port=20000)
    feed.write(edited)
    feed.calc.take_dirty()
    new = feed.calc.snapshot()
    change = incremental.contents_change(state, new)
    assert change is not None and len(change.policies) == 1 and not change.ipsets
    key = next(iter(change.policies))
    assert key.name.endswith(edited["metadata"]["name"])
    spliced = incremental.render_chains(new, change, tables, WORKLOAD_IFACE_PREFIX)
    assert spliced is not None
    chain = policy_chain_name(key, True)
    before = iptables.table_delta(tables["filter"], iptables.TableState()).state  # as after the first restore
    names = sorted(incremental.chain_names(change) & spliced["filter"].chains.keys())
    delta = iptables.chains_delta(spliced["filter"], names, before)
    assert delta.written == (chain,)
    assert delta.text is not None and "--dports 20000" in delta.text
    assert delta.state == iptables.table_delta(spliced["filter"], before).state
    # Unchanged endpoints and sets are the very objects of the previous snapshot.
    assert sum(a is b for a, b in zip(state.endpoints, new.endpoints, strict=True)) == len(state.endpoints) - 1
    assert all(new.ipsets[n] is s for n, s in state.ipsets.items())

    state = new
    local = [p for p in cluster.pods.values() if p.node == 0]
    feed.write(objects.pod(local[0].namespace, "extra", node=NODE, ip="10.244.0.62", labels=local[0].labels))
    assert incremental.contents_change(state, feed.calc.snapshot()) is None


def test_ipset_script_writes_member_deltas_or_whole_sets() -> None:
    old = {"cali40s:a": rules.IPSet("cali40s:a", "hash:net", frozenset({"10.0.0.1", "10.0.0.2"})),
           "cali40s:b": rules.IPSet("cali40s:b", "hash:net", frozenset({"10.0.0.9"}))}
    changed = [rules.IPSet("cali40s:a", "hash:net", frozenset({"10.0.0.2", "10.0.0.3"})),
               rules.IPSet("cali40s:b", "hash:ip,port", frozenset({"10.0.0.9,tcp:80"})),
               rules.IPSet("cali40s:c", "hash:net", frozenset({"10.0.0.7"}))]
    lines = incremental.ipset_script(changed, old).splitlines()
    assert lines[:2] == ["del cali40s:a 10.0.0.1 -exist", "add cali40s:a 10.0.0.3 -exist"]
    # Another type: rebuilt in a temporary and swapped; a new set: created in place.
    assert any(line.startswith("swap ") and line.endswith(" cali40s:b") for line in lines)
    assert "add cali40s:c 10.0.0.7" in lines
    assert not any("10.0.0.2" in line for line in lines)  # a kept member is not touched
    assert incremental.ipset_script([], old) == ""
