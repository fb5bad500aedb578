"""The cluster of docs/calico/felix.md §2.4, as Kubernetes objects and as the felix syncer's KVs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typha.source.datastore import convert_objects
from typha.testing import objects as o


def cluster_objects() -> list[dict[str, Any]]:
    return [
        o.namespace("demo"),
        o.service_account("demo"),
        o.node("node-1", ipv4="192.168.56.11/24", ipip_tunnel_addr="10.65.0.1"),
        o.node("node-2", ipv4="192.168.56.12/24", ipip_tunnel_addr="10.65.1.1"),
        o.ip_pool("default-ipv4-ippool", "10.65.0.0/16", ipip="Always", nat_outgoing=True),
        o.ipam_block("10.65.0.0/26", node="node-1"),
        o.ipam_block("10.65.1.0/26", node="node-2"),
        o.pod("demo", "frontend", node="node-1", ip="10.65.0.2", labels={"app": "frontend"}),
        o.pod("demo", "backend", node="node-1", ip="10.65.0.3", labels={"app": "backend"}),
        o.pod("demo", "other", node="node-2", ip="10.65.1.2", labels={"app": "other"}),
    ]


def policy_object() -> dict[str, Any]:
    return o.network_policy(
        "demo", "allow-frontend", pod_selector={"app": "backend"}, from_labels={"app": "frontend"}, port=8080
    )


def kvs(with_policy: bool = True) -> dict[str, Any]:
    objs = cluster_objects() + ([policy_object()] if with_policy else [])
    return convert_objects("felix", objs)


POLICY_KEY = "/calico/v1/policy/KubernetesNetworkPolicy/demo/allow-frontend"
SOURCE_SET = "cali40s:WW1cS4JdpQmN8rHkfbF1kmF"
POLICY_CHAIN = "cali-pi-_wy0fJonwc5GCXzWY0p9"
FRONTEND_IF = "cali76e3fb891b9"
BACKEND_IF = "cali6793bd60945"
OTHER_IF = "cali41433c6da7d"

# docs/calico/felix.md §2.4, `iptables-save` on node-1, verbatim (its "#" lines are notes, not rules).
# docs/calico/felix.md §2.4, `iptables-save` on node-1, verbatim (its "#" lines are notes, not rules).
NODE1_IPTABLES_SAVE = (Path(__file__).parent / "data" / "worked_example_node1.save").read_text()


def parse_save(text: str) -> dict[str, dict[str, list[str]]]:
    """table -> chain -> rules (without "-A chain "), from iptables-save text; declarations and
    comment lines are skipped, and a chain declared but empty maps to []."""
    tables: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            current.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chain, _, rule = line[3:].partition(" ")
            current.setdefault(chain, []).append(rule)
    return tables


def expected_node1() -> dict[str, dict[str, list[str]]]:
    """The worked example with the chains its notes describe but do not list (frontend's)."""
    tables = parse_save(NODE1_IPTABLES_SAVE)
    flt = tables["filter"]
    flt[f"cali-fw-{FRONTEND_IF}"] = list(flt[f"cali-fw-{BACKEND_IF}"])
    tier_block = ("tier default", "cali-pi-", "Return if policy accepted")
    tw = [r for r in flt[f"cali-tw-{BACKEND_IF}"] if not any(part in r for part in tier_block)]
    flt[f"cali-tw-{FRONTEND_IF}"] = tw
    return tables
