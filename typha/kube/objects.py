"""Single-object API access: get/create/update/merge-patch of one object, as raw JSON dicts.

`KubeClient` only lists and watches; the autoscaler and leader election also read and write single
objects. The requests go through the same `kubernetes` ApiClient (so kubeconfig, in-cluster tokens
and TLS work the same way) and bodies stay raw JSON dicts, as everywhere else in typha (docs/architecture.md §8).
"""

from __future__ import annotations

from typing import Any

import orjson

from typha.kube.client import CONNECT_TIMEOUT_SECONDS, KubeClient, _error_from_response
from typha.model.resources import Resource

# Single-object requests are small; a server that takes longer than this is treated as failing.
REQUEST_READ_TIMEOUT_SECONDS = 15.0



class KubeObjects:
    """get/create/update/merge-patch of single objects, as raw JSON dicts. Thread-safe."""

    def __init__(self, kube: KubeClient, read_timeout: float = REQUEST_READ_TIMEOUT_SECONDS) -> None:
        # Share the KubeClient's ApiClient: one connection pool, one set of credentials.
        self._api = kube._api
        self._read_timeout = read_timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              content_type: str = "application/json") -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self._api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        response = self._api.call_api(*request, _request_timeout=(CONNECT_TIMEOUT_SECONDS, self._read_timeout))
        raw = response.response
        try:
            if not 200 <= raw.status <= 299:
                raise _error_from_response(raw)
            result: dict[str, Any] = orjson.loads(raw.data)
            return result
        finally:
            raw.release_conn()

    def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        return self._call("GET", resource.path(namespace, name))

    def create(self, resource: Resource, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", resource.path(namespace), obj)

    def update(self, resource: Resource, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT; a metadata.resourceVersion in `obj` makes it conditional (409 if it is stale)."""
        return self._call("PUT", resource.path(namespace, obj["metadata"]["name"]), obj)

    def merge_patch(self, resource: Resource, namespace: str | None, name: str,
                    patch: dict[str, Any]) -> dict[str, Any]:
        return self._call("PATCH", resource.path(namespace, name), patch, "application/merge-patch+json")
