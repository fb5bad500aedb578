"""A generated cluster for `typha demo`, and the churn that runs against it.

Everything is derived from the node index and a seeded RNG, so two runs with the same sizes build the
same cluster. The layout, per node `i` (0-based, up to 1,024 nodes):

- node `node-NNN`, underlay address 172.18.<hi>.<lo>/16 (its BGP address), annotations as
  calico-node leaves them (IPv4Address, VXLAN tunnel address and MAC);
- two /26 IPAM blocks affine to it, with a confirmed BlockAffinity each: one in the no-encap pool
  10.244.0.0/16 (remote routes learned over BGP by BIRD, so `bird_aggr.cfg` exports it) and one in
  the VXLAN pool 10.245.0.0/16 (remote routes programmed by Felix over `vxlan.calico`); the VXLAN
  block's first address is the node's VTEP address;
- pods alternate between the two blocks; pod `k` (global index) starts on node `k // pods_per_node`, in
  namespace `k % namespaces`, labelled `app=app-<k % apps>`, `tier=<web|api|db>`;
- NetworkPolicy `p` lives in namespace `p % namespaces` and selects `app=app-<p % apps>` (so pod
  `p` is always selected: each policy is active on at least one node) and admits traffic from one
  tier on TCP 8080 (so it needs a `cali40s:` IP set of the source pods).
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass, field
from typing import Any

from typha.testing import objects

NOENCAP_POOL = "10.244.0.0/16"
VXLAN_POOL = "10.245.0.0/16"
BLOCK_SIZE = 26
MAX_NODES = 1024  # /26 blocks in a /16
# Offsets in a node's /26 blocks that pods may use: .0 is the network, the VXLAN block's .1 is the VTEP.
POD_OFFSETS = {"noencap": range(1, 63), "vxlan": range(2, 63)}
TIERS = ("web", "api", "db")
AS_NUMBER = 64512
# Pods written during churn carry their write time (ns since the epoch) in this label, so an agent
# that receives the endpoint can measure API-write-to-receipt latency.
WRITTEN_AT_LABEL = "demo.typha.dev/written-at"


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int = 50
    pods_per_node: int = 20
    policies: int = 50
    seed: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise ValueError(f"--nodes must be between 1 and {MAX_NODES}")
        if not 0 <= self.pods_per_node <= 100:
            raise ValueError("--pods-per-node must be between 0 and 100")
        if self.policies < 0:
            raise ValueError("--policies must not be negative")

    @property
    def namespaces(self) -> int:
        return max(1, min(10, self.nodes * self.pods_per_node // 20))

    @property
    def apps(self) -> int:
        return max(1, min(25, self.nodes * self.pods_per_node // 4))

    @property
    def pods(self) -> int:
        return self.nodes * self.pods_per_node


def node_name(i: int) -> str:
    return f"node-{i:03d}"


def node_ip(i: int) -> str:
    host = i + 10
    return f"172.18.{host >> 8}.{host & 255}"


def block_cidr(pool: str, i: int) -> str:
    base = ipaddress.ip_network(pool).network_address + i * (1 << (32 - BLOCK_SIZE))
    return f"{base}/{BLOCK_SIZE}"


def vtep_ip(i: int) -> str:
    return str(ipaddress.ip_network(block_cidr(VXLAN_POOL, i)).network_address + 1)


def vtep_mac(i: int) -> str:
    return f"66:{AS_NUMBER & 0xFF:02x}:{i >> 8:02x}:{i & 0xFF:02x}:00:01"


def namespace_name(n: int) -> str:
    return f"demo-{n}"


def pod_labels(k: int, spec: ClusterSpec) -> dict[str, str]:
    return {"app": f"app-{k % spec.apps}", "tier": TIERS[k % len(TIERS)]}


def bgp_configuration() -> dict[str, Any]:
    return {
        "apiVersion": objects.CRD,
        "kind": "BGPConfiguration",
        "metadata": {"name": "default"},
        "spec": {"nodeToNodeMeshEnabled": True, "asNumber": AS_NUMBER, "logSeverityScreen": "Info"},
    }


def policy(p: int, spec: ClusterSpec, *, port: int = 8080, from_tier: str | None = None) -> dict[str, Any]:
    return objects.network_policy(
        namespace_name(p % spec.namespaces), f"allow-{p:03d}",
        pod_selector={"app": f"app-{p % spec.apps}"},
        from_labels={"tier": from_tier or TIERS[(p + 1) % len(TIERS)]},
        port=port,
    )


@dataclass
class Pod:
    namespace: str
    name: str
    node: int
    ip: str
    labels: dict[str, str]


@dataclass
class Cluster:
    """The generated objects plus the bookkeeping churn needs (free addresses, live pods)."""

    spec: ClusterSpec
    pods: dict[tuple[str, str], Pod] = field(default_factory=dict)
    free: dict[int, list[str]] = field(default_factory=dict)  # node -> free pod IPs (both blocks)
    next_pod: int = 0

    def __post_init__(self) -> None:
        for i in range(self.spec.nodes):
            addresses = []
            for offset in range(1, 63):
                # Interleave the two blocks so a node's pods use both pools.
                for pool, kind in ((NOENCAP_POOL, "noencap"), (VXLAN_POOL, "vxlan")):
                    if offset in POD_OFFSETS[kind]:
                        addresses.append(str(ipaddress.ip_network(block_cidr(pool, i)).network_address + offset))
            addresses.reverse()  # pop() takes the lowest first
            self.free[i] = addresses

    # -- the initial objects ------------------------------------------------------------------------

    def initial_objects(self) -> list[dict[str, Any]]:
        spec = self.spec
        out: list[dict[str, Any]] = [objects.namespace(namespace_name(n), {"demo": "true"})
                                     for n in range(spec.namespaces)]
        out += [objects.service_account(namespace_name(n)) for n in range(spec.namespaces)]
        out.append(objects.ip_pool("demo-noencap", NOENCAP_POOL, block_size=BLOCK_SIZE, nat_outgoing=True))
        out.append(objects.ip_pool("demo-vxlan", VXLAN_POOL, block_size=BLOCK_SIZE, vxlan="Always",
                                   nat_outgoing=True))
        out.append(bgp_configuration())
        for i in range(spec.nodes):
            name = node_name(i)
            out.append(objects.node(name, ipv4=f"{node_ip(i)}/16", vxlan_tunnel_addr=vtep_ip(i),
                                    vxlan_mac=vtep_mac(i), labels={"demo.typha.dev/rack": f"rack-{i % 4}"}))
            for pool in (NOENCAP_POOL, VXLAN_POOL):
                cidr = block_cidr(pool, i)
                out.append(objects.block_affinity(cidr, node=name))
                out.append(objects.ipam_block(cidr, node=name))
        for _ in range(spec.pods):
            out.append(self._new_pod(self.next_pod // spec.pods_per_node))
        out += [policy(p, spec) for p in range(spec.policies)]
        return out

    def _new_pod(self, node: int, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
        k = self.next_pod
        self.next_pod += 1
        ip = self.free[node].pop()
        pod = Pod(namespace_name(k % self.spec.namespaces), f"pod-{k:05d}", node, ip,
                  {**pod_labels(k, self.spec), **(extra_labels or {})})
        self.pods[(pod.namespace, pod.name)] = pod
        return objects.pod(pod.namespace, pod.name, node=node_name(node), ip=ip, labels=pod.labels,
                           ports=[("http", 8080, "TCP")])

    # -- churn ----------------------------------------------------------------------------------------

    def churn_op(self, rng: random.Random, *, edit_policy: bool = False,
                 steady: bool = False) -> tuple[str, Any]:
        """The next write: ("create", obj) | ("delete", (ns, name)) | ("relabel", (ns, name, labels)) |
        ("policy", obj). Pods written carry WRITTEN_AT_LABEL with the time of this call. `steady`
        keeps the pod count at the spec's (a create when below, a delete when above), so that a long
        run's data does not grow; otherwise creates outnumber deletes a little."""
        stamp = {WRITTEN_AT_LABEL: str(time.time_ns())}
        if edit_policy and self.spec.policies:
            p = rng.randrange(self.spec.policies)
            return "policy", policy(p, self.spec, port=rng.choice((8080, 8443, 9090)), from_tier=rng.choice(TIERS))
        roll = rng.random()
        if steady and roll < 0.55:
            roll = 0.0 if len(self.pods) < self.spec.pods else 0.4
        nodes_with_room = [i for i, free in self.free.items() if free]
        if (roll < 0.3 or not self.pods) and nodes_with_room:
            return "create", self._new_pod(rng.choice(nodes_with_room), stamp)
        if roll < 0.55 and self.pods:
            key = rng.choice(list(self.pods))
            pod = self.pods.pop(key)
            self.free[pod.node].append(pod.ip)
            return "delete", key
        if not self.pods:
            return "noop", None
        key = rng.choice(list(self.pods))
        pod = self.pods[key]
        pod.labels = {**pod.labels, "tier": rng.choice(TIERS), **stamp}
        return "relabel", (key[0], key[1], dict(pod.labels))

    def marker_op(self, stamp: str) -> tuple[str, Any]:
        """A last write stamped `stamp` (relabel the oldest pod, or create one in an empty cluster)."""
        if not self.pods:
            node = next((i for i, free in self.free.items() if free), 0)
            return "create", self._new_pod(node, {WRITTEN_AT_LABEL: stamp})
        key = next(iter(self.pods))
        pod = self.pods[key]
        pod.labels = {**pod.labels, WRITTEN_AT_LABEL: stamp}
        return "relabel", (key[0], key[1], dict(pod.labels))

    @staticmethod
    def apply(api: Any, op: tuple[str, Any]) -> None:
        """Perform a churn op on a KubeAPIEmulator (in-process API)."""
        what, arg = op
        if what == "create":
            api.create(arg)
        elif what == "delete":
            api.delete("v1", "Pod", arg[1], arg[0])
        elif what == "relabel":
            namespace, name, labels = arg
            # A merge patch replaces the labels map key by key; removed keys need explicit nulls, and
            # churn never removes one, so the new map suffices.
            api.patch("v1", "Pod", name, {"metadata": {"labels": labels}}, namespace)
        elif what == "policy":
            api.upsert(arg)
