"""The felix and bgp syncers: which kinds each needs, and Kubernetes objects → Calico model updates.

A `Syncer` is stateful per object: it remembers which keys each object produced, so that when an
object stops producing a key (a pod loses its IP, a policy becomes invalid, the object is deleted)
the key's delete is emitted. Values are not remembered here: dropping no-op updates is the cache's
job (docs/architecture.md §5.2), which is where `typha_updates_skipped` counts them.

A `Datastore` runs one reflector per resource kind, shared by every syncer that needs the kind, and
hands their output to the syncers on a single ingest thread through a bounded queue, so that a slow
consumer back-pressures the reflectors instead of growing memory. The queue is short on purpose: it
holds parsed API objects (a few KB each, up to 500 per batch), which are the largest thing typha ever
holds, and a long queue filled by an initial list set the process's peak (docs/memory.md).

Calico's own kinds are read from `crd.projectcalico.org/v1` or `projectcalico.org/v3`, decided once
at start as libcalico-go decides it (`calico_api_group`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter

from typha.kube.client import KubeClient
from typha.kube.reflector import Event, EventType, ObjectId, Reflector, object_id
from typha.model import convert
from typha.model.convert.base import Converter
from typha.model.kv import SyncStatus, Update
from typha.model.resources import (
    CALICO_API_V1,
    CALICO_API_V3,
    CALICO_CRD_GROUP,
    CALICO_V3_GROUP,
    Resource,
    by_key,
    calico_resource,
)
from typha.syncproto.names import SYNCER_TYPES

if TYPE_CHECKING:
    # Only its type: importing typha.client loads gRPC and cryptography, which the configuration check
    # does not need (docs/memory.md).
    from typha.client.events import SyncCallbacks

CONVERSION_ERRORS = Counter(
    "typha_conversion_errors",
    "Kubernetes objects that failed conversion or validation; their keys were deleted.",
    ["syncer", "resource"],
)

log = logging.getLogger(__name__)

OwnerId = tuple[str, str, str]  # (resource key, namespace, name)

_MAX_REASON_CHARS = 500

# Kinds whose keys come from their spec (a CIDR), not their name: two objects can produce one key.
# Only these pay for remembering values per object; every other key has exactly one possible owner.
CONTENT_KEYED = frozenset(
    f"{plural}.{group}"
    for plural in ("ippools", "ipamblocks", "blockaffinities")
    for group in (CALICO_CRD_GROUP, CALICO_V3_GROUP)
)

# libcalico-go's apiconfig setting (CalicoAPIGroup): Typha reads it from the environment with the
# rest of its datastore settings, without a TYPHA_ prefix.
API_GROUP_ENV = "CALICO_API_GROUP"


def converters_for(syncer_type: str, api_group: str = CALICO_API_V1) -> Mapping[str, Converter]:
    """resource key -> converter, for one syncer type (docs/calico/typha.md §2)."""
    if syncer_type not in SYNCER_TYPES:
        raise ValueError(f"unknown syncer type {syncer_type!r}; expected one of {SYNCER_TYPES}")
    return convert.converters(syncer_type, api_group)


class _Discovery(Protocol):
    def api_group_names(self) -> list[str]: ...


def calico_api_group(client: _Discovery | None, configured: str | None = None) -> str:
    """The API group Calico's kinds are read from: libcalico-go's UsingV3CRDs.

    A configured CALICO_API_GROUP decides (v3 exactly when it equals `projectcalico.org/v3`, case
    folded). Otherwise the API server's group list does: `projectcalico.org` present and
    `crd.projectcalico.org` absent means v3 CRDs. Both present means the Calico API server serves v3
    on top of the v1 CRDs, which are then read directly; an unreachable API server means v1.
    """
    if configured:
        group = CALICO_API_V3 if configured.casefold() == CALICO_API_V3.casefold() else CALICO_API_V1
        log.info("Using the configured Calico API group %s (%s=%s)", group, API_GROUP_ENV, configured)
        return group
    if client is None:
        return CALICO_API_V1
    try:
        names = set(client.api_group_names())
    except Exception as exc:
        log.warning("Cannot discover the Calico API group (%s); using %s", exc, CALICO_API_V1)
        return CALICO_API_V1
    v3_present, v1_present = CALICO_V3_GROUP in names, CALICO_CRD_GROUP in names
    group = CALICO_API_V3 if v3_present and not v1_present else CALICO_API_V1
    log.info("Discovered Calico API groups (v3 %s, v1 %s): using %s", v3_present, v1_present, group)
    return group


class Syncer:
    def __init__(
        self,
        syncer_type: str,
        callbacks: SyncCallbacks,
        converters: Mapping[str, Converter] | None = None,
        api_group: str | None = None,
    ) -> None:
        """`api_group` None: the Datastore that runs this syncer chooses it at start (`use_api_group`)."""
        self.syncer_type = syncer_type
        self.callbacks = callbacks
        self._fixed_converters = converters is not None
        self.api_group = api_group or CALICO_API_V1
        self._group_chosen = api_group is not None or self._fixed_converters
        self.converters = dict(converters if converters is not None else converters_for(syncer_type, self.api_group))
        self.resources: list[Resource] = [by_key(key) for key in self.converters]
        # resource key -> object -> the key it produced, or the keys when several (usually one: a str
        # saves a tuple per object). The key strings are the cache's own, so this costs a dict slot.
        self._owned: dict[str, dict[ObjectId, str | tuple[str, ...]]] = {}
        self._claims: dict[str, dict[OwnerId, Any]] = {}  # key -> claimant -> value, CONTENT_KEYED kinds only
        self._synced: set[str] = set()
        self.status = SyncStatus.WAIT_FOR_READY

    @property
    def group_chosen(self) -> bool:
        return self._group_chosen

    def use_api_group(self, api_group: str) -> None:
        """Read Calico's kinds from `api_group`; only before any event (the Datastore calls it)."""
        if any(self._owned.values()) or self._synced:
            raise RuntimeError("the Calico API group cannot change once the syncer has seen objects")
        self.api_group = api_group
        self._group_chosen = True
        if self._fixed_converters:
            # A caller-supplied table keyed for v1: move its Calico kinds to their v3 resources.
            self.converters = {calico_resource(key, api_group).key: fn for key, fn in self.converters.items()}
        else:
            self.converters = dict(converters_for(self.syncer_type, api_group))
        self.resources = [by_key(key) for key in self.converters]

    def start(self) -> None:
        self.callbacks.on_status(SyncStatus.WAIT_FOR_READY)

    def _set_status(self, status: SyncStatus) -> None:
        if status is not self.status:
            self.status = status
            self.callbacks.on_status(status)

    def on_events(self, resource: Resource, events: Iterable[Event]) -> None:
        if self.status is SyncStatus.WAIT_FOR_READY:
            self._set_status(SyncStatus.RESYNC)
        converter = self.converters[resource.key]
        shared_keys = resource.key in CONTENT_KEYED
        owned = self._owned.setdefault(resource.key, {})
        updates: list[Update] = []
        for event in events:
            oid = event.oid or object_id(event.obj)
            revision = str(event.obj["metadata"].get("resourceVersion") or "")
            held = owned.get(oid, ())
            old_keys = (held,) if isinstance(held, str) else held
            kvs = self._convert(converter, resource, event.obj) if event.type is EventType.SET else []
            new_keys = tuple(key for key, _ in kvs)
            if shared_keys:
                updates.extend(self._claim((resource.key, *oid), old_keys, kvs, revision))
            else:
                updates.extend(Update(key, value, revision) for key, value in kvs)
                if old_keys:
                    still = set(new_keys)
                    updates.extend(Update(key, None, revision) for key in old_keys if key not in still)
            if len(new_keys) == 1:
                owned[oid] = new_keys[0]
            elif new_keys:
                owned[oid] = new_keys
            else:
                owned.pop(oid, None)
        if updates:
            self.callbacks.on_updates(updates)

    def _claim(
        self, owner: OwnerId, old_keys: tuple[str, ...], kvs: list[tuple[str, Any]], revision: str
    ) -> list[Update]:
        """Updates for keys several objects may produce (e.g. two IPPools with one CIDR).

        The key's value comes from the claimant that sorts first by (kind, namespace, name), so the
        outcome does not depend on the order events arrived in; when it withdraws, the next one's
        value takes over, and the key is deleted only when nobody claims it any more.
        """
        updates: list[Update] = []
        produced = dict(kvs)
        for key in [*produced, *(k for k in old_keys if k not in produced)]:
            claims = self._claims.setdefault(key, {})
            before = min(claims) if claims else None
            if key in produced:
                claims[owner] = produced[key]
            else:
                claims.pop(owner, None)
            if not claims:
                del self._claims[key]
                if before is not None:
                    updates.append(Update(key, None, revision))
                continue
            after = min(claims)
            if after == owner or after != before:
                updates.append(Update(key, claims[after], revision))
        return updates

    def _convert(
        self, converter: Converter, resource: Resource, obj: dict[str, Any]
    ) -> list[tuple[str, Any]]:
        try:
            return converter(obj)
        except Exception as exc:
            # Bad input must never stop the syncer: the object's keys are withdrawn, as Typha's
            # validation filter turns an invalid value into a delete.
            metadata = obj.get("metadata") or {}
            reason = str(exc)
            if len(reason) > _MAX_REASON_CHARS:
                # Errors quote the offending field, which may be a 1 MB annotation: one log line per
                # event must not carry it.
                reason = f"{reason[:_MAX_REASON_CHARS]}… ({len(reason)} characters)"
            log.warning(
                "%s syncer: skipping invalid %s %s/%s: %s",
                self.syncer_type, resource.kind, metadata.get("namespace", ""), metadata.get("name"), reason,
            )
            CONVERSION_ERRORS.labels(self.syncer_type, resource.key).inc()
            return []

    def on_synced(self, resource: Resource) -> None:
        if self.status is SyncStatus.WAIT_FOR_READY:
            self._set_status(SyncStatus.RESYNC)
        self._synced.add(resource.key)
        if self.status is not SyncStatus.IN_SYNC and self._synced.issuperset(self.converters):
            self._set_status(SyncStatus.IN_SYNC)


