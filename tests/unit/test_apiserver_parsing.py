"""The emulator's selector parsing and patch application, without a server."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from typha.model.resources import by_key
from typha.testing.apiserver.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from typha.testing.apiserver.registry import Registry
from typha.testing.apiserver.selectors import SelectorError, parse_field_selector, parse_label_selector

PODS = by_key("pods")
LABELS = [{}, {"app": "web"}, {"app": "db", "tier": "back"}, {"app": "web", "tier": "front"}, {"n": "7"}]


def selected(selector: str) -> list[int]:
    predicate = parse_label_selector(selector)
    assert predicate is not None
    return [i for i, labels in enumerate(LABELS) if predicate(labels)]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", [1, 3]),
        ("app = web", [1, 3]),
        ("app==web", [1, 3]),
        ("app!=web", [0, 2, 4]),
        ("app in (web,db)", [1, 2, 3]),
        ("app in ( web , db )", [1, 2, 3]),
        ("app notin (web)", [0, 2, 4]),
        ("app", [1, 2, 3]),
        ("!app", [0, 4]),
        ("! app", [0, 4]),
        ("app=web,tier", [3]),
        ("app in (web,db),tier notin (back)", [1, 3]),
        ("n>5", [4]),
        ("n<5", []),
        ("example.com/role", []),
        ("app=", []),
        ("app==", []),
    ],
)
def test_label_selector_operators(selector: str, expected: list[int]) -> None:
    assert selected(selector) == expected


@pytest.mark.parametrize("selector", ["app in (web", "app in web", "=web", "a b", "app=we b", "app)", "x=-a"])
def test_bad_label_selectors_are_rejected(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


@pytest.mark.parametrize("selector", [None, "", "   "])
def test_empty_selectors_select_everything(selector: str | None) -> None:
    assert parse_label_selector(selector) is None
    assert parse_field_selector(selector, PODS) is None


def test_field_selectors_on_pods() -> None:
    pod = {"metadata": {"name": "a", "namespace": "ns"}, "spec": {"nodeName": "n1", "hostNetwork": True},
           "status": {"phase": "Running"}}
    assert parse_field_selector("spec.nodeName=n1", PODS)(pod)  # type: ignore[misc]
    assert not parse_field_selector("spec.nodeName!=n1", PODS)(pod)  # type: ignore[misc]
    assert parse_field_selector("metadata.namespace==ns,metadata.name=a", PODS)(pod)  # type: ignore[misc]
    assert parse_field_selector("spec.hostNetwork=true,status.phase=Running", PODS)(pod)  # type: ignore[misc]
    assert parse_field_selector("spec.nodeName=", PODS)({"metadata": {"name": "b"}, "spec": {}})  # type: ignore[misc]
    with pytest.raises(SelectorError, match="not supported"):
        parse_field_selector("spec.nodeName=n1", by_key("nodes"))
    with pytest.raises(SelectorError):
        parse_field_selector("spec.nodeName", PODS)


def test_merge_patch_rfc7386_examples() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2]}
    patch = {"a": "z", "c": {"f": None}, "list": [3], "new": {"x": None, "y": 1}}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}, "list": [3], "new": {"y": 1}}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2]}, "the target is not modified"
    assert merge_patch({"a": 1}, ["x"]) == ["x"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=3), json_values, max_size=4),
       st.dictionaries(st.text(max_size=3), json_values, max_size=4))
def test_merge_patch_is_idempotent(target: dict[str, Any], patch: dict[str, Any]) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


def test_strategic_merge_merges_named_lists_and_honours_directives() -> None:
    pod = {"spec": {"containers": [{"name": "app", "image": "v1", "ports": [{"containerPort": 80}]},
                                   {"name": "side", "image": "s1"}],
                    "finalizers": ["a", "b"], "tolerations": [{"key": "x"}]}}
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
            "containers": [{"name": "app", "image": "v2"}, {"name": "side", "$patch": "delete"},
                           {"name": "new", "image": "n1"}],
            "$deleteFromPrimitiveList/finalizers": ["a"],
            "tolerations": [{"key": "y"}],
        }
    }
    assert strategic_merge_patch(pod, patch) == {
        "spec": {
            "containers": [{"name": "app", "image": "v2", "ports": [{"containerPort": 80}]},
                           {"name": "new", "image": "n1"}],
            "finalizers": ["b"],
            "tolerations": [{"key": "y"}],
        }
    }
    assert strategic_merge_patch({"spec": {"a": 1, "b": 2}}, {"spec": {"$patch": "replace", "c": 3}}) == {
        "spec": {"c": 3}
    }
    assert strategic_merge_patch({"spec": {"a": 1}, "x": 2}, {"spec": {"$patch": "delete"}}) == {"x": 2}


def test_json_patch_operations() -> None:
    doc = {"metadata": {"labels": {"a/b": "1"}}, "list": [1, 2, 3]}
    ops = [
        {"op": "add", "path": "/list/-", "value": 4},
        {"op": "add", "path": "/list/0", "value": 0},
        {"op": "remove", "path": "/list/1"},
        {"op": "replace", "path": "/metadata/labels/a~1b", "value": "2"},
        {"op": "copy", "from": "/metadata/labels", "path": "/copied"},
        {"op": "move", "from": "/copied", "path": "/moved"},
        {"op": "test", "path": "/moved/a~1b", "value": "2"},
    ]
    assert json_patch(doc, ops) == {"metadata": {"labels": {"a/b": "2"}}, "list": [0, 2, 3, 4],
                                    "moved": {"a/b": "2"}}
    assert doc["list"] == [1, 2, 3], "the target is not modified"


@pytest.mark.parametrize(
    "ops",
    [
        {"op": "add"},
        [{"op": "test", "path": "/a", "value": 2}],
        [{"op": "remove", "path": "/missing"}],
        [{"op": "replace", "path": "/missing", "value": 1}],
        [{"op": "add", "path": "/list/9", "value": 1}],
        [{"op": "frobnicate", "path": "/a"}],
        [{"op": "add", "path": "no-slash", "value": 1}],
    ],
)
def test_json_patch_errors(ops: Any) -> None:
    with pytest.raises(PatchError):
        json_patch({"a": 1, "list": []}, ops)


def test_field_selectors_of_the_generic_kinds() -> None:
    registry = Registry("none")
    events = registry.by_kind("v1", "Event")
    jobs = registry.by_kind("batch/v1", "Job")
    assert events is not None and jobs is not None
    match = parse_field_selector("involvedObject.kind=Pod,involvedObject.name=web,type!=Normal", events)
    assert match is not None
    assert match({"metadata": {}, "involvedObject": {"kind": "Pod", "name": "web"}, "type": "Warning"})
    assert not match({"metadata": {}, "involvedObject": {"kind": "Pod", "name": "web"}, "type": "Normal"})
    done = parse_field_selector("status.successful=1", jobs)
    assert done is not None and done({"metadata": {}, "status": {"successful": 1}})
    with pytest.raises(SelectorError, match=r'field label not supported: "spec\.parallelism"'):
        parse_field_selector("spec.parallelism=1", jobs)
