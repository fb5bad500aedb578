"""Calico's kinds read from crd.projectcalico.org/v1 or projectcalico.org/v3 CRDs give the same KVs.

Every case of the confd fixture pack (CONFD_FIXTURE_PACK, default: the developers' pack next to the
repo) is loaded twice: as libcalico-go stores it in a crd.projectcalico.org/v1 cluster (the
emulator's `to_kubernetes`) and as it stores it with native projectcalico.org/v3 CRDs (the v3
resource itself: its own metadata, its v3 name, the same spec). After every input file the KV sets
both syncers produce from the two stores must be identical.

This runs through the syncers' conversion (`convert_objects`, the same `Syncer` the daemon runs),
not through the API emulator, which serves only the v1 CRDs until CRDs can be installed in it.
Also here: the group decision itself (libcalico-go's UsingV3CRDs) and the v3-only differences.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from typha.kube.reflector import Event, EventType
from typha.model import keys
from typha.model.resources import CALICO_API_V1, CALICO_API_V3, by_key, calico_resource
from typha.source.datastore import Datastore, Syncer, calico_api_group, convert_objects
from typha.testing.apiserver.calico_v3 import (
    CALICO_V3,
    CRD_V1,
    METADATA_ANNOTATION,
    is_delete_file,
    load_documents,
    standard_block_affinities,
    stored_identity,
    to_kubernetes,
)
from typha.testing.mirror import KVMirror

from ..fixtures import confd_pack

REPO = Path(__file__).resolve().parents[2]
PACK = confd_pack()
NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
SYNCERS = ("felix", "bgp")


def _cases() -> list[Any]:
    with (PACK / "manifest.yaml").open(encoding="utf-8") as f:
        cases = yaml.safe_load(f)["cases"]
    return [pytest.param(case, id=case["id"]) for case in cases]


def as_v3_crd(v1: dict[str, Any]) -> dict[str, Any]:
    """The object a projectcalico.org/v3 cluster holds where a v1 cluster holds `v1`.

    libcalico-go stores the v3 resource as it is: the metadata the v1 form keeps in its
    `projectcalico.org/metadata` annotation is the object's own, the name is the v3 name (no
    `default.` tier prefix), the spec is the same but for BlockAffinity's `deleted`, a bool in v3.
    """
    if v1["apiVersion"] != CRD_V1:
        return v1  # Kubernetes kinds (and Calico's Node, which is the Kubernetes Node) are shared
    md = v1["metadata"]
    stored = json.loads((md.get("annotations") or {}).get(METADATA_ANNOTATION) or "{}")
    meta: dict[str, Any] = {"name": stored.get("name") or md["name"]}
    if md.get("namespace"):
        meta["namespace"] = md["namespace"]
    for field in ("labels", "annotations"):
        if stored.get(field):
            meta[field] = stored[field]
    meta["creationTimestamp"] = stored.get("creationTimestamp")
    spec = dict(v1.get("spec") or {})
    if v1["kind"] == "BlockAffinity" and isinstance(spec.get("deleted"), str):
        spec["deleted"] = spec["deleted"] == "true"
    return {"apiVersion": CALICO_V3, "kind": v1["kind"], "metadata": meta, "spec": spec}


def _identity(obj: dict[str, Any]) -> tuple[str, str, str, str | None]:
    md = obj["metadata"]
    return obj["apiVersion"], obj["kind"], md["name"], md.get("namespace")


class Store:
    """One cluster's objects, replaced whole on upsert, as the emulator keeps them."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str | None], dict[str, Any]] = {}

    def upsert(self, obj: dict[str, Any]) -> None:
        self.objects[_identity(obj)] = obj

    def delete(self, identity: tuple[str, str, str, str | None]) -> None:
        self.objects.pop(identity, None)


