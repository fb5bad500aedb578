"""Calico CRD conversions: pools, IPAM, network sets, host endpoints, config kinds, v3 passthrough,
and the shape of the two converter tables."""

from __future__ import annotations

from typing import Any

import pytest

from typha.model import keys
from typha.model.convert import BGP_CONVERTERS, FELIX_CONVERTERS, ConversionError, converters
from typha.model.convert.calico import felix_config_name, go_float
from typha.model.resources import BY_KEY
from typha.testing import objects as o

CRD = "crd.projectcalico.org/v1"
C = "crd.projectcalico.org"


def crd(kind: str, name: str, spec: dict[str, Any], **md: Any) -> dict[str, Any]:
    return {"apiVersion": CRD, "kind": kind, "metadata": {"name": name, **md}, "spec": spec}


# --- tables ---


def test_tables_cover_the_syncers_kinds() -> None:
    assert set(FELIX_CONVERTERS) == {
        f"clusterinformations.{C}", f"felixconfigurations.{C}", f"globalnetworkpolicies.{C}",
        f"stagedglobalnetworkpolicies.{C}", f"networkpolicies.{C}", "networkpolicies.networking.k8s.io",
        f"stagednetworkpolicies.{C}", f"stagedkubernetesnetworkpolicies.{C}", f"tiers.{C}",
        f"globalnetworksets.{C}", f"networksets.{C}", f"ippools.{C}", "nodes", "namespaces",
        "serviceaccounts", "pods", f"hostendpoints.{C}", f"bgpconfigurations.{C}", f"bgppeers.{C}",
        "services", "endpointslices.discovery.k8s.io", f"ipamblocks.{C}",
    }  # fmt: skip
    assert set(BGP_CONVERTERS) == {
        f"ippools.{C}", f"bgpconfigurations.{C}", "nodes", f"bgppeers.{C}", f"bgpfilters.{C}",
        f"blockaffinities.{C}",
    }  # fmt: skip
    assert all(key in BY_KEY for key in (*FELIX_CONVERTERS, *BGP_CONVERTERS))
    assert converters("bgp") is BGP_CONVERTERS
    with pytest.raises(ValueError, match="unknown syncer type"):
        converters("tunnel-ip-allocation")


def test_every_emitted_key_parses() -> None:
    objs = {
        "pods": o.pod("demo", "frontend", node="node-1", ip="10.65.0.2"),
        "namespaces": o.namespace("demo"),
        "nodes": o.node("node-1", ipv4="192.168.56.11/24", ipip_tunnel_addr="10.65.0.1"),
        f"ippools.{C}": o.ip_pool("p", "10.65.0.0/16"),
        f"ipamblocks.{C}": o.ipam_block("10.65.0.0/26", node="node-1"),
        f"globalnetworkpolicies.{C}": o.calico_global_policy("g", selector="all()"),
    }
    for resource, obj in objs.items():
        for key, _ in FELIX_CONVERTERS[resource](obj):
            assert keys.parse_key(key).path == key
    for key, _ in BGP_CONVERTERS[f"blockaffinities.{C}"](o.block_affinity("10.65.0.0/26", node="node-1")):
        assert keys.parse_key(key).path == key


# --- IP pools ---


def test_ip_pool_same_for_both_syncers() -> None:
    pool = o.ip_pool("default-ipv4", "10.65.0.0/16", ipip="CrossSubnet", nat_outgoing=True)
    expected = [
        (
            "/calico/v1/ipam/v4/pool/10.65.0.0-16",
            {
                "cidr": "10.65.0.0/16",
                "ipip": "tunl0",
                "ipip_mode": "cross-subnet",
                "vxlan_mode": "never",
                "masquerade": True,
                "ipam": True,
                "disabled": False,
                "disableBGPExport": False,
                "assignment_mode": "Automatic",
            },
        )
    ]
    assert FELIX_CONVERTERS[f"ippools.{C}"](pool) == expected
    assert BGP_CONVERTERS[f"ippools.{C}"](pool) == expected


