"""Kubernetes NetworkPolicy semantics, written from the API documentation, with no Calico in it.

The expectation side of connectivity checks (`typha demo --netns`, the e2e test): given the pods, the
namespaces' labels and the NetworkPolicies as the API stores them, may `src` open a connection to
`dst` on a protocol and port? Isolation is per direction: a pod selected by any policy with that
direction in its policyTypes accepts only what one of those policies' rules allows; an unselected pod
accepts everything. Peers: podSelector (policy's namespace), namespaceSelector (+ podSelector),
ipBlock with except. Ports: numeric, named (resolved on the destination pod), endPort ranges.
tests/felix_client/test_netpol_random.py checks felix-client's rendered tables against it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelPod:
    namespace: str
    name: str
    ip: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[tuple[str, int, str], ...] = ()  # (name, number, protocol) of the containers' ports

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ModelPod:
        md = obj["metadata"]
        ports = tuple((p.get("name", ""), int(p["containerPort"]), p.get("protocol", "TCP"))
                      for c in obj["spec"].get("containers") or () for p in c.get("ports") or ())
        return cls(md["namespace"], md["name"], obj["status"]["podIP"], dict(md.get("labels") or {}), ports)


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector; an empty one selects everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def policy_types(spec: Mapping[str, Any]) -> list[str]:
    """The API server's default when policyTypes is absent: Ingress, plus Egress if there are egress rules."""
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


class NetworkPolicyModel:
    def __init__(self, pods: Iterable[ModelPod], namespace_labels: Mapping[str, Mapping[str, str]],
                 policies: Iterable[Mapping[str, Any]]) -> None:
        self.pods = {p.ref: p for p in pods}
        self.namespace_labels = namespace_labels
        self.policies = [p for p in policies if p.get("kind", "NetworkPolicy") == "NetworkPolicy"]

    def allowed(self, src: str, dst: str, protocol: str, port: int) -> bool:
        a, b = self.pods[src], self.pods[dst]
        return (self._direction_allows(a, b, "egress", protocol, port, b)
                and self._direction_allows(b, a, "ingress", protocol, port, b))

    def matrix(self, protocol: str, port: int) -> dict[tuple[str, str], bool]:
        return {(a, b): self.allowed(a, b, protocol, port) for a in self.pods for b in self.pods if a != b}

    def _direction_allows(self, pod: ModelPod, other: ModelPod, direction: str, protocol: str, port: int,
                          target: ModelPod) -> bool:
        isolated = False
        for policy in self.policies:
            ns, spec = policy["metadata"]["namespace"], policy["spec"]
            if ns != pod.namespace or direction.capitalize() not in policy_types(spec):
                continue
            if not selects(spec.get("podSelector"), pod.labels):
                continue
            isolated = True
            for rule in spec.get(direction) or ():
                peers = rule.get("from" if direction == "ingress" else "to")
                if peers and not any(self._peer_matches(p, ns, other) for p in peers):
                    continue
                ports = rule.get("ports")
                if ports and not any(_port_matches(p, protocol, port, target) for p in ports):
                    continue
                return True
        return not isolated

    def _peer_matches(self, peer: Mapping[str, Any], policy_ns: str, other: ModelPod) -> bool:
        if "ipBlock" in peer:
            ip = ipaddress.ip_address(other.ip)
            block = peer["ipBlock"]
            return ip in ipaddress.ip_network(block["cidr"]) and not any(
                ip in ipaddress.ip_network(e) for e in block.get("except") or ())
        if "namespaceSelector" in peer:
            if not selects(peer["namespaceSelector"], self.namespace_labels.get(other.namespace, {})):
                return False
        elif other.namespace != policy_ns:
            return False
        return selects(peer.get("podSelector"), other.labels)


def _port_matches(port: Mapping[str, Any], protocol: str, number: int, target: ModelPod) -> bool:
    if (port.get("protocol") or "TCP") != protocol:
        return False
    wanted = port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, int):
        return wanted <= number <= int(port.get("endPort") or wanted)
    # A named port resolves on the pod receiving the connection.
    return any(name == wanted and proto == protocol and n == number for name, n, proto in target.ports)
