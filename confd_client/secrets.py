"""BGP passwords: a Secret side channel, as upstream confd has (secret_watcher.go).

The bgp syncer does not carry Secrets (Typha never fans them out), so confd reads them from the
Kubernetes API itself: `KUBECONFIG` (else in-cluster config), namespace `NAMESPACE` (default
`kube-system`). Upstream runs one informer per referenced Secret; we list+watch the namespace's
Secrets once, which needs the same RBAC verb set (list/watch secrets in that namespace) and one
stream instead of one per BGPPeer.

The watcher runs on its own thread (the kubernetes client is blocking) and reports each change
through `on_change`, which the agent turns into a re-render on its trio loop.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class SecretWatcher:
    def __init__(self, namespace: str, kubeconfig: str | None, on_change: Callable[[], None]) -> None:
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.on_change = on_change
        self.secrets: dict[str, dict[str, str]] = {}  # name -> key -> decoded value
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="confd-secrets", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def get(self, name: str, key: str) -> str | None:
        with self._lock:
            return self.secrets.get(name, {}).get(key)

    def snapshot(self) -> dict[tuple[str, str], dict[str, str]]:
        with self._lock:
            return {(self.namespace, name): dict(data) for name, data in self.secrets.items()}

    @staticmethod
    def _decode(obj: dict) -> dict[str, str]:
        data = obj.get("data") or {}
        return {key: base64.b64decode(value).decode("utf-8", "replace") for key, value in data.items()}

    def _api(self):  # type: ignore[no-untyped-def]
        from kubernetes import client, config

        if self.kubeconfig:
            api_client = config.new_client_from_config(config_file=self.kubeconfig)
        else:
            config.load_incluster_config()
            api_client = client.ApiClient()
        return client.CoreV1Api(api_client)

    def _main(self) -> None:
        import json

        from kubernetes.watch.watch import iter_resp_lines

        backoff = 0.2
        while not self._stop.is_set():
            try:
                api = self._api()
                # Raw JSON, not the generated models: cheaper, and `data` stays base64 as served.
                listed = json.loads(api.list_namespaced_secret(self.namespace, _preload_content=False).data)
                fresh = {item["metadata"]["name"]: self._decode(item) for item in listed.get("items") or []}
                with self._lock:
                    changed = fresh != self.secrets
                    self.secrets = fresh
                self.synced.set()
                if changed:
                    self.on_change()
                version = listed["metadata"]["resourceVersion"]
                backoff = 0.2
                while not self._stop.is_set():
                    response = api.list_namespaced_secret(
                        self.namespace, watch=True, resource_version=version, timeout_seconds=5,
                        allow_watch_bookmarks=True, _preload_content=False,
                    )
                    for line in iter_resp_lines(response):
                        if self._stop.is_set():
                            return
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            raise RuntimeError(f"watch error: {obj.get('message')}")  # e.g. 410: relist
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if event.get("type") == "BOOKMARK":
                            continue
                        name = obj["metadata"]["name"]
                        with self._lock:
                            if event.get("type") == "DELETED":
                                self.secrets.pop(name, None)
                            else:
                                self.secrets[name] = self._decode(obj)
                        self.on_change()
            except Exception as exc:
                log.warning("secret watch on %s failed (%s); retrying", self.namespace, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
