"""The emulator's object store: objects of every kind, one global resourceVersion, the event history.

Thread-safe behind one lock, so the HTTP thread and test code on the main thread can both write;
every write takes the lock, bumps the resourceVersion and appends exactly one event, which is what
lets watches read the history by index and never lose or reorder an event.

Objects are kept immutable once stored, together with their JSON bytes, so lists and watches join
cached bytes instead of serializing again (a list of 50,000 pods is one `b",".join`).

Deliberate simplifications, each a difference from a real API server:
- No defaulting or status reset: what is written is stored (status included), so test fixtures can
  set pod IPs and phases directly. Pods are deleted at once (no graceful deletion). Admission is
  NamespaceLifecycle only, and only when the caller asks (`create(admit=True)`, the HTTP layer in
  cluster mode); otherwise any namespace may be written to.
- Unconditional updates (PUT without metadata.resourceVersion) are allowed for every kind, custom
  resources included (the real server requires the resourceVersion on custom resources).
- Every successful write takes a new resourceVersion and produces an event, even an update that
  changes nothing (the real server skips such no-op updates).
- List requests always read the latest state (resourceVersion/resourceVersionMatch are ignored),
  except that a `continue` token reads the pinned snapshot of its first page.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import random
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from typha.model.resources import Resource
from typha.testing.apiserver import validation
from typha.testing.apiserver.registry import CRD_GROUP, is_custom, rkey
from typha.testing.apiserver.selectors import Predicate

REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """A request the API server refuses; rendered over HTTP as a `Status` object with this code."""

    def __init__(self, status: int, reason: str | None, message: str, details: dict[str, Any] | None = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason or REASONS.get(status, "Unknown")
        self.message = message
        self.details = details

    def to_status(self) -> dict[str, Any]:
        return status_object(self.status, self.reason, self.message, self.details)


def status_object(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        status["details"] = details
    return status


def details_of(resource: Resource, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": resource.plural}
    if resource.group:
        details["group"] = resource.group
    return details


def not_found(resource: Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource.key} "{name}" not found', details_of(resource, name))


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _invalid(resource: Resource, name: str, message: str) -> ApiError:
    return ApiError(
        422, "Invalid", f'{resource.kind} "{name}" is invalid: {message}', details_of(resource, name)
    )


# Kinds whose registry strategy maintains metadata.generation (1 on create, +1 when anything other
# than metadata or status changes). Custom resources always do; most core kinds never set it.
_GENERATION_KINDS = frozenset(
    {("apps", "Deployment"), ("networking.k8s.io", "NetworkPolicy"), ("discovery.k8s.io", "EndpointSlice")}
)
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's SimpleNameGenerator alphabet
NAMESPACES = ("", "v1", "namespaces")
STANDARD_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def invalid(resource: Resource, name: str, errs: list[validation.FieldError]) -> ApiError:
    """422 Invalid with the real message and one cause per field error."""
    # An Invalid Status names the kind (NotFound and Conflict name the resource).
    details: dict[str, Any] = {"name": name, "kind": resource.kind}
    if resource.group:
        details["group"] = resource.group
    details["causes"] = [e.cause() for e in errs]
    return ApiError(422, "Invalid", validation.invalid_message(resource.kind, name, errs), details)


def _crd_status(crd: dict[str, Any]) -> dict[str, Any]:
    """What the apiextensions controllers write into a CRD's status once it is served: names accepted,
    established, and the storage version recorded."""
    spec = crd.get("spec") or {}
    now = _now()
    conditions = [
        {"type": t, "status": "True", "lastTransitionTime": now, "reason": r, "message": m}
        for t, r, m in (
            ("NamesAccepted", "NoConflicts", "no conflicts found"),
            ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        )
    ]
    stored = [v.get("name") for v in spec.get("versions") or [] if isinstance(v, dict) and v.get("storage")]
    return {"conditions": conditions, "acceptedNames": spec.get("names") or {}, "storedVersions": stored}


def _keeps_generation(resource: Resource) -> bool:
    return is_custom(resource) or (resource.group, resource.kind) in _GENERATION_KINDS | {
        ("apps", "DaemonSet"),
        ("apps", "StatefulSet"),
        ("apps", "ReplicaSet"),
        ("batch", "Job"),
        ("batch", "CronJob"),
        ("policy", "PodDisruptionBudget"),
        (CRD_GROUP, "CustomResourceDefinition"),
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(slots=True)
class Stored:
    """One stored object: the dict (never mutated once stored) and its JSON encoding."""

    obj: dict[str, Any]
    full: bytes  # with apiVersion and kind: get, watch events
    # Built-in kinds' list items drop the leading `"apiVersion":…,"kind":…,`: the item is
    # b"{" + full[item_start:], sliced when a list is served rather than kept as a second copy.
    item_start: int

    @property
    def item(self) -> bytes:
        return self.full if not self.item_start else b"{" + self.full[self.item_start :]

    @property
    def rv(self) -> int:
        return int(self.obj["metadata"]["resourceVersion"])

    def copy(self) -> dict[str, Any]:
        # orjson round trip: a deep copy an order of magnitude faster than copy.deepcopy.
        return orjson.loads(self.full)


_TYPE_META_PREFIX: dict[Resource, bytes] = {}


def _encode(resource: Resource, obj: dict[str, Any]) -> Stored:
    full = orjson.dumps(obj)
    if is_custom(resource):
        # Built-in kinds' list items carry no apiVersion/kind on the wire; custom resources' items do.
        return Stored(obj, full, 0)
    prefix = _TYPE_META_PREFIX.get(resource)
    if prefix is None:
        type_meta = {"apiVersion": resource.api_version, "kind": resource.kind}
        prefix = _TYPE_META_PREFIX[resource] = orjson.dumps(type_meta)[:-1] + b","
    if not full.startswith(prefix):
        # Every write path builds apiVersion, kind, metadata first; this keeps the slicing sound anyway.
        obj = {"apiVersion": resource.api_version, "kind": resource.kind} | obj
        full = orjson.dumps(obj)
    return Stored(obj, full, len(prefix))


EVENT_HEADS = {t: b'{"type":"' + t.encode() + b'","object":' for t in ("ADDED", "MODIFIED", "DELETED")}
EVENT_TAIL = b"}\n"


@dataclass(slots=True)
class Event:
    """One write, as every watch sees it. `prev` is the state before (MODIFIED, DELETED)."""

    rv: int
    resource: Resource
    type: str
    stored: Stored
    prev: dict[str, Any] | None
    _stopped_matching: bytes | None = None

    @property
    def namespace(self) -> str:
        return self.stored.obj["metadata"].get("namespace", "")

    def pieces(self, event_type: str | None = None) -> tuple[bytes, bytes, bytes]:
        """The newline-terminated watch event as three byte strings for a watcher to join: the
        stored object's bytes are shared, never serialized again per watcher."""
        event_type = event_type or self.type
        obj = self.stored.full
        if event_type == "DELETED" and self.type == "MODIFIED" and self.prev is not None:
            # An object that stops matching a watcher's selector is deleted *for that watcher*:
            # Kubernetes sends the previous content stamped with the event's resourceVersion.
            if self._stopped_matching is None:
                meta = dict(self.prev["metadata"], resourceVersion=str(self.rv))
                self._stopped_matching = orjson.dumps(dict(self.prev, metadata=meta))
            obj = self._stopped_matching
        return EVENT_HEADS[event_type], obj, EVENT_TAIL


