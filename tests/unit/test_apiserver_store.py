"""The emulator's object store without HTTP: resourceVersions, history window, snapshots, write rules."""

from __future__ import annotations

import base64
import random
import threading
from typing import Any

import orjson
import pytest

from typha.model.resources import by_key
from typha.testing.apiserver.store import ApiError, Filter, ObjectStore

PODS = by_key("pods")
NODES = by_key("nodes")
POOLS = by_key("ippools.crd.projectcalico.org")
DEPLOYMENTS = by_key("deployments.apps")


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": spec or {"containers": []}}


def test_every_write_takes_the_next_resource_version_and_records_one_event() -> None:
    store = ObjectStore()
    start = store.resource_version
    store.create(PODS, pod("a"), "default")
    store.replace(PODS, pod("a", {"x": "1"}), "default")
    store.patch(PODS, "default", "a", lambda obj: {**obj, "spec": {"nodeName": "n"}})
    store.upsert(PODS, pod("b"), "ns2")
    store.delete(PODS, "default", "a")
    events = store.events_after(start)
    assert [(e.rv, e.type, e.stored.obj["metadata"]["name"]) for e in events] == [
        (start + 1, "ADDED", "a"), (start + 2, "MODIFIED", "a"), (start + 3, "MODIFIED", "a"),
        (start + 4, "ADDED", "b"), (start + 5, "DELETED", "a"),
    ]
    assert store.resource_version == start + 5
    assert all(e.stored.rv == e.rv for e in events), "each object is stamped with its write's version"
    assert events[4].prev is not None
    assert events[4].prev["spec"] == {"nodeName": "n"}


def test_failed_writes_change_nothing() -> None:
    store = ObjectStore()
    store.create(PODS, pod("a"), "default")
    rv = store.resource_version
    for attempt in (
        lambda: store.create(PODS, pod("a"), "default"),
        lambda: store.replace(PODS, pod("zz"), "default"),
        lambda: store.delete(PODS, "default", "zz"),
        lambda: store.patch(PODS, "default", "zz", lambda o: o),
        lambda: store.replace(PODS, {**pod("a"), "metadata": {"name": "a", "resourceVersion": "1"}}, "default"),
        lambda: store.create(NODES, {"kind": "Pod", "metadata": {"name": "n"}}),
    ):
        with pytest.raises(ApiError):
            attempt()
    assert store.resource_version == rv
    assert len(store.events_after(rv - 1)) == 1


def test_errors_have_kubernetes_codes_and_reasons() -> None:
    store = ObjectStore()
    store.create(PODS, pod("a"), "default")
    cases = [
        ((409, "AlreadyExists"), lambda: store.create(PODS, pod("a"), "default")),
        ((404, "NotFound"), lambda: store.get(PODS, "default", "b")),
        ((400, "BadRequest"), lambda: store.create(PODS, {**pod("c"), "metadata": {"name": "c", "namespace": "x"}},
                                                   "default")),
        ((400, "BadRequest"), lambda: store.create(PODS, {**pod("e"), "metadata": {"name": "e", "labels": {"a": 1}}})),
        ((400, "BadRequest"), lambda: store.create(PODS, {**pod("f"), "metadata": ["f"]})),
        ((422, "Invalid"), lambda: store.create(PODS, pod("UPPER"), "default")),
        ((422, "Invalid"), lambda: store.create(PODS, {**pod(""), "metadata": {}})),
        ((500, "InternalError"), lambda: store.create(PODS, {**pod("d"), "metadata": {"name": "d",
                                                                                       "resourceVersion": "5"}})),
    ]
    for (code, reason), attempt in cases:
        with pytest.raises(ApiError) as err:
            attempt()
        assert (err.value.status, err.value.reason) == (code, reason)
        status = err.value.to_status()
        assert (status["kind"], status["status"], status["code"]) == ("Status", "Failure", code)


def test_identity_and_generation_are_kept_by_the_server() -> None:
    store = ObjectStore()
    created = store.create(POOLS, {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
                                   "metadata": {"name": "p", "namespace": "ignored", "uid": "mine"},
                                   "spec": {"cidr": "10.0.0.0/8"}}).obj
    meta = created["metadata"]
    assert "namespace" not in meta, "cluster-scoped objects have no namespace"
    assert meta["uid"] != "mine"
    assert meta["generation"] == 1
    assert meta["creationTimestamp"].endswith("Z")
    body = orjson.loads(orjson.dumps(created))
    body["metadata"]["labels"] = {"x": "y"}
    body["metadata"]["creationTimestamp"] = "1999-01-01T00:00:00Z"
    relabelled = store.replace(POOLS, body).obj["metadata"]
    assert (relabelled["generation"], relabelled["creationTimestamp"]) == (1, meta["creationTimestamp"])
    body["spec"]["cidr"] = "10.1.0.0/16"
    body["metadata"].pop("resourceVersion")
    assert store.replace(POOLS, body).obj["metadata"]["generation"] == 2
    assert "generation" not in store.create(PODS, pod("a"), "default").obj["metadata"]
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 1}}
    assert store.create(DEPLOYMENTS, deployment, "default").obj["metadata"]["generation"] == 1


