"""The emulator's Kubernetes protobuf: committed modules match the vendored .proto, and the codec."""

from __future__ import annotations

from pathlib import Path

import pytest

from typha.testing.apiserver.k8sproto import codec
from typha.testing.apiserver.k8sproto.generate import HERE, OUTPUTS, generate


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    generate(tmp_path)
    for name in OUTPUTS:
        assert (tmp_path / name).read_text() == (HERE / name).read_text(), (
            f"k8sproto/{name} is stale: run python -m typha.testing.apiserver.k8sproto.generate and commit it"
        )


GENERATOR_OBJECTS = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps", "labels": {"team": "a"}}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "apps"},
     "data": {"a": "b"}, "immutable": False},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "apps"},
     "data": {"password": "aHVudGVyMg=="}, "type": "Opaque"},
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot", "namespace": "apps"},
     "automountServiceAccountToken": False},
    {"apiVersion": "apps/v1", "kind": "Deployment",
     "metadata": {"name": "web", "namespace": "apps", "creationTimestamp": "2026-01-02T03:04:05Z"},
     "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
              "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
              "template": {"metadata": {"labels": {"app": "web"}},
                           "spec": {"containers": [{"name": "nginx", "image": "nginx",
                                                    "ports": [{"containerPort": 80}],
                                                    "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}}]}}}},
]


@pytest.mark.parametrize("obj", GENERATOR_OBJECTS, ids=lambda o: o["kind"])
def test_round_trip_keeps_what_json_holds(obj: dict) -> None:
    encoded = codec.encode(obj)
    assert encoded is not None and encoded.startswith(codec.MAGIC)
    assert codec.decode(encoded) == obj, "zero-valued pointer fields (replicas: 0, false flags) are kept"


def test_zero_plain_fields_are_dropped_as_omitempty_does() -> None:
    port = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 0}]}]}}
    decoded = codec.decode(codec.encode(port) or b"")
    assert decoded["spec"]["containers"][0]["ports"] == [{"containerPort": 80}]


def test_kinds_without_a_schema_are_not_encoded() -> None:
    assert codec.encode({"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "metadata": {}}) is None
    assert ("v1", "Namespace") in codec.supported_kinds()
    assert ("apps/v1", "Deployment") in codec.supported_kinds()


@pytest.mark.parametrize(("body", "message"), [
    (b"{}", "does not start with the protobuf magic number"),
    (codec.MAGIC + b"\xff\xff\xff", "unknown format"),
    (codec.MAGIC + b"\x0a\x0a\x0a\x02v1\x12\x04Nope", "no kind 'Nope' is registered for version 'v1'"),
])
def test_undecodable_bodies_raise_proto_error(body: bytes, message: str) -> None:
    with pytest.raises(codec.ProtoError, match=message):
        codec.decode(body)


def test_accept_prefers_protobuf_only_when_it_comes_first() -> None:
    assert codec.wants_protobuf("application/vnd.kubernetes.protobuf,application/json")
    assert not codec.wants_protobuf("application/json, application/vnd.kubernetes.protobuf")
    assert not codec.wants_protobuf("")
