"""Kubernetes objects → Calico model KVs, per syncer: the tables the syncers look converters up in.

A converter is a pure function `fn(obj) -> [(key, value), ...]`: the complete set of Calico model
keys one Kubernetes object produces for that syncer, with values as upstream would JSON-encode them
(docs/calico/typha.md §2). It keeps no state; the syncer remembers which keys each object produced and
deletes the ones it stops producing. An empty list means upstream sends nothing for the object (a
host-networked or finished pod, a staged delete). An invalid object raises ConversionError, which
the syncer turns into withdrawing the object's keys, as Typha's validation filter would.

The work is split by source: convert_k8s (core/networking objects), convert_calico (Calico CRDs),
convert_base (rules, selectors, CIDRs shared by both), grammar (what a valid value looks like).

Calico's kinds come from `crd.projectcalico.org/v1` or from `projectcalico.org/v3` CRDs
(docs/calico/typha.md §2); both produce the same KVs. The tables below are keyed for v1;
`converters(syncer_type, api_group)` gives the table for either group.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from typha.model.convert import calico, k8s
from typha.model.convert.base import ConversionError, Converter
from typha.model.convert.k8s import veth_name
from typha.model.resources import CALICO_API_V1, CALICO_API_V3, CALICO_CRD_GROUP, calico_resource

__all__ = [
    "BGP_CONVERTERS",
    "FELIX_CONVERTERS",
    "ConversionError",
    "Converter",
    "converters",
    "veth_name",
]

_CRD = "crd.projectcalico.org"

# felixsyncerv1.go with isLeader=true, KDD, Calico IPAM.
FELIX_CONVERTERS: dict[str, Converter] = {
    f"clusterinformations.{_CRD}": calico.cluster_information,
    f"felixconfigurations.{_CRD}": calico.felix_configuration,
    f"globalnetworkpolicies.{_CRD}": calico.global_network_policy,
    f"stagedglobalnetworkpolicies.{_CRD}": calico.staged_global_network_policy,
    f"networkpolicies.{_CRD}": calico.network_policy,
    "networkpolicies.networking.k8s.io": k8s.k8s_network_policy,
    f"stagednetworkpolicies.{_CRD}": calico.staged_network_policy,
    f"stagedkubernetesnetworkpolicies.{_CRD}": k8s.staged_k8s_network_policy,
    f"tiers.{_CRD}": calico.tier,
    f"globalnetworksets.{_CRD}": calico.global_network_set,
    f"networksets.{_CRD}": calico.network_set,
    f"ippools.{_CRD}": calico.ip_pool,
    "nodes": k8s.felix_node,
    "namespaces": k8s.namespace_to_profile,
    "serviceaccounts": k8s.service_account_to_profile,
    "pods": k8s.pod_to_wep,
    f"hostendpoints.{_CRD}": calico.host_endpoint,
    f"bgpconfigurations.{_CRD}": calico.bgp_configuration,
    f"bgppeers.{_CRD}": calico.bgp_peer,
    "services": k8s.k8s_service,
    "endpointslices.discovery.k8s.io": k8s.k8s_endpoint_slice,
    f"ipamblocks.{_CRD}": calico.ipam_block,
}

# bgpsyncer.go (Typha builds it for all nodes) with Calico IPAM.
BGP_CONVERTERS: dict[str, Converter] = {
    f"ippools.{_CRD}": calico.ip_pool,
    f"bgpconfigurations.{_CRD}": calico.bgp_configuration,
    "nodes": k8s.bgp_node,
    f"bgppeers.{_CRD}": calico.bgp_peer,
    f"bgpfilters.{_CRD}": calico.bgp_filter,
    f"blockaffinities.{_CRD}": calico.block_affinity,
}

_TABLES: dict[str, Mapping[str, Converter]] = {"felix": FELIX_CONVERTERS, "bgp": BGP_CONVERTERS}


def _v3_table(table: Mapping[str, Converter]) -> dict[str, Converter]:
    """`table` for projectcalico.org/v3: Calico kinds under their v3 keys, their converters told
    that the object is the v3 resource itself (no metadata annotation, no `default.` name prefix)."""
    out: dict[str, Converter] = {}
    for key, fn in table.items():
        resource = calico_resource(key, CALICO_API_V3)
        out[resource.key] = _reading_v3(fn) if key.endswith("." + CALICO_CRD_GROUP) else fn
    return out


def _reading_v3(fn: Callable[..., list[tuple[str, Any]]]) -> Converter:
    return functools.partial(fn, v3=True)


_V3_TABLES: dict[str, Mapping[str, Converter]] = {name: _v3_table(table) for name, table in _TABLES.items()}


def converters(syncer_type: str, api_group: str = CALICO_API_V1) -> Mapping[str, Converter]:
    """resource key → converter for one syncer type, with Calico's kinds read from `api_group`."""
    if syncer_type not in _TABLES:
        raise ValueError(f"unknown syncer type {syncer_type!r}; expected one of {sorted(_TABLES)}")
    if api_group == CALICO_API_V1:
        return _TABLES[syncer_type]
    if api_group == CALICO_API_V3:
        return _V3_TABLES[syncer_type]
    raise ValueError(f"unknown Calico API group {api_group!r}; expected {CALICO_API_V1} or {CALICO_API_V3}")
