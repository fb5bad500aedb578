"""Discovery and OpenAPI documents for the served resources, built per registry state and served as bytes.

What kubectl needs, found by running it with -v=8 against the emulator:
- /version, then legacy discovery: /api, /apis, /api/v1 and /apis/<group>/<version>. kubectl first
  asks for aggregated discovery (apidiscovery.k8s.io/v2) in its Accept header; the plain
  APIVersions/APIGroupList answer (Content-Type application/json) makes it fall back to the legacy
  per-group-version documents served here.
- `kubectl apply` / `create` validate by default. kubectl asks /openapi/v3 whether the server
  does field validation itself: the per-group-version documents below declare a PATCH operation
  with the `fieldValidation` query parameter and the `x-kubernetes-group-version-kind` extension for
  every kind, so kubectl sends `fieldValidation=Strict` instead of validating client-side (the
  emulator accepts the parameter and does not check unknown fields). Building the validator also
  downloads /openapi/v2 as protobuf: a Document with no definitions, on which kubectl's client-side
  schema check is a no-op. The lack of schemas also makes `kubectl apply` compute patches from its
  compiled-in types (strategic merge) for built-in kinds and JSON merge patches for Calico's.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

import orjson

from typha.model.resources import Resource
from typha.testing.apiserver.registry import Served

KUBE_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-typha-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z",
    "goVersion": "go1.23.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _group_versions(served: list[Served]) -> dict[str, list[Served]]:
    """Resources by group-version ("v1", "apps/v1", ...), in table order."""
    by_gv: dict[str, list[Served]] = defaultdict(list)
    for s in served:
        by_gv[s.resource.api_version].append(s)
    return dict(by_gv)


def _resource_list(group_version: str, served: list[Served]) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for s in served:
        r = s.resource
        entry: dict[str, Any] = {
            "name": r.plural,
            "singularName": r.kind.lower(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if s.categories:
            entry["categories"] = list(s.categories)
        entries.append(entry)
        if s.status:
            entries.append(
                {
                    "name": f"{r.plural}/status",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": entries,
    }


def _api_group(group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


_PATCH_TYPES = [
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
]


def _openapi_v3_document(group_version: str, resources: list[Resource]) -> dict[str, Any]:
    """Just enough OpenAPI v3 for kubectl's field-validation probe: one PATCH operation per kind."""
    paths: dict[str, Any] = {}
    for r in resources:
        group, _, version = r.api_version.rpartition("/")
        gvk = {"group": group, "version": version, "kind": r.kind}
        path = r.path("{namespace}" if r.namespaced else None, "{name}")
        params = [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
        ]
        if r.namespaced:
            params.insert(
                1, {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}}
            )
        paths[path] = {
            "patch": {
                "operationId": f"patch{r.kind}",
                "parameters": params,
                "requestBody": {
                    "content": {t: {"schema": {"type": "object"}} for t in _PATCH_TYPES},
                    "required": True,
                },
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBE_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    }


def _protobuf_string(field_number: int, value: str | bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2), lengths assumed < 2**21."""
    data = value.encode() if isinstance(value, str) else value
    length = len(data)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([(field_number << 3) | 2]) + bytes(varint) + data


# gnostic openapi_v2.Document{swagger: "2.0", info: Info{title, version}} and nothing else.
OPENAPI_V2_PROTOBUF = _protobuf_string(1, "2.0") + _protobuf_string(
    2, _protobuf_string(1, "Kubernetes") + _protobuf_string(2, KUBE_VERSION["gitVersion"])
)
OPENAPI_V2_CONTENT_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


class Discovery:
    """Every discovery document, pre-encoded; `document(path)` answers a GET for one of them."""

    def __init__(self, served: list[Served]) -> None:
        by_gv = _group_versions(served)
        docs: dict[str, Any] = {
            "/version": KUBE_VERSION,
            "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
        }
        groups: dict[str, list[str]] = defaultdict(list)
        for gv, entries in by_gv.items():
            group, _, version = gv.rpartition("/")
            prefix = f"/apis/{gv}" if group else f"/api/{gv}"
            docs[prefix] = _resource_list(gv, entries)
            if group:
                groups[group].append(version)
        for group, versions in groups.items():
            docs[f"/apis/{group}"] = {"kind": "APIGroup", "apiVersion": "v1", **_api_group(group, versions)}
        docs["/apis"] = {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [_api_group(g, v) for g, v in groups.items()],
        }
        self._docs: dict[str, bytes] = {path: orjson.dumps(doc) for path, doc in docs.items()}

        v3_index: dict[str, Any] = {}
        for gv, entries in by_gv.items():
            rel = f"apis/{gv}" if "/" in gv else f"api/{gv}"
            body = orjson.dumps(_openapi_v3_document(gv, [e.resource for e in entries]))
            digest = hashlib.sha512(body).hexdigest()[:64].upper()
            self._docs[f"/openapi/v3/{rel}"] = body
            v3_index[rel] = {"serverRelativeURL": f"/openapi/v3/{rel}?hash={digest}"}
        self._docs["/openapi/v3"] = orjson.dumps({"paths": v3_index})

    def document(self, path: str) -> bytes | None:
        return self._docs.get(path.rstrip("/") or "/")
