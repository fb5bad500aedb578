"""Key paths pinned to upstream's KeyToDefaultPath spellings (libcalico-go/lib/backend/model at HEAD)."""

from __future__ import annotations

import pytest

from typha.model import keys
from typha.model.keys import (
    BlockAffinityKey,
    BlockKey,
    GlobalConfigKey,
    HostConfigKey,
    HostEndpointKey,
    HostIPKey,
    IPPoolKey,
    NetworkSetKey,
    PolicyKey,
    ProfileLabelsKey,
    ProfileRulesKey,
    ReadyFlagKey,
    ResourceKey,
    TierKey,
    WireguardKey,
    WorkloadEndpointKey,
    parse_key,
)

CASES = [
    (WorkloadEndpointKey("node-1", "k8s", "demo/frontend", "eth0"),
     "/calico/v1/host/node-1/workload/k8s/demo%2ffrontend/endpoint/eth0"),
    (HostEndpointKey("node-1", "eth0-hep"), "/calico/v1/host/node-1/endpoint/eth0-hep"),
    (PolicyKey("KubernetesNetworkPolicy", "demo", "allow-frontend"),
     "/calico/v1/policy/KubernetesNetworkPolicy/demo/allow-frontend"),
    (PolicyKey("NetworkPolicy", "demo", "default.np"), "/calico/v1/policy/NetworkPolicy/demo/default.np"),
    (PolicyKey("GlobalNetworkPolicy", "", "allow-dns"), "/calico/v1/policy/GlobalNetworkPolicy//allow-dns"),
    (PolicyKey("StagedGlobalNetworkPolicy", "", "s1"), "/calico/v1/policy/StagedGlobalNetworkPolicy//s1"),
    (TierKey("security"), "/calico/v1/policy/tier/security/metadata"),
    (ProfileRulesKey("kns.demo"), "/calico/v1/policy/profile/kns.demo/rules"),
    (ProfileLabelsKey("ksa.demo.default"), "/calico/v1/policy/profile/ksa.demo.default/labels"),
    (NetworkSetKey("demo/blocked"), "/calico/v1/netset/demo%2fblocked"),
    (NetworkSetKey("gns-1"), "/calico/v1/netset/gns-1"),
    (IPPoolKey("10.65.0.0/16"), "/calico/v1/ipam/v4/pool/10.65.0.0-16"),
    (IPPoolKey("fd00:65::/48"), "/calico/v1/ipam/v6/pool/fd00:65::-48"),
    (HostIPKey("node-1"), "/calico/v1/host/node-1/bird_ip"),
    (HostConfigKey("node-1", "IpInIpTunnelAddr"), "/calico/v1/host/node-1/config/IpInIpTunnelAddr"),
    (GlobalConfigKey("ClusterGUID"), "/calico/v1/config/ClusterGUID"),
    (ReadyFlagKey(), "/calico/v1/Ready"),
    (WireguardKey("node-1"), "/calico/v1/host/node-1/wireguard"),
    (BlockKey("10.65.0.0/26"), "/calico/ipam/v2/assignment/ipv4/block/10.65.0.0-26"),
    (BlockKey("fd00:65::/122"), "/calico/ipam/v2/assignment/ipv6/block/fd00:65::-122"),
    (BlockAffinityKey("node-1", "10.65.0.0/26"), "/calico/ipam/v2/host/node-1/ipv4/block/10.65.0.0-26"),
    (ResourceKey("Node", "node-1"), "/calico/resources/v3/projectcalico.org/nodes/node-1"),
    (ResourceKey("BGPPeer", "rr"), "/calico/resources/v3/projectcalico.org/bgppeers/rr"),
    (ResourceKey("BGPConfiguration", "default"), "/calico/resources/v3/projectcalico.org/bgpconfigurations/default"),
    (ResourceKey("BGPFilter", "f"), "/calico/resources/v3/projectcalico.org/bgpfilters/f"),
    (ResourceKey("Profile", "kns.demo"), "/calico/resources/v3/projectcalico.org/profiles/kns.demo"),
    (ResourceKey("KubernetesService", "web", "demo"),
     "/calico/resources/v3/projectcalico.org/kubernetesservice/demo/web"),
    (ResourceKey("KubernetesEndpointSlice", "web-abc", "demo"),
     "/calico/resources/v3/projectcalico.org/kubernetesendpointslices/demo/web-abc"),
]


@pytest.mark.parametrize(("key", "path"), CASES, ids=[p for _, p in CASES])
def test_path_and_round_trip(key: keys.Key, path: str) -> None:
    assert key.path == path
    assert parse_key(path) == key


def test_escape_percent_before_slash() -> None:
    # '%' must be escaped first, or a literal "%2f" in a name would come back as '/'.
    assert keys.escape_name("a%2fb/c") == "a%252fb%2fc"
    assert keys.unescape_name("a%252fb%2fc") == "a%2fb/c"
    key = WorkloadEndpointKey("node-1", "k8s", "ns/po%d", "eth0")
    assert key.path == "/calico/v1/host/node-1/workload/k8s/ns%2fpo%25d/endpoint/eth0"
    assert parse_key(key.path) == key


def test_cidr_is_masked_like_go() -> None:
    assert keys.ip_pool_path("10.65.1.7/16") == "/calico/v1/ipam/v4/pool/10.65.0.0-16"
    assert keys.block_path("FD00:65::/122") == "/calico/ipam/v2/assignment/ipv6/block/fd00:65::-122"


def test_host_config_names_may_contain_slashes() -> None:
    assert parse_key("/calico/v1/host/n/config/a/b") == HostConfigKey("n", "a/b")
    assert parse_key("/calico/v1/config/a/b") == GlobalConfigKey("a/b")


@pytest.mark.parametrize(
    "path",
    [
        "",
        "calico/v1/Ready",  # upstream is permissive about the slash; Typha never emits it without
        "/calico/v1/Ready/x",
        "/calico/v1/host/node-1/workload/k8s/demo%2ffrontend/endpoint",
        "/calico/v1/host//bird_ip",
        "/calico/v1/ipam/v4/pool/not-a-cidr",
        "/calico/v1/ipam/v6/pool/10.65.0.0-16",
        "/calico/v1/policy/NetworkPolicy//np",
        "/calico/v1/policy/profile/kns.demo/tags",
        "/calico/v1/policy/tier/t/policy/p",
        "/calico/ipam/v2/assignment/ipv4/block/10.65.0.0",
        "/calico/resources/v3/projectcalico.org/nodes/ns/node-1",
        "/calico/resources/v3/projectcalico.org/kubernetesservice/web",
        "/calico/resources/v3/projectcalico.org/widgets/w",
        "/calico/bgp/v1/global/as_num",
    ],
)
def test_parse_rejects(path: str) -> None:
    with pytest.raises(ValueError, match=r"key|CIDR|plural"):
        parse_key(path)


def test_builders_reject_incomplete_keys() -> None:
    with pytest.raises(ValueError, match="needs a namespace"):
        keys.policy_path("NetworkPolicy", "", "np")
    with pytest.raises(ValueError, match="needs a namespace"):
        keys.resource_path("KubernetesService", "web")
    with pytest.raises(ValueError, match="invalid CIDR"):
        keys.block_path("10.65.0.0/33")
