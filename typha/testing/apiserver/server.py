"""The Kubernetes API emulator: the real Kubernetes HTTP protocol over an in-memory object store.

`KubeAPIEmulator` runs an aiohttp server on its own asyncio loop in a background thread, so the
synchronous `kubernetes` client, `kubectl` and test code on the main thread can all use it at once.
The object store, its resourceVersions and history live in `k8s_store`; this module is the HTTP
layer (routing, lists, watches, discovery, auth, TLS) and the fault injection tests drive.

Typical use in a test:

    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        api.write_kubeconfig(tmp_path / "kubeconfig")   # for kubernetes.config / kubectl
        api.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}})
        api.wait_for_watches(1)                          # the client under test is watching
        api.expire_watches()                             # ... and now gets an ERROR 410

What it serves: the built-in kinds of `registry.BUILTIN` and the resources of the
CustomResourceDefinitions present (`crds="calico-v1"` also serves Calico's v1 kinds from the start,
without CRD objects); `cluster=True` (what `typha sim-apiserver` uses) adds the standard namespaces
and the NamespaceLifecycle rules. Writes over HTTP are validated as the API server does
(`validation`); the in-process helpers (`api.create`, ...) check names only and skip admission, so
tests can put in place objects a real cluster could still hold.

Departures from a real API server are listed in `k8s_store` (storage semantics) and here:
- No dry run (`dryRun` gets 400, so `kubectl diff` and `--dry-run=server` do not work).
- Server-side apply merges maps and replaces lists whole, and tracks only Apply managers (see `apply`).
- Protobuf bodies for the kinds of the vendored generated.proto (core, apps, batch, rbac, policy,
  networking, coordination, discovery, autoscaling); other kinds (admissionregistration, CRDs,
  custom resources), lists and watches are JSON only (see `k8sproto.codec`).
- No defaulting and no schemas: CRDs' openAPIV3Schema is stored but not enforced or pruned, and
  the OpenAPI documents carry no schemas (enough for kubectl's probes, not for `kubectl explain`).
- Tables for `kubectl get` have the real columns for pods, nodes and namespaces only (see k8s_tables).
- Strategic merge patch is a schema-less approximation (see `k8s_patch`).
- `fieldValidation` is accepted and ignored: unknown fields are stored, not rejected.
- With a token configured every request but /healthz, /livez and /readyz must carry it (401 if
  not); a real server would let anonymous requests through to authorization instead.
- A watch from a resourceVersion older than the history is refused with HTTP 410 before the
  stream starts (the watch cache answers 200 and an ERROR event; clients handle both).
- A deleted namespace is Terminating only while the DELETE request runs: its contents and then
  the namespace itself are deleted before the response (no namespace controller lag, no finalizers).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import functools
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web

from typha.model.resources import Resource
from typha.testing.apiserver import apply as ssa
from typha.testing.apiserver import tables as k8s_tables
from typha.testing.apiserver.discovery import (
    OPENAPI_V2_CONTENT_TYPE,
    OPENAPI_V2_PROTOBUF,
    Discovery,
)
from typha.testing.apiserver.k8sproto import codec as k8sproto
from typha.testing.apiserver.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from typha.testing.apiserver.registry import CRD_API_VERSION, CrdError, Registry, crd_resources, is_custom, rkey
from typha.testing.apiserver.selectors import SelectorError, parse_field_selector, parse_label_selector
from typha.testing.apiserver.store import (
    EVENT_HEADS,
    EVENT_TAIL,
    NAMESPACES,
    REASONS,
    STANDARD_NAMESPACES,
    ApiError,
    Event,
    Filter,
    ObjectStore,
    Stored,
    bad_request,
    invalid,
    status_object,
)
from typha.testing.apiserver.store import (
    details_of as _details_of,
)
from typha.testing.apiserver.tls import ServerCredentials, generate
from typha.testing.apiserver.validation import FieldError

__all__ = ["ApiError", "KubeAPIEmulator"]

log = logging.getLogger(__name__)


def _path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


APPLY_PATCH = "application/apply-patch+yaml"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_HEALTH_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
_WATCH_BATCH = 1000  # events read from the history per wake-up, and initial ADDEDs per write
_TRUE = frozenset({"1", "true"})


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _status_response(err: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return _json(orjson.dumps(err.to_status()), err.status, headers)


def _flag(query: Any, name: str) -> bool:
    return str(query.get(name, "")).lower() in _TRUE


class _Watcher:
    """One open watch stream: where it is in the history and how the emulator asks it to stop."""

    __slots__ = ("cursor", "filter", "stop", "table", "wake")

    def __init__(self, flt: Filter, cursor: int, table: str | None = None):
        self.filter = flt
        self.cursor = cursor
        self.table = table  # kubectl's Table watches: the includeObject setting; None for plain JSON
        self.wake = asyncio.Event()
        self.stop: str | None = None  # "close": end cleanly; "expire": send ERROR 410, then end

    def pieces(self, event: Event) -> tuple[bytes, bytes, bytes] | None:
        """The event as this watcher sees it, or None if its selection does not include it."""
        flt = self.filter
        if event.resource is not flt.resource and rkey(event.resource) != rkey(flt.resource):
            return None
        if not flt.selective:
            return None if flt.namespace and event.namespace != flt.namespace else event.pieces()
        if event.type == "DELETED":
            return event.pieces() if event.prev is not None and flt.matches(event.prev) else None
        now = flt.matches(event.stored.obj)
        before = event.prev is not None and flt.matches(event.prev)
        if now and before:
            return event.pieces()
        if now:
            return event.pieces("ADDED")
        if before:
            return event.pieces("DELETED")
        return None


class KubeAPIEmulator:
    """An in-memory Kubernetes API server speaking the real HTTP protocol. See the module docstring."""

    def __init__(
        self,
        *,
        history_limit: int = 100_000,
        bookmark_interval: float = 60.0,
        token: str | None = None,
        tls: bool = False,
        crds: str = "calico-v1",
        cluster: bool = False,
    ):
        """`crds`: "calico-v1" serves Calico's v1 CRDs from the start, "none" only the built-in kinds
        (CustomResourceDefinitions written later add theirs either way). `cluster`: start like a
        real cluster - the four standard namespaces exist, objects written over HTTP need an active
        namespace, and a namespace deleted over HTTP terminates with its contents. Off, test code
        gets an empty store in which any namespace may be used."""
        self._store = ObjectStore(history_limit=history_limit)
        self._registry = Registry(crds)
        self._cluster = cluster
        self._dropped: list[Resource] = []  # kinds whose CRD went away; their objects go next
        self._store.add_recorder(self._record_crds)
        self._store.add_listener(self._on_write)
        self._discovery = Discovery(self._registry.served())
        self._discovery_generation = self._registry.generation
        self._bookmark_interval = bookmark_interval
        self._token = token
        self._credentials: ServerCredentials | None = generate() if tls else None

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._watchers: set[_Watcher] = set()  # touched on the loop thread only
        self._wake_pending = False

        self._lock = threading.Lock()  # faults, delay and counters
        self._watches_changed = threading.Condition(self._lock)
        self._fail_remaining = 0
        self._fail_status = 500
        self._fail_retry_after: int | None = None
        self._delay = 0.0
        self._requests: Counter[str] = Counter()
        self._open_watches = 0
        self._injected = 0
        self.url = ""
        if cluster:
            namespaces = self._resource("v1", "Namespace")
            for name in STANDARD_NAMESPACES:
                self._store.create(namespaces, {"metadata": {"name": name}})

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> KubeAPIEmulator:
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        bound_port = sock.getsockname()[1]
        url_host = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
        self.url = f"{'https' if self._credentials else 'http'}://{url_host}:{bound_port}"

        self._wake_pending = False  # a wake-up scheduled on a previous run's loop never ran
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(sock))
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="kube-api-emulator", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            self._thread.join()
            self._thread = None
            sock.close()
            raise failure[0]
        log.info("Kubernetes API emulator listening on %s", self.url)
        return self

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a watch whose client went away is cancelled instead of idling on.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        ssl_context = self._credentials.ssl_context() if self._credentials else None
        await web.SockSite(self._runner, sock, ssl_context=ssl_context).start()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=15)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=15)
            self._loop = self._thread = None

    async def _shutdown(self) -> None:
        self._signal_watchers("close")
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> KubeAPIEmulator:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- kubeconfig --------------------------------------------------------------------------

    def kubeconfig(self) -> dict[str, Any]:
        cluster: dict[str, Any] = {"server": self.url}
        if self._credentials:
            cluster["certificate-authority-data"] = base64.b64encode(self._credentials.ca_pem).decode()
        user: dict[str, Any] = {"token": self._token} if self._token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "typha-emulator", "cluster": cluster}],
            "users": [{"name": "typha-emulator", "user": user}],
            "contexts": [
                {
                    "name": "typha-emulator",
                    "context": {
                        "cluster": "typha-emulator",
                        "user": "typha-emulator",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "typha-emulator",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | Path) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.kubeconfig(), sort_keys=False))
        target.chmod(0o600)  # it may hold a bearer token

    # ---- in-process object API ---------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._store.resource_version

    def _resource(self, api_version: str, kind: str) -> Resource:
        resource = self._registry.by_kind(api_version, kind)
        if resource is None:
            raise ApiError(404, "NotFound", f"the server could not find the resource {kind} in {api_version}")
        return resource

    def resources(self) -> builtins.list[Resource]:
        """Every resource served now: the built-in kinds and those of the CRDs present."""
        return self._registry.resources()

    # ---- CustomResourceDefinitions -----------------------------------------------------------

    def _check_crd(self, resource: Resource, obj: dict[str, Any]) -> None:
        """Refuse a CustomResourceDefinition the emulator could not serve, before it is stored."""
        if resource.api_version != CRD_API_VERSION or resource.kind != "CustomResourceDefinition":
            return
        name = str((obj.get("metadata") or {}).get("name", ""))
        try:
            crd_resources(obj)
        except CrdError as err:
            field, _, detail = str(err).partition(": ")
            raise invalid(resource, name, [FieldError(field, "FieldValueInvalid", detail, name)]) from None

    def _record_crds(self, event: Event) -> None:
        """Serve what a CRD defines as soon as it is stored; stop when it is deleted. Runs with the
        store lock held, so the objects of a removed kind are deleted after the write (_on_write)."""
        resource = event.resource
        if resource.api_version != CRD_API_VERSION or resource.kind != "CustomResourceDefinition":
            return
        obj = event.stored.obj
        if event.type == "DELETED":
            self._dropped.extend(self._registry.unregister_crd(obj["metadata"]["name"]))
            return
        try:
            self._dropped.extend(self._registry.register_crd(obj))
        except CrdError as err:
            log.warning("not serving CustomResourceDefinition %s: %s", obj["metadata"]["name"], err)

    def _drop_removed_kinds(self) -> None:
        while True:
            try:
                resource = self._dropped.pop()  # atomic: writers on other threads may drain it too
            except IndexError:
                return
            if self._registry.by_path(resource.api_version, resource.plural) is None:
                self._store.drop_resource(resource)  # unless the CRD came back meanwhile

    def _discovery_now(self) -> Discovery:
        generation = self._registry.generation
        if generation != self._discovery_generation:
            self._discovery = Discovery(self._registry.served())
            self._discovery_generation = generation
        return self._discovery

    def _resource_of(self, obj: dict[str, Any]) -> Resource:
        if not isinstance(obj, dict):
            raise bad_request("an object must be a dict")
        resource = self._resource(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        self._check_crd(resource, obj)
        return resource

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._store.create(self._resource_of(obj), obj).copy()

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._store.replace(self._resource_of(obj), obj).copy()

    def upsert(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._store.upsert(self._resource_of(obj), obj).copy()

    def patch(
        self, api_version: str, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        resource = self._resource(api_version, kind)
        return self._store.patch(
            resource, namespace, name, lambda current: merge_patch(current, patch)
        ).copy()

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self._store.delete(self._resource(api_version, kind), namespace, name).copy()

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self._store.get(self._resource(api_version, kind), namespace, name).copy()

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> builtins.list[dict[str, Any]]:
        return [s.copy() for s in self._store.select(Filter(self._resource(api_version, kind), namespace))]

    def objects(self) -> builtins.list[dict[str, Any]]:
        return [s.copy() for s in self._store.all_objects()]

    def record_commits(self, callback: Callable[[Event], None]) -> builtins.list[Stored]:
        """Have `callback(event)` called for every later write, in commit order (a test's record of what
        the API committed; see ObjectStore.add_recorder for the rules). Returns the objects stored now."""
        return self._store.add_recorder(callback)

    # ---- fault injection and counters --------------------------------------------------------

    def _signal_watchers(self, how: str) -> None:
        """Ask every open watch to stop. Runs on the loop thread."""
        for watcher in self._watchers:
            watcher.stop = watcher.stop or how
            watcher.wake.set()

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the server loop and wait for it, so the effect is in place when we return."""
        loop = self._loop
        if loop is None:
            return

        async def call() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)

    def close_watches(self) -> None:
        """End every open watch stream cleanly (the client sees the response end)."""
        self._on_loop(lambda: self._signal_watchers("close"))

    def expire_watches(self) -> None:
        """Send every open watch an ERROR event with a 410 Status, then end it."""
        self._on_loop(lambda: self._signal_watchers("expire"))

    def compact(self) -> None:
        """Drop the event history and list snapshots: older resourceVersions and continue tokens get 410."""
        self._store.compact()
        # Watches that are behind must notice now rather than at the next write.
        self._on_write()

    def wait_for_watches(self, count: int = 1, timeout: float = 10.0) -> None:
        """Block until exactly `count` watch streams are open; TimeoutError after `timeout` seconds.

        close_watches() and expire_watches() act on the watches open when they are called, so a test
        that has just started a client should wait here first: a client that has finished its list
        may not have opened its watch yet.
        """
        with self._watches_changed:
            if not self._watches_changed.wait_for(lambda: self._open_watches == count, timeout):
                raise TimeoutError(f"{self._open_watches} watches open, waited for {count}")

    def fail_next(self, n: int, status: int = 500, retry_after: int | None = None) -> None:
        with self._lock:
            self._fail_remaining = n
            self._fail_status = status
            self._fail_retry_after = retry_after

    def set_delay(self, seconds: float) -> None:
        with self._lock:
            self._delay = seconds

    def stats(self) -> dict[str, Any]:
        """Counters for tests. `requests` counts by verb: get, list, watch, create, update, patch,
        delete, deletecollection, discovery (incl. /version and OpenAPI), health, and the requests
        answered by a fault (`injected`) or refused for want of the token (`unauthorized`)."""
        objects, history = self._store.counts()
        with self._lock:
            return {
                "requests": dict(self._requests),
                "requests_total": sum(self._requests.values()),
                "open_watches": self._open_watches,
                "injected_failures": self._injected,
                "resource_version": self._store.resource_version,
                "objects": objects,
                "history_events": history,
            }

    def _count(self, verb: str) -> None:
        with self._lock:
            self._requests[verb] += 1

    def _take_fault(self) -> tuple[int, int | None] | None:
        with self._lock:
            if self._fail_remaining <= 0:
                return None
            self._fail_remaining -= 1
            self._injected += 1
            return self._fail_status, self._fail_retry_after

    # ---- watch fan-out -----------------------------------------------------------------------

    def _on_write(self) -> None:
        """After any write, on any thread: wake the watches, once per burst of writes."""
        if self._dropped:
            self._drop_removed_kinds()
        loop = self._loop
        # With no watch open there is nobody to wake (a watch registers before it first reads the
        # history, so it cannot miss a write that skipped this), and bulk loads stay cheap.
        if loop is None or self._wake_pending or not self._watchers:
            return
        self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._wake_watchers)

    def _wake_watchers(self) -> None:
        # Cleared before waking: a write that lands after this line schedules another wake-up, and
        # one that landed before it is already in the history the woken watchers will read.
        self._wake_pending = False
        for watcher in self._watchers:
            watcher.wake.set()

    # ---- HTTP --------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            delay = self._delay
        if delay > 0:
            await asyncio.sleep(delay)
        path = request.path
        if path in _HEALTH_PATHS:
            self._count("health")
            return web.Response(text="ok")
        if self._token and request.headers.get("Authorization") != f"Bearer {self._token}":
            self._count("unauthorized")
            return _status_response(ApiError(401, "Unauthorized", "Unauthorized"))
        fault = self._take_fault()
        if fault is not None:
            code, retry_after = fault
            self._count("injected")
            details = {"retryAfterSeconds": retry_after} if retry_after is not None else None
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
            message = "Too many requests, please try again later." if code == 429 else "injected fault"
            return _status_response(ApiError(code, REASONS.get(code), message, details), headers)
        try:
            return await self._dispatch(request)
        except ApiError as err:
            return _status_response(err)
        except SelectorError as err:
            return _status_response(bad_request(str(err)))
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as err:
            # An emulator bug still answers like a server (a Status), and leaves a trace in the log.
            log.exception("internal error serving %s %s", request.method, request.path)
            return _status_response(ApiError(500, "InternalError", f"Internal error occurred: {err!r}"))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method == "GET":
            if path.rstrip("/") == "/openapi/v2":
                self._count("discovery")
                return web.Response(body=OPENAPI_V2_PROTOBUF, content_type=OPENAPI_V2_CONTENT_TYPE)
            doc = self._discovery_now().document(path)
            if doc is not None:
                self._count("discovery")
                return _json(doc)
        resource, namespace, name, subresource = self._route(path)
        query = request.query
        method = request.method
        if method != "GET" and "dryRun" in query:
            # Refused rather than ignored: ignoring it would write what the client meant only to try.
            raise bad_request("dryRun is not supported by the emulator")
        reply = functools.partial(self._reply, request, resource)
        if name is None:
            if method == "POST":
                self._count("create")
                if resource.namespaced and namespace is None:
                    raise _path_not_found()
                body = await self._body(request)
                if isinstance(body, dict):
                    self._check_crd(resource, body)
                stored = self._store.create(resource, body, namespace, admit=self._cluster, validate=True)
                return reply(stored.full, 201)
            flt = Filter(
                resource,
                namespace,
                parse_label_selector(query.get("labelSelector")),
                parse_field_selector(query.get("fieldSelector"), resource),
            )
            if method == "GET":
                if _flag(query, "watch"):
                    self._count("watch")
                    return await self._watch(request, flt)
                self._count("list")
                return self._list(request, flt)
            if method == "DELETE":
                self._count("deletecollection")
                deleted = self._store.delete_collection(flt)
                return _json(
                    self._list_bytes(resource, self._store.resource_version, [s.item for s in deleted])
                )
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")

        status_only = subresource == "status"
        if method == "GET":
            self._count("get")
            stored = self._store.get(resource, namespace, name)
            include = self._table_request(request)
            if include is not None:
                meta = {"resourceVersion": stored.obj["metadata"]["resourceVersion"]}
                return _json(orjson.dumps(self._table(resource, [stored.obj], meta, include)))
            return reply(stored.full)
        if method == "PUT":
            self._count("update")
            body = await self._body(request)
            if isinstance(body, dict):
                self._check_crd(resource, body)
            stored = self._store.replace(resource, body, namespace, name, status_only=status_only, validate=True)
            return reply(stored.full)
        if method == "PATCH":
            self._count("patch")
            if request.content_type == APPLY_PATCH:
                return await self._server_side_apply(request, resource, namespace, name, status_only)
            patch_fn = self._patcher(resource, request.content_type, await self._body(request))

            def patch_and_check(current: dict[str, Any]) -> Any:
                patched = patch_fn(current)
                if isinstance(patched, dict):
                    self._check_crd(resource, patched)
                return patched

            stored = self._store.patch(
                resource, namespace, name, patch_and_check, status_only=status_only, validate=True
            )
            return reply(stored.full)
        if method == "DELETE" and not status_only:
            self._count("delete")
            options = await self._body(request, optional=True)  # DeleteOptions, if any
            pre = (options.get("preconditions") or {}) if isinstance(options, dict) else {}
            if self._cluster and rkey(resource) == NAMESPACES:
                if name in ("default", "kube-system", "kube-public"):
                    raise ApiError(
                        403,
                        "Forbidden",
                        f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                        {"name": name, "kind": "namespaces"},
                    )
                return reply(self._store.delete_namespace(name, self._registry.resources()).full)
            stored = self._store.delete(
                resource, namespace, name, resource_version=pre.get("resourceVersion"), uid=pre.get("uid")
            )
            return reply(stored.full)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    async def _server_side_apply(
        self, request: web.Request, resource: Resource, namespace: str | None, name: str, status_only: bool
    ) -> web.StreamResponse:
        """PATCH application/apply-patch+yaml: create or merge, with managedFields (see `apply`)."""
        manager = request.query.get("fieldManager")
        if not manager:
            raise bad_request("PATCH request with apply-patch+yaml must specify fieldManager")
        force = _flag(request.query, "force")
        raw = await request.read()
        try:
            applied = yaml.load(raw, Loader=_YAML_LOADER)
        except yaml.YAMLError as err:
            raise bad_request(f"error decoding YAML: {err}") from None
        if not isinstance(applied, dict):
            raise bad_request("the applied configuration must be an object")
        meta = applied.get("metadata")
        if not isinstance(meta, dict) or meta.get("name") != name:
            got = meta.get("name") if isinstance(meta, dict) else None
            raise bad_request(f"the name of the object ({got}) does not match the name on the URL ({name})")
        if (applied.get("apiVersion"), applied.get("kind")) != (resource.api_version, resource.kind):
            raise bad_request(
                f"the API version in the data ({applied.get('apiVersion')}) or kind ({applied.get('kind')}) "
                f"does not match the expected {resource.api_version} {resource.kind}"
            )
        self._check_crd(resource, applied)

        def merge(current: dict[str, Any] | None) -> dict[str, Any]:
            try:
                return ssa.apply(current, applied, manager, resource.api_version, force=force)
            except ssa.ApplyConflict as err:
                n = len(err.conflicts)
                lines = "".join(f'\n- conflict with "{m}": {p}' for m, p in err.conflicts)
                causes = [
                    {"reason": "FieldManagerConflict", "message": f'conflict with "{m}"', "field": p}
                    for m, p in err.conflicts
                ]
                raise ApiError(
                    409,
                    "Conflict",
                    f"Apply failed with {n} conflict{'s' if n != 1 else ''}:{lines}",
                    _details_of(resource, name) | {"causes": causes},
                ) from None

        try:
            stored = self._store.patch(resource, namespace, name, merge, status_only=status_only, validate=True)
            return self._reply(request, resource, stored.full)
        except ApiError as err:
            # Only "this object does not exist" turns the apply into a create.
            if err.status != 404 or status_only or (err.details or {}).get("kind") != resource.plural:
                raise
        body = merge(None)
        stored = self._store.create(resource, body, namespace, admit=self._cluster, validate=True)
        return self._reply(request, resource, stored.full, 201)

    def _reply(self, request: web.Request, resource: Resource, full: bytes, status: int = 200) -> web.Response:
        """One object, as JSON or, when the client asks for it and the kind has a schema, protobuf."""
        if k8sproto.wants_protobuf(request.headers.get("Accept", "")):
            encoded = k8sproto.encode(orjson.loads(full))
            if encoded is not None:
                return web.Response(body=encoded, status=status, content_type=k8sproto.CONTENT_TYPE)
        return _json(full, status)

    def _route(self, path: str) -> tuple[Resource, str | None, str | None, str | None]:
        """(resource, namespace, name, subresource) of a REST path; 404 for anything else."""
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 3 and parts[0] == "api":
            api_version, rest = parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise _path_not_found()
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = self._registry.by_path(api_version, rest[2])
            if candidate is not None and candidate.resource.namespaced:
                namespace, rest = rest[1], rest[2:]
        served = self._registry.by_path(api_version, rest[0])
        if served is None or len(rest) > 3:
            raise _path_not_found()
        resource = served.resource
        if resource.namespaced and namespace is None and len(rest) > 1:
            raise _path_not_found()
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if subresource is not None and not (subresource == "status" and served.status):
            raise _path_not_found()
        return resource, namespace, name, subresource

    @staticmethod
    async def _body(request: web.Request, optional: bool = False) -> Any:
        raw = await request.read()
        if not raw.strip():
            if optional:
                return None
            raise bad_request("the request body is empty")
        if request.content_type == k8sproto.CONTENT_TYPE:
            try:
                return k8sproto.decode(raw)
            except k8sproto.ProtoError as err:
                raise ApiError(415, "UnsupportedMediaType", str(err)) from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise bad_request(f"the request body is not valid JSON: {err}") from None

    @staticmethod
    def _patcher(resource: Resource, content_type: str, patch: Any) -> Callable[[dict[str, Any]], Any]:
        if content_type == "application/merge-patch+json":
            fn: Callable[[Any, Any], Any] = merge_patch
        elif content_type == "application/strategic-merge-patch+json":
            if is_custom(resource):
                # Custom resources have no Go types to take patch strategies from.
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types include: "
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                )
            fn = strategic_merge_patch
        elif content_type == "application/json-patch+json":
            fn = json_patch
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the patch type {content_type!r} is not supported")

        def apply(current: dict[str, Any]) -> Any:
            try:
                return fn(current, patch)
            except PatchError as err:
                raise ApiError(422, "Invalid", str(err)) from None

        return apply

    @staticmethod
    def _list_bytes(
        resource: Resource,
        rv: int,
        items: builtins.list[bytes],
        continue_token: str | None = None,
        remaining: int | None = None,
    ) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if continue_token:
            meta["continue"] = continue_token
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        head = orjson.dumps(
            {"kind": resource.list_kind, "apiVersion": resource.api_version, "metadata": meta}
        )
        return head[:-1] + b',"items":[' + b",".join(items) + b"]}"

    @staticmethod
    def _table_request(request: web.Request) -> str | None:
        """The includeObject setting if the client asks for a Table (kubectl get), else None."""
        if not k8s_tables.wants_table(request.headers.get("Accept", "")):
            return None
        return request.query.get("includeObject", "Metadata")

    def _list(self, request: web.Request, flt: Filter) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise bad_request(f"invalid limit {query.get('limit')!r}") from None
        page = self._store.list_page(flt, limit, query.get("continue") or None)
        include = self._table_request(request)
        if include is not None:
            meta: dict[str, Any] = {"resourceVersion": str(page.resource_version)}
            if page.continue_token:
                meta["continue"] = page.continue_token
            objs = [s.obj for s in page.items]
            return _json(orjson.dumps(self._table(flt.resource, objs, meta, include)))
        return _json(
            self._list_bytes(
                flt.resource, page.resource_version, [s.item for s in page.items], page.continue_token, page.remaining
            )
        )

    async def _watch(self, request: web.Request, flt: Filter) -> web.StreamResponse:
        query = request.query
        send_initial = _flag(query, "sendInitialEvents")
        # sendInitialEvents asks for the current state first, whatever resourceVersion is given.
        initial, cursor = self._store.watch_start(flt, None if send_initial else query.get("resourceVersion"))
        try:
            timeout = float(query.get("timeoutSeconds") or 0)
        except ValueError:
            raise bad_request(f"invalid timeoutSeconds {query.get('timeoutSeconds')!r}") from None
        bookmarks = _flag(query, "allowWatchBookmarks")

        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        watcher = _Watcher(flt, cursor, self._table_request(request))
        self._watchers.add(watcher)
        with self._lock:
            self._open_watches += 1
            self._watches_changed.notify_all()
        try:
            await self._stream(response, watcher, initial, timeout, bookmarks, send_initial)
        except ConnectionError:
            pass  # the client went away
        finally:
            self._watchers.discard(watcher)
            with self._lock:
                self._open_watches -= 1
                self._watches_changed.notify_all()
        return response

    def _table(
        self, resource: Resource, objs: builtins.list[dict[str, Any]], meta: dict[str, Any], include: str
    ) -> dict[str, Any]:
        served = self._registry.by_path(resource.api_version, resource.plural)
        return k8s_tables.table(resource, objs, meta, include, served.columns if served is not None else ())

    def _as_seen(self, watcher: _Watcher, pieces: tuple[bytes, bytes, bytes]) -> tuple[bytes, bytes, bytes]:
        """The event's pieces in the watcher's format: as stored, or as a one-row Table for kubectl."""
        if watcher.table is None:
            return pieces
        head, obj_bytes, tail = pieces
        obj = orjson.loads(obj_bytes)
        meta = {"resourceVersion": obj["metadata"]["resourceVersion"]}
        return head, orjson.dumps(self._table(watcher.filter.resource, [obj], meta, watcher.table)), tail

    def _bookmark(self, resource: Resource, rv: int, initial_events_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_events_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": meta}
        return orjson.dumps({"type": "BOOKMARK", "object": obj}) + b"\n"

    async def _stream(
        self,
        response: web.StreamResponse,
        watcher: _Watcher,
        initial: builtins.list[Stored],
        timeout: float,
        bookmarks: bool,
        initial_events_end: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        resource = watcher.filter.resource
        for start in range(0, len(initial), _WATCH_BATCH):
            chunk = initial[start : start + _WATCH_BATCH]
            head = EVENT_HEADS["ADDED"]
            first = [part for s in chunk for part in self._as_seen(watcher, (head, s.full, EVENT_TAIL))]
            await response.write(b"".join(first))
        if initial_events_end and bookmarks:
            await response.write(self._bookmark(resource, watcher.cursor, initial_events_end=True))
        deadline = loop.time() + timeout if timeout > 0 else None
        next_bookmark = loop.time() + self._bookmark_interval if bookmarks else None
        while True:
            if watcher.stop == "close":
                return
            if watcher.stop == "expire":
                await self._write_error(response, ApiError(410, "Expired", "watch expired by the emulator"))
                return
            watcher.wake.clear()
            try:
                events = self._store.events_after(watcher.cursor, _WATCH_BATCH)
            except ApiError as err:
                # Fell out of the history window (compacted, or too slow): the client must relist.
                await self._write_error(response, err)
                return
            if events:
                out: builtins.list[bytes] = []
                for event in events:
                    pieces = watcher.pieces(event)
                    if pieces is not None:
                        out.extend(self._as_seen(watcher, pieces))
                watcher.cursor = events[-1].rv
                if out:
                    await response.write(b"".join(out))
            # Checked on every pass, so neither the timeout nor bookmarks starve under constant writes.
            now = loop.time()
            if deadline is not None and now >= deadline:
                return
            if next_bookmark is not None and now >= next_bookmark:
                # Everything up to the cursor has been sent, so a client may resume from it.
                await response.write(self._bookmark(resource, watcher.cursor))
                next_bookmark = now + self._bookmark_interval
            if events:
                continue  # more may be waiting; read again before sleeping
            waits = [t - now for t in (deadline, next_bookmark) if t is not None]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher.wake.wait(), min(waits) if waits else None)

    @staticmethod
    async def _write_error(response: web.StreamResponse, err: ApiError) -> None:
        await response.write(
            orjson.dumps({"type": "ERROR", "object": status_object(err.status, err.reason, err.message)})
            + b"\n"
        )