def _v3_identity(doc: dict[str, Any]) -> tuple[str, str, str, str | None]:
    api_version, kind, name, namespace = stored_identity(doc)
    if api_version != CRD_V1:
        return api_version, kind, name, namespace
    return CALICO_V3, kind, str(doc["metadata"]["name"]), namespace


@pytest.mark.parametrize("case", _cases())
def test_v1_and_v3_crds_give_identical_kvs(case: dict[str, Any]) -> None:
    v1_store, v3_store = Store(), Store()
    if case.get("standard_block_affinities"):
        for affinity in standard_block_affinities():
            v1_store.upsert(affinity)
            v3_store.upsert(as_v3_crd(affinity))
    checked = 0
    for name in case["inputs"]:
        path = PACK / "cases" / case["id"] / name
        for doc in load_documents(path):
            if is_delete_file(path):
                v1_store.delete(stored_identity(doc))
                v3_store.delete(_v3_identity(doc))
                continue
            stored = to_kubernetes(doc, now=NOW)
            v1_store.upsert(stored)
            v3_store.upsert(as_v3_crd(stored))
        for syncer in SYNCERS:
            from_v1 = convert_objects(syncer, v1_store.objects.values(), CALICO_API_V1)
            from_v3 = convert_objects(syncer, v3_store.objects.values(), CALICO_API_V3)
            assert from_v3 == from_v1, (case["id"], name, syncer)
            checked += len(from_v1)
    # The comparison is over real content: every case holds Calico objects the bgp syncer reads.
    assert checked > 0


def test_v3_objects_are_read_only_from_the_v3_group() -> None:
    pool = {
        "apiVersion": CALICO_V3,
        "kind": "IPPool",
        "metadata": {"name": "p"},
        "spec": {"cidr": "10.1.0.0/16"},
    }
    v1_pool = {**pool, "apiVersion": CRD_V1}
    assert convert_objects("bgp", [pool], CALICO_API_V1) == {}
    assert convert_objects("bgp", [v1_pool], CALICO_API_V3) == {}
    assert convert_objects("bgp", [pool], CALICO_API_V3) == convert_objects("bgp", [v1_pool], CALICO_API_V1) != {}


def test_v3_policy_names_carry_no_default_prefix() -> None:
    v1 = {
        "apiVersion": CRD_V1,
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "default.deny-all"},
        "spec": {"selector": "all()", "types": ["Ingress"]},
    }
    v3 = {**v1, "apiVersion": CALICO_V3, "metadata": {"name": "deny-all"}}
    want = {keys.policy_path("GlobalNetworkPolicy", "", "deny-all")}
    assert set(convert_objects("felix", [v1], CALICO_API_V1)) == want
    assert set(convert_objects("felix", [v3], CALICO_API_V3)) == want
    # In v3 the name is the name: a v3 policy called default.x keeps it.
    named = {**v3, "metadata": {"name": "default.x"}}
    kept = keys.policy_path("GlobalNetworkPolicy", "", "default.x")
    assert set(convert_objects("felix", [named], CALICO_API_V3)) == {kept}


def test_v3_objects_do_not_read_the_metadata_annotation() -> None:
    # libcalico-go uses a v3 object as it is: an annotation that looks like v1's stored metadata is
    # just an annotation there.
    annotation = json.dumps({"labels": {"from": "annotation"}})
    v3 = {
        "apiVersion": CALICO_V3,
        "kind": "GlobalNetworkSet",
        "metadata": {"name": "s", "labels": {"own": "x"}, "annotations": {METADATA_ANNOTATION: annotation}},
        "spec": {"nets": ["10.0.0.0/8"]},
    }
    ((_, value),) = convert_objects("felix", [v3], CALICO_API_V3).items()
    assert value["labels"] == {"own": "x"}
    v1 = {**v3, "apiVersion": CRD_V1}
    ((_, value),) = convert_objects("felix", [v1], CALICO_API_V1).items()
    assert value["labels"] == {"from": "annotation"}


