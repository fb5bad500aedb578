"""The Kubernetes resource kinds the system knows: API group, version, plural, kind and scope.

One table shared by the API emulator (what it serves and advertises), the reflectors (what URL to
list and watch) and the syncers (which kinds feed which syncer). A resource is named by its `key`,
which is what `kubectl` accepts: the plural for the core group, `plural.group` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

CALICO_CRD_GROUP = "crd.projectcalico.org"


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

BY_KEY: dict[str, Resource] = {r.key: r for r in RESOURCES}
_BY_GVK: dict[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in RESOURCES}


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