def test_ip_pool_v6_vxlan_disabled() -> None:
    pool = o.ip_pool("v6", "fd00:65::/48", vxlan="Always")
    pool["spec"].update(disabled=True, disableBGPExport=True, assignmentMode="Manual")
    [(key, value)] = FELIX_CONVERTERS[f"ippools.{C}"](pool)
    assert key == "/calico/v1/ipam/v6/pool/fd00:65::-48"
    assert value["ipip"] == ""
    assert value["ipip_mode"] == "never"
    assert value["vxlan_mode"] == "always"
    assert (value["ipam"], value["disabled"], value["disableBGPExport"]) == (False, True, True)
    assert value["assignment_mode"] == "Manual"


@pytest.mark.parametrize("cidr", ["10.65.0.0", "10.65.0.0/33", "banana", None])
def test_ip_pool_bad_cidr(cidr: Any) -> None:
    pool = o.ip_pool("p", "10.0.0.0/8")
    pool["spec"]["cidr"] = cidr
    with pytest.raises(ConversionError, match="IPPool p"):
        FELIX_CONVERTERS[f"ippools.{C}"](pool)


# --- IPAM ---


def test_ipam_block() -> None:
    block = o.ipam_block("10.65.0.0/30", node="node-1")
    block["spec"]["allocations"] = [0, None, None, None]
    block["spec"]["unallocated"] = [1, 2, 3]
    block["spec"]["attributes"] = [{"handle_id": "k8s-pod-network.abc", "secondary": {"node": "node-1"}}]
    block["spec"]["sequenceNumber"] = 7
    assert FELIX_CONVERTERS[f"ipamblocks.{C}"](block) == [
        (
            "/calico/ipam/v2/assignment/ipv4/block/10.65.0.0-30",
            {
                "cidr": "10.65.0.0/30",
                "affinity": "host:node-1",
                "allocations": [0, None, None, None],
                "unallocated": [1, 2, 3],
                "attributes": [{"handle_id": "k8s-pod-network.abc", "secondary": {"node": "node-1"}}],
                "sequenceNumber": 7,
                "sequenceNumberForAllocation": None,
                "deleted": False,
            },
        )
    ]


def test_block_affinity() -> None:
    conv = BGP_CONVERTERS[f"blockaffinities.{C}"]
    aff = o.block_affinity("10.65.0.0/26", node="node-1", state="pending")
    assert conv(aff) == [
        ("/calico/ipam/v2/host/node-1/ipv4/block/10.65.0.0-26", {"state": "pending", "deleted": False})
    ]
    aff["spec"]["deleted"] = "true"
    assert conv(aff)[0][1]["deleted"] is True
    aff["spec"]["deleted"] = "maybe"
    with pytest.raises(ConversionError):
        conv(aff)
    aff["spec"].update(deleted="false", cidr="10.65.0.0/99")
    with pytest.raises(ConversionError):
        conv(aff)


# --- network sets and host endpoints ---


def test_global_network_set() -> None:
    gns = crd("GlobalNetworkSet", "blocked", {"nets": ["198.51.100.7/24", "2001:db8::1"]}, labels={"kind": "bad"})
    assert FELIX_CONVERTERS[f"globalnetworksets.{C}"](gns) == [
        ("/calico/v1/netset/blocked", {"nets": ["198.51.100.0/24", "2001:db8::1/128"], "labels": {"kind": "bad"}})
    ]
    gns["spec"]["nets"].append("300.1.1.1/8")
    with pytest.raises(ConversionError, match=r"300\.1\.1\.1"):
        FELIX_CONVERTERS[f"globalnetworksets.{C}"](gns)


def test_network_set_labels_from_metadata_annotation() -> None:
    ns_set = crd(
        "NetworkSet", "egress-ok", {"nets": ["10.0.0.0/8"]}, namespace="demo",
        annotations={"projectcalico.org/metadata": '{"labels":{"role":"ok"},"creationTimestamp":null}'},
    )  # fmt: skip
    assert FELIX_CONVERTERS[f"networksets.{C}"](ns_set) == [
        (
            "/calico/v1/netset/demo%2fegress-ok",
            {
                "nets": ["10.0.0.0/8"],
                "labels": {"role": "ok", "projectcalico.org/namespace": "demo"},
                "profile_ids": ["kns.demo"],
            },
        )
    ]


