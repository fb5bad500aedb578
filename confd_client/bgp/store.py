"""The mirror of the `bgp` syncer's KVs, answering the questions confd's v1 keys answered.

Upstream confd (confd/pkg/backends/calico/client.go + bgp_processor.go) rebuilds a v1 key space
(`/calico/bgp/v1/...`) from v3 Nodes, BGPConfigurations and BGPPeers, and its templates read it back
through `getBGPConfig`. `BGPStore` keeps the syncer's values instead and answers the same questions
(node IPs, AS numbers, listen ports). Keys are taken apart with `typha.model.keys`, the one parser of
Calico's key paths; every value is checked (`validate`) before it is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from confd_client.bgp.filters import check_filter
from confd_client.bgp.validate import (
    Invalid,
    Rejections,
    check_bgp_configuration,
    check_bgp_peer,
    check_block_state,
    check_node,
    check_password,
    check_pool,
)
from confd_client.bgp.values import as_string, parse_interface
from typha.model import keys
from typha.model.selector import parse as parse_selector

log = logging.getLogger(__name__)

DEFAULT_AS = "64512"  # client.go globalDefaults


@dataclass
class NodeBGP:
    """A Node as the v1 `/calico/bgp/v1/host/<n>/...` keys saw it (bgpnodeprocessor.go)."""

    name: str
    labels: dict[str, str]
    ipv4: str = ""
    ipv6: str = ""
    network_v4: str = ""
    network_v6: str = ""
    as_num: str = ""
    rr_cluster_id: str = ""
    wireguard_v4: str = ""
    wireguard_v6: str = ""
    has_bgp: bool = False

    def ip(self, version: int) -> str:
        return self.ipv4 if version == 4 else self.ipv6


def _address_and_network(name: str, bgp: Mapping[str, Any], field: str, rejections: Rejections | None
                         ) -> tuple[str, str]:
    cidr = bgp.get(field)
    if not cidr:
        return "", ""
    iface = parse_interface(cidr) if isinstance(cidr, str) else None
    if iface is None:
        # As upstream, an unparsable address is left out; the node itself still counts.
        if rejections is not None:
            rejections.report("Node", name, Invalid(f"spec.bgp.{field}", "not an address/prefix-length"))
        return "", ""
    return str(iface.ip), str(iface.network)


def node_from_v3(name: str, value: Mapping[str, Any], rejections: Rejections | None = None) -> NodeBGP:
    labels = {str(k): str(v) for k, v in ((value.get("metadata") or {}).get("labels") or {}).items()}
    spec = value.get("spec") or {}
    bgp = spec.get("bgp") or None
    node = NodeBGP(name=name, labels=labels)
    if bgp is not None:
        node.has_bgp = True
        node.ipv4, node.network_v4 = _address_and_network(name, bgp, "ipv4Address", rejections)
        node.ipv6, node.network_v6 = _address_and_network(name, bgp, "ipv6Address", rejections)
        node.as_num = as_string(bgp.get("asNumber"))
        node.rr_cluster_id = str(bgp.get("routeReflectorClusterID") or "")
    wireguard = spec.get("wireguard") or {}
    node.wireguard_v4 = str(wireguard.get("interfaceIPv4Address") or "")
    node.wireguard_v6 = str(wireguard.get("interfaceIPv6Address") or "")
    return node


# What changed since the renderer last looked, as tags it maps to the files that read them
# (confd_client.render.Renderer): ("nodes",) a node's BGP fields or the set of nodes; ("labels", node)
# only that node's labels; ("bgpconfig",), ("peers",), ("filters",); ("pools", version); ("blocks",
# host, version); and the agent's side channels ("secrets",), ("services",), ("status",).
Change = tuple[str | int, ...]


def _cidr_version(cidr: str) -> int:
    """The family of a CIDR that typha.model.keys already parsed (and printed canonically)."""
    return 6 if ":" in cidr else 4


class BGPStore:
    """The syncer's KVs, kept as the client needs them; `apply` takes one update at a time."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeBGP] = {}
        self.bgp_configs: dict[str, dict[str, Any]] = {}
        self.peers: dict[str, dict[str, Any]] = {}
        self.filters: dict[str, dict[str, Any]] = {}
        # BGPFilters that failed validation: a peer naming one is rejected rather than left unfiltered.
        self.rejected_filters: set[str] = set()
        self.pools: dict[int, dict[str, dict[str, Any]]] = {4: {}, 6: {}}
        # host -> version -> block key ("a.b.c.d-len") -> state; pending blocks are never stored.
        self.affinities: dict[str, dict[int, dict[str, str]]] = {}
        self.rejections = Rejections()
        # BGP passwords: (secret name, key) -> value, from the agent's Secret side channel if it has one.
        self.secret_source: Callable[[str, str], str | None] | None = None
        # Services with their EndpointSlices, for per-Service routes (upstream's route generator).
        self.services_source: Callable[[], list[tuple[dict[str, Any], list[dict[str, Any]]]]] | None = None
        # Local workloads that peer with their node: the parsed endpoint-status files.
        self.local_workloads_source: Callable[[], list[dict[str, Any]]] | None = None
        # Only real changes are noted: an update that re-sends what is kept (typha re-sending a Node
        # whose BGP fields did not move) or touches nothing this node renders costs no render.
        self.changes: set[Change] = set()

    def note(self, change: Change) -> None:
        self.changes.add(change)

    def take_changes(self) -> set[Change]:
        changes, self.changes = self.changes, set()
        return changes

    def label_selectors_in_use(self) -> bool:
        """Whether any BGPPeer selects nodes by label (so another node's labels can change peerings)."""
        return any(
            (value.get("spec") or {}).get(name) for value in self.peers.values()
            for name in ("nodeSelector", "peerSelector")
        )

    def _keep(self, table: dict[Any, Any], name: Any, value: Any, keep: bool, change: Change) -> None:
        """Put (or drop) one kept value, noting `change` only when the table's content moved."""
        if keep:
            if name not in table or table[name] != value:
                table[name] = value
                self.changes.add(change)
        elif table.pop(name, None) is not None:
            self.changes.add(change)

    def apply(self, key: str, value: Any) -> bool:
        """Apply one KV (value None = delete); returns whether the key is one this client uses.

        A value that fails validation is rejected as a whole: whatever was kept under its key goes,
        so that nothing of it renders.
        """
        try:
            parsed = keys.parse_key(key)
        except ValueError:
            return False
        if isinstance(parsed, keys.ResourceKey):
            return self._apply_resource(parsed, value)
        if isinstance(parsed, keys.IPPoolKey):
            version = _cidr_version(parsed.cidr)
            keep = self._valid("IPPool", parsed.cidr, value, lambda: check_pool(value))
            self._keep(self.pools[version], parsed.cidr, value, keep, ("pools", version))
            return True
        if isinstance(parsed, keys.BlockAffinityKey):
            version = _cidr_version(parsed.cidr)
            blocks = self.affinities.setdefault(parsed.host, {}).setdefault(version, {})
            block = parsed.cidr.replace("/", "-")  # the v1 key form, whose order the templates keep
            state = str(value.get("state") or "") if isinstance(value, Mapping) else None
            name = f"{parsed.host}/{parsed.cidr}"
            # client.go updateCache: a pending affinity is not acted upon; treated as a delete.
            keep = not (
                not self._valid("BlockAffinity", name, value, lambda: check_block_state(value))
                or state == "pending"
                or value.get("deleted")
            )
            self._keep(blocks, block, state or "", keep, ("blocks", parsed.host, version))
            return True
        return False

    def _valid(self, kind: str, name: str, value: Any, check: Callable[[], None]) -> bool:
        """Whether `value` may be kept; a delete (None) is never kept, and ends its rejections."""
        if value is None:
            self.rejections.forget(kind, name)
            return False
        try:
            check()
        except Invalid as exc:
            self.rejections.report(kind, name, exc)
            return False
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            # A value of the wrong shape (a list where an object belongs): rejected the same way.
            self.rejections.report(kind, name, Invalid("value", f"wrong shape ({type(exc).__name__})"))
            return False
        self.rejections.forget(kind, name)
        return True

    def _apply_resource(self, key: keys.ResourceKey, value: Any) -> bool:
        name = key.name
        if key.kind == "Node":
            converted: list[NodeBGP] = []

            def check_and_convert() -> None:
                check_node(name, value)
                converted.append(node_from_v3(name, value, self.rejections))

            old = self.nodes.get(name)
            if self._valid("Node", name, value, check_and_convert):
                new = self.nodes[name] = converted[0]
                if old is None or replace(old, labels=new.labels) != new:
                    self.changes.add(("nodes",))
                elif old.labels != new.labels:
                    self.changes.add(("labels", name))
            elif self.nodes.pop(name, None) is not None:
                self.changes.add(("nodes",))
            return True
        tables: dict[str, tuple[dict[str, dict[str, Any]], Callable[[str, Any], None], Change]] = {
            "BGPConfiguration": (self.bgp_configs, check_bgp_configuration, ("bgpconfig",)),
            "BGPPeer": (self.peers, check_bgp_peer, ("peers",)),
            "BGPFilter": (self.filters, check_filter, ("filters",)),
        }
        if key.kind not in tables:
            return False
        table, check, change = tables[key.kind]
        valid = self._valid(key.kind, name, value, lambda: check(name, value))
        self._keep(table, name, value, valid, change)
        if key.kind == "BGPFilter":
            rejected = value is not None and not valid
            if rejected != (name in self.rejected_filters):
                self.changes.add(change)  # a peer naming it is rejected (or no longer)
            if rejected:
                self.rejected_filters.add(name)
            else:
                self.rejected_filters.discard(name)
        return True

    # -- the v1 keys upstream's templates read ------------------------------------------------------

    @property
    def global_config(self) -> dict[str, Any]:
        return (self.bgp_configs.get("default") or {}).get("spec") or {}

    def node_config(self, node: str) -> dict[str, Any] | None:
        cfg = self.bgp_configs.get(f"node.{node}")
        return None if cfg is None else (cfg.get("spec") or {})

    def global_as(self) -> str:
        return as_string(self.global_config.get("asNumber")) or DEFAULT_AS

    def node_as(self, node: str) -> str:
        """`getNodeOrGlobalValue(node, "as_num")`."""
        found = self.nodes.get(node)
        return (found.as_num if found is not None else "") or self.global_as()

    def global_listen_port(self) -> int:
        return int(self.global_config.get("listenPort") or 0)

    def node_listen_port(self, node: str) -> int | None:
        cfg = self.node_config(node)
        port = int((cfg or {}).get("listenPort") or 0)
        return port or None

    def listen_port(self, node: str) -> int:
        port = self.node_listen_port(node)
        return port if port is not None else self.global_listen_port()

    def nodes_matching(self, selector: str) -> list[str]:
        try:
            parsed = parse_selector(selector)
        except Exception as exc:  # a bad selector must not stop rendering (issue 4 acceptance)
            log.warning("skipping unparsable selector %r: %s", selector, exc)
            return []
        return sorted(name for name, node in self.nodes.items() if parsed.evaluate(node.labels))

    def node_ips(self) -> set[str]:
        return {ip for node in self.nodes.values() for ip in (node.ipv4, node.ipv6) if ip}

    def nodes_with_ip_port_and_as(self, ip: str, as_num: str, port: int) -> list[str]:
        wanted_as = as_num or self.global_as()
        names = []
        for name in sorted(self.nodes):
            node = self.nodes[name]
            if ip not in (node.ipv4, node.ipv6):
                continue
            if (node.as_num or self.global_as()) != wanted_as:
                continue
            if port:
                # Upstream's if/else-if, quirk included: a node port that matches still loses to a
                # different non-zero global port.
                node_port = self.node_listen_port(name)
                if node_port is not None and node_port != port:
                    continue
                if self.global_listen_port() and self.global_listen_port() != port:
                    continue
            names.append(name)
        return names

    def secret_value(self, ref: Mapping[str, Any] | None, field: str) -> str | None:
        """A BGP password from a Secret in calico's namespace, when the client has Secrets at all.

        Raises Invalid for a value BIRD could not take inside its quotes; the caller rejects the
        peerings that would have used it.
        """
        if not ref or self.secret_source is None:
            return None
        value = self.secret_source(str(ref.get("name")), str(ref.get("key")))
        if value is not None:
            check_password(field, value)
        return value
