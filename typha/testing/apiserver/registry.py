"""Which resources the emulator serves: the built-in kinds, plus whatever CustomResourceDefinitions add.

The built-in table covers the groups Calico's release manifests and the project's `deploy/` use, with
the plurals, scopes, short names and categories a v1.32 API server advertises (`kubectl api-resources`
on a kind cluster). Custom resources come and go with their CustomResourceDefinition: `register_crd`
reads a CRD's spec (every served version), `unregister_crd` drops what it added. The registry is
thread-safe; every change bumps `generation`, which tells the server to rebuild its discovery documents.

A resource is identified by (group, version, plural) - the REST path - not by the `Resource` value,
whose short names a CRD update may change.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from typha.model.resources import RESOURCES as MODEL_RESOURCES
from typha.model.resources import Resource

CRD_GROUP = "apiextensions.k8s.io"
CRD_API_VERSION = f"{CRD_GROUP}/v1"

# Groups whose kinds are compiled into a real API server; every other group is a custom resource's.
BUILTIN_GROUPS = frozenset(
    {
        "",
        "apps",
        "rbac.authorization.k8s.io",
        "policy",
        "coordination.k8s.io",
        "discovery.k8s.io",
        "networking.k8s.io",
        "admissionregistration.k8s.io",
        CRD_GROUP,
        "autoscaling",
        "batch",
    }
)


def is_custom(resource: Resource) -> bool:
    return resource.group not in BUILTIN_GROUPS


def rkey(resource: Resource) -> tuple[str, str, str]:
    """The identity of a resource: its REST path's group, version and plural."""
    return resource.group, resource.version, resource.plural


@dataclass(frozen=True, slots=True)
class Served:
    """One served resource and what discovery says about it beyond the `Resource` fields."""

    resource: Resource
    categories: tuple[str, ...] = ()
    status: bool = False  # has a /status subresource
    crd: str | None = None  # the CustomResourceDefinition that added it
    columns: tuple[dict[str, Any], ...] = ()  # the CRD version's additionalPrinterColumns


def _b(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool,
    short: tuple[str, ...] = (),
    *,
    categories: tuple[str, ...] = (),
    status: bool = False,
) -> Served:
    return Served(Resource(group, version, plural, kind, namespaced, short), categories, status)


_ALL = ("all",)
_API_EXT = ("api-extensions",)

