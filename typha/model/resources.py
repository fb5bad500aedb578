"""The Kubernetes resource kinds the system knows: API group, version, plural, kind and scope.

One table shared by the API emulator (what it serves and advertises), the reflectors (what URL to
list and watch) and the syncers (which kinds feed which syncer). A resource is named by its `key`,
which is what `kubectl` accepts: the plural for the core group, `plural.group` otherwise.

Calico's own kinds live in one of two API groups (libcalico-go `BackingAPIGroup`): the
`crd.projectcalico.org/v1` CRDs that clusters have always had, or the native `projectcalico.org/v3`
CRDs newer clusters install instead. Both sets are here; `RESOURCES` (what the emulator serves) holds
the v1 ones, and `calico_resource` picks a kind in either group.
"""

from __future__ import annotations

from dataclasses import dataclass

CALICO_CRD_GROUP = "crd.projectcalico.org"
CALICO_V3_GROUP = "projectcalico.org"
# The two values of libcalico-go's BackingAPIGroup (and of CALICO_API_GROUP).
CALICO_API_V1 = f"{CALICO_CRD_GROUP}/v1"
CALICO_API_V3 = f"{CALICO_V3_GROUP}/v3"
CALICO_API_GROUPS = (CALICO_API_V1, CALICO_API_V3)


@dataclass(frozen=True, slots=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """The REST path of the collection (or of one object when `name` is given)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        return base


def _calico(kind: str, plural: str, namespaced: bool = False) -> Resource:
    return Resource(CALICO_CRD_GROUP, "v1", plural, kind, namespaced)


# The v3 CRDs rename one kind (manifests/calico-v3-crds.yaml); every other kind and plural is shared.
_V3_RENAMED = {"IPAMConfig": ("IPAMConfiguration", "ipamconfigurations")}


def _v3_twin(v1: Resource) -> Resource:
    kind, plural = _V3_RENAMED.get(v1.kind, (v1.kind, v1.plural))
    return Resource(CALICO_V3_GROUP, "v3", plural, kind, v1.namespaced)


RESOURCES: tuple[Resource, ...] = (
    # core/v1
    Resource("", "v1", "nodes", "Node", False, ("no",)),
    Resource("", "v1", "pods", "Pod", True, ("po",)),
    Resource("", "v1", "namespaces", "Namespace", False, ("ns",)),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
    Resource("", "v1", "services", "Service", True, ("svc",)),
    Resource("", "v1", "secrets", "Secret", True),
    Resource("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    # other built-in groups
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",)),
    Resource("apps", "v1", "deployments", "Deployment", True, ("deploy",)),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", True),
    # Calico's CRDs, as the Kubernetes datastore stores them
    _calico("IPPool", "ippools"),
    _calico("IPAMBlock", "ipamblocks"),
    _calico("BlockAffinity", "blockaffinities"),
    _calico("IPAMHandle", "ipamhandles"),
    _calico("IPAMConfig", "ipamconfigs"),
    _calico("BGPPeer", "bgppeers"),
    _calico("BGPConfiguration", "bgpconfigurations"),
    _calico("BGPFilter", "bgpfilters"),
    _calico("FelixConfiguration", "felixconfigurations"),
    _calico("ClusterInformation", "clusterinformations"),
    _calico("GlobalNetworkPolicy", "globalnetworkpolicies"),
    _calico("StagedGlobalNetworkPolicy", "stagedglobalnetworkpolicies"),
    _calico("NetworkPolicy", "networkpolicies", namespaced=True),
    _calico("StagedNetworkPolicy", "stagednetworkpolicies", namespaced=True),
    _calico("StagedKubernetesNetworkPolicy", "stagedkubernetesnetworkpolicies", namespaced=True),
    _calico("GlobalNetworkSet", "globalnetworksets"),
    _calico("NetworkSet", "networksets", namespaced=True),
    _calico("HostEndpoint", "hostendpoints"),
    _calico("Tier", "tiers"),
    _calico("KubeControllersConfiguration", "kubecontrollersconfigurations"),
    _calico("CalicoNodeStatus", "caliconodestatuses"),
)

# The same kinds as native projectcalico.org/v3 CRDs. Not in RESOURCES: the emulator serves them
# only once their CRDs are installed.
CALICO_V3_RESOURCES: tuple[Resource, ...] = tuple(_v3_twin(r) for r in RESOURCES if r.group == CALICO_CRD_GROUP)

BY_KEY: dict[str, Resource] = {r.key: r for r in (*RESOURCES, *CALICO_V3_RESOURCES)}
_BY_GVK: dict[tuple[str, str], Resource] = {
    (r.api_version, r.kind): r for r in (*RESOURCES, *CALICO_V3_RESOURCES)
}
_V1_TO_V3: dict[str, Resource] = {
    v1.key: v3
    for v1, v3 in zip((r for r in RESOURCES if r.group == CALICO_CRD_GROUP), CALICO_V3_RESOURCES, strict=True)
}


def calico_resource(key: str, api_group: str) -> Resource:
    """The resource `key` names (a v1 key such as `ippools.crd.projectcalico.org`, or any non-Calico
    key) as it is served when Calico's kinds live in `api_group` (CALICO_API_V1 or CALICO_API_V3)."""
    if api_group not in CALICO_API_GROUPS:
        raise ValueError(f"unknown Calico API group {api_group!r}; expected one of {CALICO_API_GROUPS}")
    resource = by_key(key)
    if api_group == CALICO_API_V3 and resource.group == CALICO_CRD_GROUP:
        return _V1_TO_V3[key]
    return resource


def by_key(key: str) -> Resource:
    try:
        return BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown resource {key!r}") from None


def for_object(api_version: str, kind: str) -> Resource:
    """The resource of an object by its apiVersion and kind, e.g. ("v1", "Pod")."""
    try:
        return _BY_GVK[(api_version, kind)]
    except KeyError:
        raise KeyError(f"unknown kind {kind!r} in {api_version!r}") from None
