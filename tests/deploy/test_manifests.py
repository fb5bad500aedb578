"""deploy/: both kustomize overlays render, every object passes the Kubernetes OpenAPI schemas, and RBAC,
probes, names and settings agree with the code.

The schemas come from the `kubernetes-validate` package (shipped inside it, no download). Rendering
needs `kubectl` (its built-in kustomize); without it the rendering tests are skipped.
"""

from __future__ import annotations

import copy
import dataclasses
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
from typha.model.resources import by_key
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
    """API group -> plurals: every kind any syncer lists and watches, from the code."""
    wanted: dict[str, set[str]] = {}
    for syncer_type in SYNCER_TYPES:
        for key in converters_for(syncer_type):
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
        ("ClusterRole", "calico-typha"),
        ("ClusterRoleBinding", "calico-typha"),
        ("Role", "calico-typha-autoscaler"),
        ("RoleBinding", "calico-typha-autoscaler"),
        ("Deployment", "calico-typha"),
        ("PodDisruptionBudget", "calico-typha"),
        ("Service", "calico-typha"),
        ("DaemonSet", "typha-agents"),
    ])
    for obj in objects:
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]


# -- RBAC ------------------------------------------------------------------------------------------


def test_typha_cluster_role_is_exactly_what_the_syncers_watch(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    role = one(objects, "ClusterRole", "calico-typha")
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
    assert roles == {("ClusterRoleBinding", "ClusterRole", "calico-typha"),
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
    assert {"name": "calico-typha", "containerPort": 5473, "protocol": "TCP"} in typha["ports"]
    for probe, path in (("readinessProbe", "/readiness"), ("livenessProbe", "/liveness")):
        assert typha[probe]["httpGet"]["port"] == 9098
        assert typha[probe]["httpGet"]["path"] == path

    # Every TYPHA_* variable is a setting typha has, and together they form a valid configuration.
    known = {typha_config.env_name(f) for f in dataclasses.fields(typha_config.TyphaConfig)}
    env_names = {e["name"] for e in typha["env"]}
    unknown = {n for n in env_names if n.startswith("TYPHA_")} - known
    assert not unknown
    env = plain_env(typha) | {"TYPHA_K8SNAMESPACE": NAMESPACE}
    config = typha_config.load(environ=env)
    assert config.health_enabled
    assert config.health_port == 9098
    assert config.effective_server_port == 5473
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
