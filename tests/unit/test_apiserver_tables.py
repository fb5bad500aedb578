"""Server-side printing for kubectl: Accept negotiation, AGE formatting and per-kind columns."""

from __future__ import annotations

import time

import pytest

from typha.model.resources import Resource, by_key
from typha.testing.apiserver.tables import human_duration, table, wants_table


def test_only_a_table_first_accept_header_gets_a_table() -> None:
    kubectl = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;"
               "g=meta.k8s.io,application/json")
    assert wants_table(kubectl)
    assert not wants_table("application/json")
    assert not wants_table("")
    assert not wants_table("application/json, application/json;as=Table;v=v1;g=meta.k8s.io")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-5, "<invalid>"), (-1, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (125, "2m5s"), (600, "10m"),
     (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"), (8 * 3600, "8h"), (48 * 3600, "2d"), (50 * 3600, "2d2h"),
     (10 * 86400, "10d"), (800 * 86400, "2y70d"), (9 * 365 * 86400, "9y")],
)
def test_human_duration_matches_apimachinery(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_pod_row_cells_and_row_objects() -> None:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    pod = {
        "metadata": {"name": "web", "namespace": "ns", "creationTimestamp": created, "labels": {"a": "b"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.5",
                   "containerStatuses": [{"ready": True, "restartCount": 2}, {"ready": False, "restartCount": 1}]},
    }
    doc = table(by_key("pods"), [pod], {"resourceVersion": "7"})
    assert (doc["kind"], doc["apiVersion"], doc["metadata"]) == ("Table", "meta.k8s.io/v1", {"resourceVersion": "7"})
    assert [c["name"] for c in doc["columnDefinitions"]] == ["Name", "Ready", "Status", "Restarts", "Age", "IP",
                                                              "Node"]
    (row,) = doc["rows"]
    assert row["cells"] == ["web", "1/2", "Running", "3", "60m", "10.0.0.5", "n1"]
    assert row["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": pod["metadata"]}
    assert table(by_key("pods"), [pod], {}, "Object")["rows"][0]["object"] is pod
    assert "object" not in table(by_key("pods"), [pod], {}, "None")["rows"][0]


def test_node_namespace_and_custom_resource_columns() -> None:
    node = {"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "192.168.0.1"}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0"}}}
    cells = table(by_key("nodes"), [node], {})["rows"][0]["cells"]
    assert cells[:3] == ["n1", "Ready,SchedulingDisabled", "control-plane"]
    assert cells[4:] == ["v1.32.0", "192.168.0.1"]
    assert table(by_key("namespaces"), [{"metadata": {"name": "x"}}], {})["rows"][0]["cells"][:2] == ["x", "Active"]
    pool = {"metadata": {"name": "p", "creationTimestamp": "2024-01-01T00:00:00Z"}}
    doc = table(by_key("ippools.crd.projectcalico.org"), [pool], {})
    assert [c["name"] for c in doc["columnDefinitions"]] == ["Name", "Created At"]
    assert doc["rows"][0]["cells"] == ["p", "2024-01-01T00:00:00Z"]
    assert table(by_key("services"), [pool], {})["rows"][0]["cells"][0] == "p"


def test_crd_printer_columns() -> None:
    tiers = Resource("projectcalico.org", "v3", "tiers", "Tier", False)
    columns = (
        {"name": "Order", "type": "integer", "jsonPath": ".spec.order"},
        {"name": "Nets", "type": "string", "jsonPath": ".spec.nets"},
        {"name": "Status", "type": "string", "jsonPath": ".status.conditions[?(@.type=='Ready')].reason"},
    )
    obj = {"metadata": {"name": "t"}, "spec": {"order": 100, "nets": ["10.0.0.0/8"]},
           "status": {"conditions": [{"type": "Other", "reason": "x"}, {"type": "Ready", "reason": "Ready"}]}}
    out = table(tiers, [obj, {"metadata": {"name": "bare"}}], {}, "None", columns)
    assert [c["name"] for c in out["columnDefinitions"]] == ["Name", "Order", "Nets", "Status"]
    assert [r["cells"] for r in out["rows"]] == [["t", 100, '["10.0.0.0/8"]', "Ready"], ["bare", None, None, None]]
    assert [c["name"] for c in table(tiers, [], {})["columnDefinitions"]] == ["Name", "Created At"]
