"""Syncer bookkeeping: key ownership per object, deletes for keys no longer produced, status order."""

from __future__ import annotations

from typing import Any

import pytest

from typha.kube.reflector import Event, EventType
from typha.model.kv import SyncStatus
from typha.model.resources import by_key
from typha.source.datastore import Syncer
from typha.testing.mirror import KVMirror

PODS, NODES = by_key("pods"), by_key("nodes")


def pod_to_keys(obj: dict[str, Any]) -> list[tuple[str, Any]]:
    """A toy converter: one key per label, which makes 'stops producing a key' easy to drive."""
    labels = obj["metadata"].get("labels") or {}
    if "invalid" in labels:
        raise ValueError("label 'invalid' is not allowed")
    name = obj["metadata"]["name"]
    return [(f"/test/{name}/{k}", v) for k, v in sorted(labels.items())]


def node_to_key(obj: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(f"/test/node/{obj['metadata']['name']}", "node")]


def pod(name: str, rv: int, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv), "labels": labels}}


@pytest.fixture
def mirror() -> KVMirror:
    return KVMirror()


@pytest.fixture
def syncer(mirror) -> Syncer:
    syncer = Syncer("test", mirror, {"pods": pod_to_keys, "nodes": node_to_key})
    syncer.start()
    return syncer


def test_keys_an_object_stops_producing_are_deleted(syncer, mirror):
    syncer.on_events(PODS, [Event(EventType.SET, pod("a", 1, x="1", y="2"))])
    assert mirror.kvs == {"/test/a/x": "1", "/test/a/y": "2"}
    syncer.on_events(PODS, [Event(EventType.SET, pod("a", 2, y="3", z="4"))])
    assert mirror.kvs == {"/test/a/y": "3", "/test/a/z": "4"}
    assert mirror.revisions == {"/test/a/y": "2", "/test/a/z": "2"}
    syncer.on_events(PODS, [Event(EventType.DELETE, pod("a", 3))])
    assert mirror.kvs == {}


def test_invalid_object_withdraws_its_keys_and_syncer_keeps_going(syncer, mirror):
    syncer.on_events(PODS, [Event(EventType.SET, pod("a", 1, x="1")),
                            Event(EventType.SET, pod("b", 2, x="1"))])
    syncer.on_events(PODS, [Event(EventType.SET, pod("a", 3, invalid="yes")),
                            Event(EventType.SET, pod("b", 4, x="2"))])
    assert mirror.kvs == {"/test/b/x": "2"}
    syncer.on_events(PODS, [Event(EventType.SET, pod("a", 5, x="again"))])
    assert mirror.kvs == {"/test/a/x": "again", "/test/b/x": "2"}


def test_delete_of_an_object_that_produced_nothing_emits_nothing(syncer, mirror):
    syncer.on_events(PODS, [Event(EventType.DELETE, pod("ghost", 1))])
    assert mirror.updates_seen == 0


def test_in_sync_only_after_every_kind_has_listed(syncer, mirror):
    assert mirror.statuses == [SyncStatus.WAIT_FOR_READY]
    syncer.on_synced(PODS)
    assert mirror.statuses == [SyncStatus.WAIT_FOR_READY, SyncStatus.RESYNC]
    syncer.on_synced(PODS)  # a re-list of one kind is not progress towards the others
    assert not mirror.in_sync
    syncer.on_synced(NODES)
    assert mirror.statuses[-1] is SyncStatus.IN_SYNC
    syncer.on_synced(NODES)  # re-lists after in-sync do not repeat the status
    assert mirror.statuses.count(SyncStatus.IN_SYNC) == 1


def test_unknown_syncer_type_is_a_clear_error(mirror):
    with pytest.raises(ValueError, match="unknown syncer type 'nope'"):
        Syncer("nope", mirror)


def pool(name: str, rv: int, cidr: str, nat: bool = False) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": str(rv)}, "spec": {"cidr": cidr, "nat": nat}}


def pool_to_key(obj: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(f"/pool/{obj['spec']['cidr']}", {"nat": obj["spec"]["nat"], "from": obj["metadata"]["name"]})]


POOLS = by_key("ippools.crd.projectcalico.org")


@pytest.mark.parametrize("order", ["a-first", "b-first"])
def test_a_key_claimed_by_two_objects_survives_one_of_them(order):
    mirror = KVMirror()
    syncer = Syncer("test", mirror, {POOLS.key: pool_to_key})
    first, second = (pool("a", 1, "10.0.0.0/16"), pool("b", 2, "10.0.0.0/16", nat=True))
    events = [Event(EventType.SET, first), Event(EventType.SET, second)]
    syncer.on_events(POOLS, events if order == "a-first" else events[::-1])
    # Whatever the arrival order, the claimant that sorts first ("a") provides the value.
    assert mirror.kvs == {"/pool/10.0.0.0/16": {"nat": False, "from": "a"}}
    syncer.on_events(POOLS, [Event(EventType.DELETE, pool("a", 3, "10.0.0.0/16"))])
    assert mirror.kvs == {"/pool/10.0.0.0/16": {"nat": True, "from": "b"}}
    syncer.on_events(POOLS, [Event(EventType.SET, pool("b", 4, "10.1.0.0/16", nat=True))])  # b moves away
    assert mirror.kvs == {"/pool/10.1.0.0/16": {"nat": True, "from": "b"}}
    syncer.on_events(POOLS, [Event(EventType.DELETE, pool("b", 5, "10.1.0.0/16"))])
    assert mirror.kvs == {}
