"""deploy/: both kustomize overlays render, every object passes the Kubernetes OpenAPI schemas, and RBAC,
probes, names and settings agree with the code.

The schemas come from the `kubernetes-validate` package (shipped inside it, no download). Rendering
needs `kubectl` (its built-in kustomize); without it the rendering tests are skipped.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from typha import config as typha_config
from typha.cli import build_parser
from typha.model.resources import CALICO_API_GROUPS, by_key
from typha.ops.autoscale import AutoscaleSettings
from typha.source.datastore import SYNCER_TYPES, converters_for

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("plain", "tls")
KUBECTL = shutil.which("kubectl")
# The oldest Kubernetes the manifests claim to support, and the newest schema the package ships.
SCHEMA_VERSIONS = ("1.29.0", "1.37.0")
NAMESPACE = "typha-system"
TYPHA_SA = "calico-typha"
AGENT_SA = "typha-agent"
READ_VERBS = {"get", "list", "watch"}
CLUSTER_ROLE = "typha-py"  # this project's name: never one Calico or the Tigera operator creates
# Ports of the Typha container: not Calico's Typha's 5473/9098/9093, which share the host network.
SYNC_PORT, HEALTH_PORT, METRICS_PORT = 5475, 9096, 9095
FELIX_CLIENT_HEALTH_PORT = 9097  # not calico-node Felix's 9099
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "APIService",
                  "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "CSIDriver", "StorageClass",
                  "CustomResourceDefinition", "PodSecurityPolicy", "IngressClass", "RuntimeClass"}
# Cluster-scoped names Calico creates, as facts: from projectcalico/calico's manifests/ (calico*.yaml,
# canal*.yaml, apiserver.yaml, tigera-operator.yaml, calicoctl.yaml, csi-driver.yaml), plus the
# ClusterRole and ClusterRoleBinding `calico-typha` the Tigera operator creates for its Typha.
CALICO_CLUSTER_NAMES: dict[str, set[str]] = {
    "Namespace": {"calico-system", "calico-apiserver", "tigera-operator"},
    "ClusterRole": {"calico-cni-plugin", "calico-crds", "calico-extension-apiserver-auth-access",
                    "calico-kube-controllers", "calico-node", "calico-tier-getter", "calico-webhook-reader",
                    "calico-webhooks", "calicoctl", "canal", "flannel", "tigera-operator", "tigera-operator-secrets",
                    "calico-typha"},
    "ClusterRoleBinding": {"calico-apiserver-access-crds", "calico-apiserver-delegate-auth",
                           "calico-apiserver-webhook-reader", "calico-cni-plugin",
                           "calico-extension-apiserver-auth-access", "calico-kube-controllers", "calico-node",
                           "calico-tier-getter", "calico-webhooks", "calicoctl", "canal", "canal-calico",
                           "canal-flannel", "tigera-operator", "calico-typha"},
    "APIService": {"v3.projectcalico.org"},
    "ValidatingWebhookConfiguration": {"calico-webhooks"},
    "CSIDriver": {"csi.tigera.io"},
}
# The names Calico's projects use as prefixes; ours start with "typha-" instead.
CALICO_PREFIXES = ("calico", "tigera", "canal", "flannel")

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (for kustomize) is not on PATH")


def render(overlay: str) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    result = subprocess.run([KUBECTL, "kustomize", str(DEPLOY / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    if KUBECTL is None:
        pytest.skip("kubectl (for kustomize) is not on PATH")
    return request.param, render(request.param)


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(pod_owner: dict[str, Any], name: str) -> dict[str, Any]:
    containers = pod_owner["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == name]
    assert len(found) == 1, f"container {name} not found"
    return found[0]


def plain_env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def syncer_resources() -> dict[str, set[str]]:
    """API group -> plurals: every kind any syncer lists and watches, from the code, for either Calico
    API group typha may find (crd.projectcalico.org/v1 or projectcalico.org/v3)."""
    wanted: dict[str, set[str]] = {}
    for syncer_type, api_group in itertools.product(SYNCER_TYPES, CALICO_API_GROUPS):
        for key in converters_for(syncer_type, api_group):
            resource = by_key(key)
            wanted.setdefault(resource.group, set()).add(resource.plural)
    return wanted


# -- schemas ---------------------------------------------------------------------------------------


def _schema_error(obj: dict[str, Any], version: str) -> str | None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        # The exception's text embeds the whole schema; the message and the path are what helps.
        path = "/".join(str(p) for p in err.absolute_path)
        return f"{obj['kind']}/{obj['metadata'].get('name')}: {err.message} at /{path}"
    return None


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_passes_the_kubernetes_schema(rendered: tuple[str, list[dict[str, Any]]],
                                                   version: str) -> None:
    _, objects = rendered
    assert objects
    errors = [e for e in (_schema_error(o, version) for o in objects) if e]
    assert not errors, "\n".join(errors)


def test_the_schema_check_is_not_vacuous() -> None:
    """A misspelt field and a wrong type are caught: strict mode refuses what the API server would drop."""
    if KUBECTL is None:
        pytest.skip("kubectl (for kustomize) is not on PATH")
    deployment = one(render("plain"), "Deployment", "calico-typha")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["terminationGracePeriod"] = 300
    assert _schema_error(typo, SCHEMA_VERSIONS[-1])
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "5473"
    assert _schema_error(wrong_type, SCHEMA_VERSIONS[-1])


def test_the_expected_objects_are_there(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == sorted([
        ("Namespace", NAMESPACE),
        ("ServiceAccount", TYPHA_SA),
        ("ServiceAccount", AGENT_SA),
        ("ClusterRole", CLUSTER_ROLE),
        ("ClusterRoleBinding", CLUSTER_ROLE),
        ("Role", "calico-typha-autoscaler"),
        ("RoleBinding", "calico-typha-autoscaler"),
        ("Deployment", "calico-typha"),
        ("PodDisruptionBudget", "calico-typha"),
        ("Service", "calico-typha"),
        ("Service", "typha-metrics"),
        ("DaemonSet", "typha-agents"),
    ])
    for obj in objects:
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]


# -- RBAC ------------------------------------------------------------------------------------------


def test_typha_cluster_role_is_exactly_what_the_syncers_watch(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    role = one(objects, "ClusterRole", CLUSTER_ROLE)
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule, rule
        verbs = set(rule["verbs"])
        assert verbs <= READ_VERBS, f"write or wildcard verbs in {rule}"
        assert {"list", "watch"} <= verbs, f"a reflector needs list and watch: {rule}"
        for group in rule["apiGroups"]:
            assert "*" not in rule["resources"] and group != "*", rule
            granted.setdefault(group, set()).update(rule["resources"])
    assert granted == syncer_resources()


def test_bindings_give_the_agents_nothing_and_typha_only_its_roles(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    subjects = {(s["kind"], s.get("namespace"), s["name"]) for b in bindings for s in b["subjects"]}
    assert subjects == {("ServiceAccount", NAMESPACE, TYPHA_SA)}
    roles = {(b["kind"], b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings}
    assert roles == {("ClusterRoleBinding", "ClusterRole", CLUSTER_ROLE),
                     ("RoleBinding", "Role", "calico-typha-autoscaler")}
    agents = one(objects, "DaemonSet", "typha-agents")["spec"]["template"]["spec"]
    assert agents["serviceAccountName"] == AGENT_SA
    assert agents["automountServiceAccountToken"] is False
    assert one(objects, "ServiceAccount", AGENT_SA).get("automountServiceAccountToken") is False


def test_autoscaler_role_is_its_deployment_and_its_lease_only(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    defaults = AutoscaleSettings()
    role = one(objects, "Role", "calico-typha-autoscaler")
    rules = sorted(
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r.get("resourceNames", ())), tuple(sorted(r["verbs"])))
        for r in role["rules"]
    )
    assert rules == sorted([
        (("apps",), ("deployments",), (defaults.deployment,), ("get", "patch")),
        (("coordination.k8s.io",), ("leases",), (defaults.lease_name,), ("get", "update")),
        # create cannot be limited by name: the Kubernetes authorizer does not know it yet
        (("coordination.k8s.io",), ("leases",), (), ("create",)),
    ])


# -- workloads -------------------------------------------------------------------------------------


def test_typha_deployment(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    deployment = one(objects, "Deployment", "calico-typha")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert "replicas" not in spec  # owned by the autoscaler
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == "100%"
    assert pod["terminationGracePeriodSeconds"] == 300
    assert pod["serviceAccountName"] == TYPHA_SA
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert any(t["topologyKey"] == "kubernetes.io/hostname"
               and t["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"] for t in anti)

    typha = container(deployment, "calico-typha")
    argv = typha["command"]
    assert argv[0] == "typha"
    assert "serve" in argv
    build_parser().parse_args(argv[1:])  # the command line parses
    assert {"name": "calico-typha", "containerPort": SYNC_PORT, "protocol": "TCP"} in typha["ports"]
    for probe, path in (("readinessProbe", "/readiness"), ("livenessProbe", "/liveness")):
        assert typha[probe]["httpGet"]["port"] == HEALTH_PORT
        assert typha[probe]["httpGet"]["path"] == path

    # Every TYPHA_* variable is a setting typha has, and together they form a valid configuration.
    known = {typha_config.env_name(f) for f in dataclasses.fields(typha_config.TyphaConfig)}
    env_names = {e["name"] for e in typha["env"]}
    unknown = {n for n in env_names if n.startswith("TYPHA_")} - known
    assert not unknown
    env = plain_env(typha) | {"TYPHA_K8SNAMESPACE": NAMESPACE}
    config = typha_config.load(environ=env)
    assert config.health_enabled
    assert config.health_port == HEALTH_PORT
    assert config.effective_server_port == SYNC_PORT
    assert config.prometheus_metrics_enabled
    assert {"name": "metrics", "containerPort": config.prometheus_metrics_port, "protocol": "TCP"} in typha["ports"]
    assert config.connection_rebalancing_mode == "kubernetes"
    assert config.shutdown_timeout_secs < pod["terminationGracePeriodSeconds"]
    assert config.requires_tls == (overlay == "tls")

    autoscaler = container(deployment, "autoscaler")
    args = build_parser().parse_args(autoscaler["command"][1:])
    assert args.command == "autoscale"
    assert args.deployment == deployment["metadata"]["name"]


def test_pdb_and_service(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    labels = one(objects, "Deployment", "calico-typha")["spec"]["template"]["metadata"]["labels"]
    pdb = one(objects, "PodDisruptionBudget", "calico-typha")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    service = one(objects, "Service", "calico-typha")["spec"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"] == [{"name": "calico-typha", "port": 5473, "targetPort": "calico-typha",
                                 "protocol": "TCP"}]


def test_agents_daemonset(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    daemonset = one(objects, "DaemonSet", "typha-agents")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    service = one(objects, "Service", "calico-typha")
    meta, port = service["metadata"], service["spec"]["ports"][0]["port"]
    address = f"{meta['name']}.{meta['namespace']}.svc:{port}"
    for name, program in (("felix-client", "felix-client"), ("confd-client", "confd-client")):
        c = container(daemonset, name)
        assert c["command"][0] == program
        env = plain_env(c)
        assert env["FELIX_TYPHAADDR"] == address
        tls = {k for k in env if k.startswith("FELIX_TYPHA") and k != "FELIX_TYPHAADDR"}
        if overlay == "tls":
            assert tls == {"FELIX_TYPHACAFILE", "FELIX_TYPHACERTFILE", "FELIX_TYPHAKEYFILE", "FELIX_TYPHACN"}
            for key in ("FELIX_TYPHACAFILE", "FELIX_TYPHACERTFILE", "FELIX_TYPHAKEYFILE"):
                assert any(env[key].startswith(m["mountPath"] + "/") for m in c["volumeMounts"]), key
        else:
            assert not tls


def test_tls_overlay_mounts_the_secrets_it_names() -> None:
    if KUBECTL is None:
        pytest.skip("kubectl (for kustomize) is not on PATH")
    objects = render("tls")
    for owner, container_names, secret in (
        (one(objects, "Deployment", "calico-typha"), ("calico-typha",), "typha-server-tls"),
        (one(objects, "DaemonSet", "typha-agents"), ("felix-client", "confd-client"), "typha-client-tls"),
    ):
        pod = owner["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        secret_volumes = [n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == secret]
        assert len(secret_volumes) == 1
        for name in container_names:
            mounts = {m["name"]: m for m in container(owner, name)["volumeMounts"]}
            assert mounts[secret_volumes[0]]["readOnly"] is True
        typha_env = plain_env(container(owner, container_names[0]))
        for value in typha_env.values():
            if value.startswith("/etc/typha/tls/"):
                assert Path(value).name in ("ca.crt", "tls.crt", "tls.key")


def test_every_container_has_a_read_only_root_and_tmp_is_an_empty_dir(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for owner in (o for o in objects if o["kind"] in ("Deployment", "DaemonSet")):
        pod = owner["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], c["name"]
            if not c["securityContext"].get("privileged"):
                assert c["securityContext"].get("allowPrivilegeEscalation") is False, c["name"]
                assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["name"]


# -- the image -------------------------------------------------------------------------------------


def test_dockerfile_is_slim_non_root_and_matches_the_manifests() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")]
    bases = [rest for op, *rest in instructions if op == "FROM"]
    assert bases
    assert all(b[0].startswith("python:3.11-slim") for b in bases)
    users = [rest[0] for op, *rest in instructions if op == "USER"]
    assert users, "the image must not run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    assert re.search(r"PYTHONDONTWRITEBYTECODE=1", text)
    # The manifests' non-root user is the image's user.
    deployment = yaml.safe_load((DEPLOY / "base" / "typha-deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)
    cmd = next(rest[0] for op, *rest in reversed(instructions) if op == "CMD")
    argv = yaml.safe_load(cmd)  # the JSON form
    assert argv[0] == "typha"
    build_parser().parse_args(argv[1:])
    # Everything the build copies is let through the Dockerfile's own ignore file.
    copied = [source for op, *rest in instructions if op == "COPY" and "--from" not in rest[0]
              for source in shlex.split(rest[0])[:-1]]
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for source in copied:
        assert f"!{source}" in ignore or f"!{source}/**" in ignore, source
        assert (ROOT / source).exists(), source


# -- beside Calico ---------------------------------------------------------------------------------


def test_no_cluster_scoped_name_is_one_calico_creates(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Applying an object under a name the Tigera operator or Calico's manifests use (ClusterRole
    `calico-typha`, …) would overwrite Calico's own."""
    _, objects = rendered
    cluster_scoped = [(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] in CLUSTER_SCOPED]
    assert cluster_scoped, "the check must see the cluster-scoped objects"
    for kind, name in cluster_scoped:
        assert name not in CALICO_CLUSTER_NAMES.get(kind, set()), f"{kind} {name} is Calico's"
        assert not name.startswith(CALICO_PREFIXES), f"{kind} {name} takes a Calico prefix"
        assert name.startswith("typha-"), f"{kind} {name}: not named for this project"