def test_generate_name_and_status_subresource() -> None:
    store = ObjectStore()
    obj = store.create(PODS, {**pod(""), "metadata": {"generateName": "web-"}}, "default").obj
    name = obj["metadata"]["name"]
    assert name.startswith("web-")
    assert len(name) == len("web-") + 5
    body = orjson.loads(orjson.dumps(obj))
    body["spec"] = {"nodeName": "ignored"}
    body["status"] = {"phase": "Running"}
    updated = store.replace(PODS, body, "default", name, status_only=True).obj
    assert updated["status"] == {"phase": "Running"}
    assert updated["spec"] == obj["spec"]
    patched = store.patch(PODS, "default", name, lambda o: {**o, "spec": {}, "status": {"phase": "Failed"}},
                          status_only=True).obj
    assert patched["status"] == {"phase": "Failed"}
    assert patched["spec"] == obj["spec"]
    with pytest.raises(ApiError) as err:
        store.patch(PODS, "default", name, lambda o: {**o, "metadata": {"resourceVersion": "1"}}, status_only=True)
    assert err.value.status == 409, "a status patch honours a resourceVersion precondition too"


def test_secret_string_data_becomes_base64_data() -> None:
    store = ObjectStore()
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
              "data": {"keep": base64.b64encode(b"old").decode(), "over": "eA=="},
              "stringData": {"over": "new", "added": "yes"}}
    stored = store.create(by_key("secrets"), secret, "default").obj
    assert "stringData" not in stored
    assert {k: base64.b64decode(v).decode() for k, v in stored["data"].items()} == {
        "keep": "old", "over": "new", "added": "yes"}


def test_history_window_and_compaction() -> None:
    store = ObjectStore(history_limit=3)
    start = store.resource_version
    for i in range(6):
        store.upsert(PODS, pod("a", {"i": str(i)}), "default")
    with pytest.raises(ApiError) as err:
        store.events_after(start + 2)
    assert err.value.status == 410
    assert [e.rv for e in store.events_after(start + 3)] == [start + 4, start + 5, start + 6]
    assert store.watch_start(Filter(PODS), str(start + 3)) == ([], start + 3)
    with pytest.raises(ApiError):
        store.watch_start(Filter(PODS), str(start + 2))
    store.compact()
    with pytest.raises(ApiError):
        store.events_after(start + 5)
    assert store.events_after(store.resource_version) == []
    current, cursor = store.watch_start(Filter(PODS), "0")
    assert [s.obj["metadata"]["labels"] for s in current] == [{"i": "5"}]
    assert cursor == store.resource_version


def test_history_stays_bounded_in_memory() -> None:
    store = ObjectStore(history_limit=10)
    for i in range(5000):
        store.upsert(PODS, pod("a", {"i": str(i)}), "default")
    assert len(store._history) <= 2 * 10 + 1024
    assert store.counts() == (1, 10)


def test_list_pages_pin_their_snapshot() -> None:
    store = ObjectStore()
    for i in range(10):
        store.create(PODS, pod(f"p{i}"), "default")
    first = store.list_page(Filter(PODS), limit=4)
    store.delete(PODS, "default", "p9")
    store.create(PODS, pod("p99"), "default")
    second = store.list_page(Filter(PODS), limit=4, continue_token=first.continue_token)
    third = store.list_page(Filter(PODS), limit=4, continue_token=second.continue_token)
    assert first.resource_version == second.resource_version == third.resource_version
    names = [s.obj["metadata"]["name"] for page in (first, second, third) for s in page.items]
    assert names == [f"p{i}" for i in range(10)]
    assert (first.remaining, second.remaining, third.continue_token) == (6, 2, None)
    fresh = store.list_page(Filter(PODS))
    assert fresh.resource_version == store.resource_version
    assert len(fresh.items) == 10
    labelled = store.list_page(Filter(PODS, labels=lambda labels: False), limit=1)
    assert (labelled.items, labelled.continue_token) == ([], None)


def test_list_items_of_built_in_kinds_carry_no_type_meta() -> None:
    store = ObjectStore()
    store.create(PODS, pod("a"), "default")
    store.create(POOLS, {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "metadata": {"name": "p"}})
    (pod_item,) = (s.item for s in store.list_page(Filter(PODS)).items)
    (pool_item,) = (s.item for s in store.list_page(Filter(POOLS)).items)
    assert orjson.loads(pod_item) == {k: v for k, v in store.get(PODS, "default", "a").copy().items()
                                      if k not in ("apiVersion", "kind")}
    assert orjson.loads(pool_item)["kind"] == "IPPool"
    assert orjson.loads(store.get(PODS, "default", "a").full)["kind"] == "Pod"


def test_concurrent_writers_get_distinct_consecutive_versions() -> None:
    store = ObjectStore()
    start = store.resource_version
    results: list[list[int]] = [[] for _ in range(4)]

    def write(t: int) -> None:
        for i in range(250):
            results[t].append(store.upsert(PODS, pod(f"t{t}", {"i": str(i)}), "default").rv)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(rv for r in results for rv in r) == list(range(start + 1, start + 1001))
    assert all(r == sorted(r) for r in results)
    assert [e.rv for e in store.events_after(start, max_events=2000)] == list(range(start + 1, start + 1001))


def test_lists_stay_sorted_by_namespace_and_name_under_churn() -> None:
    store = ObjectStore()
    rng = random.Random(7)
    live: set[tuple[str, str]] = set()
    for step in range(600):
        ns, name = f"ns{rng.randrange(4)}", f"p{rng.randrange(40)}"
        if (ns, name) in live and rng.random() < 0.5:
            store.delete(PODS, ns, name)
            live.discard((ns, name))
        else:
            store.upsert(PODS, pod(name), ns)
            live.add((ns, name))
        if step % 50 == 0:
            listed = [(s.obj["metadata"]["namespace"], s.obj["metadata"]["name"])
                      for s in store.list_page(Filter(PODS)).items]
            assert listed == sorted(live)
            for namespace in ("ns0", "ns3", "ns", "ns00"):
                page = store.list_page(Filter(PODS, namespace=namespace)).items
                assert [s.obj["metadata"]["name"] for s in page] == sorted(n for x, n in live if x == namespace)
