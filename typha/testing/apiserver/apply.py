"""Server-side apply (`PATCH` with `application/apply-patch+yaml`): merge an applied configuration into
the live object and keep `metadata.managedFields` per field manager.

What the emulator implements, against structured-merge-diff on a real server:
- Field sets are kept in the real `FieldsV1` shape (`{"f:spec": {"f:replicas": {}}}`); maps merge
  key by key, lists are atomic (a real server merges lists keyed by `name`, `port`, … where the
  schema says so - here a list is owned and replaced whole).
- A field the same manager applied before and no longer applies is removed, unless another
  manager's Apply also owns it.
- Conflicts are detected between Apply managers only: a field another manager applied with a
  different value is a 409 Conflict unless `force=true`, which moves ownership. Updates by other
  verbs (create, PUT, merge patches) are not tracked as managers, so they never conflict.
"""

from __future__ import annotations

import time
from typing import Any

FieldSet = dict[str, Any]

_IDENTITY = frozenset(
    {"name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"}
)


class ApplyConflict(Exception):
    def __init__(self, conflicts: list[tuple[str, str]]):
        self.conflicts = conflicts
        super().__init__(conflicts)


def field_set(value: Any, top: bool = True) -> FieldSet:
    """The fields an applied configuration sets, in FieldsV1 form."""
    if not isinstance(value, dict):
        return {}
    out: FieldSet = {}
    for key, child in value.items():
        if top and key in ("apiVersion", "kind"):
            continue
        if top and key == "metadata" and isinstance(child, dict):
            meta = {k: v for k, v in child.items() if k not in _IDENTITY}
            if meta:
                out["f:metadata"] = field_set(meta, top=False)
            continue
        out[f"f:{key}"] = field_set(child, top=False) if isinstance(child, dict) and child else {}
    return out


def _leaves(fs: FieldSet, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, child in fs.items():
        path = (*prefix, key[2:])
        out.extend(_leaves(child, path) if child else [path])
    return out


def _contains(fs: FieldSet, path: tuple[str, ...]) -> bool:
    node: Any = fs
    for part in path:
        if not isinstance(node, dict) or f"f:{part}" not in node:
            return False
        node = node[f"f:{part}"]
    return True


def _lookup(obj: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return False, None
        obj = obj[part]
    return True, obj


def _remove_path(fs: FieldSet, path: tuple[str, ...]) -> None:
    node = fs
    for part in path[:-1]:
        node = node.get(f"f:{part}", {})
    node.pop(f"f:{path[-1]}", None)


def _merge(live: Any, applied: Any) -> Any:
    if isinstance(live, dict) and isinstance(applied, dict):
        out = dict(live)
        for key, value in applied.items():
            out[key] = _merge(live.get(key), value)
        return out
    return applied


def _delete(obj: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = obj
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


def apply(
    live: dict[str, Any] | None, applied: dict[str, Any], manager: str, api_version: str, *, force: bool
) -> dict[str, Any]:
    """The object after `manager` applies `applied` to `live` (None: the object does not exist yet)."""
    new_set = field_set(applied)
    entries: list[dict[str, Any]] = list(((live or {}).get("metadata") or {}).get("managedFields") or [])
    mine = next((e for e in entries if e.get("manager") == manager and e.get("operation") == "Apply"), None)
    others = [e for e in entries if e is not mine and e.get("operation") == "Apply"]

    conflicts: list[tuple[str, str]] = []
    for other in others:
        other_set = other.get("fieldsV1") or {}
        for path in _leaves(new_set):
            if not _contains(other_set, path):
                continue
            _, live_value = _lookup(live, path)
            _, new_value = _lookup(applied, path)
            if live_value != new_value:
                conflicts.append((str(other.get("manager")), "." + ".".join(path)))
                if force:
                    _remove_path(other_set, path)
    if conflicts and not force:
        raise ApplyConflict(conflicts)

    obj = _merge(live or {}, {k: v for k, v in applied.items() if k != "metadata"})
    meta = dict((live or {}).get("metadata") or {})
    applied_meta = applied.get("metadata") or {}
    for key, value in applied_meta.items():
        if key not in _IDENTITY:
            meta[key] = _merge(meta.get(key), value)
    for key in ("name", "namespace"):
        if key in applied_meta and key not in meta:
            meta[key] = applied_meta[key]
    obj["metadata"] = meta
    if mine is not None:
        owned_by_others = [o.get("fieldsV1") or {} for o in others]
        for path in _leaves(mine.get("fieldsV1") or {}):
            if not _contains(new_set, path) and not any(_contains(o, path) for o in owned_by_others):
                _delete(obj, path)

    entry = {
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fieldsType": "FieldsV1",
        "fieldsV1": new_set,
    }
    kept = [e for e in entries if e is not mine and (e.get("fieldsV1") or e.get("operation") != "Apply")]
    meta["managedFields"] = [*kept, entry]
    return obj
