"""The reflector against the API emulator over HTTP: resume, 410 re-list diffs, bookmarks, backoff."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from typha.backoff import Backoff
from typha.kube.reflector import Event, EventType, Reflector
from typha.model.resources import Resource, by_key
from typha.testing import objects
from typha.testing.wait import wait_until

PODS = by_key("pods")


class RecordingSink:
    """Applies events to a state dict and keeps the full event log."""

    def __init__(self) -> None:
        self.log: list[tuple[EventType, str, str]] = []  # (type, name, resourceVersion)
        self.state: dict[str, str] = {}  # name -> resourceVersion
        self.synced = 0
        self.cond = threading.Condition()

    def on_events(self, resource: Resource, events: list[Event]) -> None:
        with self.cond:
            for event in events:
                meta = event.obj["metadata"]
                rv = str(meta.get("resourceVersion", ""))
                self.log.append((event.type, meta["name"], rv))
                if event.type is EventType.SET:
                    self.state[meta["name"]] = rv
                else:
                    self.state.pop(meta["name"], None)
            self.cond.notify_all()

    def on_synced(self, resource: Resource) -> None:
        with self.cond:
            self.synced += 1
            self.cond.notify_all()

    def wait(self, predicate, timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self), timeout), f"timed out; log={self.log[-10:]}"


def expected_state(emulator) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in emulator.list("v1", "Pod")}


def add_pod(emulator, name: str, **labels: str) -> dict[str, Any]:
    return emulator.create(objects.pod("default", name, node="n1", ip="10.65.0.2", labels=labels))


class GatedSleep:
    """Backoff sleep that the test can hold closed, to act while the reflector is disconnected."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.entered.set()
        assert self.gate.wait(20.0)


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


def start_reflector(kube, sink, **options) -> Reflector:
    reflector = Reflector(kube, PODS, sink, **options)
    reflector.start()
    return reflector


def test_paginated_initial_list(emulator, kube, sink):
    for i in range(23):
        add_pod(emulator, f"p{i}")
    reflector = start_reflector(kube, sink, page_size=5)
    try:
        sink.wait(lambda s: s.synced == 1)
        assert sink.state == expected_state(emulator)
        assert len(sink.log) == 23
        assert reflector.lists == 1
    finally:
        reflector.stop()


def test_resume_after_dropped_watch_loses_and_repeats_nothing(emulator, kube, sink):
    add_pod(emulator, "a")
    reflector = start_reflector(kube, sink)
    try:
        sink.wait(lambda s: s.synced == 1)
        for round_ in range(5):
            # Close only a watch that is really open on the server, or the close is a no-op.
            wait_until(lambda round_=round_: reflector.watches == round_ + 1 and emulator.stats()["open_watches"] == 1,
                       "the next watch, open")
            emulator.close_watches()
            add_pod(emulator, f"r{round_}")
            emulator.patch("v1", "Pod", "a", {"metadata": {"labels": {"round": str(round_)}}}, "default")
        emulator.delete("v1", "Pod", "r0", "default")
        final = expected_state(emulator)
        sink.wait(lambda s: s.state == final)
        time.sleep(0.3)  # let any duplicate that would arrive arrive
        counts = Counter(sink.log)
        assert [entry for entry, n in counts.items() if n > 1] == []
        # 1 listed pod + 5 creates + 5 label changes + 1 delete, each exactly once
        assert len(sink.log) == 12
        assert reflector.lists == 1, "a dropped watch must resume, not re-list"
        assert reflector.watches >= 6
    finally:
        reflector.stop()


def test_gone_while_disconnected_relists_with_exact_diff(emulator, kube, sink):
    for name in ("keep", "change", "remove"):
        add_pod(emulator, name)
    sleep = GatedSleep()
    reflector = start_reflector(kube, sink, sleep=sleep)
    try:
        sink.wait(lambda s: s.synced == 1)
        logged_before = len(sink.log)
        sleep.gate.clear()
        wait_until(lambda: emulator.stats()["open_watches"] == 1, "one open watch")
        emulator.fail_next(1, 500)
        emulator.close_watches()
        assert sleep.entered.wait(10.0), "the reflector never backed off"
        # Disconnected: change the world and forget the history it would have resumed from.
        emulator.patch("v1", "Pod", "change", {"metadata": {"labels": {"v": "2"}}}, "default")
        emulator.delete("v1", "Pod", "remove", "default")
        add_pod(emulator, "new")
        emulator.compact()
        sleep.gate.set()
        final = expected_state(emulator)
        sink.wait(lambda s: s.synced == 2 and s.state == final)
        diff = sorted((kind.value, name) for kind, name, _ in sink.log[logged_before:])
        assert diff == [("delete", "remove"), ("set", "change"), ("set", "new")]
        assert reflector.lists == 2
    finally:
        reflector.stop()


def test_expired_watch_mid_stream_relists(emulator, kube, sink):
    add_pod(emulator, "a")
    reflector = start_reflector(kube, sink)
    try:
        sink.wait(lambda s: s.synced == 1)
        wait_until(lambda: emulator.stats()["open_watches"] == 1,
                   "one open watch")  # expire a watch that is really open
        emulator.expire_watches()
        sink.wait(lambda s: s.synced == 2)
        add_pod(emulator, "b")
        final = expected_state(emulator)
        sink.wait(lambda s: s.state == final)
        assert [name for _, name, _ in sink.log] == ["a", "b"], "an unchanged object must not be re-emitted"
    finally:
        reflector.stop()


def test_bookmarks_advance_the_resume_point(emulator, kube, sink):
    add_pod(emulator, "a")
    reflector = start_reflector(kube, sink)
    try:
        sink.wait(lambda s: s.synced == 1)
        # Writes to another kind move the global resourceVersion without any pod event.
        for i in range(5):
            emulator.create(objects.namespace(f"ns{i}"))
        target = emulator.resource_version
        wait_until(lambda: int(reflector.resource_version or 0) >= target, "the target resourceVersion")
        # History older than the bookmark may now go: resuming from the bookmark needs none of it.
        emulator.compact()
        emulator.close_watches()
        add_pod(emulator, "b")
        final = expected_state(emulator)
        sink.wait(lambda s: s.state == final)
        assert reflector.lists == 1
    finally:
        reflector.stop()


@pytest.mark.parametrize("status", [500, 429])
def test_errors_are_retried_with_growing_backoff(emulator, kube, sink, status):
    add_pod(emulator, "a")
    sleep = GatedSleep()
    emulator.fail_next(4, status, retry_after=1 if status == 429 else None)
    reflector = start_reflector(kube, sink, sleep=sleep, backoff=Backoff(initial=0.01, jitter=0.0))
    try:
        sink.wait(lambda s: s.synced == 1)
        assert sink.state == expected_state(emulator)
        assert reflector.errors == 4
        assert len(sleep.delays) == 4
        if status == 429:
            assert all(delay >= 1.0 for delay in sleep.delays), "Retry-After must be honoured"
        else:
            assert sleep.delays == sorted(sleep.delays)
            assert sleep.delays[-1] > sleep.delays[0]
    finally:
        reflector.stop()


def test_stop_interrupts_a_blocked_watch(emulator, kube, sink):
    reflector = start_reflector(kube, sink, watch_timeout_seconds=300)
    sink.wait(lambda s: s.synced == 1)
    time.sleep(0.2)  # let it block in the watch read
    reflector.stop(timeout=10.0)
    # The watch could block for 300 s: only the cancel can have ended the thread within the join.
    assert reflector._thread is not None
    assert not reflector._thread.is_alive()
