"""Kubernetes side channels: what confd reads from the API itself because the bgp syncer lacks it.

Upstream confd runs informers next to its syncer (Typha never fans these out):
- Secrets, for BGP passwords (secret_watcher.go): namespace `NAMESPACE`, default `kube-system`.
  Upstream watches each referenced Secret by name; we list+watch the namespace once, which takes
  the same RBAC (list/watch secrets there) and one stream instead of one per BGPPeer.
- Services and their endpoints, for per-Service routes (routes.go, the route generator).
Credentials as upstream: `KUBECONFIG`, else the in-cluster config.

Each `KubeWatcher` runs list+watch on its own thread (the kubernetes client blocks), keeps the raw
JSON objects by (namespace, name), and calls `on_change` after every change; the agent turns that
into a debounced re-render on its trio loop. Raw JSON, not the generated models: cheaper (docs/architecture.md §8)
and Secret `data` stays base64 as served.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


def api_client(kubeconfig: str | None) -> Any:
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    config.load_incluster_config()
    return client.ApiClient()


class KubeWatcher:
    """list+watch of one resource, resuming from the last resourceVersion, relisting on errors (410)."""

    def __init__(self, name: str, list_call: Callable[..., Any], on_change: Callable[[], None]) -> None:
        self.name = name
        self.list_call = list_call  # e.g. CoreV1Api(c).list_namespaced_secret with the namespace bound
        self.on_change = on_change
        self.synced = threading.Event()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._response: Any = None  # the open watch, closed by stop() to interrupt the blocking read
        self._thread = threading.Thread(target=self._main, name=f"confd-{name}", daemon=True)
        self.started = False

    def start(self) -> None:
        if not self.started:
            self.started = True
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.close()
            except Exception:  # closing from another thread may race the reader; it only needs to end
                pass
        if self.started:
            self._thread.join(5)

    def objects(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((namespace, name))

    @staticmethod
    def _key(obj: dict[str, Any]) -> Key:
        metadata = obj.get("metadata") or {}
        return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")

    def _main(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        backoff = 0.2
        while not self._stop.is_set():
            try:
                listed = json.loads(self.list_call(_preload_content=False).data)
                fresh = {self._key(item): item for item in listed.get("items") or []}
                with self._lock:
                    changed = fresh != self._objects
                    self._objects = fresh
                self.synced.set()
                if changed:
                    self.on_change()
                version = (listed.get("metadata") or {}).get("resourceVersion")
                backoff = 0.2
                while not self._stop.is_set():
                    response = self.list_call(watch=True, resource_version=version, timeout_seconds=300,
                                              allow_watch_bookmarks=True, _preload_content=False)
                    self._response = response
                    for line in iter_resp_lines(response):
                        if self._stop.is_set():
                            return
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if event.get("type") == "BOOKMARK":
                            continue
                        with self._lock:
                            if event.get("type") == "DELETED":
                                self._objects.pop(self._key(obj), None)
                            else:
                                self._objects[self._key(obj)] = obj
                        self.on_change()
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("%s watch failed (%s); relisting", self.name, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)


class KubeSources:
    """The side channels one agent runs: Secrets always; Services and EndpointSlices only once
    service advertisement is configured (as upstream starts its route generator), since watching
    every Service in a large cluster is not free."""

    def __init__(self, kubeconfig: str | None, namespace: str, on_change: Callable[[], None]) -> None:
        from kubernetes import client

        api = api_client(kubeconfig)
        core, discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)
        self.namespace = namespace

        def secrets(**kw: Any) -> Any:
            return core.list_namespaced_secret(namespace, **kw)

        self.secrets = KubeWatcher("secrets", secrets, on_change)
        self.services = KubeWatcher("services", core.list_service_for_all_namespaces, on_change)
        self.slices = KubeWatcher("endpointslices", discovery.list_endpoint_slice_for_all_namespaces, on_change)
        self.watchers = (self.secrets, self.services, self.slices)

    def start(self) -> None:
        self.secrets.start()

    def start_services(self) -> None:
        self.services.start()
        self.slices.start()

    @property
    def services_started(self) -> bool:
        return self.services.started

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()

    def wait_synced(self, timeout: float) -> bool:
        return all(watcher.synced.wait(timeout) for watcher in self.watchers if watcher.started)

    def secret(self, name: str, key: str) -> str | None:
        obj = self.secrets.get(self.namespace, name)
        if obj is None:
            return None
        value = (obj.get("data") or {}).get(key)
        return None if value is None else base64.b64decode(value).decode("utf-8", "replace")

    def service_endpoints(self) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Each Service with the EndpointSlices that belong to it (label kubernetes.io/service-name)."""
        by_service: dict[Key, list[dict[str, Any]]] = {}
        for item in self.slices.objects():
            metadata = item.get("metadata") or {}
            owner = (metadata.get("labels") or {}).get("kubernetes.io/service-name")
            if owner:
                by_service.setdefault((str(metadata.get("namespace") or ""), owner), []).append(item)
        out = []
        for svc in self.services.objects():
            metadata = svc.get("metadata") or {}
            out.append((svc, by_service.get((str(metadata.get("namespace") or ""), str(metadata.get("name"))), [])))
        return out
