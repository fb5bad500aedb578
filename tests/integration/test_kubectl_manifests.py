"""The unmodified kubectl installs real manifests into `typha sim-apiserver --crds none`, as into a cluster.

Calico's own release manifests (tests/fixtures/k8s, vendored with their license) and the project's
`deploy/` overlays must go in with the commands their documentation gives: kubectl's typed
generators (protobuf bodies), `create -f` of CRDs and the objects beside them, `apply -k`, and
server-side apply; after which typha serves the crd.projectcalico.org/v1 objects the CRDs define.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from typha.testing.procs import wait_ready

from .test_daemon import free_port
from .test_kubectl import DEADLINE, KUBECTL, Server, write

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH")

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "k8s"
CALICO_TYPHA = FIXTURES / "calico-typha.yaml"
CALICO_V3_CRDS = FIXTURES / "calico-v3-crds.yaml"
BUILTIN_GROUPS = {"", "apps", "rbac.authorization.k8s.io", "policy", "coordination.k8s.io", "discovery.k8s.io",
                  "networking.k8s.io", "admissionregistration.k8s.io", "apiextensions.k8s.io", "autoscaling",
                  "batch"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path, "--crds", "none")
    try:
        yield srv
    finally:
        if srv.process.poll() is None:
            assert srv.stop() == 0, "SIGTERM stops the server cleanly"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def resource_name(doc: dict[str, Any]) -> str:
    """kubectl's name for a document's resource type: `kind.group` (the kind alone in the core group)."""
    group = doc["apiVersion"].rpartition("/")[0]
    return f"{doc['kind'].lower()}.{group}" if group else doc["kind"].lower()


def assert_every_object_gettable(server: Server, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        meta = doc["metadata"]
        args = ["get", resource_name(doc), meta["name"], "-o", "json"]
        if meta.get("namespace"):
            args += ["-n", meta["namespace"]]
        got = json.loads(server.kubectl(*args).stdout)
        assert (got["kind"], got["metadata"]["name"]) == (doc["kind"], meta["name"])


def test_typed_generators_send_protobuf_and_succeed(cluster: Server) -> None:
    namespaces = cluster.kubectl("get", "namespaces", "-o", "name").stdout.split()
    assert namespaces == ["namespace/default", "namespace/kube-node-lease", "namespace/kube-public",
                          "namespace/kube-system"], "a cluster starts with the four standard namespaces"
    created = cluster.kubectl("create", "namespace", "apps", "-v=8")
    assert "Content-Type: application/vnd.kubernetes.protobuf" in created.stderr, "the body really was protobuf"
    assert "namespace/apps created" in created.stdout
    for args, expected in [
        (("deployment", "web", "--image=nginx:1.27", "--replicas=2", "--port=80"), "deployment.apps/web created"),
        (("configmap", "settings", "--from-literal=mode=fast"), "configmap/settings created"),
        (("secret", "generic", "creds", "--from-literal=password=hunter2"), "secret/creds created"),
        (("serviceaccount", "robot"), "serviceaccount/robot created"),
    ]:
        assert expected in cluster.kubectl("create", *args, "-n", "apps").stdout
    for args in [("job", "once", "--image=busybox"), ("cronjob", "nightly", "--image=busybox", "--schedule=0 3 * * *"),
                 ("role", "reader", "--verb=get", "--resource=pods"),
                 ("rolebinding", "reader", "--role=reader", "--serviceaccount=apps:robot"),
                 ("poddisruptionbudget", "web", "--selector=app=web", "--min-available=1"),
                 ("ingress", "web", "--rule=example.com/=web:80"), ("quota", "small", "--hard=pods=10")]:
        done = cluster.kubectl("create", *args, "-n", "apps")
        assert " created" in done.stdout, done.stderr
    cluster.kubectl("create", "clusterrole", "apps-reader", "--verb=list", "--resource=deployments")
    cluster.kubectl("create", "clusterrolebinding", "apps-reader", "--clusterrole=apps-reader", "--group=devs")
    job = json.loads(cluster.kubectl("get", "cronjob", "nightly", "-n", "apps", "-o", "json").stdout)
    assert job["spec"]["schedule"] == "0 3 * * *"
    pdb = json.loads(cluster.kubectl("get", "pdb", "web", "-n", "apps", "-o", "json").stdout)
    assert pdb["spec"]["minAvailable"] == 1
    deployment = json.loads(cluster.kubectl("get", "deployment", "web", "-n", "apps", "-o", "json").stdout)
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["ports"]) == ("nginx:1.27", [{"containerPort": 80}])
    assert "created" in cluster.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", "apps").stdout
    service = json.loads(cluster.kubectl("get", "service", "web", "-n", "apps", "-o", "json").stdout)
    assert service["spec"]["ports"] == [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}], (
        "an IntOrString survives the protobuf decoding as a number"
    )
    secret = json.loads(cluster.kubectl("get", "secret", "creds", "-n", "apps", "-o", "json").stdout)
    assert secret["data"] == {"password": "aHVudGVyMg=="}, "bytes fields come back base64-encoded"
    settings = cluster.kubectl("get", "configmap", "settings", "-n", "apps", "-o", "jsonpath={.data.mode}")
    assert settings.stdout == "fast"
    assert cluster.kubectl("get", "serviceaccount", "robot", "-n", "apps", "-o", "name").stdout.strip() == (
        "serviceaccount/robot")


def test_api_resources_lists_the_built_in_groups(cluster: Server) -> None:
    rows = [line.split() for line in cluster.kubectl("api-resources").stdout.splitlines()[1:]]
    # NAME [SHORTNAMES] APIVERSION NAMESPACED KIND
    by_name = {(row[0], row[-3]): (row[1:-3], row[-2], row[-1]) for row in rows}
    for name, version, short, namespaced, kind in [
        ("pods", "v1", ["po"], "true", "Pod"),
        ("namespaces", "v1", ["ns"], "false", "Namespace"),
        ("daemonsets", "apps/v1", ["ds"], "true", "DaemonSet"),
        ("clusterrolebindings", "rbac.authorization.k8s.io/v1", [], "false", "ClusterRoleBinding"),
        ("poddisruptionbudgets", "policy/v1", ["pdb"], "true", "PodDisruptionBudget"),
        ("leases", "coordination.k8s.io/v1", [], "true", "Lease"),
        ("endpointslices", "discovery.k8s.io/v1", [], "true", "EndpointSlice"),
        ("networkpolicies", "networking.k8s.io/v1", ["netpol"], "true", "NetworkPolicy"),
        ("validatingwebhookconfigurations", "admissionregistration.k8s.io/v1", [], "false",
         "ValidatingWebhookConfiguration"),
        ("customresourcedefinitions", "apiextensions.k8s.io/v1", ["crd,crds"], "false", "CustomResourceDefinition"),
        ("horizontalpodautoscalers", "autoscaling/v2", ["hpa"], "true", "HorizontalPodAutoscaler"),
        ("cronjobs", "batch/v1", ["cj"], "true", "CronJob"),
    ]:
        assert by_name[(name, version)] == (short, namespaced, kind), name
    assert not [row for row in rows if "projectcalico.org" in row[-3]], "--crds none serves no Calico kind"


def serve_and_dump(server: Server, *syncers: str) -> dict[str, Any]:
    """Run `typha serve` against `server` (with no CALICO_API_GROUP: the group comes from discovery)
    and return `typha dump --json` of each syncer, merged."""
    port, health = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "CALICO_API_GROUP"}
    serve = subprocess.Popen(
        [sys.executable, "-m", "typha.cli", "serve", "--workers", "1", "--kubeconfig", str(server.kubeconfig),
         "--server-host", "127.0.0.1", "--server-port", str(port), "--health-enabled", "true",
         "--health-host", "127.0.0.1", "--health-port", str(health)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    dumped: dict[str, Any] = {}
    try:
        wait_ready(health, serve)
        for syncer in syncers:
            dump = subprocess.run(
                [sys.executable, "-m", "typha.cli", "dump", "--server", f"127.0.0.1:{port}", "--syncer", syncer,
                 "--json", "--timeout", "30"], capture_output=True, text=True, timeout=60)
            assert dump.returncode == 0, dump.stderr
            dumped.update(json.loads(dump.stdout))
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
    return dumped


def test_calico_release_manifest_installs_and_typha_serves_its_crds(cluster: Server, tmp_path: Path) -> None:
    docs = documents(CALICO_TYPHA)
    out = cluster.kubectl("create", "-f", str(CALICO_TYPHA)).stdout
    assert out.count(" created\n") == len(docs), out
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert {d["spec"]["group"] for d in crds} >= {"crd.projectcalico.org"}
    assert {d["apiVersion"].rpartition("/")[0] for d in docs} <= BUILTIN_GROUPS
    assert_every_object_gettable(cluster, docs)

    # The CRDs registered their resources: discovery (kubectl api-resources) lists each one.
    listed = cluster.kubectl("api-resources", "--api-group=crd.projectcalico.org", "-o", "name").stdout.split()
    assert sorted(listed) == sorted(f"{d['spec']['names']['plural']}.{d['spec']['group']}" for d in crds
                                    if d["spec"]["group"] == "crd.projectcalico.org")
    pool = write(tmp_path / "pool.yaml", """\
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata: {name: default-ipv4-ippool}
spec: {cidr: 10.244.0.0/16, blockSize: 26, ipipMode: Always, natOutgoing: true, nodeSelector: all()}
""")
    cluster.kubectl("apply", "-f", pool)
    assert cluster.kubectl("get", "ippools", "-o", "name").stdout.split() == [
        "ippool.crd.projectcalico.org/default-ipv4-ippool"]

    dumped = serve_and_dump(cluster, "felix")
    # Felix's IPAM pool key, from the v1 custom resource the CRD made servable.
    assert dumped["/calico/v1/ipam/v4/pool/10.244.0.0-16"]["cidr"] == "10.244.0.0/16", sorted(dumped)

    # Deleting a CRD stops serving its resource, and its objects go with it.
    cluster.kubectl("delete", "crd", "ippools.crd.projectcalico.org")
    gone = cluster.kubectl("get", "ippools.crd.projectcalico.org", check=False)
    assert gone.returncode != 0 and "the server doesn't have a resource type" in gone.stderr


def test_project_overlays_apply(cluster: Server) -> None:
    for overlay in ("plain", "tls"):
        done = cluster.kubectl("apply", "-k", str(ROOT / "deploy" / "overlays" / overlay))
        assert "error" not in done.stderr.lower(), done.stderr
    built = subprocess.run([KUBECTL or "kubectl", "kustomize", str(ROOT / "deploy" / "overlays" / "tls")],
                           capture_output=True, text=True, timeout=DEADLINE, check=True).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    assert {d["kind"] for d in docs} >= {"Namespace", "Deployment", "DaemonSet", "ClusterRole", "PodDisruptionBudget"}
    assert_every_object_gettable(cluster, docs)


def test_calico_v3_crds_install(cluster: Server, tmp_path: Path) -> None:
    docs = documents(CALICO_V3_CRDS)
    out = cluster.kubectl("create", "-f", str(CALICO_V3_CRDS)).stdout
    assert out.count(" created\n") == len(docs), out
    assert_every_object_gettable(cluster, docs)
    listed = cluster.kubectl("api-resources", "--api-group=projectcalico.org", "-o", "name").stdout.split()
    assert {"tiers.projectcalico.org", "globalnetworkpolicies.projectcalico.org", "ippools.projectcalico.org"} <= set(
        listed)
    objects = write(tmp_path / "v3.yaml", """\
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.deny-egress}
spec: {tier: security, order: 10, selector: all(), types: [Egress]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-web, namespace: default}
spec: {order: 5, selector: app == 'web', ingress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: outside, labels: {zone: outside}}
spec: {nets: [198.51.100.0/24]}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: partners, namespace: default}
spec: {nets: [203.0.113.0/24]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-1-eth0}
spec: {node: node-1, interfaceName: eth0, expectedIPs: [192.0.2.10]}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 192.0.2.1, asNumber: 64512}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-v4}
spec: {cidr: 10.48.0.0/16, ipipMode: Never, vxlanMode: Always, natOutgoing: true}
""")
    created = cluster.kubectl("create", "-f", objects).stdout
    assert created.count(" created\n") == 8, created
    assert_every_object_gettable(cluster, documents(Path(objects)))
    # kubectl get prints the CRD's additionalPrinterColumns.
    table = [line.split() for line in cluster.kubectl("get", "ippools.projectcalico.org").stdout.splitlines()]
    assert table[0] == ["NAME", "CIDR", "VXLAN", "IPIP", "NAT", "ALLOCATABLE", "AGE"]
    assert table[1][:5] == ["pool-v4", "10.48.0.0/16", "Always", "Never", "true"]

    # No API-group setting: typha finds projectcalico.org/v3 served and crd.projectcalico.org absent,
    # reads the v3 kinds, and both syncers hold the objects.
    dumped = serve_and_dump(cluster, "felix", "bgp")
    expected = {
        "/calico/v1/policy/tier/security/metadata",
        "/calico/v1/policy/GlobalNetworkPolicy//security.deny-egress",
        "/calico/v1/policy/NetworkPolicy/default/allow-web",
        "/calico/v1/netset/outside",
        "/calico/v1/netset/default%2fpartners",
        "/calico/v1/host/node-1/endpoint/node-1-eth0",
        "/calico/v1/ipam/v4/pool/10.48.0.0-16",
        "/calico/resources/v3/projectcalico.org/bgppeers/tor",
    }
    assert expected <= set(dumped), sorted(expected - set(dumped))
    assert dumped["/calico/v1/ipam/v4/pool/10.48.0.0-16"]["cidr"] == "10.48.0.0/16"
    assert dumped["/calico/resources/v3/projectcalico.org/bgppeers/tor"]["spec"]["peerIP"] == "192.0.2.1"


def test_namespace_lifecycle(cluster: Server, tmp_path: Path) -> None:
    missing = cluster.kubectl("create", "configmap", "c", "-n", "nowhere", check=False)
    assert missing.returncode != 0 and 'namespaces "nowhere" not found' in missing.stderr
    cluster.kubectl("create", "namespace", "doomed")
    cluster.kubectl("create", "configmap", "c", "-n", "doomed", "--from-literal=a=b")
    deleted = cluster.kubectl("delete", "namespace", "doomed")
    assert 'namespace "doomed" deleted' in deleted.stdout
    assert cluster.kubectl("get", "namespace", "doomed", check=False).returncode != 0
    assert "No resources found" in cluster.kubectl("get", "configmaps", "-n", "doomed").stderr, (
        "a namespace's objects go with it")
    refused = cluster.kubectl("delete", "namespace", "kube-system", check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr


def big_crd(name: str = "widgets.example.com") -> dict[str, Any]:
    """A CRD whose JSON is over 256 KiB, as the Tigera operator's largest ones are."""
    plural, _, group = name.partition(".")
    props = {f"field{i:05d}": {"type": "string", "description": "x" * 100} for i in range(2600)}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": name},
        "spec": {"group": group, "scope": "Cluster",
                 "names": {"plural": plural, "singular": plural[:-1], "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "properties": props}}}}}]},
    }


def test_the_annotation_limit_fails_client_side_apply_of_a_huge_crd(cluster: Server, tmp_path: Path) -> None:
    path = tmp_path / "crd.json"
    path.write_text(json.dumps(big_crd()))
    assert path.stat().st_size > 256 * 1024
    applied = cluster.kubectl("apply", "-f", str(path), check=False)
    assert applied.returncode != 0
    assert "metadata.annotations: Too long: must have at most 262144 bytes" in applied.stderr
    assert "created" in cluster.kubectl("create", "-f", str(path)).stdout
    cluster.kubectl("delete", "-f", str(path))
    assert "serverside-applied" in cluster.kubectl("apply", "--server-side", "-f", str(path)).stdout
    deadline = time.monotonic() + DEADLINE
    while "widgets" not in cluster.kubectl("api-resources", "-o", "name").stdout:
        assert time.monotonic() < deadline, "the CRD never showed in discovery"
        time.sleep(0.2)


def test_validation_answers_422_with_field_paths(cluster: Server, tmp_path: Path) -> None:
    bad_ns = cluster.kubectl("create", "namespace", "Bad_Name", check=False)
    assert bad_ns.returncode != 0
    assert 'The Namespace "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"' in bad_ns.stderr
    policy = write(tmp_path / "np.yaml", """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: icmp, labels: {"bad key": v}}
spec:
  podSelector: {}
  ingress:
  - ports: [{protocol: ICMP, port: 0}]
""")
    refused = cluster.kubectl("create", "-f", policy, check=False)
    assert refused.returncode != 0
    for part in ('spec.ingress[0].ports[0].protocol: Unsupported value: "ICMP"',
                 "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                 'metadata.labels: Invalid value: "bad key"'):
        assert part in refused.stderr, refused.stderr


def test_server_side_apply_tracks_field_managers(cluster: Server, tmp_path: Path) -> None:
    head = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owned}\n"
    cm = write(tmp_path / "cm.yaml", head + "data: {a: '1', b: '2'}\n")
    assert "configmap/owned serverside-applied" in cluster.kubectl("apply", "--server-side", "-f", cm).stdout
    write(tmp_path / "cm.yaml", head + "data: {a: '1'}\n")
    cluster.kubectl("apply", "--server-side", "-f", cm)
    got = json.loads(cluster.kubectl("get", "configmap", "owned", "-o", "json", "--show-managed-fields").stdout)
    assert got["data"] == {"a": "1"}, "a field the manager stopped applying is removed"
    assert [(m["manager"], m["operation"]) for m in got["metadata"]["managedFields"]] == [("kubectl", "Apply")]
    other = write(tmp_path / "other.yaml", head + "data: {a: '9'}\n")
    conflict = cluster.kubectl("apply", "--server-side", "--field-manager=other", "-f", other, check=False)
    assert conflict.returncode != 0 and 'conflict with "kubectl"' in conflict.stderr
    cluster.kubectl("apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", other)
    value = cluster.kubectl("get", "configmap", "owned", "-o", "jsonpath={.data.a}").stdout
    assert value == "9"


def test_calico_manifest_by_server_side_apply_is_repeatable(cluster: Server) -> None:
    # Calico's documented alternative to `kubectl create` for manifests whose CRDs are too big for
    # client-side apply's annotation.
    docs = documents(CALICO_TYPHA)
    for _ in range(2):
        out = cluster.kubectl("apply", "--server-side", "-f", str(CALICO_TYPHA)).stdout
        assert out.count(" serverside-applied\n") == len(docs), out
    node = json.loads(cluster.kubectl("get", "daemonset", "calico-node", "-n", "kube-system", "-o", "json",
                                      "--show-managed-fields").stdout)
    assert [(m["manager"], m["operation"]) for m in node["metadata"]["managedFields"]] == [("kubectl", "Apply")]
    assert "kubectl.kubernetes.io/last-applied-configuration" not in (node["metadata"].get("annotations") or {})


def test_calico_upgrade_path_create_then_server_side_apply_with_force(cluster: Server) -> None:
    # Calico's upgrade instructions re-apply the new manifest over a `kubectl create`d install with
    # `kubectl apply --server-side --force-conflicts`.
    docs = documents(CALICO_TYPHA)
    cluster.kubectl("create", "-f", str(CALICO_TYPHA))
    out = cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CALICO_TYPHA)).stdout
    assert out.count(" serverside-applied\n") == len(docs), out
    assert_every_object_gettable(cluster, docs)
