"""The emulator's generic storage, CRD registration, namespace lifecycle and protobuf bodies, over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kubernetes import client, config, watch

from typha.testing.apiserver.k8sproto import codec
from typha.testing.apiserver.server import KubeAPIEmulator


@pytest.fixture
def api() -> Iterator[KubeAPIEmulator]:
    with KubeAPIEmulator(crds="none", cluster=True, history_limit=50).start() as emulator:
        yield emulator


@pytest.fixture
def kube(api: KubeAPIEmulator, tmp_path: Path) -> Iterator[client.ApiClient]:
    path = tmp_path / "kubeconfig"
    api.write_kubeconfig(path)
    with config.new_client_from_config(config_file=str(path)) as c:
        yield c


def request(api: KubeAPIEmulator, path: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(api.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def daemonset(name: str, labels: dict[str, str], namespace: str = "kube-system") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}


WIDGETS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
             "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object"}}},
                          {"name": "v1beta1", "served": False, "storage": False,
                           "schema": {"openAPIV3Schema": {"type": "object"}}}]},
}


def test_built_in_kinds_list_watch_and_select(api: KubeAPIEmulator, kube: client.ApiClient) -> None:
    apps = client.AppsV1Api(kube)
    apps.create_namespaced_daemon_set("kube-system", daemonset("calico-node", {"k8s-app": "calico-node"}))
    apps.create_namespaced_daemon_set("kube-system", daemonset("other", {"k8s-app": "other"}))
    listed = apps.list_namespaced_daemon_set("kube-system", label_selector="k8s-app=calico-node")
    assert [d.metadata.name for d in listed.items] == ["calico-node"]
    by_name = apps.list_daemon_set_for_all_namespaces(field_selector="metadata.name=other")
    assert [d.metadata.name for d in by_name.items] == ["other"]
    assert listed.items[0].metadata.generation == 1

    rbac = client.RbacAuthorizationV1Api(kube)
    rbac.create_cluster_role({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                              "metadata": {"name": "system:calico:reader"}, "rules": []})
    assert rbac.read_cluster_role("system:calico:reader").metadata.name == "system:calico:reader", (
        "RBAC names are path segments, colons included")

    start = apps.list_namespaced_daemon_set("kube-system").metadata.resource_version
    apps.patch_namespaced_daemon_set("other", "kube-system", {"metadata": {"labels": {"k8s-app": "calico-node"}}})
    events = list(watch.Watch().stream(apps.list_namespaced_daemon_set, "kube-system", resource_version=start,
                                       label_selector="k8s-app=calico-node", timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "other")], (
        "an object that starts matching a selector is ADDED for that watcher")

    for i in range(60):  # past the history limit of 50
        api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}", "namespace": "default"}})
    with pytest.raises(client.ApiException) as err:
        list(watch.Watch().stream(apps.list_namespaced_daemon_set, "kube-system", resource_version=start,
                                  timeout_seconds=1))
    assert err.value.status == 410


def test_crd_serves_its_resource_until_deleted(api: KubeAPIEmulator, kube: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    code, _, _ = request(api, "/apis/example.com/v1/namespaces/default/widgets")
    assert code == 404, "not served before its CRD exists"
    ext.create_custom_resource_definition(WIDGETS_CRD)
    crd = ext.read_custom_resource_definition("widgets.example.com")
    assert {c.type: c.status for c in crd.status.conditions} == {"NamesAccepted": "True", "Established": "True"}

    code, _, body = request(api, "/apis/example.com/v1")
    resources = {r["name"]: r for r in json.loads(body)["resources"]}
    assert set(resources) == {"widgets", "widgets/status"}
    assert (resources["widgets"]["kind"], resources["widgets"]["namespaced"], resources["widgets"]["shortNames"]) == (
        "Widget", True, ["wd"])
    groups = {g["name"]: g for g in json.loads(request(api, "/apis")[2])["groups"]}
    assert [v["version"] for v in groups["example.com"]["versions"]] == ["v1"], "only served versions"
    code, _, _ = request(api, "/apis/example.com/v1beta1/namespaces/default/widgets")
    assert code == 404

    body = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}}
    custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets", body)
    listed = custom.list_namespaced_custom_object("example.com", "v1", "default", "widgets")
    assert [(i["kind"], i["apiVersion"]) for i in listed["items"]] == [("Widget", "example.com/v1")], (
        "custom resources' list items keep their type meta")
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object("example.com", "v1", "missing", "widgets", dict(body))
    assert (err.value.status, json.loads(err.value.body)["message"]) == (404, 'namespaces "missing" not found')

    start = listed["metadata"]["resourceVersion"]
    ext.delete_custom_resource_definition("widgets.example.com")
    code, _, _ = request(api, "/apis/example.com/v1/namespaces/default/widgets")
    assert code == 404
    assert "example.com" not in {g["name"] for g in json.loads(request(api, "/apis")[2])["groups"]}
    ext.create_custom_resource_definition(WIDGETS_CRD)
    assert custom.list_namespaced_custom_object("example.com", "v1", "default", "widgets")["items"] == [], (
        "the objects went with their CRD")
    assert start  # the list had a resourceVersion


def test_crd_with_bad_names_is_invalid(api: KubeAPIEmulator, kube: client.ApiClient) -> None:
    bad = json.loads(json.dumps(WIDGETS_CRD))
    bad["metadata"]["name"] = "gadgets.example.com"
    with pytest.raises(client.ApiException) as err:
        client.ApiextensionsV1Api(kube).create_custom_resource_definition(bad)
    status = json.loads(err.value.body)
    assert (err.value.status, status["reason"]) == (422, "Invalid")
    assert status["details"]["causes"][0]["field"] == "metadata.name"


def test_namespace_terminates_with_its_contents(api: KubeAPIEmulator, kube: client.ApiClient) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_config_map("doomed", {"metadata": {"name": "c"}})
    start = core.list_namespace().metadata.resource_version
    # The DELETE answers with the namespace as it is now: Terminating (the client reads it as a V1Status).
    code, _, body = request(api, "/api/v1/namespaces/doomed", "DELETE")
    assert (code, orjson.loads(body)["status"]["phase"]) == (200, "Terminating")
    events = list(watch.Watch().stream(core.list_namespace, resource_version=start, timeout_seconds=1))
    assert [(e["type"], e["object"].status.phase) for e in events] == [("MODIFIED", "Terminating"),
                                                                       ("DELETED", "Terminating")]
    assert events[0]["object"].metadata.deletion_timestamp is not None
    assert core.list_namespaced_config_map("doomed").items == []
    with pytest.raises(client.ApiException) as err:
        core.delete_namespace("default")
    assert err.value.status == 403


def test_protobuf_bodies_and_accept(api: KubeAPIEmulator) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pb", "namespace": "default"},
          "data": {"k": "v"}}
    encoded = codec.encode(cm)
    assert encoded is not None and encoded.startswith(b"k8s\x00")
    code, ctype, body = request(api, "/api/v1/namespaces/default/configmaps", "POST", encoded,
                                {"Content-Type": codec.CONTENT_TYPE, "Accept": codec.CONTENT_TYPE})
    assert (code, ctype) == (201, codec.CONTENT_TYPE), "protobuf answered where asked and supported"
    back = codec.decode(body)
    assert (back["metadata"]["name"], back["data"]) == ("pb", {"k": "v"})
    assert back["metadata"]["resourceVersion"]

    code, ctype, body = request(api, "/api/v1/namespaces/default/configmaps/pb", headers={
        "Accept": "application/json"})
    assert (code, ctype.split(";")[0]) == (200, "application/json")
    assert orjson.loads(body)["data"] == {"k": "v"}

    for garbage in (b"not protobuf", b"k8s\x00\xff\xff\xff", codec.MAGIC + b"\x0a\x08\x0a\x02v1\x12\x02Xy"):
        code, ctype, body = request(api, "/api/v1/namespaces/default/configmaps", "POST", garbage,
                                    {"Content-Type": codec.CONTENT_TYPE})
        status = orjson.loads(body)
        assert (code, status["kind"], status["reason"]) == (415, "Status", "UnsupportedMediaType"), status