@dataclass(slots=True)
class Filter:
    """What one list or watch selects: a kind, optionally a namespace, label and field selectors."""

    resource: Resource
    namespace: str | None = None
    labels: Predicate | None = None
    fields: Predicate | None = None

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj["metadata"]
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        if self.labels is not None and not self.labels(meta.get("labels") or {}):
            return False
        return self.fields is None or self.fields(obj)

    @property
    def selective(self) -> bool:
        return self.labels is not None or self.fields is not None


@dataclass(slots=True)
class Page:
    resource_version: int
    items: list[Stored]
    continue_token: str | None
    remaining: int | None


@dataclass(slots=True)
class _Snapshot:
    rv: int
    items: list[Stored]  # references only: a pinned snapshot costs a pointer per object
    created: float


def _with_status_of(current: Stored, written: dict[str, Any]) -> dict[str, Any]:
    """What a write to the status subresource stores: `current` with `written`'s status, nothing else."""
    obj = current.copy()
    obj.pop("status", None)
    if written.get("status") is not None:
        obj["status"] = written["status"]
    return obj


class ObjectStore:
    """Every object of every kind, the global resourceVersion and the bounded event history."""

    SNAPSHOT_LIMIT = 256  # pinned list snapshots kept for continue tokens, least recently used dropped

    def __init__(self, history_limit: int = 100_000, continue_ttl: float = 300.0):
        self._lock = threading.Lock()
        self._rv = 1
        self._history_limit = history_limit
        self._continue_ttl = continue_ttl
        self._objects: dict[tuple[str, str, str], dict[tuple[str, str], Stored]] = {}
        self._sorted_keys: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
        # Events with rv > _floor are all in _history, consecutively (one event per rv), so the event
        # after rv r sits at index r + 1 - _history[0].rv. The list is trimmed in chunks.
        self._history: list[Event] = []
        self._floor = self._rv
        self._snapshots: OrderedDict[str, _Snapshot] = OrderedDict()
        self._listeners: list[Callable[[], None]] = []
        self._recorders: list[Callable[[Event], None]] = []

    # ---- bookkeeping -------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """`callback()` runs after every write, outside the lock, on the writer's thread."""
        self._listeners.append(callback)

    def add_recorder(self, callback: Callable[[Event], None]) -> list[Stored]:
        """`callback(event)` for every later write, in resourceVersion order, with the store lock held
        (so it must be quick and must not call back into the store). Returns the objects stored now,
        taken atomically with the registration, so a recorder sees every state exactly once."""
        with self._lock:
            self._recorders.append(callback)
            return [stored for objs in self._objects.values() for stored in objs.values()]

    def _notify(self) -> None:
        for callback in self._listeners:
            callback()

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def counts(self) -> tuple[int, int]:
        """(stored objects, events in the history window)."""
        with self._lock:
            return sum(len(v) for v in self._objects.values()), self._rv - self._floor

    def compact(self) -> None:
        """Forget every event and list snapshot: older resourceVersions and continue tokens get 410."""
        with self._lock:
            self._history.clear()
            self._floor = self._rv
            self._snapshots.clear()

    def _record(
        self, resource: Resource, event_type: str, stored: Stored, prev: dict[str, Any] | None
    ) -> None:
        """Append the event for the write that took resourceVersion self._rv. Lock held."""
        event = Event(self._rv, resource, event_type, stored, prev)
        self._history.append(event)
        for recorder in self._recorders:
            recorder(event)
        if self._rv - self._floor > self._history_limit:
            self._floor = self._rv - self._history_limit
            if len(self._history) > 2 * self._history_limit + 1024:
                del self._history[: len(self._history) - self._history_limit]

    # ---- reads -------------------------------------------------------------------------------

    @staticmethod
    def _namespace(resource: Resource, namespace: str | None) -> str:
        """The namespace part of an object's key; namespaced objects default to "default"."""
        return (namespace or "default") if resource.namespaced else ""

    def get(self, resource: Resource, namespace: str | None, name: str) -> Stored:
        with self._lock:
            stored = self._objects.get(rkey(resource), {}).get((self._namespace(resource, namespace), name))
        if stored is None:
            raise not_found(resource, name)
        return stored

    def all_objects(self) -> list[Stored]:
        with self._lock:
            return [s for objs in self._objects.values() for s in objs.values()]

    def select(self, flt: Filter) -> list[Stored]:
        """Every object `flt` selects, in key order."""
        with self._lock:
            return self._matching(flt)

    def _matching(self, flt: Filter) -> list[Stored]:
        """Objects selected by `flt` in key order (namespace, name). Lock held."""
        objs = self._objects.get(rkey(flt.resource))
        if not objs:
            return []
        keys = self._sorted_keys.get(rkey(flt.resource))
        if keys is None:
            # Kept sorted from here on (insort/bisect on create/delete): churn does not re-sort 50k keys.
            keys = self._sorted_keys[rkey(flt.resource)] = sorted(objs)
        if flt.namespace:
            # Keys sort by namespace first, so one namespace is a contiguous slice.
            keys = keys[bisect.bisect_left(keys, (flt.namespace, "")) : bisect.bisect_left(
                keys, (flt.namespace + "\x00", "")
            )]
        if not flt.selective:
            return [objs[k] for k in keys]
        return [s for k in keys if flt.matches((s := objs[k]).obj)]

    def list_page(self, flt: Filter, limit: int | None = None, continue_token: str | None = None) -> Page:
        """A list, or one page of it. The continue token pins the first page's snapshot and RV."""
        if continue_token:
            snap_id, offset = self._parse_continue(continue_token)
            with self._lock:
                snap = self._snapshots.get(snap_id)
                if snap is not None:
                    self._snapshots.move_to_end(snap_id)
            if snap is None or time.monotonic() - snap.created > self._continue_ttl:
                raise gone(
                    "The provided continue parameter is too old to display a consistent list result. "
                    "You can start a new list without the continue parameter."
                )
            rv, items = snap.rv, snap.items
        else:
            offset = 0
            with self._lock:
                rv = self._rv
                items = self._matching(flt)
        end = len(items) if not limit or limit <= 0 else min(len(items), offset + limit)
        token = None
        remaining = None
        if end < len(items):
            if not continue_token:
                snap_id = secrets.token_hex(8)
                with self._lock:
                    self._snapshots[snap_id] = _Snapshot(rv, items, time.monotonic())
                    while len(self._snapshots) > self.SNAPSHOT_LIMIT:
                        self._snapshots.popitem(last=False)
            token = base64.urlsafe_b64encode(orjson.dumps({"rv": rv, "id": snap_id, "at": end})).decode()
            # Like Kubernetes, only an unfiltered list can say how much is left.
            remaining = None if flt.selective else len(items) - end
        return Page(rv, items[offset:end], token, remaining)

    @staticmethod
    def _parse_continue(token: str) -> tuple[str, int]:
        try:
            decoded = orjson.loads(base64.urlsafe_b64decode(token.encode()))
            return str(decoded["id"]), int(decoded["at"])
        except (ValueError, KeyError, TypeError):
            raise bad_request(f"continue key is not valid: {token!r}") from None

    def watch_start(self, flt: Filter, resource_version: str | None) -> tuple[list[Stored], int]:
        """Where a watch starts: (objects to send as synthetic ADDED, resourceVersion to follow from).

        Unset, "" and "0" mean "current state, then changes" as in Kubernetes; a number N means the
        changes after N, which needs N inside the history window (410 Gone otherwise).
        """
        with self._lock:
            if resource_version in (None, "", "0"):
                return self._matching(flt), self._rv
            try:
                start = int(resource_version or 0)
            except ValueError:
                raise bad_request(f"invalid resourceVersion {resource_version!r}") from None
            if start < self._floor:
                raise gone(f"too old resource version: {start} ({self._floor})")
            return [], start

    def events_after(self, cursor: int, max_events: int = 1000) -> list[Event]:
        """Up to `max_events` events with rv > cursor, in order; 410 if some are no longer held."""
        with self._lock:
            if cursor < self._floor:
                raise gone(f"too old resource version: {cursor} ({self._floor})")
            if cursor >= self._rv:
                return []
            start = cursor + 1 - self._history[0].rv
            return self._history[start : start + max_events]

    # ---- writes ------------------------------------------------------------------------------

    def _prepare(self, resource: Resource, body: Any, namespace: str | None, validate: bool = False) -> dict[str, Any]:
        """Normalize a written object as the REST handler does before storage. Names are always
        checked; `validate` adds the rest of the API server's validation (labels, annotations and
        the kind's own rules), which the HTTP layer asks for and test fixtures may skip, to put in
        place objects a real cluster could still hold (written before a rule existed, or by etcd)."""
        if not isinstance(body, dict):
            raise bad_request("the body of the request was not a JSON object")
        try:
            # A deep copy: what is stored must never alias a dict the caller may change later.
            body = orjson.loads(orjson.dumps(body))
        except TypeError as err:
            raise bad_request(f"the object is not JSON: {err}") from None
        api_version = body.get("apiVersion") or resource.api_version
        kind = body.get("kind") or resource.kind
        if (api_version, kind) != (resource.api_version, resource.kind):
            raise bad_request(
                f"the API version in the data ({api_version}) or kind ({kind}) does not match the "
                f"expected {resource.api_version} {resource.kind}"
            )
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        for field in ("labels", "annotations"):
            values = meta.get(field)
            # The real server fails to decode anything but a map of strings here; selectors rely on it.
            if values is not None and not (
                isinstance(values, dict) and all(isinstance(v, str) for v in values.values())
            ):
                raise bad_request(f"metadata.{field} must be a map of strings")
        if resource.namespaced:
            body_ns = meta.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = body_ns or namespace or "default"
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(secrets.choice(_GENERATE_CHARS) for _ in range(5))
        name = meta.get("name")
        if not name or not isinstance(name, str):
            raise _invalid(resource, "", "metadata.name: Required value: name or generateName is required")
        obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": meta}
        obj.update((k, v) for k, v in body.items() if k not in ("apiVersion", "kind", "metadata"))
        if resource.api_version == "v1" and kind == "Secret" and "stringData" in obj:
            # The server folds stringData into data (base64) on every write and never stores it.
            data = dict(obj.get("data") or {})
            for key, value in (obj.pop("stringData") or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            obj["data"] = data
        if resource.api_version == "v1" and kind == "Namespace":
            obj.setdefault("status", {"phase": "Active"})
        if resource.group == CRD_GROUP and kind == "CustomResourceDefinition":
            obj["status"] = _crd_status(obj)
        errs = validation.object_errors(resource, obj) if validate else validation.object_name_errors(resource, name)
        if errs:
            raise invalid(resource, name, errs)
        return obj

    def _store(self, resource: Resource, obj: dict[str, Any], event_type: str, prev: Stored | None) -> Stored:
        """Stamp the next resourceVersion, store and record the event. Lock held."""
        meta = obj["metadata"]
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        if prev is None:
            # A random version-4 UUID without a urandom syscall per object (bulk loads of 50k pods).
            meta["uid"] = str(uuid.UUID(int=random.getrandbits(128), version=4))
            meta["creationTimestamp"] = _now()
            if _keeps_generation(resource):
                meta["generation"] = 1
            else:
                meta.pop("generation", None)
        else:
            old_meta = prev.obj["metadata"]
            meta["uid"] = old_meta["uid"]
            meta["creationTimestamp"] = old_meta["creationTimestamp"]
            if _keeps_generation(resource):
                changed = {k: v for k, v in obj.items() if k not in ("metadata", "status")} != {
                    k: v for k, v in prev.obj.items() if k not in ("metadata", "status")
                }
                meta["generation"] = old_meta.get("generation", 1) + (1 if changed else 0)
            else:
                meta.pop("generation", None)
        stored = _encode(resource, obj)
        key = (meta.get("namespace", ""), meta["name"])
        objs = self._objects.setdefault(rkey(resource), {})
        if key not in objs and (keys := self._sorted_keys.get(rkey(resource))) is not None:
            bisect.insort(keys, key)
        objs[key] = stored
        self._record(resource, event_type, stored, prev.obj if prev else None)
        return stored

    def _admit_namespace(self, resource: Resource, obj: dict[str, Any]) -> None:
        """The NamespaceLifecycle admission plugin: new namespaced objects need a live namespace. Lock held."""
        if not resource.namespaced:
            return
        ns = obj["metadata"]["namespace"]
        stored = self._objects.get(NAMESPACES, {}).get(("", ns))
        if stored is None:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
        if stored.obj["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"{resource.kind} \"{obj['metadata']['name']}\" is forbidden: unable to create new content in "
                f"namespace {ns} because it is being terminated",
                details_of(resource, obj["metadata"]["name"]),
            )

    def create(
        self,
        resource: Resource,
        body: Any,
        namespace: str | None = None,
        *,
        admit: bool = False,
        validate: bool = False,
    ) -> Stored:
        """Store a new object. With `admit`, a namespaced object's namespace must exist and be active;
        `validate`: see _prepare."""
        obj = self._prepare(resource, body, namespace, validate)
        if obj["metadata"].get("resourceVersion"):
            # The message and code of the real server (etcd3 storage refuses it as an internal error).
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        with self._lock:
            if admit:
                self._admit_namespace(resource, obj)
            key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            if key in self._objects.get(rkey(resource), {}):
                name = key[1]
                raise ApiError(
                    409, "AlreadyExists", f'{resource.key} "{name}" already exists', details_of(resource, name)
                )
            stored = self._store(resource, obj, "ADDED", None)
        self._notify()
        return stored

    def _check_preconditions(
        self, resource: Resource, current: Stored, rv: str | None, uid: str | None
    ) -> None:
        name = current.obj["metadata"]["name"]
        if uid and uid != current.obj["metadata"]["uid"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.key} "{name}": Precondition failed: '
                f"UID in precondition: {uid}, UID in object meta: {current.obj['metadata']['uid']}",
                details_of(resource, name),
            )
        if rv and rv != current.obj["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {resource.key} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                details_of(resource, name),
            )

    def replace(
        self,
        resource: Resource,
        body: Any,
        namespace: str | None = None,
        name: str | None = None,
        *,
        status_only: bool = False,
        validate: bool = False,
    ) -> Stored:
        """PUT: the object must exist; a carried resourceVersion must be current (409 otherwise)."""
        obj = self._prepare(resource, body, namespace, validate)
        meta = obj["metadata"]
        if name is not None and meta["name"] != name:
            raise bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        with self._lock:
            key = (meta.get("namespace", ""), meta["name"])
            current = self._objects.get(rkey(resource), {}).get(key)
            if current is None:
                raise not_found(resource, meta["name"])
            self._check_preconditions(resource, current, meta.get("resourceVersion"), meta.get("uid"))
            if status_only:
                obj = _with_status_of(current, obj)
            stored = self._store(resource, obj, "MODIFIED", current)
        self._notify()
        return stored

    def upsert(self, resource: Resource, body: Any, namespace: str | None = None) -> Stored:
        """Create, or replace whole without a resourceVersion precondition."""
        obj = self._prepare(resource, body, namespace)
        obj["metadata"].pop("resourceVersion", None)
        with self._lock:
            key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            current = self._objects.get(rkey(resource), {}).get(key)
            stored = self._store(resource, obj, "MODIFIED" if current else "ADDED", current)
        self._notify()
        return stored

    def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        apply: Callable[[dict[str, Any]], Any],
        *,
        status_only: bool = False,
        validate: bool = False,
    ) -> Stored:
        """Apply `apply(current_copy) -> new body` atomically; a resourceVersion the patch sets is a
        precondition (409 if stale), as on the real server; otherwise patches never conflict."""
        key = (self._namespace(resource, namespace), name)
        with self._lock:
            current = self._objects.get(rkey(resource), {}).get(key)
            if current is None:
                raise not_found(resource, name)
            patched = apply(orjson.loads(current.full))
            if not isinstance(patched, dict):
                raise _invalid(resource, name, "the patch produced something that is not an object")
            pmeta = patched.setdefault("metadata", {})
            if not isinstance(pmeta, dict):
                raise _invalid(resource, name, "metadata must be an object")
            self._check_preconditions(resource, current, pmeta.get("resourceVersion"), pmeta.get("uid"))
            # Identity is not patchable: the URL names the object.
            pmeta["name"] = name
            if resource.namespaced:
                pmeta["namespace"] = key[0]
            if status_only:
                patched = _with_status_of(current, patched)
            obj = self._prepare(resource, patched, key[0] or None, validate)
            stored = self._store(resource, obj, "MODIFIED", current)
        self._notify()
        return stored

    def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        resource_version: str | None = None,
        uid: str | None = None,
    ) -> Stored:
        """Delete now; the returned object (and the DELETED event) carry the deletion's resourceVersion."""
        key = (self._namespace(resource, namespace), name)
        with self._lock:
            objs = self._objects.get(rkey(resource), {})
            current = objs.get(key)
            if current is None:
                raise not_found(resource, name)
            self._check_preconditions(resource, current, resource_version, uid)
            del objs[key]
            if (keys := self._sorted_keys.get(rkey(resource))) is not None:
                del keys[bisect.bisect_left(keys, key)]
            self._rv += 1
            obj = dict(current.obj, metadata=dict(current.obj["metadata"], resourceVersion=str(self._rv)))
            stored = _encode(resource, obj)
            self._record(resource, "DELETED", stored, current.obj)
        self._notify()
        return stored

    def delete_collection(self, flt: Filter) -> list[Stored]:
        deleted = []
        for meta in [s.obj["metadata"] for s in self.select(flt)]:
            try:
                deleted.append(self.delete(flt.resource, meta.get("namespace"), meta["name"]))
            except ApiError as err:
                if err.status != 404:  # deleted meanwhile by someone else: fine
                    raise
        return deleted

    def delete_namespace(self, name: str, resources: list[Resource]) -> Stored:
        """Delete a namespace as the server and its namespace controller do: it goes Terminating (the
        returned state), every object of `resources` in it is deleted, then the namespace itself."""
        ns_resource = next(r for r in resources if rkey(r) == NAMESPACES)
        with self._lock:
            current = self._objects.get(NAMESPACES, {}).get(("", name))
            if current is None:
                raise not_found(ns_resource, name)
            obj = current.copy()
            obj["metadata"]["deletionTimestamp"] = obj["metadata"].get("deletionTimestamp") or _now()
            obj["status"] = {"phase": "Terminating"}
            terminating = self._store(ns_resource, obj, "MODIFIED", current)
        self._notify()
        for resource in resources:
            if resource.namespaced:
                self.delete_collection(Filter(resource, name))
        with contextlib.suppress(ApiError):  # deleted meanwhile
            self.delete(ns_resource, None, name)
        return terminating

    def drop_resource(self, resource: Resource) -> None:
        """Delete every object of `resource` (its CustomResourceDefinition went away)."""
        self.delete_collection(Filter(resource))
