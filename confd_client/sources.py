"""Kubernetes side channels: what confd reads from the API itself because the bgp syncer lacks it.

Upstream confd runs informers next to its syncer (Typha never fans these out):
- Secrets, for BGP passwords (secret_watcher.go): namespace `NAMESPACE`, default `kube-system`.
  Upstream watches each referenced Secret by name; we list+watch the namespace once, which takes
  the same RBAC (list/watch secrets there) and one stream instead of one per BGPPeer.
- Services and their EndpointSlices, for per-Service routes (routes.go, the route generator).
Credentials as upstream: `KUBECONFIG`, else the in-cluster config.

Each kind is followed by the shared `typha.kube.reflector.Reflector` (paginated list, watch, resume,
re-list on 410, jittered backoff) on its own thread; an `ObjectCache` keeps the raw JSON objects by
(namespace, name) and calls `on_change` after every change, which the agent turns into a debounced
re-render on its trio loop. Raw JSON, not the generated models: cheaper (docs/architecture.md §8),
and Secret `data` stays base64 as served.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from typha.kube.client import KubeClient
from typha.kube.reflector import Event, EventType, ObjectId, Reflector, object_id
from typha.model.resources import Resource, by_key


@dataclass(frozen=True, slots=True)
class NamespacedResource(Resource):
    """A namespaced kind listed and watched in one namespace only (the reflector lists `path()`)."""

    namespace: str = ""

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        return Resource.path(self, namespace or self.namespace, name)


class ObjectCache:
    """A reflector's sink: the current objects of one kind, readable from any thread."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self.synced = threading.Event()
        self._objects: dict[ObjectId, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def on_events(self, resource: Resource, events: list[Event]) -> None:
        with self._lock:
            for event in events:
                if event.type is EventType.DELETE:
                    self._objects.pop(object_id(event.obj), None)
                else:
                    self._objects[object_id(event.obj)] = event.obj
        if events:
            self.on_change()

    def on_synced(self, resource: Resource) -> None:
        self.synced.set()

    def objects(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((namespace, name))


class Follower:
    """One kind: its reflector and the cache it feeds; started at most once."""

    def __init__(self, client: KubeClient, resource: Resource, on_change: Callable[[], None]) -> None:
        self.cache = ObjectCache(on_change)
        self.reflector = Reflector(client, resource, self.cache)
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            self.reflector.start()


class KubeSources:
    """The side channels one agent runs: Secrets always; Services and EndpointSlices only once
    service advertisement is configured (as upstream starts its route generator), since watching
    every Service in a large cluster is not free."""

    def __init__(self, kubeconfig: str | None, namespace: str, on_change: Callable[[str], None],
                 client: KubeClient | None = None) -> None:
        self.client = client or KubeClient.from_environment(kubeconfig)
        self.namespace = namespace
        secrets = by_key("secrets")
        scoped = NamespacedResource(secrets.group, secrets.version, secrets.plural, secrets.kind, True,
                                    namespace=namespace)
        # on_change says which: a Secret reaches only passwords, a Service or slice only routes.
        self.secrets = Follower(self.client, scoped, lambda: on_change("secrets"))
        self.services = Follower(self.client, by_key("services"), lambda: on_change("services"))
        self.slices = Follower(self.client, by_key("endpointslices.discovery.k8s.io"), lambda: on_change("services"))
        self.followers = (self.secrets, self.services, self.slices)

    def start(self) -> None:
        self.secrets.start()

    def start_services(self) -> None:
        self.services.start()
        self.slices.start()

    @property
    def services_started(self) -> bool:
        return self.services.started

    def stop(self) -> None:
        started = [f for f in self.followers if f.started]
        for follower in started:
            follower.reflector.request_stop()  # all at once, then wait for each
        for follower in started:
            follower.reflector.stop()
        self.client.close()

    def wait_synced(self, timeout: float) -> bool:
        return all(f.cache.synced.wait(timeout) for f in self.followers if f.started)

    def secret(self, name: str, key: str) -> str | None:
        obj = self.secrets.cache.get(self.namespace, name)
        if obj is None:
            return None
        value = (obj.get("data") or {}).get(key)
        if value is None:
            return None
        try:
            return base64.b64decode(value, validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return None  # not base64: no password, and the peer's check will not see one

    def service_endpoints(self) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Each Service with the EndpointSlices that belong to it (label kubernetes.io/service-name)."""
        by_service: dict[ObjectId, list[dict[str, Any]]] = {}
        for item in self.slices.cache.objects():
            metadata = item.get("metadata") or {}
            owner = (metadata.get("labels") or {}).get("kubernetes.io/service-name")
            if owner:
                by_service.setdefault((str(metadata.get("namespace") or ""), owner), []).append(item)
        out = []
        for svc in self.services.cache.objects():
            metadata = svc.get("metadata") or {}
            out.append((svc, by_service.get((str(metadata.get("namespace") or ""), str(metadata.get("name"))), [])))
        return out