def test_host_endpoint() -> None:
    hep = crd("HostEndpoint", "node-1-eth0",
              {"node": "node-1", "interfaceName": "eth0", "expectedIPs": ["192.168.56.11", "fd00::11", "junk"],
               "profiles": ["p1"], "ports": [{"name": "ssh", "protocol": "TCP", "port": 22}]},
              labels={"role": "worker"})  # fmt: skip
    assert FELIX_CONVERTERS[f"hostendpoints.{C}"](hep) == [
        (
            "/calico/v1/host/node-1/endpoint/node-1-eth0",
            {
                "name": "eth0",
                "expected_ipv4_addrs": ["192.168.56.11"],
                "expected_ipv6_addrs": ["fd00::11"],
                "labels": {"role": "worker"},
                "profile_ids": ["p1"],
                "ports": [{"name": "ssh", "protocol": "tcp", "port": 22}],
            },
        )
    ]
    del hep["spec"]["node"]
    with pytest.raises(ConversionError, match=r"spec\.node"):
        FELIX_CONVERTERS[f"hostendpoints.{C}"](hep)


# --- config kinds ---


def test_cluster_information() -> None:
    ci = crd("ClusterInformation", "default",
             {"clusterGUID": "abc", "clusterType": "typha,kdd,k8s", "calicoVersion": "v3.31.0",
              "datastoreReady": True})  # fmt: skip
    assert dict(FELIX_CONVERTERS[f"clusterinformations.{C}"](ci)) == {
        "/calico/v1/config/ClusterGUID": "abc",
        "/calico/v1/config/ClusterType": "typha,kdd,k8s",
        "/calico/v1/config/CalicoVersion": "v3.31.0",
        "/calico/v1/Ready": True,
    }


def test_felix_configuration_global_and_per_node() -> None:
    spec = {
        "ipipEnabled": True,
        "bpfEnabled": False,
        "ipv6Support": False,
        "reportingInterval": "0s",
        "iptablesRefreshInterval": "1m30s",
        "iptablesLockProbeInterval": "50ms",
        "usageReportingInterval": "24h",
        "logSeverityScreen": "Info",
        "defaultEndpointToHostAction": "Accept",
        "vxlanVNI": 4096,
        "natPortRange": "32768:65535",
        "healthPort": 9099,
        "failsafeInboundHostPorts": [{"protocol": "TCP", "port": 22}, {"protocol": "UDP", "port": 68,
                                                                         "net": "fd00::/64"}],
        "failsafeOutboundHostPorts": [],
        "routeTableRanges": [{"min": 1, "max": 250}, {"min": 300, "max": 400}],
        "externalNodesList": ["10.0.0.0/8", "192.168.0.0/16"],
        "interfacePrefix": "",
    }  # fmt: skip
    fc = crd("FelixConfiguration", "default", spec,
             annotations={"config.projectcalico.org/LogSeverityScreen": "Debug",
                          "config.projectcalico.org/SomethingNew": "x"})  # fmt: skip
    assert dict(FELIX_CONVERTERS[f"felixconfigurations.{C}"](fc)) == {
        "/calico/v1/config/IpInIpEnabled": "true",
        "/calico/v1/config/BPFEnabled": "false",
        "/calico/v1/config/Ipv6Support": "false",
        "/calico/v1/config/ReportingIntervalSecs": "0",
        "/calico/v1/config/IptablesRefreshInterval": "90",
        "/calico/v1/config/IptablesLockProbeIntervalMillis": "50",
        "/calico/v1/config/UsageReportingIntervalSecs": "86400",
        "/calico/v1/config/LogSeverityScreen": "Debug",  # the annotation overrides the field
        "/calico/v1/config/DefaultEndpointToHostAction": "Accept",
        "/calico/v1/config/VXLANVNI": "4096",
        "/calico/v1/config/NATPortRange": "32768:65535",
        "/calico/v1/config/HealthPort": "9099",
        "/calico/v1/config/FailsafeInboundHostPorts": "tcp:22,udp:[fd00::/64]:68",
        "/calico/v1/config/FailsafeOutboundHostPorts": "none",
        "/calico/v1/config/RouteTableRanges": "1-250,300-400",
        "/calico/v1/config/ExternalNodesCIDRList": "10.0.0.0/8,192.168.0.0/16",
        "/calico/v1/config/SomethingNew": "x",
    }
    per_node = crd("FelixConfiguration", "node.node-1", {"logSeverityScreen": "Warning"})
    assert FELIX_CONVERTERS[f"felixconfigurations.{C}"](per_node) == [
        ("/calico/v1/host/node-1/config/LogSeverityScreen", "Warning")
    ]
    with pytest.raises(ConversionError, match="default"):
        FELIX_CONVERTERS[f"felixconfigurations.{C}"](crd("FelixConfiguration", "other", {}))


