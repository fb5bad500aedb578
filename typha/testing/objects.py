"""Builders for realistic Kubernetes and Calico objects, shared by tests, benchmarks and the demo.

Each builder returns the JSON an API server would store for a cluster running Calico: pods carry
the `cni.projectcalico.org/podIP(s)` annotations the Calico CNI plugin writes, nodes carry the
`projectcalico.org/*` annotations calico-node writes.
"""

from __future__ import annotations

import ipaddress
from typing import Any

CRD = "crd.projectcalico.org/v1"


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}},
    }


def service_account(ns: str, name: str = "default", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})},
    }


def pod(
    ns: str,
    name: str,
    *,
    node: str,
    ip: str | None,
    labels: dict[str, str] | None = None,
    service_account_name: str = "default",
    ports: list[tuple[str, int, str]] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    """A scheduled pod; `ip=None` is a pod the CNI plugin has not set up yet."""
    metadata: dict[str, Any] = {"name": name, "namespace": ns, "labels": dict(labels or {})}
    status: dict[str, Any] = {"phase": phase}
    if ip is not None:
        prefix = 128 if ":" in ip else 32
        metadata["annotations"] = {
            "cni.projectcalico.org/podIP": f"{ip}/{prefix}",
            "cni.projectcalico.org/podIPs": f"{ip}/{prefix}",
            "cni.projectcalico.org/containerID": f"{abs(hash((ns, name))):016x}",
        }
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    container: dict[str, Any] = {"name": "app", "image": "registry.k8s.io/pause:3.9"}
    if ports:
        container["ports"] = [
            {"name": port_name, "containerPort": number, "protocol": protocol}
            for port_name, number, protocol in ports
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"nodeName": node, "serviceAccountName": service_account_name, "containers": [container]},
        "status": status,
    }


def node(
    name: str,
    *,
    ipv4: str,
    ipip_tunnel_addr: str | None = None,
    vxlan_tunnel_addr: str | None = None,
    vxlan_mac: str | None = None,
    asn: int | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A node as calico-node leaves it; `ipv4` is the address with its prefix, e.g. 192.168.56.11/24."""
    annotations = {"projectcalico.org/IPv4Address": ipv4}
    if ipip_tunnel_addr:
        annotations["projectcalico.org/IPv4IPIPTunnelAddr"] = ipip_tunnel_addr
    if vxlan_tunnel_addr:
        annotations["projectcalico.org/IPv4VXLANTunnelAddr"] = vxlan_tunnel_addr
    if vxlan_mac:
        annotations["projectcalico.org/VXLANTunnelMACAddr"] = vxlan_mac
    if asn is not None:
        annotations["projectcalico.org/ASNumber"] = str(asn)
    host_ip = str(ipaddress.ip_interface(ipv4).ip)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})},
            "annotations": annotations,
        },
        "spec": {},
        "status": {"addresses": [{"type": "InternalIP", "address": host_ip},
                                 {"type": "Hostname", "address": name}]},
    }


def network_policy(
    ns: str,
    name: str,
    *,
    pod_selector: dict[str, str],
    from_labels: dict[str, str] | None = None,
    port: int | None = None,
    policy_types: list[str] | None = None,
) -> dict[str, Any]:
    """A networking.k8s.io NetworkPolicy allowing ingress from pods with `from_labels`."""
    ingress_rule: dict[str, Any] = {}
    if from_labels is not None:
        ingress_rule["from"] = [{"podSelector": {"matchLabels": from_labels}}]
    if port is not None:
        ingress_rule["ports"] = [{"protocol": "TCP", "port": port}]
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": pod_selector},
        "ingress": [ingress_rule],
        "policyTypes": policy_types or ["Ingress"],
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def calico_global_policy(name: str, *, selector: str, order: float | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": selector,
        "types": ["Ingress"],
        "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [80]}}],
    }
    if order is not None:
        spec["order"] = order
    return {"apiVersion": CRD, "kind": "GlobalNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def ip_pool(
    name: str, cidr: str, *, block_size: int = 26, ipip: str = "Never", vxlan: str = "Never",
    nat_outgoing: bool = False,
) -> dict[str, Any]:
    return {
        "apiVersion": CRD,
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {
            "cidr": cidr,
            "blockSize": block_size,
            "ipipMode": ipip,
            "vxlanMode": vxlan,
            "natOutgoing": nat_outgoing,
            "nodeSelector": "all()",
        },
    }


def ipam_block(cidr: str, *, node: str) -> dict[str, Any]:
    network = ipaddress.ip_network(cidr)
    return {
        "apiVersion": CRD,
        "kind": "IPAMBlock",
        "metadata": {"name": cidr.replace(".", "-").replace(":", "-").replace("/", "-")},
        "spec": {
            "cidr": cidr,
            "affinity": f"host:{node}",
            "allocations": [None] * network.num_addresses,
            "unallocated": list(range(network.num_addresses)),
            "attributes": [],
            "deleted": False,
        },
    }


def block_affinity(cidr: str, *, node: str, state: str = "confirmed") -> dict[str, Any]:
    name = f"{node}-{cidr.replace('.', '-').replace(':', '-').replace('/', '-')}"
    return {
        "apiVersion": CRD,
        "kind": "BlockAffinity",
        "metadata": {"name": name},
        "spec": {"node": node, "cidr": cidr, "state": state, "deleted": "false"},
    }
