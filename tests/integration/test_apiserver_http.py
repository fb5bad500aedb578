"""The emulator over real HTTP with the unmodified `kubernetes` client: CRUD, lists, faults, auth, TLS."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kubernetes import client, config

from typha.model.resources import RESOURCES
from typha.testing import objects
from typha.testing.apiserver.server import ApiError, KubeAPIEmulator


@pytest.fixture
def api() -> Iterator[KubeAPIEmulator]:
    with KubeAPIEmulator(bookmark_interval=0.2).start() as emulator:
        yield emulator


def api_client(emulator: KubeAPIEmulator, tmp_path: Path) -> client.ApiClient:
    path = tmp_path / "kubeconfig"
    emulator.write_kubeconfig(path)
    return config.new_client_from_config(config_file=str(path))


@pytest.fixture
def core(api: KubeAPIEmulator, tmp_path: Path) -> Iterator[client.CoreV1Api]:
    with api_client(api, tmp_path) as c:
        yield client.CoreV1Api(c)


@pytest.fixture
def custom(api: KubeAPIEmulator, tmp_path: Path) -> Iterator[client.CustomObjectsApi]:
    with api_client(api, tmp_path) as c:
        yield client.CustomObjectsApi(c)


def pod(name: str, namespace: str | None = "default", labels: dict[str, str] | None = None,
        node: str = "node-1") -> dict[str, Any]:
    """A pod from the shared builders; namespace=None leaves it to the request path."""
    obj = objects.pod(namespace or "default", name, node=node, ip=None, labels=labels)
    if namespace is None:
        del obj["metadata"]["namespace"]
    return obj


def status_of(err: client.ApiException) -> dict[str, Any]:
    body = json.loads(err.body)
    assert body["kind"] == "Status"
    assert body["status"] == "Failure"
    assert body["code"] == err.status
    return body


def raw(emulator: KubeAPIEmulator, path: str, method: str = "GET", body: Any = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(emulator.url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), orjson.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), orjson.loads(err.read())


def test_create_get_conflict_and_not_found(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    rv0 = api.resource_version
    created = core.create_namespaced_pod("default", pod("web", namespace=None))
    assert created.metadata.namespace == "default", "the path's namespace fills the body's"
    assert int(created.metadata.resource_version) == rv0 + 1 == api.resource_version
    assert created.metadata.uid
    assert created.metadata.creation_timestamp
    assert created.metadata.generation is None, "pods carry no generation"
    assert core.read_namespaced_pod("web", "default").metadata.uid == created.metadata.uid

    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_pod("default", pod("web"))
    assert exc.value.status == 409
    assert status_of(exc.value)["reason"] == "AlreadyExists"

    with pytest.raises(client.ApiException) as exc:
        core.read_namespaced_pod("missing", "default")
    body = status_of(exc.value)
    assert (exc.value.status, body["reason"]) == (404, "NotFound")
    assert body["details"] == {"name": "missing", "kind": "pods"}

    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_pod("other", pod("web2", namespace="default"))
    assert exc.value.status == 400, "body namespace must match the path's"

    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_pod("default", pod("Not_A_Name"))
    assert (exc.value.status, status_of(exc.value)["reason"]) == (422, "Invalid")


def test_update_patch_delete(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    first = core.create_namespaced_pod("default", pod("web", labels={"app": "web"}))
    current = core.read_namespaced_pod("web", "default")
    current.metadata.labels["tier"] = "front"
    updated = core.replace_namespaced_pod("web", "default", current)
    assert int(updated.metadata.resource_version) > int(first.metadata.resource_version)
    assert updated.metadata.labels == {"app": "web", "tier": "front"}
    assert updated.metadata.uid == first.metadata.uid
    assert updated.metadata.creation_timestamp == first.metadata.creation_timestamp

    stale = current  # still carries the resourceVersion the update replaced
    stale.metadata.labels["tier"] = "back"
    with pytest.raises(client.ApiException) as exc:
        core.replace_namespaced_pod("web", "default", stale)
    assert (exc.value.status, status_of(exc.value)["reason"]) == (409, "Conflict")

    with pytest.raises(client.ApiException) as exc:
        core.replace_namespaced_pod("ghost", "default", pod("ghost"))
    assert exc.value.status == 404

    # The client sends a dict body to patch_* as a strategic merge patch: containers merge by name.
    patched = core.patch_namespaced_pod(
        "web", "default",
        {"metadata": {"labels": {"tier": None}}, "spec": {"containers": [{"name": "side", "image": "envoy"}]}},
    )
    assert patched.metadata.labels == {"app": "web"}
    assert [(c.name, c.image) for c in patched.spec.containers] == [
        ("app", "registry.k8s.io/pause:3.9"), ("side", "envoy")]

    deleted = core.delete_namespaced_pod("web", "default")
    assert deleted.metadata.name == "web"
    assert int(deleted.metadata.resource_version) == api.resource_version, "deletion gets its own RV"
    with pytest.raises(client.ApiException) as exc:
        core.delete_namespaced_pod("web", "default")
    assert exc.value.status == 404


def test_merge_and_json_patch_over_http(api: KubeAPIEmulator) -> None:
    api.create(pod("web", labels={"app": "web"}))
    path = "/api/v1/namespaces/default/pods/web"
    code, _, obj = raw(api, path, "PATCH", {"metadata": {"labels": {"x": "1"}}},
                       {"Content-Type": "application/merge-patch+json"})
    assert code == 200
    assert obj["metadata"]["labels"] == {"app": "web", "x": "1"}
    ops = [{"op": "replace", "path": "/spec/nodeName", "value": "node-2"},
           {"op": "remove", "path": "/metadata/labels/x"}]
    code, _, obj = raw(api, path, "PATCH", ops, {"Content-Type": "application/json-patch+json"})
    assert code == 200
    assert obj["spec"]["nodeName"] == "node-2"
    assert obj["metadata"]["labels"] == {"app": "web"}
    code, _, status = raw(api, path, "PATCH", [{"op": "test", "path": "/spec/nodeName", "value": "nope"}],
                          {"Content-Type": "application/json-patch+json"})
    assert (code, status["reason"]) == (422, "Invalid")
    code, _, status = raw(api, path, "PATCH", {"metadata": {"resourceVersion": "1", "labels": {"y": "2"}}},
                          {"Content-Type": "application/merge-patch+json"})
    assert (code, status["reason"]) == (409, "Conflict"), "a resourceVersion in a patch is a precondition"
    code, _, status = raw(api, path, "PATCH", {}, {"Content-Type": "application/apply-patch+yaml"})
    assert (code, status["message"]) == (400, "PATCH request with apply-patch+yaml must specify fieldManager"), (
        "server-side apply needs a field manager"
    )
    before = api.resource_version
    code, _, status = raw(api, path + "?dryRun=All", "PATCH", {"metadata": {"labels": {"dry": "run"}}},
                          {"Content-Type": "application/merge-patch+json"})
    assert code == 400 and api.resource_version == before, "a dry run is refused, never written"


def test_custom_objects_and_generation(api: KubeAPIEmulator, custom: client.CustomObjectsApi) -> None:
    group, version, plural = "crd.projectcalico.org", "v1", "ippools"
    body = {"apiVersion": f"{group}/{version}", "kind": "IPPool", "metadata": {"name": "pool-a"},
            "spec": {"cidr": "10.0.0.0/16", "blockSize": 26}}
    created = custom.create_cluster_custom_object(group, version, plural, body)
    assert created["metadata"]["generation"] == 1
    assert "namespace" not in created["metadata"]
    relabelled = custom.patch_cluster_custom_object(group, version, plural, "pool-a",
                                                    {"metadata": {"labels": {"a": "b"}}})
    assert relabelled["metadata"]["generation"] == 1, "metadata changes do not bump generation"
    respecced = custom.patch_cluster_custom_object(group, version, plural, "pool-a", {"spec": {"blockSize": 27}})
    assert respecced["metadata"]["generation"] == 2
    assert respecced["spec"] == {"cidr": "10.0.0.0/16", "blockSize": 27}
    listed = custom.list_cluster_custom_object(group, version, plural)
    assert listed["kind"] == "IPPoolList"
    assert listed["metadata"]["resourceVersion"] == str(api.resource_version)
    assert [i["kind"] for i in listed["items"]] == ["IPPool"], "custom resource items carry their kind"
    code, _, status = raw(api, f"/apis/{group}/{version}/{plural}/pool-a", "PATCH", {"spec": {}},
                          {"Content-Type": "application/strategic-merge-patch+json"})
    assert (code, status["reason"]) == (415, "UnsupportedMediaType"), "custom resources take no strategic patches"

    netpol = {"apiVersion": f"{group}/{version}", "kind": "NetworkPolicy",
              "metadata": {"name": "default.allow"}, "spec": {"selector": "all()"}}
    custom.create_namespaced_custom_object(group, version, "ns1", "networkpolicies", netpol)
    got = custom.get_namespaced_custom_object(group, version, "ns1", "networkpolicies", "default.allow")
    assert got["metadata"]["namespace"] == "ns1", "a namespace need not exist to hold objects"
    custom.delete_cluster_custom_object(group, version, plural, "pool-a")
    with pytest.raises(client.ApiException) as exc:
        custom.get_cluster_custom_object(group, version, plural, "pool-a")
    assert status_of(exc.value)["details"]["group"] == group


def test_secret_string_data_is_folded_into_data(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    secret = client.V1Secret(metadata=client.V1ObjectMeta(name="s"), data={"a": base64.b64encode(b"x").decode()},
                             string_data={"b": "hello"})
    stored = core.create_namespaced_secret("default", secret)
    assert stored.string_data is None
    assert {k: base64.b64decode(v) for k, v in stored.data.items()} == {"a": b"x", "b": b"hello"}
    assert "stringData" not in api.get("v1", "Secret", "s", "default")


def test_cluster_wide_and_namespaced_collections(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    for ns in ("a", "b"):
        for i in range(3):
            api.create(pod(f"p{i}", namespace=ns))
    everything = core.list_pod_for_all_namespaces()
    assert [(p.metadata.namespace, p.metadata.name) for p in everything.items] == [
        (ns, f"p{i}") for ns in ("a", "b") for i in range(3)
    ]
    assert everything.metadata.resource_version == str(api.resource_version)
    assert [p.metadata.name for p in core.list_namespaced_pod("b").items] == ["p0", "p1", "p2"]
    assert core.list_namespaced_pod("c").items == []
    code, _, body = raw(api, "/api/v1/namespaces/a/pods")
    assert code == 200 and "kind" not in body["items"][0], "built-in list items carry no kind, as in Kubernetes"


def test_pagination_is_a_consistent_snapshot_under_concurrent_writes(
    api: KubeAPIEmulator, core: client.CoreV1Api
) -> None:
    for i in range(60):
        api.create(pod(f"p{i:03d}"))
    snapshot = {(p["metadata"]["name"], p["metadata"]["resourceVersion"]) for p in api.list("v1", "Pod")}
    first = core.list_namespaced_pod("default", limit=7)
    stop = threading.Event()

    def churn() -> None:
        for i in range(20_000):
            if stop.is_set():
                return
            api.create(pod(f"new{i:05d}"))
            api.patch("v1", "Pod", f"p{i % 30:03d}", {"metadata": {"labels": {"i": str(i)}}}, "default")
            if i < 30:
                api.delete("v1", "Pod", f"p{59 - i:03d}", "default")

    writer = threading.Thread(target=churn)
    writer.start()
    pages = [first]
    try:
        while pages[-1].metadata._continue:
            # Make sure the store really moved on between pages.
            rv = api.resource_version
            for _ in range(1000):
                if api.resource_version > rv + 3:
                    break
                threading.Event().wait(0.001)
            pages.append(core.list_namespaced_pod("default", limit=7, _continue=pages[-1].metadata._continue))
    finally:
        stop.set()
        writer.join(timeout=30)
    assert api.resource_version > int(first.metadata.resource_version) + 30
    assert {p.metadata.resource_version for p in pages} == {first.metadata.resource_version}
    seen = [(p.metadata.name, p.metadata.resource_version) for page in pages for p in page.items]
    assert len(seen) == len(set(seen)) == 60
    assert set(seen) == snapshot, "every page is read from the first page's snapshot"
    assert first.metadata.remaining_item_count == 53
    assert all(len(page.items) == 7 for page in pages[:-1])


def test_continue_token_expiry_and_garbage(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    for i in range(5):
        api.create(pod(f"p{i}"))
    token = core.list_namespaced_pod("default", limit=2).metadata._continue
    assert token
    api.compact()
    with pytest.raises(client.ApiException) as exc:
        core.list_namespaced_pod("default", limit=2, _continue=token)
    assert (exc.value.status, status_of(exc.value)["reason"]) == (410, "Expired")
    with pytest.raises(client.ApiException) as exc:
        core.list_namespaced_pod("default", limit=2, _continue="not-a-token")
    assert exc.value.status == 400


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", {"w1", "w2"}),
        ("app==web", {"w1", "w2"}),
        ("app!=web", {"d1", "bare"}),
        ("app in (web, db)", {"w1", "w2", "d1"}),
        ("app notin (web)", {"d1", "bare"}),
        ("app", {"w1", "w2", "d1"}),
        ("!app", {"bare"}),
        ("app=web,tier=front", {"w1"}),
        ("app in (web),!tier", {"w2"}),
    ],
)
def test_label_selectors(api: KubeAPIEmulator, core: client.CoreV1Api, selector: str, expected: set[str]) -> None:
    api.create(pod("w1", labels={"app": "web", "tier": "front"}))
    api.create(pod("w2", labels={"app": "web"}))
    api.create(pod("d1", labels={"app": "db", "tier": "back"}))
    api.create(pod("bare"))
    assert {p.metadata.name for p in core.list_namespaced_pod("default", label_selector=selector).items} == expected


def test_field_selectors(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    api.create(pod("a", namespace="n1", node="node-1"))
    api.create(pod("b", namespace="n1", node="node-2"))
    api.create(pod("c", namespace="n2", node="node-1"))
    names = lambda fs: {p.metadata.name for p in core.list_pod_for_all_namespaces(field_selector=fs).items}  # noqa: E731
    assert names("spec.nodeName=node-1") == {"a", "c"}
    assert names("spec.nodeName!=node-1") == {"b"}
    assert names("metadata.namespace=n1,spec.nodeName=node-1") == {"a"}
    assert names("metadata.name==b") == {"b"}
    with pytest.raises(client.ApiException) as exc:
        core.list_pod_for_all_namespaces(field_selector="spec.bogus=1")
    assert exc.value.status == 400
    with pytest.raises(client.ApiException) as exc:
        core.list_pod_for_all_namespaces(label_selector="app in (a")
    assert exc.value.status == 400


def test_fail_next_500_then_recovers(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    api.fail_next(2, status=500)
    for _ in range(2):
        with pytest.raises(client.ApiException) as exc:
            core.list_namespaced_pod("default")
        assert (exc.value.status, status_of(exc.value)["reason"]) == (500, "InternalError")
    assert core.list_namespaced_pod("default").items == []
    assert api.stats()["injected_failures"] == 2


def test_fail_next_429_carries_retry_after(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    api.fail_next(1, status=429, retry_after=3)
    code, headers, body = raw(api, "/api/v1/pods")
    assert (code, headers.get("Retry-After"), body["reason"]) == (429, "3", "TooManyRequests")
    assert body["details"] == {"retryAfterSeconds": 3}
    # Without Retry-After urllib3 does not retry, so the client sees the 429 itself.
    api.fail_next(1, status=429)
    with pytest.raises(client.ApiException) as exc:
        core.list_namespaced_pod("default")
    assert exc.value.status == 429
    assert raw(api, "/api/v1/pods")[0] == 200


def test_set_delay_slows_every_response(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    api.set_delay(1.0)
    with pytest.raises(TimeoutError):
        urllib.request.urlopen(api.url + "/api/v1/pods", timeout=0.1)
    api.set_delay(0)
    assert core.list_namespaced_pod("default", _request_timeout=(5, 5)).items == []


def test_stats_count_requests_by_verb(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("a"))
    core.read_namespaced_pod("a", "default")
    core.list_namespaced_pod("default")
    core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "y"}}})
    core.delete_namespaced_pod("a", "default")
    stats = api.stats()
    assert {k: stats["requests"].get(k) for k in ("create", "get", "list", "patch", "delete")} == dict.fromkeys(
        ("create", "get", "list", "patch", "delete"), 1
    )
    assert stats["open_watches"] == 0
    assert stats["objects"] == 0
    assert stats["resource_version"] == api.resource_version


def test_bearer_token_is_required(tmp_path: Path) -> None:
    with KubeAPIEmulator(token="s3cret").start() as emulator:
        code, _, body = raw(emulator, "/api/v1/pods")
        assert (code, body["reason"]) == (401, "Unauthorized")
        code, _, _ = raw(emulator, "/api/v1/pods", headers={"Authorization": "Bearer wrong"})
        assert code == 401
        assert emulator.kubeconfig()["users"][0]["user"] == {"token": "s3cret"}
        with api_client(emulator, tmp_path) as c:
            assert client.CoreV1Api(c).list_namespaced_pod("default").items == []


def test_restart_serves_the_same_store_and_wakes_watches(api: KubeAPIEmulator) -> None:
    api.create(pod("kept"))
    api.stop()
    api.start()
    code, _, body = raw(api, "/api/v1/namespaces/default/pods")
    assert code == 200
    assert [i["metadata"]["name"] for i in body["items"]] == ["kept"]
    url = urllib.request.urlopen(api.url + f"/api/v1/pods?watch=1&resourceVersion={api.resource_version}",
                                 timeout=10)
    try:
        api.wait_for_watches(1)
        api.create(pod("after-restart"))
        assert orjson.loads(url.readline())["object"]["metadata"]["name"] == "after-restart"
    finally:
        url.close()


def test_tls_with_kubeconfig_ca(tmp_path: Path) -> None:
    with KubeAPIEmulator(tls=True, token="t").start() as emulator:
        assert emulator.url.startswith("https://127.0.0.1:")
        path = tmp_path / "kubeconfig"
        emulator.write_kubeconfig(path)
        config.load_kube_config(config_file=str(path), client_configuration=(cfg := client.Configuration()))
        assert cfg.verify_ssl and cfg.ssl_ca_cert, "the CA comes from certificate-authority-data"
        with client.ApiClient(cfg) as c:
            client.CoreV1Api(c).create_namespaced_pod("default", pod("tls"))
            assert [p.metadata.name for p in client.CoreV1Api(c).list_namespaced_pod("default").items] == ["tls"]
        # The server certificate is not trusted without that CA.
        with pytest.raises(urllib.error.URLError) as exc:
            urllib.request.urlopen(emulator.url + "/version", timeout=5, context=ssl.create_default_context())
        assert isinstance(exc.value.reason, ssl.SSLCertVerificationError)


def test_discovery_advertises_every_resource(api: KubeAPIEmulator, tmp_path: Path) -> None:
    with api_client(api, tmp_path) as c:
        assert client.CoreApi(c).get_api_versions().versions == ["v1"]
        groups = {g.name for g in client.ApisApi(c).get_api_versions().groups}
    assert groups == {r.group for r in api.resources() if r.group}
    assert {r.group for r in RESOURCES if r.group} <= groups, "every kind typha reads is served"
    for r in api.resources():
        prefix = f"/apis/{r.api_version}" if r.group else f"/api/{r.api_version}"
        code, _, doc = raw(api, prefix)
        assert code == 200
        assert doc["kind"] == "APIResourceList"
        assert doc["groupVersion"] == r.api_version
        entry = next(e for e in doc["resources"] if e["name"] == r.plural)
        assert (entry["kind"], entry["namespaced"]) == (r.kind, r.namespaced)
        assert {"list", "watch", "get", "create", "update", "patch", "delete"} <= set(entry["verbs"])
        assert entry.get("shortNames", []) == list(r.short_names)
    code, _, version = raw(api, "/version")
    assert code == 200
    assert version["major"] == "1"
    code, _, status = raw(api, "/apis/nothing.example.com/v1/things")
    assert (code, status["kind"], status["reason"]) == (404, "Status", "NotFound")


def test_in_process_api_matches_http(api: KubeAPIEmulator, core: client.CoreV1Api) -> None:
    body = pod("a", labels={"x": "1"})
    created = api.create(body)
    body["metadata"]["labels"]["x"] = "changed after the call"
    with pytest.raises(ApiError) as err:
        api.create(pod("a"))
    assert (err.value.status, err.value.reason) == (409, "AlreadyExists")
    created["metadata"]["labels"]["x"] = "mutated"
    assert api.get("v1", "Pod", "a", "default")["metadata"]["labels"] == {"x": "1"}, "callers get copies"

    replaced = api.replace(dict(created, spec={"nodeName": "n9", "containers": []}))
    assert replaced["spec"]["nodeName"] == "n9"
    with pytest.raises(ApiError) as err:
        api.replace(created)  # carries the resourceVersion before the replace
    assert err.value.status == 409
    with pytest.raises(ApiError) as err:
        api.replace(pod("nope"))
    assert err.value.status == 404

    upserted = api.upsert(pod("a", labels={"only": "this"}))
    assert upserted["metadata"]["labels"] == {"only": "this"}, "upsert replaces whole"
    assert upserted["metadata"]["uid"] == replaced["metadata"]["uid"]
    assert api.upsert(pod("b"))["metadata"]["name"] == "b"
    patched = api.patch("v1", "Pod", "a", {"metadata": {"labels": {"more": "yes"}}}, "default")
    assert patched["metadata"]["labels"] == {"only": "this", "more": "yes"}
    assert core.read_namespaced_pod("a", "default").metadata.labels == patched["metadata"]["labels"]

    assert [p["metadata"]["name"] for p in api.list("v1", "Pod")] == ["a", "b"]
    assert api.list("v1", "Pod", "elsewhere") == []
    assert sorted(o["metadata"]["name"] for o in api.objects()) == ["a", "b"]
    assert all(o["kind"] == "Pod" for o in api.objects())
    deleted = api.delete("v1", "Pod", "a", "default")
    assert int(deleted["metadata"]["resourceVersion"]) == api.resource_version
    with pytest.raises(ApiError) as err:
        api.delete("v1", "Pod", "a", "default")
    assert (err.value.status, err.value.reason) == (404, "NotFound")
    with pytest.raises(ApiError):
        api.get("v1", "NoSuchKind", "x")


def test_large_list_is_complete(api: KubeAPIEmulator) -> None:
    for i in range(50_000):
        api.upsert({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"pod-{i:05d}", "namespace": f"ns-{i % 50}", "labels": {"app": "x"}},
                    "spec": {"nodeName": f"node-{i % 100}", "containers": [{"name": "c", "image": "i"}]}})
    code, _, body = raw(api, "/api/v1/pods")
    assert code == 200
    assert len(body["items"]) == 50_000
    assert body["metadata"]["resourceVersion"] == str(api.resource_version)
    code, _, body = raw(api, "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-7")
    assert len(body["items"]) == 500