@pytest.mark.parametrize(
    ("field", "name"),
    [("bpfLogLevel", "BPFLogLevel"), ("nftablesMode", "NFTablesMode"), ("vxlanMTUV6", "VXLANMTUV6"),
     ("ipForwarding", "IPForwarding"), ("iptablesBackend", "IptablesBackend"), ("ipipMTU", "IpInIpMtu"),
     ("ipsetsRefreshInterval", "IpsetsRefreshInterval"), ("wireguardKeepAlive", "WireguardPersistentKeepAlive"),
     ("awsSrcDstCheck", "AWSSrcDstCheck"), ("mtuIfacePattern", "MTUIfacePattern"),
     ("nftablesRefreshInterval", "NftablesRefreshInterval"), ("bpfConntrackMode", "BPFConntrackCleanupMode"),
     ("bpfMapSizePerCpuConntrack", "BPFMapSizePerCPUConntrack"), ("bpfCTLBLogFilter", "BPFCTLBLogFilter")],
)  # fmt: skip
def test_felix_config_names(field: str, name: str) -> None:
    assert felix_config_name(field) == name


def test_felix_configuration_structured_fields() -> None:
    spec = {
        "healthTimeoutOverrides": [{"name": "InternalDataplaneMainLoop", "timeout": "90s"},
                                   {"name": "CalculationGraph", "timeout": "1.5s"}],
        "bpfConntrackTimeouts": {"tcpEstablished": "1h", "creationGracePeriod": "10s"},
        "kubeNodePortRanges": ["30000:32767", 8080],
        "bpfLogFilters": {"weps": "tcp", "all": "host 10.0.0.1"},
        "routeTableRange": {"min": 1, "max": 250},
        "wireguardKeepAlive": "25s",
    }  # fmt: skip
    values = dict(FELIX_CONVERTERS[f"felixconfigurations.{C}"](crd("FelixConfiguration", "default", spec)))
    assert values == {
        "/calico/v1/config/HealthTimeoutOverrides": "InternalDataplaneMainLoop=1m30s,CalculationGraph=1.5s",
        "/calico/v1/config/BPFConntrackTimeouts": "CreationGracePeriod=10s,TCPEstablished=1h",
        "/calico/v1/config/KubeNodePortRanges": "[30000:32767 8080]",
        "/calico/v1/config/BPFLogFilters": "all=host 10.0.0.1,weps=tcp,",
        "/calico/v1/config/RouteTableRange": "1-250",
        "/calico/v1/config/WireguardPersistentKeepAlive": "25",
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(90.0, "90"), (1.5, "1.5"), (0.05, "0.05"), (86400.0, "86400"), (1e6, "1e+06"), (2.5e-05, "2.5e-05")],
)
def test_go_float_formatting(seconds: float, text: str) -> None:
    assert go_float(seconds) == text


# --- v3 passthrough ---


