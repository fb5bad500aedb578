"""One resource kind kept in step with the API server: paginated list, then watch, resume, re-list on 410.

The reflector remembers only each object's resourceVersion, which is enough to turn a re-list into
exactly the differences against what it already emitted: deletes for vanished objects, sets for new
or changed ones, nothing for unchanged ones.
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3.exceptions

from typha.backoff import Backoff
from typha.kube import metrics
from typha.kube.client import DEFAULT_WATCH_TIMEOUT_SECONDS, KubeAPIError, KubeClient, WatchHandle
from typha.model.resources import Resource

log = logging.getLogger(__name__)

ObjectId = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped kinds


class EventType(enum.Enum):
    SET = "set"  # added or modified: the object is as given
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    obj: dict[str, Any]  # for DELETE, at least metadata.name/namespace
    # object_id(obj) when the reflector computed it already. A consumer that remembers objects keys
    # them by this very tuple: a dict keeps the key it was first given, so `known` and the consumer's
    # map then share one tuple per object instead of holding two.
    oid: ObjectId | None = None


class ReflectorSink(Protocol):
    """Receives a reflector's output on the reflector's thread; may block to apply back-pressure."""

    def on_events(self, resource: Resource, events: list[Event]) -> None: ...

    def on_synced(self, resource: Resource) -> None: ...


def object_id(obj: dict[str, Any]) -> ObjectId:
    metadata = obj.get("metadata") or {}
    # A few namespaces name every object: one string each instead of a copy per object held in `known`.
    return (sys.intern(metadata.get("namespace") or ""), metadata["name"])


# Between failed list/watch requests, as client-go's reflector backs off.
REFLECTOR_BACKOFF = Backoff(initial=0.2, maximum=30.0)


class _Relist(Exception):
    """The resume point is gone (410): the only way back is a fresh list."""


class Reflector:
    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        sink: ReflectorSink,
        *,
        page_size: int = 500,
        batch_size: int = 500,
        watch_timeout_seconds: int = DEFAULT_WATCH_TIMEOUT_SECONDS,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.sink = sink
        self.page_size = page_size
        self.batch_size = batch_size
        self.watch_timeout_seconds = watch_timeout_seconds
        self.backoff = backoff or REFLECTOR_BACKOFF
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._watch = WatchHandle(on_open=self._reachable)
        self._thread: threading.Thread | None = None
        self.known: dict[ObjectId, str] = {}  # object -> resourceVersion last emitted
        self.resource_version = ""  # resume point: newest version seen in a list, event or bookmark
        self.synced = False
        self.lists = 0
        self.watches = 0
        self.errors = 0
        # When the API started failing us (monotonic), None while it answers: typha's readiness.
        self.failing_since: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"reflector-{self.resource.key}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end without waiting: lets a caller stop many reflectors in parallel."""
        self._stop.set()
        self._watch.cancel()

    def stop(self, timeout: float = 5.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        delays = iter(self.backoff.delays())
        need_list = True
        while not self.stopped:
            try:
                if need_list:
                    self._list_and_emit_diff()
                    need_list = False
                self._watch_until_end()
                delays = iter(self.backoff.delays())  # a watch that ran normally resets the backoff
            except _Relist:
                need_list = True
                delays = iter(self.backoff.delays())
            except KubeAPIError as exc:
                if exc.is_gone:
                    log.info("%s: resourceVersion %s is gone; re-listing", self.resource.key,
                             self.resource_version)
                    need_list = True
                    continue
                self._record_error(exc)
                delay = next(delays)
                self._sleep(max(delay, exc.retry_after or 0.0))
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self.stopped:
                    break
                self._record_error(exc)
                self._sleep(next(delays))

    def _reachable(self) -> None:
        self.failing_since = None

    def _record_error(self, exc: BaseException) -> None:
        self.errors += 1
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        metrics.DATASTORE_ERRORS.labels(self.resource.key).inc()
        log.warning("%s: %s; backing off", self.resource.key, exc)

    # -- list --------------------------------------------------------------------------------------

    def _list_and_emit_diff(self) -> None:
        """List everything, emitting page by page exactly what differs from what was emitted before.

        Each page is converted and dropped before the next is read: holding the whole list of parsed
        objects at once cost ~3 KB per object at its peak, and the freed heap stayed in the process's
        RSS (docs/memory.md). `known` follows every emitted page, so a list that fails half way leaves
        it describing exactly what the sink has seen, and the next list's diff stays exact.
        """
        seen: set[ObjectId] = set()
        known = self.known
        continue_token = ""
        while True:
            page = self.client.list_page(self.resource, limit=self.page_size, continue_token=continue_token)
            changed: list[Event] = []
            for obj in page.items:
                oid = object_id(obj)
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                if known.get(oid) != rv:
                    known[oid] = rv
                    changed.append(Event(EventType.SET, obj, oid))
                seen.add(oid)
            del page.items[:]  # the page's parsed objects go as soon as they are converted
            self._emit(changed)
            del changed
            if not page.continue_token:
                list_rv = page.resource_version
                break
            continue_token = page.continue_token
            if self.stopped:
                raise urllib3.exceptions.HTTPError("stopped while listing")
        self.lists += 1
        metrics.DATASTORE_LISTS.labels(self.resource.key).inc()
        gone = known.keys() - seen
        vanished = [
            Event(EventType.DELETE, {"metadata": {"namespace": ns, "name": name, "resourceVersion": list_rv}})
            for (ns, name) in gone
        ]
        for oid in gone:
            del known[oid]
        self.resource_version = list_rv
        self._reachable()
        self._emit(vanished)
        self.synced = True
        self.sink.on_synced(self.resource)

    def _emit(self, events: list[Event]) -> None:
        for start in range(0, len(events), self.batch_size):
            batch = events[start : start + self.batch_size]
            metrics.DATASTORE_EVENTS.labels(self.resource.key).inc(len(batch))
            self.sink.on_events(self.resource, batch)

    # -- watch -------------------------------------------------------------------------------------

    def _watch_until_end(self) -> None:
        self.watches += 1
        for raw_events in self.client.watch(
            self.resource,
            self.resource_version,
            timeout_seconds=self.watch_timeout_seconds,
            cancel=self._watch,
        ):
            if self.stopped:
                return
            batch: list[Event] = []
            try:
                for raw in raw_events:
                    self._apply_watch_event(raw, batch)
            finally:
                # Events before an ERROR in the same read still happened: hand them on first.
                if batch:
                    self._emit(batch)

    def _apply_watch_event(self, raw: dict[str, Any], batch: list[Event]) -> None:
        event_type = raw.get("type")
        obj = raw.get("object") or {}
        if event_type == "ERROR":
            self._handle_error_event(obj)
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if event_type == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        oid = object_id(obj)
        if event_type in ("ADDED", "MODIFIED"):
            self.known[oid] = rv
            batch.append(Event(EventType.SET, obj, oid))
        elif event_type == "DELETED":
            self.known.pop(oid, None)
            batch.append(Event(EventType.DELETE, obj, oid))
        else:
            log.warning("%s: ignoring watch event of type %r", self.resource.key, event_type)
            return
        if rv:
            self.resource_version = rv

    def _handle_error_event(self, status: dict[str, Any]) -> None:
        code = status.get("code")
        if code == 410:
            log.info("%s: watch expired (%s); re-listing", self.resource.key, status.get("message", ""))
            raise _Relist()
        reason, message = str(status.get("reason") or ""), str(status.get("message") or "")
        raise KubeAPIError(int(code or 500), reason, message)