def test_host_ports_are_not_calicos(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Both run on the host network: a port calico-node or Calico's Typha holds would keep ours, or
    theirs, from starting on that node."""
    _, objects = rendered
    calico_host_ports = {5473, 9098, 9093, 9099, 9091, 9094, 179}
    typha = container(one(objects, "Deployment", "calico-typha"), "calico-typha")
    config = typha_config.load(environ=plain_env(typha) | {"TYPHA_K8SNAMESPACE": NAMESPACE})
    used = {config.effective_server_port, config.health_port, config.prometheus_metrics_port}
    felix = plain_env(container(one(objects, "DaemonSet", "typha-agents"), "felix-client"))
    used.add(int(felix["FELIX_HEALTHPORT"]))
    assert not used & calico_host_ports, sorted(used & calico_host_ports)
    assert felix["FELIX_HEALTHHOST"] == "127.0.0.1"


def test_metrics_service_selects_typha_and_names_its_port(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    labels = one(objects, "Deployment", "calico-typha")["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service", "typha-metrics")["spec"]
    assert service["selector"].items() <= labels.items()
    typha = container(one(objects, "Deployment", "calico-typha"), "calico-typha")
    metrics_port = next(p["containerPort"] for p in typha["ports"] if p["name"] == "metrics")
    assert service["ports"] == [{"name": "metrics", "port": metrics_port, "targetPort": "metrics",
                                 "protocol": "TCP"}]


def test_servicemonitor_component_renders_and_selects_the_metrics_service() -> None:
    if KUBECTL is None:
        pytest.skip("kubectl (for kustomize) is not on PATH")
    component = DEPLOY / "components" / "servicemonitor"
    docs = [d for d in yaml.safe_load_all((component / "servicemonitor.yaml").read_text()) if d]
    assert [d["kind"] for d in docs] == ["ServiceMonitor"]
    monitor = docs[0]
    service = one(render("plain"), "Service", "typha-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [service["spec"]["ports"][0]["name"]]


def test_both_agents_have_probes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    daemonset = one(objects, "DaemonSet", "typha-agents")
    felix = container(daemonset, "felix-client")
    env = plain_env(felix)
    assert env["FELIX_HEALTHENABLED"] == "true"
    for probe, path in (("readinessProbe", "/readiness"), ("livenessProbe", "/liveness")):
        assert felix[probe]["httpGet"] == {"host": env["FELIX_HEALTHHOST"], "path": path,
                                           "port": int(env["FELIX_HEALTHPORT"])}
    confd = container(daemonset, "confd-client")
    config_dir = confd["command"][confd["command"].index("--config-dir") + 1]
    for probe in ("readinessProbe", "livenessProbe"):
        command = confd[probe]["exec"]["command"]
        assert command[:2] == ["test", "-s"]
        assert command[2] == f"{config_dir}/bird.cfg"
    assert env["FELIX_IPTABLESBACKEND"].lower() in ("auto", "legacy", "nft")


def _quantity(text: str | int) -> float:
    """A Kubernetes quantity as a number (CPUs, or bytes for memory)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match, text
    return float(match[1]) * units.get(match[2], 1)


def test_workers_cpu_and_memory_agree(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Workers follow the CPU limit (typha's default), memory follows the workers, at the per-worker figure
    measured in deploy/README.md."""
    _, objects = rendered
    typha = container(one(objects, "Deployment", "calico-typha"), "calico-typha")
    env = plain_env(typha)
    resources = typha["resources"]
    assert "cpu" in resources["limits"], "without a CPU limit the workers would follow the node's CPUs"
    workers = math.ceil(_quantity(resources["limits"]["cpu"]))
    if "TYPHA_WORKERS" in env:
        assert int(env["TYPHA_WORKERS"]) <= workers
        workers = int(env["TYPHA_WORKERS"])
    sizing = re.search(r"memory-sizing.*?base_mib=(\d+) per_worker_mib=(\d+) headroom=([0-9.]+)",
                       (DEPLOY / "README.md").read_text())
    assert sizing, "deploy/README.md must record the measured memory figures"
    base, per_worker, headroom = int(sizing[1]), int(sizing[2]), float(sizing[3])
    needed = (base + workers * per_worker) * 2**20
    assert _quantity(resources["requests"]["memory"]) >= needed
    assert _quantity(resources["limits"]["memory"]) >= needed * headroom
    assert _quantity(resources["requests"]["cpu"]) <= _quantity(resources["limits"]["cpu"])


def test_usable_cpus_reads_the_quota_the_manifest_sets(tmp_path: Path) -> None:
    """The worker count the test above assumes is what typha computes from that limit's cpu.max."""
    deployment = yaml.safe_load((DEPLOY / "base" / "typha-deployment.yaml").read_text())
    typha = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "calico-typha")
    cpus = _quantity(typha["resources"]["limits"]["cpu"])
    (tmp_path / "cpu.max").write_text(f"{int(cpus * 100000)} 100000\n")
    (tmp_path / "cgroup").write_text("0::/\n")
    assert typha_config.usable_cpus(str(tmp_path / "cgroup"), str(tmp_path)) == min(
        math.ceil(cpus), len(__import__("os").sched_getaffinity(0)))
