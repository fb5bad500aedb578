"""Watches on the emulator with the real `kubernetes` client and raw HTTP: resume, order, bookmarks, 410."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from kubernetes import client, config, watch

from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator

DEADLINE = 15.0  # seconds any single wait in this module may take before the test fails


@pytest.fixture
def api() -> Iterator[KubeAPIEmulator]:
    with KubeAPIEmulator(bookmark_interval=0.2).start() as emulator:
        yield emulator


@pytest.fixture
def core(api: KubeAPIEmulator, tmp_path: Path) -> Iterator[client.CoreV1Api]:
    path = tmp_path / "kubeconfig"
    api.write_kubeconfig(path)
    with config.new_client_from_config(config_file=str(path)) as c:
        yield client.CoreV1Api(c)


def pod(name: str, labels: dict[str, str] | None = None, node: str = "node-1", namespace: str = "default") -> dict:
    return objects.pod(namespace, name, node=node, ip=None, labels=labels)


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class RawWatch:
    """A watch read line by line over plain HTTP, to see exactly what the server sends."""

    def __init__(self, emulator: KubeAPIEmulator, path: str):
        url = urlsplit(emulator.url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=DEADLINE)
        self.conn.request("GET", path)
        self.response = self.conn.getresponse()

    def next(self) -> dict[str, Any] | None:
        line = self.response.readline()
        return orjson.loads(line) if line else None

    def until(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while True:
            event = self.next()
            assert event is not None, f"stream ended early after {events}"
            events.append(event)
            if predicate(event):
                return events

    def close(self) -> None:
        self.conn.close()


def rv_of(event: dict[str, Any]) -> int:
    return int(event["object"]["metadata"]["resourceVersion"])


def test_watch_from_a_resource_version_sends_later_writes_in_order(api: KubeAPIEmulator) -> None:
    api.create(pod("before"))
    start = api.resource_version
    a = api.create(pod("a"))
    m = api.patch("v1", "Pod", "a", {"metadata": {"labels": {"x": "1"}}}, "default")
    d = api.delete("v1", "Pod", "before", "default")
    stream = RawWatch(api, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={start}")
    try:
        events = [stream.next() for _ in range(3)]
    finally:
        stream.close()
    assert [(e["type"], e["object"]["metadata"]["name"], rv_of(e)) for e in events] == [
        ("ADDED", "a", int(a["metadata"]["resourceVersion"])),
        ("MODIFIED", "a", int(m["metadata"]["resourceVersion"])),
        ("DELETED", "before", int(d["metadata"]["resourceVersion"])),
    ]
    assert events[0]["object"]["kind"] == "Pod", "watch events carry the object's kind"


@pytest.mark.parametrize("resource_version", [None, "0", ""])
def test_watch_without_a_version_starts_with_the_current_state(
    api: KubeAPIEmulator, resource_version: str | None
) -> None:
    for name in ("p1", "p2"):
        api.create(pod(name))
    query = "" if resource_version is None else f"&resourceVersion={resource_version}"
    stream = RawWatch(api, f"/api/v1/pods?watch=true{query}")
    try:
        initial = [stream.next() for _ in range(2)]
        wait_until(lambda: api.stats()["open_watches"] == 1, "the watch to open")
        api.create(pod("p3"))
        live = stream.next()
    finally:
        stream.close()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [("ADDED", "p1"), ("ADDED", "p2")]
    assert (live["type"], live["object"]["metadata"]["name"]) == ("ADDED", "p3")


def test_resume_after_dropped_watches_loses_and_repeats_nothing(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    start = api.resource_version
    written: list[int] = []
    done = threading.Event()

    def write() -> None:
        for i in range(300):
            obj = api.upsert(pod(f"p{i % 20}", labels={"i": str(i)}))
            written.append(int(obj["metadata"]["resourceVersion"]))
            if i % 50 == 25:
                # Drop a watch that is really open (the first one may still be connecting).
                api.wait_for_watches(1, timeout=DEADLINE)
                api.close_watches()
        done.set()

    writer = threading.Thread(target=write)
    seen: list[int] = []
    w = watch.Watch()
    deadline = time.monotonic() + DEADLINE
    writer.start()
    try:
        # No timeout_seconds: the client resumes from the last resourceVersion it saw after each drop.
        for event in w.stream(core.list_namespaced_pod, "default", resource_version=str(start),
                              allow_watch_bookmarks=True):
            assert time.monotonic() < deadline, "watch did not catch up"
            if event["type"] != "BOOKMARK":
                seen.append(int(event["raw_object"]["metadata"]["resourceVersion"]))
            if done.is_set() and seen and seen[-1] == written[-1]:
                break
    finally:
        w.stop()
        writer.join(timeout=DEADLINE)
    assert seen == written
    assert api.stats()["requests"]["watch"] >= 2, "the watch was really dropped and resumed"


def test_concurrent_writers_are_seen_in_resource_version_order(api: KubeAPIEmulator) -> None:
    stream = RawWatch(api, "/api/v1/pods?watch=1&resourceVersion=" + str(api.resource_version))
    wait_until(lambda: api.stats()["open_watches"] == 1, "the watch to open")
    per_thread = 150

    def write(t: int) -> None:
        for i in range(per_thread):
            api.upsert(pod(f"t{t}-{i % 5}", labels={"i": str(i)}))

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE)
    try:
        events = [stream.next() for _ in range(4 * per_thread)]
    finally:
        stream.close()
    rvs = [rv_of(e) for e in events]
    assert rvs == sorted(set(rvs)), "strictly increasing: nothing lost, repeated or reordered"
    assert rvs[-1] == api.resource_version
    for t in range(4):
        labels = [int(e["object"]["metadata"]["labels"]["i"]) for e in events
                  if e["object"]["metadata"]["name"].startswith(f"t{t}-")]
        assert labels == list(range(per_thread)), "each writer's own order is kept"


def test_bookmarks_only_when_allowed(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    api.create(pod("a"))
    events = list(watch.Watch().stream(core.list_namespaced_pod, "default", resource_version=str(api.resource_version),
                                       allow_watch_bookmarks=True, timeout_seconds=1))
    assert events
    assert {e["type"] for e in events} == {"BOOKMARK"}
    marks = [e["raw_object"] for e in events]
    assert all(m == {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(api.resource_version)}}
               for m in marks)
    quiet = list(watch.Watch().stream(core.list_namespaced_pod, "default", resource_version=str(api.resource_version),
                                      timeout_seconds=1))
    assert quiet == []


def test_label_selector_transitions_look_like_adds_and_deletes(api: KubeAPIEmulator) -> None:
    start = api.resource_version
    api.create(pod("x", labels={"app": "a"}))
    api.patch("v1", "Pod", "x", {"spec": {"nodeName": "node-2"}}, "default")
    api.create(pod("other", labels={"app": "b"}))
    gone = api.patch("v1", "Pod", "x", {"metadata": {"labels": {"app": "b"}}}, "default")
    api.patch("v1", "Pod", "x", {"metadata": {"labels": {"app": "a"}}}, "default")
    api.delete("v1", "Pod", "other", "default")
    final = api.delete("v1", "Pod", "x", "default")
    stream = RawWatch(api, f"/api/v1/namespaces/default/pods?watch=1&labelSelector=app%3Da&resourceVersion={start}")
    try:
        events = stream.until(lambda e: rv_of(e) == int(final["metadata"]["resourceVersion"]))
    finally:
        stream.close()
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED", "ADDED", "DELETED"]
    stopped_matching = events[2]["object"]
    assert stopped_matching["metadata"]["labels"] == {"app": "a"}, "the last state the watcher could see"
    assert stopped_matching["metadata"]["resourceVersion"] == gone["metadata"]["resourceVersion"]


def test_field_selector_on_node_name(api: KubeAPIEmulator) -> None:
    start = api.resource_version
    api.create(pod("mine", node="n1"))
    api.create(pod("theirs", node="n2"))
    last = api.create(pod("mine-too", node="n1", namespace="kube-system"))
    stream = RawWatch(api, f"/api/v1/pods?watch=1&fieldSelector=spec.nodeName%3Dn1&resourceVersion={start}")
    try:
        events = stream.until(lambda e: rv_of(e) == int(last["metadata"]["resourceVersion"]))
    finally:
        stream.close()
    assert [e["object"]["metadata"]["name"] for e in events] == ["mine", "mine-too"]


def test_namespaced_and_custom_resource_watches(api: KubeAPIEmulator) -> None:
    start = api.resource_version
    api.create(pod("elsewhere", namespace="other"))
    api.create({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "metadata": {"name": "p"},
                "spec": {"cidr": "10.0.0.0/8"}})
    last = api.create(pod("here", namespace="mine"))
    pods = RawWatch(api, f"/api/v1/namespaces/mine/pods?watch=1&resourceVersion={start}")
    pools = RawWatch(api, f"/apis/crd.projectcalico.org/v1/ippools?watch=1&resourceVersion={start}")
    try:
        assert pods.next()["object"]["metadata"]["name"] == "here"
        event = pools.next()
        assert (event["type"], event["object"]["kind"], event["object"]["metadata"]["name"]) == ("ADDED", "IPPool", "p")
        assert rv_of(event) < int(last["metadata"]["resourceVersion"])
    finally:
        pods.close()
        pools.close()


def test_watch_from_before_a_compaction_is_gone_at_start(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    old = api.resource_version
    api.create(pod("a"))
    api.compact()
    with pytest.raises(client.ApiException) as exc:
        list(watch.Watch().stream(core.list_namespaced_pod, "default", resource_version=str(old), timeout_seconds=1))
    assert exc.value.status == 410
    # The current version is still a valid place to start.
    assert list(watch.Watch().stream(core.list_namespaced_pod, "default",
                                     resource_version=str(api.resource_version), timeout_seconds=1)) == []


def test_history_limit_bounds_how_far_back_a_watch_can_start() -> None:
    with KubeAPIEmulator(history_limit=5).start() as api:
        rvs = [int(api.upsert(pod("a", labels={"i": str(i)}))["metadata"]["resourceVersion"]) for i in range(10)]
        stream = RawWatch(api, f"/api/v1/pods?watch=1&resourceVersion={rvs[1]}")
        try:
            assert stream.response.status == 410
            assert orjson.loads(stream.response.read())["reason"] == "Expired"
        finally:
            stream.close()
        stream = RawWatch(api, f"/api/v1/pods?watch=1&resourceVersion={rvs[4]}")
        try:
            assert [rv_of(stream.next()) for _ in range(5)] == rvs[5:]
        finally:
            stream.close()


def test_expire_watches_sends_an_error_410_mid_stream(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    raw = RawWatch(api, f"/api/v1/pods?watch=1&resourceVersion={api.resource_version}")
    errors: list[int] = []

    def client_watch() -> None:
        try:
            # timeout_seconds disables the client's own retry, so the 410 reaches us.
            for _ in watch.Watch().stream(core.list_namespaced_pod, "default",
                                          resource_version=str(api.resource_version), timeout_seconds=30):
                pass
        except client.ApiException as err:
            errors.append(err.status)

    consumer = threading.Thread(target=client_watch)
    consumer.start()
    try:
        api.wait_for_watches(2)
        api.expire_watches()
        event = raw.next()
        assert event is not None
        assert event["type"] == "ERROR"
        assert {k: event["object"][k] for k in ("kind", "status", "code", "reason")} == {
            "kind": "Status", "status": "Failure", "code": 410, "reason": "Expired"}
        assert raw.next() is None, "the stream ends after the error"
        consumer.join(timeout=DEADLINE)
        assert errors == [410]
    finally:
        raw.close()
    wait_until(lambda: api.stats()["open_watches"] == 0, "the watches to close")


def test_close_watches_ends_streams_cleanly(api: KubeAPIEmulator) -> None:
    streams = [RawWatch(api, f"/api/v1/pods?watch=1&resourceVersion={api.resource_version}") for _ in range(3)]
    try:
        api.wait_for_watches(3)
        api.close_watches()
        assert [s.next() for s in streams] == [None, None, None]
    finally:
        for s in streams:
            s.close()
    api.wait_for_watches(0)
    # A new watch after the close is unaffected.
    stream = RawWatch(api, f"/api/v1/pods?watch=1&resourceVersion={api.resource_version}")
    try:
        wait_until(lambda: api.stats()["open_watches"] == 1, "the new watch to open")
        api.create(pod("after"))
        assert stream.next()["object"]["metadata"]["name"] == "after"
    finally:
        stream.close()


def test_wait_for_watches_times_out(api: KubeAPIEmulator) -> None:
    with pytest.raises(TimeoutError):
        api.wait_for_watches(1, timeout=0.05)


def test_timeout_seconds_ends_the_watch_and_a_gone_client_is_forgotten(api: KubeAPIEmulator) -> None:
    stream = RawWatch(api, f"/api/v1/pods?watch=1&timeoutSeconds=1&resourceVersion={api.resource_version}")
    try:
        assert stream.next() is None
    finally:
        stream.close()
    abandoned = RawWatch(api, f"/api/v1/pods?watch=1&resourceVersion={api.resource_version}")
    wait_until(lambda: api.stats()["open_watches"] == 1, "the watch to open")
    abandoned.response.close()
    abandoned.close()
    wait_until(lambda: api.stats()["open_watches"] == 0, "the server to notice the client left")


def test_timeout_and_bookmarks_are_not_starved_by_constant_writes(api: KubeAPIEmulator) -> None:
    stop = threading.Event()

    def churn() -> None:
        for i in range(1_000_000):
            if stop.is_set():
                return
            api.upsert(pod(f"p{i % 10}", labels={"i": str(i)}))

    stream = RawWatch(api, f"/api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=1"
                           f"&resourceVersion={api.resource_version}")
    writer = threading.Thread(target=churn)
    writer.start()
    try:
        types = []
        deadline = time.monotonic() + DEADLINE
        while (event := stream.next()) is not None:
            assert time.monotonic() < deadline, "the watch outlived its timeoutSeconds by far"
            types.append(event["type"])
    finally:
        stop.set()
        writer.join(timeout=DEADLINE)
        stream.close()
    assert "BOOKMARK" in types
    assert types.count("MODIFIED") > 10


def test_send_initial_events_ends_with_a_marked_bookmark(api: KubeAPIEmulator) -> None:
    api.create(pod("a"))
    stream = RawWatch(api, "/api/v1/pods?watch=1&sendInitialEvents=true&allowWatchBookmarks=true"
                           "&resourceVersionMatch=NotOlderThan&resourceVersion=1")
    try:
        added, bookmark = stream.next(), stream.next()
    finally:
        stream.close()
    assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", "a")
    assert bookmark == {"type": "BOOKMARK", "object": {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"resourceVersion": str(api.resource_version),
                     "annotations": {"k8s.io/initial-events-end": "true"}}}}
