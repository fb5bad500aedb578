"""Raw-JSON access to the Kubernetes API through the `kubernetes` package's configuration and auth.

The `kubernetes` client does what it is good at — kubeconfig and in-cluster configuration, TLS,
bearer tokens and their refresh — while the bodies are read as bytes and parsed with orjson:
its generated models cost ~30x more per object (docs/architecture.md §8).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import kubernetes.client
import kubernetes.config
import orjson
import urllib3

from typha.model.resources import Resource

# Server-side bound on one watch; the reflector re-watches from its last resourceVersion when it ends.
DEFAULT_WATCH_TIMEOUT_SECONDS = 300
CONNECT_TIMEOUT_SECONDS = 10.0
# A watch read blocks until an event or bookmark arrives; allow the server's whole timeout plus slack.
WATCH_READ_SLACK_SECONDS = 30.0
LIST_READ_TIMEOUT_SECONDS = 60.0


class KubeAPIError(Exception):
    """A non-2xx answer from the API server, with Kubernetes' Status fields when it sent them."""

    def __init__(self, status: int, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def is_gone(self) -> bool:
        return self.status == 410


@dataclass(frozen=True, slots=True)
class ListPage:
    items: list[dict[str, Any]]
    resource_version: str
    continue_token: str


def _error_from_response(resp: urllib3.BaseHTTPResponse) -> KubeAPIError:
    body = resp.data or b""
    reason, message = resp.reason or "", body[:500].decode("utf-8", "replace")
    try:
        status = orjson.loads(body)
        if isinstance(status, dict) and status.get("kind") == "Status":
            reason = status.get("reason") or reason
            message = status.get("message") or message
    except orjson.JSONDecodeError:
        pass
    retry_after: float | None = None
    header = resp.headers.get("Retry-After")
    if header:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    return KubeAPIError(resp.status, reason, message, retry_after)


class KubeClient:
    """Lists and watches resources; thread-safe (urllib3 pools connections)."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self._api = api_client

    @staticmethod
    def _api_client(configuration: kubernetes.client.Configuration) -> kubernetes.client.ApiClient:
        # urllib3 would otherwise retry 429/503 itself, sleeping for Retry-After out of our sight;
        # the reflector owns retries and backoff (and counts them), so only connects are retried here.
        configuration.retries = urllib3.Retry(connect=3, read=0, status=0, respect_retry_after_header=False)
        # One long-lived watch per resource kind plus lists: the default pool of 10 would churn connections.
        configuration.connection_pool_maxsize = 64
        return kubernetes.client.ApiClient(configuration)

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None) -> KubeClient:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
        return cls(cls._api_client(configuration))

    @classmethod
    def in_cluster(cls) -> KubeClient:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_incluster_config(client_configuration=configuration)
        return cls(cls._api_client(configuration))

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeClient:
        """kubeconfig if one is given or found, else the in-cluster service account."""
        if kubeconfig:
            return cls.from_kubeconfig(kubeconfig)
        try:
            return cls.in_cluster()
        except kubernetes.config.ConfigException:
            return cls.from_kubeconfig()

    @property
    def host(self) -> str:
        return str(self._api.configuration.host)

    def close(self) -> None:
        self._api.close()

    def _request(
        self, path: str, query: list[tuple[str, str]], read_timeout: float
    ) -> urllib3.BaseHTTPResponse:
        request = self._api.param_serialize(
            "GET",
            path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(*request, _request_timeout=(CONNECT_TIMEOUT_SECONDS, read_timeout))
        raw: urllib3.BaseHTTPResponse = response.response
        if not 200 <= raw.status <= 299:
            try:
                raise _error_from_response(raw)
            finally:
                raw.release_conn()
        return raw

    def api_group_names(self) -> list[str]:
        """The names of the API groups the server serves (`GET /apis`, discovery's ServerGroups)."""
        raw = self._request("/apis", [], LIST_READ_TIMEOUT_SECONDS)
        try:
            body = orjson.loads(raw.data)
        finally:
            raw.release_conn()
        return [str(g.get("name")) for g in body.get("groups") or () if isinstance(g, dict)]

    def list_page(
        self, resource: Resource, *, limit: int, continue_token: str = "", label_selector: str = ""
    ) -> ListPage:
        query = [("limit", str(limit))]
        if continue_token:
            query.append(("continue", continue_token))
        if label_selector:
            query.append(("labelSelector", label_selector))
        raw = self._request(resource.path(), query, LIST_READ_TIMEOUT_SECONDS)
        try:
            body = orjson.loads(raw.data)
        finally:
            raw.release_conn()
        metadata = body.get("metadata") or {}
        return ListPage(
            items=body.get("items") or [],
            resource_version=str(metadata.get("resourceVersion") or ""),
            continue_token=str(metadata.get("continue") or ""),
        )

    def watch(
        self,
        resource: Resource,
        resource_version: str,
        *,
        timeout_seconds: int = DEFAULT_WATCH_TIMEOUT_SECONDS,
        label_selector: str = "",
        cancel: WatchHandle | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yields batches of watch events ({"type", "object"}) until the server ends the stream.

        A batch is every complete event that arrived in one read, so a busy stream is handed on in
        batches while a quiet one costs no added latency. `cancel` lets another thread end a blocked
        read (see WatchHandle.cancel).
        """
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        if label_selector:
            query.append(("labelSelector", label_selector))
        raw = self._request(resource.path(), query, timeout_seconds + WATCH_READ_SLACK_SECONDS)
        if cancel is not None:
            cancel.attach(raw)
        try:
            pending = b""
            for chunk in raw.stream(None, decode_content=True):
                pending += chunk
                if b"\n" not in pending:
                    continue
                *lines, pending = pending.split(b"\n")
                yield [orjson.loads(line) for line in lines if line.strip()]
            if pending.strip():
                yield [orjson.loads(pending)]
        finally:
            if cancel is not None:
                cancel.detach()
            raw.release_conn()


class WatchHandle:
    """Lets a reflector's stop() interrupt the blocking read of its current watch."""

    def __init__(self, on_open: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._cancelled = False
        self._on_open = on_open  # the server accepted a watch: it is reachable again, before any event

    def attach(self, response: urllib3.BaseHTTPResponse) -> None:
        if self._on_open is not None:
            self._on_open()
        with self._lock:
            self._response = response
            cancelled = self._cancelled
        if cancelled:
            self._shutdown(response)

    def detach(self) -> None:
        with self._lock:
            self._response = None

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            response = self._response
        if response is not None:
            self._shutdown(response)

    @staticmethod
    def _shutdown(response: urllib3.BaseHTTPResponse) -> None:
        # urllib3 >= 2.3 can shut a response down from another thread; older ones can only close it.
        shutdown = getattr(response, "shutdown", None)
        try:
            if shutdown is None:
                raise AttributeError("shutdown")
            shutdown()
        except Exception:
            response.close()
