"""Typha discovery against the API emulator over HTTP, with the kubeconfig a node agent would use."""

from __future__ import annotations

import pytest

from typha.client.discovery import DiscoveryError, TyphaDiscovery
from typha.testing import objects


def _slice(name: str, namespace: str, service: str, endpoints: list[dict]) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "calico-typha", "port": 5473, "protocol": "TCP"}],
    }


def test_discovers_ready_typhas_of_the_service_own_node_first(emulator, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    emulator.write_kubeconfig(kubeconfig)
    emulator.upsert(objects.namespace("kube-system", {}))
    emulator.upsert(_slice("calico-typha-x1", "kube-system", "calico-typha", [
        {"addresses": ["10.0.0.1"], "nodeName": "node-1", "conditions": {"ready": True}},
        {"addresses": ["10.0.0.2"], "nodeName": "node-2", "conditions": {"ready": True}},
        {"addresses": ["10.0.0.9"], "nodeName": "node-9", "conditions": {"ready": False}},
    ]))
    emulator.upsert(_slice("calico-typha-x2", "kube-system", "calico-typha", [
        {"addresses": ["10.0.0.3"], "nodeName": "node-3", "conditions": {"ready": True}},
    ]))
    emulator.upsert(_slice("other-y1", "kube-system", "other", [{"addresses": ["10.0.0.4"], "nodeName": "node-2"}]))

    env = {"KUBECONFIG": str(kubeconfig), "FELIX_TYPHAK8SSERVICENAME": "calico-typha"}
    found = TyphaDiscovery.from_env(env, ("FELIX_",), node="node-2").addresses()
    assert found[0] == "10.0.0.2:5473"
    assert sorted(found) == ["10.0.0.1:5473", "10.0.0.2:5473", "10.0.0.3:5473"]

    wrong_namespace = {**env, "FELIX_TYPHAK8SNAMESPACE": "calico-system"}
    with pytest.raises(DiscoveryError, match="no ready Typha endpoints in service calico-system/calico-typha"):
        TyphaDiscovery.from_env(wrong_namespace, ("FELIX_",), node="node-2").addresses()

    emulator.fail_next(1, 500)
    with pytest.raises(DiscoveryError, match="cannot list EndpointSlices"):
        TyphaDiscovery.from_env(env, ("FELIX_",), node="node-2").addresses()