def test_bgp_peer_and_configuration_pass_through_as_v3() -> None:
    peer = crd("BGPPeer", "rr", {"peerIP": "192.168.56.200", "asNumber": 64513}, uid="u1",
               resourceVersion="9", creationTimestamp="2026-01-01T00:00:00Z",
               labels={"projectcalico.org/x": "y"},
               annotations={"projectcalico.org/metadata":
                            '{"creationTimestamp":"2025-12-31T00:00:00Z","labels":{"team":"net"}}'})  # fmt: skip
    expected = {
        "kind": "BGPPeer",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {
            "name": "rr",
            "uid": "u1",
            "creationTimestamp": "2025-12-31T00:00:00Z",
            "labels": {"team": "net", "projectcalico.org/x": "y"},
        },
        "spec": {"peerIP": "192.168.56.200", "asNumber": 64513},
    }
    for table in (FELIX_CONVERTERS, BGP_CONVERTERS):
        assert table[f"bgppeers.{C}"](peer) == [("/calico/resources/v3/projectcalico.org/bgppeers/rr", expected)]
    conf = crd("BGPConfiguration", "default", {"asNumber": 64512, "nodeToNodeMeshEnabled": True})
    [(key, value)] = BGP_CONVERTERS[f"bgpconfigurations.{C}"](conf)
    assert key == "/calico/resources/v3/projectcalico.org/bgpconfigurations/default"
    assert value["spec"] == {"asNumber": 64512, "nodeToNodeMeshEnabled": True}
    assert "resourceVersion" not in value["metadata"]
    flt = crd("BGPFilter", "f1", {"exportV4": [{"action": "Reject", "cidr": "10.0.0.0/8", "matchOperator": "In"}]})
    assert BGP_CONVERTERS[f"bgpfilters.{C}"](flt)[0][0] == "/calico/resources/v3/projectcalico.org/bgpfilters/f1"


# --- properties every converter keeps ---


def _sample_objects() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    node = o.node("node-1", ipv4="192.168.56.11/24", ipip_tunnel_addr="10.65.0.1", vxlan_mac="66:c7:a8:2e:14:9b")
    return [
        (FELIX_CONVERTERS, o.pod("demo", "frontend", node="node-1", ip="10.65.0.2", ports=[("http", 80, "TCP")])),
        (FELIX_CONVERTERS, o.namespace("demo", labels={"team": "a"})),
        (FELIX_CONVERTERS, o.service_account("demo", "sa", labels={"x": "y"})),
        (FELIX_CONVERTERS, o.network_policy("demo", "np", pod_selector={"a": "b"}, from_labels={"c": "d"}, port=80)),
        (FELIX_CONVERTERS, node),
        (BGP_CONVERTERS, node),
        (FELIX_CONVERTERS, o.ip_pool("p", "10.65.0.0/16")),
        (FELIX_CONVERTERS, o.ipam_block("10.65.0.0/30", node="node-1")),
        (BGP_CONVERTERS, o.block_affinity("10.65.0.0/26", node="node-1")),
        (FELIX_CONVERTERS, o.calico_global_policy("g", selector="a == 'b'", order=1)),
        (FELIX_CONVERTERS, crd("FelixConfiguration", "default", {"failsafeInboundHostPorts": [{"port": 22}]})),
        (FELIX_CONVERTERS, crd("HostEndpoint", "h", {"node": "n", "expectedIPs": ["10.0.0.1"]})),
    ]


def test_converters_are_pure_and_values_encode() -> None:
    import copy

    import msgpack

    from typha.model.resources import for_object

    for table, obj in _sample_objects():
        before = copy.deepcopy(obj)
        convert = table[for_object(obj["apiVersion"], obj["kind"]).key]
        first = convert(obj)
        assert obj == before, f"{obj['kind']} converter mutated its input"
        assert convert(obj) == first, f"{obj['kind']} converter is not deterministic"
        assert first, obj["kind"]
        for key, value in first:
            assert key.startswith("/calico/")
            assert msgpack.unpackb(msgpack.packb(value), strict_map_key=False) == value
