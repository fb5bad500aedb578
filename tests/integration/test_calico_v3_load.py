"""Fixture inputs loaded into a real KubeAPIEmulator: what is stored is what the conversion promised.

Every case of the pack (CONFD_FIXTURE_PACK, default the vendored tests/fixtures/confd) is replayed into a fresh
emulator, file by file as `typha sim-apiserver --load` does; the emulator's contents must equal a model
built by replaying the same conversions in a dict (upsert = replace whole, delete = remove). A second
test reads a converted fixture back over HTTP with the unmodified `kubernetes` client.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from typha.testing.apiserver import server as apiserver
from typha.testing.apiserver.calico_v3 import (
    CRD_V1,
    METADATA_ANNOTATION,
    is_delete_file,
    load_documents,
    load_file,
    standard_block_affinities,
    stored_identity,
    to_kubernetes,
)

from ..fixtures import confd_pack

PACK = confd_pack()

Key = tuple[str, str, str | None, str]


def _cases() -> list[Any]:
    with (PACK / "manifest.yaml").open(encoding="utf-8") as f:
        return [pytest.param(case, id=case["id"]) for case in yaml.safe_load(f)["cases"]]


@pytest.fixture
def api() -> Iterator[Any]:
    with apiserver.KubeAPIEmulator().start() as emulator:
        yield emulator


def _key(obj: dict[str, Any]) -> Key:
    metadata = obj["metadata"]
    return obj["apiVersion"], obj["kind"], metadata.get("namespace"), metadata["name"]


def _comparable(obj: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """What the loader decides, minus the time it ran at (creationTimestamp) and server-owned metadata."""
    metadata = obj["metadata"]
    annotations = dict(metadata.get("annotations") or {})
    if METADATA_ANNOTATION in annotations:
        stored = json.loads(annotations[METADATA_ANNOTATION])
        assert stored.pop("creationTimestamp"), "clientv3 always stamps a creation time"
        annotations[METADATA_ANNOTATION] = stored
    out = {k: obj.get(k) for k in fields if k not in ("metadata", "status")}
    out["labels"] = metadata.get("labels") or {}
    out["annotations"] = annotations
    return out


@pytest.mark.parametrize("case", _cases())
def test_case_inputs_are_stored_as_converted(api, case):
    model: dict[Key, dict[str, Any]] = {}
    if case["standard_block_affinities"]:
        for affinity in standard_block_affinities():
            api.upsert(affinity)
            model[_key(affinity)] = affinity
    for name in case["inputs"]:
        path = PACK / "cases" / case["id"] / name
        docs = load_documents(path)
        for doc in docs:
            api_version, kind, obj_name, namespace = stored_identity(doc)
            key = (api_version, kind, namespace, obj_name)
            if is_delete_file(path):
                assert model.pop(key, None) is not None, f"{path} deletes {key}, which was never applied"
            else:
                model[key] = to_kubernetes(doc)
        assert load_file(api, path) == len(docs)

    stored = {_key(obj): obj for obj in api.objects()}
    assert stored.keys() == model.keys()
    for key, expected in model.items():
        fields = set(expected)
        assert _comparable(stored[key], fields) == _comparable(expected, fields), key


def test_converted_fixture_reads_back_over_http(api, tmp_path):
    import kubernetes
    text = """
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: kube-master
  labels: {route-reflector: yes, node: "yes"}
spec:
  bgp: {ipv4Address: 10.192.0.2/16, asNumber: 64517, routeReflectorClusterID: 224.0.0.1}
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  prefixAdvertisements: [{cidr: 192.168.0.0/16, communities: [5663:12]}]
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: ippool-1}
spec: {cidr: 192.168.0.0/16, natOutgoing: true}
---
kind: Secret
apiVersion: v1
metadata: {name: my-secrets-1, namespace: kube-system}
stringData: {a: password-a}
---
kind: Service
apiVersion: v1
metadata: {name: service-1}
spec: {type: LoadBalancer, clusterIP: 10.101.0.101, ports: [{port: 80, protocol: TCP}]}
status: {loadBalancer: {ingress: [{ip: 80.15.0.1}]}}
"""
    path = tmp_path / "input.yaml"
    path.write_text(text)
    assert load_file(api, path) == 5
    kubeconfig = tmp_path / "kubeconfig"
    api.write_kubeconfig(kubeconfig)
    client = kubernetes.config.new_client_from_config(str(kubeconfig))
    try:
        core = kubernetes.client.CoreV1Api(client)
        node = core.read_node("kube-master")
        assert node.metadata.annotations["projectcalico.org/IPv4Address"] == "10.192.0.2/16"
        assert node.metadata.annotations["projectcalico.org/ASNumber"] == "64517"
        assert node.metadata.annotations["projectcalico.org/RouteReflectorClusterID"] == "224.0.0.1"
        assert json.loads(node.metadata.annotations["projectcalico.org/labels"]) == {
            "node": "yes",
            "route-reflector": "true",
        }
        secret = core.read_namespaced_secret("my-secrets-1", "kube-system")
        assert base64.b64decode(secret.data["a"]) == b"password-a"
        service = core.read_namespaced_service("service-1", "default")
        assert not (service.status and service.status.load_balancer and service.status.load_balancer.ingress)

        custom = kubernetes.client.CustomObjectsApi(client)
        group, version = CRD_V1.split("/")
        pool = custom.get_cluster_custom_object(group, version, "ippools", "ippool-1")
        assert pool["spec"]["blockSize"] == 26
        assert pool["spec"]["nodeSelector"] == "all()"
        config = custom.get_cluster_custom_object(group, version, "bgpconfigurations", "default")
        assert config["spec"]["prefixAdvertisements"][0]["communities"] == ["5663:12"]
        assert "creationTimestamp" in json.loads(config["metadata"]["annotations"][METADATA_ANNOTATION])
    finally:
        client.close()
