"""Server-side printing: `meta.k8s.io/v1` Tables, which `kubectl get` asks for in its Accept header.

Columns follow the real server's printers for the kinds people look at (pods, nodes, namespaces),
a NAME/AGE table for other built-in kinds (the real server prints more columns for services and
deployments), and for custom resources NAME plus their CRD's additionalPrinterColumns, or
NAME/CREATED AT for a CRD without any, as the server does.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Callable
from typing import Any

from typha.model.resources import Resource
from typha.testing.apiserver.registry import is_custom

Column = dict[str, Any]
Cells = Callable[[dict[str, Any]], list[Any]]


def wants_table(accept: str) -> bool:
    """True when the client prefers a Table (kubectl get sends `application/json;as=Table;...` first)."""
    first = accept.split(",", 1)[0]
    return "as=Table" in first and "g=meta.k8s.io" in first


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration, which the server uses for AGE cells."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years, days = hours // 24 // 365, (hours // 24) % 365
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{hours // 24 // 365}y"


def _age(obj: dict[str, Any]) -> str:
    created = obj["metadata"].get("creationTimestamp")
    if not created:
        return "<unknown>"
    try:
        then = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "<unknown>"
    return human_duration(time.time() - then)


def _column(name: str, description: str, *, fmt: str = "", type_: str = "string", priority: int = 0) -> Column:
    return {"name": name, "type": type_, "format": fmt, "description": description, "priority": priority}


_NAME = _column("Name", "Name must be unique within a namespace.", fmt="name")
_AGE = _column("Age", "CreationTimestamp is a timestamp representing the server time when this object was created.")


def _pod_cells(pod: dict[str, Any]) -> list[Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    phase = status.get("reason") or status.get("phase") or "Pending"
    if pod["metadata"].get("deletionTimestamp"):
        phase = "Terminating"
    return [
        pod["metadata"]["name"],
        f"{ready}/{len(spec.get('containers') or [])}",
        phase,
        str(restarts),
        _age(pod),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
    ]


def _node_cells(node: dict[str, Any]) -> list[Any]:
    status = node.get("status") or {}
    ready = next((c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = {"True": "Ready", "False": "NotReady"}.get(ready or "", "Unknown")
    if (node.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix) :] for k in (node["metadata"].get("labels") or {}) if k.startswith(prefix))
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    return [
        node["metadata"]["name"],
        state,
        ",".join(roles) or "<none>",
        _age(node),
        (status.get("nodeInfo") or {}).get("kubeletVersion", ""),
        addresses.get("InternalIP") or "<none>",
    ]


def _namespace_cells(ns: dict[str, Any]) -> list[Any]:
    return [ns["metadata"]["name"], (ns.get("status") or {}).get("phase", "Active"), _age(ns)]


_PRINTERS: dict[tuple[str, str], tuple[list[Column], Cells]] = {
    ("v1", "Pod"): (
        [
            _NAME,
            _column("Ready", "The aggregate readiness state of this pod for accepting traffic."),
            _column("Status", "The aggregate status of the containers in this pod."),
            _column("Restarts", "The number of times the containers in this pod have been restarted."),
            _AGE,
            _column("IP", "IP address allocated to the pod.", priority=1),
            _column("Node", "Name of the node this pod is scheduled to.", priority=1),
        ],
        _pod_cells,
    ),
    ("v1", "Node"): (
        [
            _NAME,
            _column("Status", "The status of the node"),
            _column("Roles", "The roles of the node"),
            _AGE,
            _column("Version", "Kubelet Version reported by the node."),
            _column("Internal-IP", "List of internal IPs in the node.", priority=1),
        ],
        _node_cells,
    ),
    ("v1", "Namespace"): ([_NAME, _column("Status", "The status of the namespace"), _AGE], _namespace_cells),
}


def _printer(resource: Resource) -> tuple[list[Column], Cells]:
    printer = _PRINTERS.get((resource.api_version, resource.kind))
    if printer is not None:
        return printer
    if is_custom(resource):
        created = _column("Created At", "", fmt="date-time", type_="date")
        return [_NAME, created], lambda obj: [obj["metadata"]["name"], obj["metadata"].get("creationTimestamp")]
    return [_NAME, _AGE], lambda obj: [obj["metadata"]["name"], _age(obj)]


_JSONPATH_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\?\(@\.(\w+)==['\"]([^'\"]*)['\"]\)\]")


def _jsonpath(obj: Any, path: str) -> Any:
    """The first value at a printer column's JSONPath (`.spec.a.b`, `.list[0].x`, `.list[?(@.k=='v')].x`),
    or None where there is none, which kubectl prints as <none>."""
    for match in _JSONPATH_STEP.finditer(path):
        key, index, filter_key, filter_value = match.groups()
        if key is not None:
            obj = obj.get(key) if isinstance(obj, dict) else None
        elif index is not None:
            obj = obj[int(index)] if isinstance(obj, list) and int(index) < len(obj) else None
        else:
            items = obj if isinstance(obj, list) else []
            obj = next((i for i in items if isinstance(i, dict) and str(i.get(filter_key)) == filter_value), None)
        if obj is None:
            return None
    return obj


def _cell(value: Any, type_: str) -> Any:
    """A printer column's cell: scalars as they are; lists and maps as JSON, as the server prints them."""
    if value is None or (type_ in ("integer", "number", "boolean", "date") and not isinstance(value, (dict, list))):
        return value
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _crd_printer(columns: tuple[dict[str, Any], ...]) -> tuple[list[Column], Cells]:
    """A CRD version's additionalPrinterColumns, after the Name column, as apiextensions prints them."""
    defs = [_NAME] + [
        _column(
            str(c.get("name", "")),
            str(c.get("description", "")),
            fmt=str(c.get("format", "")),
            type_=str(c.get("type", "string")),
            priority=int(c.get("priority", 0) or 0),
        )
        for c in columns
    ]

    def cells(obj: dict[str, Any]) -> list[Any]:
        return [obj["metadata"]["name"]] + [
            _cell(_jsonpath(obj, str(c["jsonPath"])), str(c.get("type", "string"))) for c in columns
        ]

    return defs, cells


def _row_object(obj: dict[str, Any], include: str) -> dict[str, Any] | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def table(
    resource: Resource,
    objs: list[dict[str, Any]],
    list_meta: dict[str, Any],
    include_object: str = "Metadata",
    printer_columns: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """A Table of `objs`, with `list_meta` (resourceVersion, continue, ...) as its metadata.
    `printer_columns`: a custom resource's additionalPrinterColumns, from its CRD."""
    columns, cells = _crd_printer(printer_columns) if printer_columns else _printer(resource)
    rows = []
    for obj in objs:
        row: dict[str, Any] = {"cells": cells(obj)}
        included = _row_object(obj, include_object)
        if included is not None:
            row["object"] = included
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": rows,
    }
