"""Random writes and faults against the API emulator, shared by the ingest and fan-out tests.

An operation is a plain tuple (so hypothesis can generate and shrink it); `apply` performs it.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

from typha.testing import objects

NAMESPACES = ["ns-a", "ns-b"]
NODES = ["node-1", "node-2", "node-3"]
LABEL_VALUES = ["web", "db", "yes", "x.y-z"]
LABEL_KEYS = ["app", "tier", "team"]


def apply(emulator, op: tuple[Any, ...]) -> None:
    from typha.testing.apiserver.server import ApiError

    kind = op[0]
    try:
        if kind == "pod":
            _, ns, i, node, ip_octet, pod_labels = op
            ip = None if ip_octet is None else f"10.65.{NODES.index(node)}.{ip_octet}"
            emulator.upsert(objects.pod(ns, f"pod-{i}", node=node, ip=ip, labels=pod_labels,
                                        ports=[("http", 8080, "TCP")]))
        elif kind == "pod-delete":
            emulator.delete("v1", "Pod", f"pod-{op[2]}", op[1])
        elif kind == "namespace":
            emulator.upsert(objects.namespace(op[1], op[2]))
        elif kind == "namespace-delete":
            emulator.delete("v1", "Namespace", op[1])
        elif kind == "node":
            _, name, octet, tunnel, node_labels = op
            emulator.upsert(objects.node(
                name, ipv4=f"192.168.56.{octet}/24", labels=node_labels,
                ipip_tunnel_addr=f"10.65.{NODES.index(name)}.1" if tunnel else None,
            ))
        elif kind == "node-delete":
            emulator.delete("v1", "Node", op[1])
        elif kind == "policy":
            _, ns, i, pod_selector, from_labels, port = op
            emulator.upsert(objects.network_policy(ns, f"np-{i}", pod_selector=pod_selector,
                                                   from_labels=from_labels, port=port))
        elif kind == "policy-delete":
            emulator.delete("networking.k8s.io/v1", "NetworkPolicy", f"np-{op[2]}", op[1])
        elif kind == "pool":
            _, i, cidr, ipip, nat = op
            emulator.upsert(objects.ip_pool(f"pool-{i}", cidr, ipip=ipip, nat_outgoing=nat))
        elif kind == "pool-delete":
            emulator.delete(objects.CRD, "IPPool", f"pool-{op[1]}")
        elif kind == "affinity":
            _, node, i = op
            emulator.upsert(objects.block_affinity(f"10.65.{NODES.index(node)}.{64 * i}/26", node=node))
            emulator.upsert(objects.ipam_block(f"10.65.{NODES.index(node)}.{64 * i}/26", node=node))
        elif kind == "affinity-delete":
            _, node, i = op
            cidr = f"10.65.{NODES.index(node)}.{64 * i}/26"
            for obj in (objects.block_affinity(cidr, node=node), objects.ipam_block(cidr, node=node)):
                with contextlib.suppress(ApiError):
                    emulator.delete(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
        elif kind == "fault":
            if op[1] == "fail":
                emulator.fail_next(2, 500)
            else:
                getattr(emulator, op[1])()
    except ApiError as exc:
        if exc.status != 404:
            raise


def random_labels(rng: random.Random) -> dict[str, str]:
    return {key: rng.choice(LABEL_VALUES) for key in rng.sample(LABEL_KEYS, rng.randint(0, 3))}


def random_op(rng: random.Random, *, faults: bool = False) -> tuple[Any, ...]:
    """One operation with the same shapes the hypothesis strategies produce."""
    choice = rng.random()
    ns, node = rng.choice(NAMESPACES), rng.choice(NODES)
    if choice < 0.45:
        ip = None if rng.random() < 0.1 else rng.randint(2, 250)
        return ("pod", ns, rng.randint(0, 9), node, ip, random_labels(rng))
    if choice < 0.55:
        return ("pod-delete", ns, rng.randint(0, 9))
    if choice < 0.6:
        return ("namespace", ns, random_labels(rng))
    if choice < 0.68:
        return ("node", node, rng.randint(1, 250), rng.random() < 0.5, random_labels(rng))
    if choice < 0.78:
        selector = {"bad key!": "x"} if rng.random() < 0.1 else random_labels(rng)
        port = rng.choice([None, 80, 8080])
        return ("policy", ns, rng.randint(0, 2), selector, random_labels(rng), port)
    if choice < 0.82:
        return ("policy-delete", ns, rng.randint(0, 2))
    if choice < 0.87:
        cidr = rng.choice(["10.65.0.0/16", "10.66.0.0/16", "10.67.0.0/33"])
        return ("pool", rng.randint(0, 2), cidr, rng.choice(["Never", "Always"]), rng.random() < 0.5)
    if choice < 0.95:
        return ("affinity", node, rng.randint(0, 3))
    if faults:
        return ("fault", rng.choice(["close_watches", "compact", "expire_watches", "fail"]))
    return ("affinity-delete", node, rng.randint(0, 3))
