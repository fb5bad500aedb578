"""Kubernetes label and field selectors, as the API server parses and evaluates them on list and watch.

Label selector grammar (k8s.io/apimachinery/pkg/labels): comma-separated requirements, all of which
must hold: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k>n`, `k<n`. As in
Kubernetes, `!=` and `notin` also match objects that do not carry the label at all.

Field selectors support `=`, `==` and `!=` on the fields the real server indexes for the kind;
anything else is rejected with 400, as Kubernetes does ("field label not supported").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from typha.model.resources import Resource

Predicate = Callable[[Mapping[str, Any]], bool]


class SelectorError(ValueError):
    """An unparseable or unsupported selector: the API server answers 400 BadRequest."""


# Label keys: optional DNS-subdomain prefix and a name; values: the label value charset (may be empty).
_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_RE_EXISTS = re.compile(rf"^(?P<key>{_KEY})$")
_RE_NOT_EXISTS = re.compile(rf"^!\s*(?P<key>{_KEY})$")
_RE_EQ = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})$")
_RE_SET = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_RE_NUM = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>[<>])\s*(?P<value>-?[0-9]+)$")
_RE_VALUE = re.compile(rf"^{_VALUE}$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside `in (...)` value lists."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced parenthesis in {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise SelectorError(f"unbalanced parenthesis in {text!r}")
    parts.append(text[start:])
    return parts


def _requirement(text: str) -> Predicate:
    if m := _RE_EXISTS.match(text):
        key = m["key"]
        return lambda labels: key in labels
    if m := _RE_NOT_EXISTS.match(text):
        key = m["key"]
        return lambda labels: key not in labels
    if m := _RE_EQ.match(text):
        key, value = m["key"], m["value"]
        if m["op"] == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _RE_SET.match(text):
        key = m["key"]
        values = frozenset(v.strip() for v in m["values"].split(","))
        if any(not _RE_VALUE.match(v) for v in values):
            raise SelectorError(f"invalid value in {text!r}")
        if m["op"] == "notin":
            return lambda labels: labels.get(key) not in values
        return lambda labels: labels.get(key) in values
    if m := _RE_NUM.match(text):
        key, bound, greater = m["key"], int(m["value"]), m["op"] == ">"

        def compare(labels: Mapping[str, Any]) -> bool:
            try:
                number = int(labels[key])
            except (KeyError, ValueError):
                return False
            return number > bound if greater else number < bound

        return compare
    raise SelectorError(f"unable to parse requirement: {text!r}")


def parse_label_selector(text: str | None) -> Predicate | None:
    """A predicate over an object's labels, or None when the selector selects everything."""
    if not text or not text.strip():
        return None
    requirements = [_requirement(part.strip()) for part in _split_top_level(text)]
    if len(requirements) == 1:
        return requirements[0]
    return lambda labels: all(req(labels) for req in requirements)


# Fields the real API server can select on, per kind, beyond metadata.name and metadata.namespace.
_EXTRA_FIELDS: dict[tuple[str, str], frozenset[str]] = {
    ("v1", "Pod"): frozenset(
        {
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    ("v1", "Secret"): frozenset({"type"}),
    ("v1", "Event"): frozenset(
        {
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "type",
        }
    ),
    ("v1", "ReplicationController"): frozenset({"status.replicas"}),
    ("apps/v1", "ReplicaSet"): frozenset({"status.replicas"}),
    ("batch/v1", "Job"): frozenset({"status.successful"}),
    ("v1", "Node"): frozenset({"spec.unschedulable"}),
    ("v1", "Namespace"): frozenset({"status.phase"}),
}


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        # The server's field sets render booleans the way Go's strconv.FormatBool does.
        return "true" if value else "false"
    return str(value)


def parse_field_selector(text: str | None, resource: Resource) -> Predicate | None:
    """A predicate over a whole object, or None when the selector selects everything."""
    if not text or not text.strip():
        return None
    allowed = {"metadata.name", "metadata.namespace"} | _EXTRA_FIELDS.get(
        (resource.api_version, resource.kind), frozenset()
    )
    terms: list[tuple[str, bool, str]] = []
    for raw in text.split(","):
        part = raw.strip()
        for op in ("!=", "==", "="):
            if op in part:
                field, value = (s.strip() for s in part.split(op, 1))
                break
        else:
            raise SelectorError(f"invalid field selector: {part!r}")
        if field not in allowed:
            raise SelectorError(f'field label not supported: "{field}"')
        terms.append((field, op != "!=", value))

    def match(obj: Mapping[str, Any]) -> bool:
        return all((_field_value(obj, field) == value) == equal for field, equal, value in terms)

    return match
