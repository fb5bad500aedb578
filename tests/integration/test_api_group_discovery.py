"""The Calico API group is discovered from a real API server (the emulator) over HTTP.

The emulator serves Calico's crd.projectcalico.org/v1 CRDs and not projectcalico.org/v3, so
libcalico-go's rule picks v1; the Datastore's reflectors then watch the v1 resources.
"""

from __future__ import annotations

from typing import Any

import pytest

from typha.kube.client import KubeClient
from typha.model.kv import SyncStatus, Update
from typha.model.resources import CALICO_API_V1
from typha.source.datastore import Datastore, Syncer, calico_api_group


class _Ignore:
    def on_updates(self, updates: list[Update]) -> None:
        pass

    def on_status(self, status: SyncStatus) -> None:
        pass


class _NoReflector:
    def __init__(self, client: Any, resource: Any, sink: Any, **options: Any) -> None:
        self.resource = resource


def test_emulator_groups_are_discovered(kube: KubeClient) -> None:
    groups = kube.api_group_names()
    assert "crd.projectcalico.org" in groups
    assert "projectcalico.org" not in groups
    assert calico_api_group(kube) == CALICO_API_V1


def test_datastore_reads_v1_from_the_emulator(kube: KubeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALICO_API_GROUP", raising=False)
    datastore = Datastore(kube, [Syncer("bgp", _Ignore())], reflector_factory=_NoReflector)  # type: ignore[arg-type]
    assert datastore.api_group == CALICO_API_V1
    assert "ippools.crd.projectcalico.org" in {r.resource.key for r in datastore.reflectors}
