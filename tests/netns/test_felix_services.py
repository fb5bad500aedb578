"""A rule to a Kubernetes service allows exactly the service's endpoints, on the service's ports,
and follows its EndpointSlices as they change (issue 14 acceptance; felix/serviceindex).

Two nodes, a no-encap pool; `client` (node-1) has one Calico NetworkPolicy: egress Allow TCP to
destination service demo/web. The service's EndpointSlice names web-1 (node-2) and web-2 (node-1)
on port 8080. Every pod listens on 8080 and 9090. The client reaches web-1 and web-2 on 8080 only;
`other` is refused until the slice names it, and web-2 is refused once the slice drops it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from felix_harness import FelixCluster, Listener, Node, Pod, exchange_eventually, running_cluster, tcp_exchange

from typha.testing import objects

pytestmark = [
    pytest.mark.root,
    pytest.mark.root,
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "iptables-restore", "ipset")),
                       reason="needs iproute2, iptables and ipset"),
]

POOL = "10.65.0.0/16"
BLOCKS = {"10.65.0.0/26": "node-1", "10.65.1.0/26": "node-2"}
PODS = [
    Pod("demo", "client", "node-1", "10.65.0.2", {"app": "client"}),
    Pod("demo", "web-2", "node-1", "10.65.0.3", {"app": "web"}),
    Pod("demo", "web-1", "node-2", "10.65.1.2", {"app": "web"}),
    Pod("demo", "other", "node-2", "10.65.1.3", {"app": "other"}),
]
PORT, OTHER_PORT = 8080, 9090


def web_slice(addresses: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-x1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a]} for a in addresses],
        "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
    }


POLICY = {
    "apiVersion": "crd.projectcalico.org/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "client-to-web", "namespace": "demo"},
    "spec": {
        "selector": "app == 'client'",
        "types": ["Egress"],
        "egress": [{"action": "Allow", "protocol": "TCP",
                    "destination": {"services": {"name": "web", "namespace": "demo"}}}],
    },
}


@pytest.fixture
def cluster(netns: Any, tmp_path: Path) -> Iterator[FelixCluster]:
    nodes = [Node("node-1", 1), Node("node-2", 2)]
    pods = [Pod(p.ns, p.name, p.node, p.ip, dict(p.labels)) for p in PODS]
    with running_cluster(netns, tmp_path, nodes, pods, [objects.ip_pool("plain", POOL)], BLOCKS) as c:
        listeners = [Listener(netns, p.netns, port) for p in c.pods.values() for port in (PORT, OTHER_PORT)]
        try:
            yield c
        finally:
            for listener in listeners:
                listener.close()


def reaches(c: FelixCluster, pod: str, port: int) -> bool:
    return tcp_exchange(c.ns_tool, c.pods["demo/client"].netns, c.pods[pod].ip, port) is not None


def refused_eventually(c: FelixCluster, pod: str, port: int, attempts: int = 50) -> None:
    """Until the client's connection fails (the agent has applied a change); bounded in count."""
    for _ in range(attempts):
        if not reaches(c, pod, port):
            return
        time.sleep(0.1)
    raise AssertionError(f"client still reaches {pod}:{port}")


def test_rule_to_service_allows_exactly_its_endpoints(cluster: FelixCluster) -> None:
    c = cluster
    client = c.pods["demo/client"]
    assert c.api is not None
    # Without the policy everything is open (the namespace profile allows).
    exchange_eventually(c.ns_tool, client.netns, c.pods["demo/other"].ip, PORT)

    c.api.create(web_slice(["10.65.1.2", "10.65.0.3"]))
    c.api.create(POLICY)
    refused_eventually(c, "demo/other", PORT)
    # The service's endpoints, on the service's port: allowed (one remote, one on the same node).
    assert exchange_eventually(c.ns_tool, client.netns, c.pods["demo/web-1"].ip, PORT) == client.ip
    assert exchange_eventually(c.ns_tool, client.netns, c.pods["demo/web-2"].ip, PORT) == client.ip
    # Not another port of theirs, not another pod.
    assert not reaches(c, "demo/web-1", OTHER_PORT)
    assert not reaches(c, "demo/web-2", OTHER_PORT)
    assert not reaches(c, "demo/other", PORT)
    sets = c.run("node-1", "ipset", "list", "-n").split()
    assert any(s.startswith("cali40svc:") for s in sets), sets

    # The slice changes: `other` joins, web-2 leaves.
    c.api.replace(web_slice(["10.65.1.2", "10.65.1.3"]))
    assert exchange_eventually(c.ns_tool, client.netns, c.pods["demo/other"].ip, PORT) == client.ip
    refused_eventually(c, "demo/web-2", PORT)
    assert reaches(c, "demo/web-1", PORT)

    # The slice goes away: the service has no endpoints and the rule matches nothing.
    c.api.delete("discovery.k8s.io/v1", "EndpointSlice", "web-x1", "demo")
    refused_eventually(c, "demo/web-1", PORT)
    assert not reaches(c, "demo/other", PORT)
