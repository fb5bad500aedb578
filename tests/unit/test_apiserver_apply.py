"""Server-side apply's merge and field ownership (typha/testing/apiserver/apply.py)."""

from __future__ import annotations

import pytest

from typha.testing.apiserver.apply import ApplyConflict, apply, field_set

CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}},
      "data": {"x": "1", "y": "2"}}


def test_field_set_is_fieldsv1_without_identity() -> None:
    assert field_set(CM) == {"f:metadata": {"f:labels": {"f:a": {}}}, "f:data": {"f:x": {}, "f:y": {}}}


def test_create_then_reapply_drops_what_the_manager_stopped_applying() -> None:
    first = apply(None, CM, "kubectl", "v1", force=False)
    assert first["data"] == {"x": "1", "y": "2"}
    assert [(m["manager"], m["operation"]) for m in first["metadata"]["managedFields"]] == [("kubectl", "Apply")]
    second = apply(first, {**CM, "data": {"x": "1"}}, "kubectl", "v1", force=False)
    assert second["data"] == {"x": "1"}
    assert second["metadata"]["labels"] == {"a": "1"}


def test_fields_of_other_writers_are_kept() -> None:
    live = {**CM, "data": {"x": "1", "z": "from-an-update"}}
    merged = apply(live, {**CM, "data": {"x": "2"}}, "kubectl", "v1", force=False)
    assert merged["data"] == {"x": "2", "z": "from-an-update"}


def test_conflict_between_managers_and_force() -> None:
    mine = apply(None, CM, "kubectl", "v1", force=False)
    other = {**CM, "data": {"x": "9"}}
    with pytest.raises(ApplyConflict) as err:
        apply(mine, other, "other", "v1", force=False)
    assert err.value.conflicts == [("kubectl", ".data.x")]
    same_value = apply(mine, {**CM, "data": {"x": "1"}}, "other", "v1", force=False)
    assert same_value["data"]["x"] == "1", "applying the same value is shared ownership, no conflict"
    forced = apply(mine, other, "other", "v1", force=True)
    assert forced["data"]["x"] == "9"
    owners = {m["manager"]: m["fieldsV1"] for m in forced["metadata"]["managedFields"]}
    assert "f:x" not in owners["kubectl"]["f:data"] and "f:x" in owners["other"]["f:data"]