BUILTIN: tuple[Served, ...] = (
    # core/v1
    _b("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    _b("", "v1", "endpoints", "Endpoints", True, ("ep",)),
    _b("", "v1", "events", "Event", True, ("ev",)),
    _b("", "v1", "limitranges", "LimitRange", True, ("limits",)),
    _b("", "v1", "namespaces", "Namespace", False, ("ns",), status=True),
    _b("", "v1", "nodes", "Node", False, ("no",), status=True),
    _b("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",), status=True),
    _b("", "v1", "persistentvolumes", "PersistentVolume", False, ("pv",), status=True),
    _b("", "v1", "pods", "Pod", True, ("po",), categories=_ALL, status=True),
    _b("", "v1", "podtemplates", "PodTemplate", True),
    _b("", "v1", "replicationcontrollers", "ReplicationController", True, ("rc",), categories=_ALL,
       status=True),
    _b("", "v1", "resourcequotas", "ResourceQuota", True, ("quota",), status=True),
    _b("", "v1", "secrets", "Secret", True),
    _b("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
    _b("", "v1", "services", "Service", True, ("svc",), categories=_ALL, status=True),
    # apps/v1
    _b("apps", "v1", "controllerrevisions", "ControllerRevision", True),
    _b("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",), categories=_ALL, status=True),
    _b("apps", "v1", "deployments", "Deployment", True, ("deploy",), categories=_ALL, status=True),
    _b("apps", "v1", "replicasets", "ReplicaSet", True, ("rs",), categories=_ALL, status=True),
    _b("apps", "v1", "statefulsets", "StatefulSet", True, ("sts",), categories=_ALL, status=True),
    # autoscaling
    _b("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True, ("hpa",),
       categories=_ALL, status=True),
    _b("autoscaling", "v1", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True, ("hpa",),
       categories=_ALL, status=True),
    # batch/v1
    _b("batch", "v1", "cronjobs", "CronJob", True, ("cj",), categories=_ALL, status=True),
    _b("batch", "v1", "jobs", "Job", True, categories=_ALL, status=True),
    # coordination, discovery, networking, policy
    _b("coordination.k8s.io", "v1", "leases", "Lease", True),
    _b("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    _b("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False),
    _b("networking.k8s.io", "v1", "ingresses", "Ingress", True, ("ing",), status=True),
    _b("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",)),
    _b("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("pdb",), status=True),
    # rbac.authorization.k8s.io/v1
    _b("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _b("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _b("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    _b("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    # admissionregistration.k8s.io/v1 (the admission policies are what Calico's v3 manifest installs)
    _b("admissionregistration.k8s.io", "v1", "mutatingadmissionpolicies", "MutatingAdmissionPolicy", False,
       categories=_API_EXT),
    _b("admissionregistration.k8s.io", "v1", "mutatingadmissionpolicybindings", "MutatingAdmissionPolicyBinding",
       False, categories=_API_EXT),
    _b("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration",
       False, categories=_API_EXT),
    _b("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies", "ValidatingAdmissionPolicy", False,
       categories=_API_EXT, status=True),
    _b("admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings",
       "ValidatingAdmissionPolicyBinding", False, categories=_API_EXT),
    _b("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
       "ValidatingWebhookConfiguration", False, categories=_API_EXT),
    # apiextensions.k8s.io/v1
    _b(CRD_GROUP, "v1", "customresourcedefinitions", "CustomResourceDefinition", False, ("crd", "crds"),
       categories=_API_EXT, status=True),
)

# Calico's v1 CRDs as `--crds calico-v1` preinstalls them: the model's own table, so that the
# instances the model hands to test code are the ones the emulator serves.
CALICO_V1: tuple[Served, ...] = tuple(
    Served(r, status=r.kind == "CalicoNodeStatus") for r in MODEL_RESOURCES if is_custom(r)
)

CRD_PRESETS = ("calico-v1", "none")


class CrdError(ValueError):
    """A CustomResourceDefinition the emulator cannot serve (bad names, clashing resources)."""


def crd_resources(crd: dict[str, Any]) -> list[Served]:
    """The resources a CustomResourceDefinition object serves: one per served version."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    if not (isinstance(group, str) and isinstance(plural, str) and isinstance(kind, str)):
        raise CrdError("spec.group, spec.names.plural and spec.names.kind are required")
    expected = f"{plural}.{group}"
    name = (crd.get("metadata") or {}).get("name")
    if name != expected:
        raise CrdError(f'metadata.name: Invalid value: "{name}": must be spec.names.plural+"."+spec.group')
    scope = spec.get("scope")
    if scope not in ("Namespaced", "Cluster"):
        raise CrdError(f'spec.scope: Unsupported value: "{scope}": supported values: "Cluster", "Namespaced"')
    short = tuple(s for s in names.get("shortNames") or () if isinstance(s, str))
    categories = tuple(c for c in names.get("categories") or () if isinstance(c, str))
    served: list[Served] = []
    versions = spec.get("versions") or []
    if not versions:
        raise CrdError("spec.versions: Invalid value: must have exactly one version marked as storage version")
    for version in versions:
        if not isinstance(version, dict) or not version.get("served", False):
            continue
        subresources = version.get("subresources") or {}
        resource = Resource(group, str(version.get("name")), plural, kind, scope == "Namespaced", short)
        columns = tuple(
            c for c in version.get("additionalPrinterColumns") or () if isinstance(c, dict) and c.get("jsonPath")
        )
        served.append(Served(resource, categories, "status" in subresources, crd=str(name), columns=columns))
    return served


class Registry:
    """The served resources by REST path and by (apiVersion, kind), changed by CRDs at run time."""

    def __init__(self, crds: str = "calico-v1"):
        if crds not in CRD_PRESETS:
            raise ValueError(f"unknown CRD preset {crds!r}; choose from {', '.join(CRD_PRESETS)}")
        self._lock = threading.Lock()
        self._served: dict[tuple[str, str, str], Served] = {}
        self._by_kind: dict[tuple[str, str], Resource] = {}  # (apiVersion, kind), rebuilt on change
        self.generation = 0
        self._add(BUILTIN)
        if crds == "calico-v1":
            self._add(CALICO_V1)

    def _add(self, entries: Iterable[Served]) -> None:
        for entry in entries:
            self._served[rkey(entry.resource)] = entry
        self._changed()

    def _changed(self) -> None:
        self._by_kind = {(e.resource.api_version, e.resource.kind): e.resource for e in self._served.values()}
        self.generation += 1

    def served(self) -> list[Served]:
        with self._lock:
            return list(self._served.values())

    def resources(self) -> list[Resource]:
        return [s.resource for s in self.served()]

    def by_path(self, api_version: str, plural: str) -> Served | None:
        group, _, version = api_version.rpartition("/")
        with self._lock:
            return self._served.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> Resource | None:
        return self._by_kind.get((api_version, kind))  # replaced whole on change: no lock needed

    def canonical(self, resource: Resource) -> Resource:
        """The served instance for `resource` (same path), or `resource` itself if none is served."""
        with self._lock:
            entry = self._served.get(rkey(resource))
        return entry.resource if entry is not None else resource

    def register_crd(self, crd: dict[str, Any]) -> list[Resource]:
        """Serve what `crd` defines (replacing what an earlier version of it served); the resources
        it no longer serves are returned, for the caller to drop their objects."""
        entries = crd_resources(crd)
        name = str(crd["metadata"]["name"])
        with self._lock:
            for entry in entries:
                existing = self._served.get(rkey(entry.resource))
                if existing is not None and existing.crd != name and existing not in CALICO_V1:
                    raise CrdError(f"{entry.resource.key} is already served by {existing.crd or 'the server'}")
            keep = {rkey(e.resource) for e in entries}
            stale = [k for k, e in self._served.items() if e.crd == name and k not in keep]
            dropped = [self._served.pop(k).resource for k in stale]  # e.g. a version no longer served
            self._add(entries)
            return dropped

    def unregister_crd(self, name: str) -> list[Resource]:
        """Stop serving what the CRD `name` added; returns those resources."""
        with self._lock:
            gone = [k for k, e in self._served.items() if e.crd == name]
            dropped = [self._served.pop(k).resource for k in gone]
            self._changed()
            return dropped
