"""Calico datastore key paths: build them and parse them back, exactly as libcalico-go spells them.

Every key Typha puts on the wire is the libcalico-go "default path" of a model key
(`model.KeyToDefaultPath`, libcalico-go/lib/backend/model/*.go at HEAD). The builders here are plain
functions on strings because they sit on the conversion hot path (one per pod); the dataclasses are
for the slower paths that need to take a key apart again (clients, tests, debugging).

Escaping follows upstream: only names that upstream escapes are escaped, with `escapeName`
(`%` → `%25`, then `/` → `%2f`). Hostnames, tiers and config names are written as they are.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "READY_FLAG_PATH",
    "BlockAffinityKey",
    "BlockKey",
    "GlobalConfigKey",
    "HostConfigKey",
    "HostEndpointKey",
    "HostIPKey",
    "IPPoolKey",
    "Key",
    "NetworkSetKey",
    "PolicyKey",
    "ProfileLabelsKey",
    "ProfileRulesKey",
    "ReadyFlagKey",
    "ResourceKey",
    "TierKey",
    "WireguardKey",
    "WorkloadEndpointKey",
    "block_affinity_path",
    "block_path",
    "escape_name",
    "global_config_path",
    "host_config_path",
    "host_endpoint_path",
    "host_ip_path",
    "ip_pool_path",
    "network_set_path",
    "parse_key",
    "policy_path",
    "profile_labels_path",
    "profile_rules_path",
    "resource_path",
    "tier_path",
    "unescape_name",
    "wireguard_path",
    "workload_endpoint_path",
]

READY_FLAG_PATH = "/calico/v1/Ready"
V3_PREFIX = "/calico/resources/v3/projectcalico.org/"

# v3 plurals that Typha streams, with whether the kind is namespaced. Upstream registers
# KubernetesService under the singular "kubernetesservice" and BGPFilter as "BGPFilters" lowercased;
# both quirks are kept because clients match on the exact path.
V3_PLURALS: dict[str, tuple[str, bool]] = {
    "Node": ("nodes", False),
    "BGPConfiguration": ("bgpconfigurations", False),
    "BGPPeer": ("bgppeers", False),
    "BGPFilter": ("bgpfilters", False),
    "Profile": ("profiles", False),
    "KubernetesService": ("kubernetesservice", True),
    "KubernetesEndpointSlice": ("kubernetesendpointslices", True),
    "LiveMigration": ("livemigrations", True),
    "CalicoNodeStatus": ("caliconodestatuses", False),
    "ClusterInformation": ("clusterinformations", False),
    "FelixConfiguration": ("felixconfigurations", False),
    "IPPool": ("ippools", False),
    "Tier": ("tiers", False),
    "HostEndpoint": ("hostendpoints", False),
    "GlobalNetworkSet": ("globalnetworksets", False),
    "NetworkSet": ("networksets", True),
    "WorkloadEndpoint": ("workloadendpoints", True),
}
_V3_BY_PLURAL: dict[str, tuple[str, bool]] = {plural: (kind, ns) for kind, (plural, ns) in V3_PLURALS.items()}

# Policy kinds whose v1 key must carry a namespace (upstream PolicyKey.defaultPath refuses otherwise).
NAMESPACED_POLICY_KINDS = frozenset(
    {"NetworkPolicy", "StagedNetworkPolicy", "StagedKubernetesNetworkPolicy", "KubernetesNetworkPolicy"}
)


def escape_name(name: str) -> str:
    """upstream escapeName: `%` first so that an escaped `/` can't be confused with a literal `%2f`."""
    if "%" in name:
        name = name.replace("%", "%25")
    if "/" in name:
        name = name.replace("/", "%2f")
    return name


def unescape_name(name: str) -> str:
    """upstream unescapeName (the same two replacements, in reverse order)."""
    if "%" in name:
        name = name.replace("%2f", "/").replace("%25", "%")
    return name


