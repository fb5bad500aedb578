"""Every input file of every case in a confd fixture pack loads and converts.

Data-driven from the pack's manifest.yaml, so any pack with the same layout runs unchanged:
CONFD_FIXTURE_PACK names the pack directory; the default is the vendored tests/fixtures/confd.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from typha.model.resources import for_object
from typha.testing.apiserver.calico_v3 import (
    CALICO_V3,
    LABELS_ANNOTATION,
    is_delete_file,
    load_documents,
    stored_identity,
    to_kubernetes,
)

from ..fixtures import confd_pack

PACK = confd_pack()


def _cases() -> list[Any]:
    with (PACK / "manifest.yaml").open(encoding="utf-8") as f:
        cases = yaml.safe_load(f)["cases"]
    return [pytest.param(case, id=case["id"]) for case in cases]


COMMUNITY = re.compile(r"^\d+:\d+(:\d+)?$")


def _check_communities(spec: dict[str, Any]) -> None:
    """BGP communities are `a:b` or `a:b:c` literals or names of defined ones; never base-60 numbers."""
    names = set()
    for community in spec.get("communities") or []:
        assert COMMUNITY.match(community["value"]), community
        names.add(community["name"])
    for advertisement in spec.get("prefixAdvertisements") or []:
        for value in advertisement.get("communities") or []:
            assert value in names or COMMUNITY.match(value), advertisement


def _all_strings(mapping: Any) -> bool:
    return isinstance(mapping, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())


@pytest.mark.parametrize("case", _cases())
def test_every_input_of_the_case_loads_and_converts(case):
    assert case["inputs"], "the manifest promises at least input.yaml"
    for name in case["inputs"]:
        path = PACK / "cases" / case["id"] / name
        docs = load_documents(path)
        assert docs, f"{path} has no documents"
        for doc in docs:
            api_version, kind, obj_name, namespace = stored_identity(doc)
            # The stored kind is one the emulator serves, and scoped as it expects.
            resource = for_object(api_version, kind)
            assert (namespace is not None) == resource.namespaced, (path, doc)
            if is_delete_file(path):
                continue
            obj = to_kubernetes(doc)
            assert (obj["apiVersion"], obj["kind"], obj["metadata"]["name"]) == (api_version, kind, obj_name)
            assert obj["metadata"].get("namespace") == namespace
            # Kubernetes holds labels and annotations as string maps; a bool or int here means a
            # string field was not rendered the Go way.
            for field in ("labels", "annotations"):
                assert field not in obj["metadata"] or _all_strings(obj["metadata"][field]), (path, obj)
            if doc["apiVersion"] == CALICO_V3 and kind == "Node":
                labels = json.loads(obj["metadata"].get("annotations", {}).get(LABELS_ANNOTATION, "{}"))
                assert _all_strings(labels)
                assert labels.items() <= (doc["metadata"].get("labels") or {}).items()
            if kind == "BGPConfiguration":
                _check_communities(obj["spec"])
            if kind == "Service":
                assert "status" not in obj