class FakeDiscovery:
    def __init__(self, groups: list[str] | Exception) -> None:
        self.groups = groups
        self.calls = 0

    def api_group_names(self) -> list[str]:
        self.calls += 1
        if isinstance(self.groups, Exception):
            raise self.groups
        return list(self.groups)


@pytest.mark.parametrize(
    ("configured", "groups", "want"),
    [
        # An explicit setting wins, case folded, and discovery is not asked.
        ("projectcalico.org/v3", ["crd.projectcalico.org"], CALICO_API_V3),
        ("ProjectCalico.org/V3", [], CALICO_API_V3),
        ("crd.projectcalico.org/v1", ["projectcalico.org"], CALICO_API_V1),
        ("something-else", ["projectcalico.org"], CALICO_API_V1),
        # Discovery: v3 only when projectcalico.org is served and crd.projectcalico.org is not.
        ("", ["projectcalico.org", "apps"], CALICO_API_V3),
        ("", ["projectcalico.org", "crd.projectcalico.org"], CALICO_API_V1),
        ("", ["crd.projectcalico.org"], CALICO_API_V1),
        ("", [], CALICO_API_V1),
        (None, ["projectcalico.org"], CALICO_API_V3),
        # An API server that cannot be asked means v1.
        (None, OSError("connection refused"), CALICO_API_V1),
    ],
)
def test_calico_api_group_decides_as_libcalico_go(configured: str | None, groups: Any, want: str) -> None:
    client = FakeDiscovery(groups)
    assert calico_api_group(client, configured) == want
    assert client.calls == (0 if configured else 1)


class _NoReflector:
    def __init__(self, client: Any, resource: Any, sink: Any, **options: Any) -> None:
        self.resource = resource


def test_datastore_chooses_the_group_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALICO_API_GROUP", raising=False)
    client = FakeDiscovery(["projectcalico.org", "discovery.k8s.io"])
    syncer = Syncer("bgp", KVMirror())
    datastore = Datastore(client, [syncer], reflector_factory=_NoReflector)  # type: ignore[arg-type]
    assert datastore.api_group == CALICO_API_V3
    watched = {r.resource.key for r in datastore.reflectors}
    assert "ippools.projectcalico.org" in watched
    assert not any(key.endswith(".crd.projectcalico.org") for key in watched)
    # The syncer converts what those reflectors deliver.
    pool = {"apiVersion": CALICO_V3, "kind": "IPPool", "metadata": {"name": "p"}, "spec": {"cidr": "10.2.0.0/16"}}
    syncer.on_events(by_key("ippools.projectcalico.org"), [Event(EventType.SET, pool)])
    assert "/calico/v1/ipam/v4/pool/10.2.0.0-16" in syncer.callbacks.kvs  # type: ignore[attr-defined]


def test_datastore_honours_calico_api_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALICO_API_GROUP", "crd.projectcalico.org/v1")
    client = FakeDiscovery(["projectcalico.org"])
    datastore = Datastore(client, [Syncer("felix", KVMirror())], reflector_factory=_NoReflector)  # type: ignore[arg-type]
    assert datastore.api_group == CALICO_API_V1
    assert client.calls == 0


def test_every_calico_kind_has_a_v3_twin() -> None:
    for key in ("ippools", "globalnetworkpolicies", "networkpolicies", "blockaffinities", "tiers"):
        twin = calico_resource(f"{key}.crd.projectcalico.org", CALICO_API_V3)
        assert twin.api_version == "projectcalico.org/v3"
        assert twin.plural == key
        assert twin.namespaced == by_key(f"{key}.crd.projectcalico.org").namespaced
    assert calico_resource("ipamconfigs.crd.projectcalico.org", CALICO_API_V3).kind == "IPAMConfiguration"
    assert calico_resource("pods", CALICO_API_V3).key == "pods"
    with pytest.raises(ValueError, match="unknown Calico API group"):
        calico_resource("pods", "example.org/v1")