def _cidr_segment(cidr: str) -> tuple[int, str]:
    """(IP version, "<network>-<len>") for a CIDR, masked as Go's net.ParseCIDR would."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise ValueError(f"invalid CIDR {cidr!r}: {exc}") from None
    return net.version, f"{net.network_address}-{net.prefixlen}"


# --- builders (hot path: plain string formatting) ---------------------------------------------------


def workload_endpoint_path(hostname: str, orchestrator: str, workload: str, endpoint: str) -> str:
    # The hostname is deliberately not escaped: upstream doesn't either.
    return (
        f"/calico/v1/host/{hostname}/workload/{escape_name(orchestrator)}/"
        f"{escape_name(workload)}/endpoint/{escape_name(endpoint)}"
    )


def host_endpoint_path(hostname: str, name: str) -> str:
    return f"/calico/v1/host/{hostname}/endpoint/{escape_name(name)}"


def policy_path(kind: str, namespace: str, name: str) -> str:
    """HEAD layout `/calico/v1/policy/<Kind>/<ns>/<name>`; ns is empty (a `//`) for global kinds."""
    if not kind or not name:
        raise ValueError("a policy key needs a kind and a name")
    if kind in NAMESPACED_POLICY_KINDS and not namespace:
        raise ValueError(f"a {kind} key needs a namespace")
    return f"/calico/v1/policy/{kind}/{namespace}/{name}"


def tier_path(name: str) -> str:
    return f"/calico/v1/policy/tier/{name}/metadata"


def profile_rules_path(name: str) -> str:
    return f"/calico/v1/policy/profile/{escape_name(name)}/rules"


def profile_labels_path(name: str) -> str:
    return f"/calico/v1/policy/profile/{escape_name(name)}/labels"


def network_set_path(name: str) -> str:
    return f"/calico/v1/netset/{escape_name(name)}"


def ip_pool_path(cidr: str) -> str:
    version, segment = _cidr_segment(cidr)
    return f"/calico/v1/ipam/v{version}/pool/{segment}"


def host_ip_path(hostname: str) -> str:
    return f"/calico/v1/host/{hostname}/bird_ip"


def host_config_path(hostname: str, name: str) -> str:
    return f"/calico/v1/host/{hostname}/config/{name}"


def global_config_path(name: str) -> str:
    return f"/calico/v1/config/{name}"


def wireguard_path(hostname: str) -> str:
    return f"/calico/v1/host/{hostname}/wireguard"


def block_path(cidr: str) -> str:
    version, segment = _cidr_segment(cidr)
    return f"/calico/ipam/v2/assignment/ipv{version}/block/{segment}"


def block_affinity_path(host: str, cidr: str) -> str:
    version, segment = _cidr_segment(cidr)
    return f"/calico/ipam/v2/host/{host}/ipv{version}/block/{segment}"


def resource_path(kind: str, name: str, namespace: str = "") -> str:
    """`/calico/resources/v3/projectcalico.org/<plural>[/<ns>]/<name>` (upstream doesn't escape these)."""
    try:
        plural, namespaced = V3_PLURALS[kind]
    except KeyError:
        raise ValueError(f"no v3 resource path for kind {kind!r}") from None
    if namespaced:
        if not namespace:
            raise ValueError(f"a {kind} key needs a namespace")
        return f"{V3_PREFIX}{plural}/{namespace}/{name}"
    return f"{V3_PREFIX}{plural}/{name}"


# --- typed keys --------------------------------------------------------------------------------------


class Key:
    """Base of the typed keys; `.path` is the wire key."""

    __slots__ = ()

    @property
    def path(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class WorkloadEndpointKey(Key):
    hostname: str
    orchestrator_id: str
    workload_id: str
    endpoint_id: str

    @property
    def path(self) -> str:
        return workload_endpoint_path(self.hostname, self.orchestrator_id, self.workload_id, self.endpoint_id)


@dataclass(frozen=True, slots=True)
class HostEndpointKey(Key):
    hostname: str
    endpoint_id: str

    @property
    def path(self) -> str:
        return host_endpoint_path(self.hostname, self.endpoint_id)


@dataclass(frozen=True, slots=True)
class PolicyKey(Key):
    kind: str
    namespace: str
    name: str

    @property
    def path(self) -> str:
        return policy_path(self.kind, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class TierKey(Key):
    name: str

    @property
    def path(self) -> str:
        return tier_path(self.name)


@dataclass(frozen=True, slots=True)
class ProfileRulesKey(Key):
    name: str

    @property
    def path(self) -> str:
        return profile_rules_path(self.name)


@dataclass(frozen=True, slots=True)
class ProfileLabelsKey(Key):
    name: str

    @property
    def path(self) -> str:
        return profile_labels_path(self.name)


@dataclass(frozen=True, slots=True)
class NetworkSetKey(Key):
    name: str

    @property
    def path(self) -> str:
        return network_set_path(self.name)


@dataclass(frozen=True, slots=True)
class IPPoolKey(Key):
    cidr: str  # canonical network, e.g. "10.65.0.0/16"

    @property
    def path(self) -> str:
        return ip_pool_path(self.cidr)


@dataclass(frozen=True, slots=True)
class HostIPKey(Key):
    hostname: str

    @property
    def path(self) -> str:
        return host_ip_path(self.hostname)


@dataclass(frozen=True, slots=True)
class HostConfigKey(Key):
    hostname: str
    name: str

    @property
    def path(self) -> str:
        return host_config_path(self.hostname, self.name)


@dataclass(frozen=True, slots=True)
class GlobalConfigKey(Key):
    name: str

    @property
    def path(self) -> str:
        return global_config_path(self.name)


@dataclass(frozen=True, slots=True)
class ReadyFlagKey(Key):
    @property
    def path(self) -> str:
        return READY_FLAG_PATH


@dataclass(frozen=True, slots=True)
class WireguardKey(Key):
    hostname: str

    @property
    def path(self) -> str:
        return wireguard_path(self.hostname)


@dataclass(frozen=True, slots=True)
class BlockKey(Key):
    cidr: str

    @property
    def path(self) -> str:
        return block_path(self.cidr)


@dataclass(frozen=True, slots=True)
class BlockAffinityKey(Key):
    host: str
    cidr: str

    @property
    def path(self) -> str:
        return block_affinity_path(self.host, self.cidr)


@dataclass(frozen=True, slots=True)
class ResourceKey(Key):
    """A v3 resource passed through unchanged (Node, BGPPeer, KubernetesService, ...)."""

    kind: str
    name: str
    namespace: str = ""

    PREFIX: ClassVar[str] = V3_PREFIX

    @property
    def path(self) -> str:
        return resource_path(self.kind, self.name, self.namespace)


# --- parsing -----------------------------------------------------------------------------------------


def _parse_cidr_segment(segment: str, version: str | None = None) -> str:
    """ "10.65.0.0-26" -> "10.65.0.0/26" (only the first '-' is the separator, as upstream)."""
    if "-" not in segment:
        raise ValueError(f"CIDR segment {segment!r} has no prefix length")
    cidr = segment.replace("-", "/", 1)
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ValueError(f"invalid CIDR segment {segment!r}") from None
    if version is not None and version not in (f"v{net.version}", f"ipv{net.version}"):
        raise ValueError(f"CIDR {cidr} does not match IP version {version!r}")
    return str(net)


def parse_key(path: str) -> Key:
    """The typed key for a wire path; ValueError for anything that isn't a key Typha emits.

    Unlike upstream's permissive KeyFromDefaultPath this requires the leading slash everywhere: every
    path Typha sends has one, and accepting two spellings of a key would break dedupe.
    """
    if not path.startswith("/calico/"):
        raise ValueError(f"not a Calico key: {path!r}")
    parts = path[1:].split("/")
    n = len(parts)
    area = parts[1] if n > 1 else ""
    if area == "v1" and n >= 3:
        section = parts[2]
        if section == "Ready" and n == 3:
            return ReadyFlagKey()
        if section == "config" and n >= 4 and all(parts[3:]):
            return GlobalConfigKey("/".join(parts[3:]))
        if section == "netset" and n == 4 and parts[3]:
            return NetworkSetKey(unescape_name(parts[3]))
        if section == "ipam" and n == 6 and parts[4] == "pool":
            return IPPoolKey(_parse_cidr_segment(parts[5], parts[3]))
        if section == "host" and n >= 5 and parts[3]:
            return _parse_host_key(path, parts)
        if section == "policy" and n >= 5:
            return _parse_policy_key(path, parts)
    elif area == "ipam" and n == 7 and parts[2] == "v2":
        if parts[3] == "assignment" and parts[5] == "block":
            return BlockKey(_parse_cidr_segment(parts[6], parts[4]))
    elif area == "ipam" and n == 8 and parts[2] == "v2":
        if parts[3] == "host" and parts[4] and parts[6] == "block":
            return BlockAffinityKey(parts[4], _parse_cidr_segment(parts[7], parts[5]))
    elif area == "resources" and n in (6, 7) and parts[2] == "v3" and parts[3] == "projectcalico.org":
        try:
            kind, namespaced = _V3_BY_PLURAL[parts[4]]
        except KeyError:
            raise ValueError(f"unknown v3 resource plural in {path!r}") from None
        if namespaced != (n == 7) or not all(parts[5:]):
            raise ValueError(f"wrong number of segments for a {kind} key: {path!r}")
        if n == 7:
            return ResourceKey(kind, parts[6], parts[5])
        return ResourceKey(kind, parts[5])
    raise ValueError(f"unrecognised Calico key: {path!r}")


def _parse_host_key(path: str, parts: list[str]) -> Key:
    hostname, n = parts[3], len(parts)
    what = parts[4]
    if what == "workload" and n == 9 and parts[7] == "endpoint" and all(parts[5:]):
        return WorkloadEndpointKey(
            hostname, unescape_name(parts[5]), unescape_name(parts[6]), unescape_name(parts[8])
        )
    if what == "endpoint" and n == 6 and parts[5]:
        return HostEndpointKey(hostname, unescape_name(parts[5]))
    if what == "config" and n >= 6 and all(parts[5:]):
        return HostConfigKey(hostname, "/".join(parts[5:]))
    if what == "bird_ip" and n == 5:
        return HostIPKey(hostname)
    if what == "wireguard" and n == 5:
        return WireguardKey(hostname)
    raise ValueError(f"unrecognised host key: {path!r}")


def _parse_policy_key(path: str, parts: list[str]) -> Key:
    n = len(parts)
    kind = parts[3]
    if kind == "tier":
        if n == 6 and parts[4] and parts[5] == "metadata":
            return TierKey(parts[4])
    elif kind == "profile":
        if n == 6 and parts[4]:
            if parts[5] == "rules":
                return ProfileRulesKey(unescape_name(parts[4]))
            if parts[5] == "labels":
                return ProfileLabelsKey(unescape_name(parts[4]))
    elif n == 6 and kind and parts[5]:
        namespace = parts[4]
        if kind in NAMESPACED_POLICY_KINDS and not namespace:
            raise ValueError(f"a {kind} key needs a namespace: {path!r}")
        return PolicyKey(kind, namespace, parts[5])
    raise ValueError(f"unrecognised policy key: {path!r}")
