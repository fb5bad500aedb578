"""Which resources the emulator serves: presets, and CRDs registering and unregistering theirs."""

from __future__ import annotations

import copy

import pytest

from typha.model.resources import BY_KEY
from typha.testing.apiserver.registry import CrdError, Registry, crd_resources, is_custom

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
             "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}}},
                          {"name": "v2", "served": True, "storage": False}]},
}


def test_presets() -> None:
    served = Registry("calico-v1").by_kind("crd.projectcalico.org/v1", "IPPool")
    assert served is BY_KEY["ippools.crd.projectcalico.org"], "the model's instance: test code and emulator agree"
    none = Registry("none")
    assert none.by_kind("crd.projectcalico.org/v1", "IPPool") is None
    assert none.by_kind("apps/v1", "DaemonSet") is not None
    assert not [r for r in none.resources() if is_custom(r)]
    with pytest.raises(ValueError, match="unknown CRD preset"):
        Registry("calico-v2")


def test_crd_versions_register_and_unregister() -> None:
    registry = Registry("none")
    generation = registry.generation
    assert registry.register_crd(CRD) == []
    assert registry.generation > generation
    v1 = registry.by_path("example.com/v1", "widgets")
    assert v1 is not None and v1.status and v1.categories == ("all",) and v1.resource.short_names == ("wd",)
    assert registry.by_kind("example.com/v2", "Widget") is not None

    only_v1 = copy.deepcopy(CRD)
    only_v1["spec"]["versions"][1]["served"] = False
    dropped = registry.register_crd(only_v1)
    assert [r.api_version for r in dropped] == ["example.com/v2"], "a version no longer served is dropped"
    assert registry.by_kind("example.com/v2", "Widget") is None

    assert [r.key for r in registry.unregister_crd("widgets.example.com")] == ["widgets.example.com"]
    assert registry.by_path("example.com/v1", "widgets") is None


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["metadata"].update(name="gadgets.example.com"), 'must be spec.names.plural+"."+spec.group'),
    (lambda c: c["spec"].update(scope="Global"), 'spec.scope: Unsupported value: "Global"'),
    (lambda c: c["spec"]["names"].pop("kind"), "spec.names.kind are required"),
])
def test_bad_crds(change, message: str) -> None:
    bad = copy.deepcopy(CRD)
    change(bad)
    with pytest.raises(CrdError, match=message.replace("+", r"\+").replace(".", r"\.")):
        crd_resources(bad)


def test_a_crd_cannot_take_over_a_built_in_resource() -> None:
    clash = copy.deepcopy(CRD)
    clash["metadata"]["name"] = "deployments.apps"
    clash["spec"].update(group="apps", names={"plural": "deployments", "kind": "Deployment"})
    with pytest.raises(CrdError, match="already served"):
        Registry("none").register_crd(clash)