_STOP = object()


class Datastore:
    """One reflector per resource kind for a set of syncers, feeding them on one ingest thread."""

    def __init__(
        self,
        client: KubeClient,
        syncers: Iterable[Syncer],
        *,
        queue_batches: int = 4,
        reflector_factory: Callable[..., Reflector] = Reflector,
        api_group: str | None = None,
        **reflector_options: Any,
    ) -> None:
        """`api_group`: where Calico's kinds are read from for syncers that have not chosen; None
        decides as libcalico-go does (CALICO_API_GROUP, else discovery)."""
        self.client = client
        self.syncers = list(syncers)
        undecided = [s for s in self.syncers if not s.group_chosen]
        if undecided:
            if api_group is None:
                api_group = calico_api_group(client, os.environ.get(API_GROUP_ENV))
            for syncer in undecided:
                syncer.use_api_group(api_group)
        self.api_group = api_group
        self._subscribers: dict[str, list[Syncer]] = {}
        for syncer in self.syncers:
            for resource in syncer.resources:
                self._subscribers.setdefault(resource.key, []).append(syncer)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_batches)
        self.reflectors = [
            reflector_factory(client, by_key(key), self, **reflector_options) for key in self._subscribers
        ]
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        for syncer in self.syncers:
            syncer.start()
        self._thread = threading.Thread(target=self._ingest, name="datastore-ingest", daemon=True)
        self._thread.start()
        for reflector in self.reflectors:
            reflector.start()

    def stop(self) -> None:
        for reflector in self.reflectors:
            reflector.request_stop()
        for reflector in self.reflectors:
            reflector.stop()
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(5.0)

    def failing(self) -> list[str]:
        """Resource kinds whose reflector cannot reach the API right now (in error backoff)."""
        return [r.resource.key for r in self.reflectors if r.failing_since is not None]

    # ReflectorSink: called on reflector threads; blocks when the ingest thread is behind.
    def on_events(self, resource: Resource, events: list[Event]) -> None:
        self._queue.put((resource, events))

    def on_synced(self, resource: Resource) -> None:
        self._queue.put((resource, None))

    def _ingest(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            resource, events = item
            for syncer in self._subscribers[resource.key]:
                try:
                    if events is None:
                        syncer.on_synced(resource)
                    else:
                        syncer.on_events(resource, events)
                except Exception as exc:  # a consumer bug must not silently stop ingest for everyone
                    log.exception("%s syncer failed on %s", syncer.syncer_type, resource.key)
                    self.error = exc


def convert_objects(
    syncer_type: str, objects: Iterable[dict[str, Any]], api_group: str = CALICO_API_V1
) -> dict[str, Any]:
    """The KV set a syncer should hold for exactly these objects: the oracle for ingest tests.

    Objects of the Calico API group the syncer does not read are ignored, as a reflector never
    lists them."""
    from typha.model.resources import for_object

    collected: dict[str, Any] = {}

    class _Collect:
        def on_updates(self, updates: list[Update]) -> None:
            for update in updates:
                if update.value is None:
                    collected.pop(update.key, None)
                else:
                    collected[update.key] = update.value

        def on_status(self, status: SyncStatus) -> None:
            pass

    syncer = Syncer(syncer_type, _Collect(), api_group=api_group)
    for obj in objects:
        resource = for_object(obj["apiVersion"], obj["kind"])
        if resource.key in syncer.converters:
            syncer.on_events(resource, [Event(EventType.SET, obj)])
    return collected
