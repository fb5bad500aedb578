"""Service advertisement: the routes for Service IPs (`/calico/staticroutes`) and the ranges kept out
of the kernel (`/calico/rejectcidrs`), as upstream's route generator (confd's routes.go) computes them.

Ranges come from the default BGPConfiguration (or CALICO_ADVERTISE_CLUSTER_IPS); single addresses
come from the Services and EndpointSlices the agent watches. Every address printed is one that
parsed as an address; a Service with one that does not is reported and that route left out.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from confd_client.bgp.store import BGPStore
from confd_client.bgp.validate import Invalid
from confd_client.bgp.values import is_ip_text

log = logging.getLogger(__name__)

EXCLUDE_LB_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def service_cidrs(spec: Mapping[str, Any], field_name: str) -> list[str]:
    return [str(item.get("cidr")) for item in spec.get(field_name) or [] if item.get("cidr")]


def cidr_key(cidr: str) -> str:
    """The `ls` key of a static route: the CIDR with `/` as `-`, so that sorting matches upstream's."""
    return cidr.replace("/", "-")


def _networks(cidrs: list[str]) -> list[Network]:
    nets = []
    for cidr in cidrs:
        try:
            nets.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            log.warning("ignoring unparsable service CIDR %r", cidr)
    return nets


def _within(ip: str, nets: list[Network], single: bool = False) -> bool:
    if not is_ip_text(ip):
        return False
    address = ipaddress.ip_address(ip)
    return any(
        address.version == net.version and address in net and (not single or net.prefixlen == net.max_prefixlen)
        for net in nets
    )


def _service_name(svc: Mapping[str, Any]) -> str:
    metadata = svc.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"


def _full_length(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def _advertise_service(
    svc: Mapping[str, Any], slices: list[dict[str, Any]], me: str, lb_nets: list[Network], ext_nets: list[Network]
) -> bool:
    """routes.go advertiseThisService (the node's exclusion label is checked by the caller)."""
    spec = svc.get("spec") or {}
    if spec.get("type", "ClusterIP") not in ("ClusterIP", "NodePort", "LoadBalancer"):
        return False
    cluster_ip = str(spec.get("clusterIP") or "")
    if cluster_ip in ("", "None"):
        return False
    policy = spec.get("externalTrafficPolicy")
    if policy == "Cluster":
        lb_ips = [str(spec.get("loadBalancerIP") or "")]
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        lb_ips += [str(i.get("ip") or "") for i in ingress]
        if spec.get("type") == "LoadBalancer" and any(_within(ip, lb_nets, single=True) for ip in lb_ips if ip):
            return True
        if any(_within(str(ip), ext_nets, single=True) for ip in spec.get("externalIPs") or []):
            return True
    if policy != "Local":
        return False  # the whole service range is advertised from every node instead
    # A local endpoint of the service's own family (a v4 endpoint does not make a v6 service local).
    svc_v6 = ":" in cluster_ip
    for item in slices:
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False or endpoint.get("nodeName") != me:
                continue
            if any((":" in str(address)) == svc_v6 for address in endpoint.get("addresses") or []):
                return True
    return False


def service_routes(store: BGPStore, me: str, env: Mapping[str, str]) -> tuple[set[str], set[str]]:
    """(/calico/staticroutes, /calico/rejectcidrs): service ranges from BGPConfiguration + per-Service IPs.

    Ranges are advertised from every node unless the node opts out with the exclude-from-external-
    load-balancers label; they are always kept out of the kernel (reject). Single LB addresses are
    advertised per Service only, never as a range from every node.
    """
    glob = store.global_config
    if env.get("CALICO_ADVERTISE_CLUSTER_IPS"):
        cluster = [env["CALICO_ADVERTISE_CLUSTER_IPS"]]
    else:
        cluster = service_cidrs(glob, "serviceClusterIPs")
    external = service_cidrs(glob, "serviceExternalIPs")
    lb = service_cidrs(glob, "serviceLoadBalancerIPs")
    ranges = [*cluster, *external]
    ranges += [c for c in lb if not c.endswith("/128" if ":" in c else "/32")]
    node = store.nodes.get(me)
    excluded = node is not None and node.labels.get(EXCLUDE_LB_LABEL) == "true"
    rejects = set(ranges)
    if excluded:
        return set(), rejects
    routes = set(ranges)
    if store.services_source is None:
        return routes, rejects
    lb_nets, ext_nets = _networks(lb), _networks(external)
    for svc, slices in store.services_source():
        if not _advertise_service(svc, slices, me, lb_nets, ext_nets):
            continue
        spec = svc.get("spec") or {}
        ips: list[str] = []
        if cluster:
            cluster_ip = str(spec.get("clusterIP"))
            if not is_ip_text(cluster_ip):
                store.rejections.report("Service", _service_name(svc), Invalid("spec.clusterIP", "not an IP address"))
                continue
            ips.append(cluster_ip)
        # Only addresses inside a configured range, which `_within` parsed, reach the routes.
        external_ips = [str(ip) for ip in spec.get("externalIPs") or []]
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ingress_ips = [str(i["ip"]) for i in ingress if i.get("ip")]
        for field, candidates in (("spec.externalIPs", external_ips), ("status.loadBalancer.ingress", ingress_ips)):
            if any(not is_ip_text(ip) for ip in candidates):
                store.rejections.report("Service", _service_name(svc), Invalid(field, "not an IP address"))
        ips += [ip for ip in external_ips if _within(ip, ext_nets)]
        ips += [ip for ip in ingress_ips if _within(ip, lb_nets)]
        routes.update(_full_length(ip) for ip in ips)
    return routes, rejects
