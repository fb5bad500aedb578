"""Random Kubernetes NetworkPolicies: the rendered tables agree with an independent model of the API.

The model is typha.testing.netpol_model (also the e2e tests' expectation): NetworkPolicy semantics
written straight from the Kubernetes API documentation (isolation per direction, peers, ipBlock/except,
numeric and named ports), with no Calico in it. For
each seed, a random cluster and random policies go through the converter, the calculation, the
renderer and the packet walker (test_netpol_logic.Cluster), and every pair on every served port must
match the model. Seeds are fixed, so a failure reproduces.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from typha.testing.netpol_model import ModelPod, NetworkPolicyModel

from .test_netpol_logic import Cluster

NAMESPACES = ("x", "y", "z")
SERVES = [{"port": 80, "protocol": "TCP", "name": "serve-80-tcp"},
          {"port": 81, "protocol": "TCP", "name": "serve-81-tcp"},
          {"port": 53, "protocol": "UDP", "name": "serve-53-udp"}]


def _labels(rng: random.Random, pod: str) -> dict[str, str]:
    labels = {"pod": pod}
    if rng.random() < 0.5:
        labels["role"] = rng.choice(["db", "web"])
    return labels


def _selector(rng: random.Random, keys: dict[str, list[str]]) -> dict[str, Any]:
    choice = rng.random()
    if choice < 0.25:
        return {}
    key = rng.choice(sorted(keys))
    if choice < 0.75:
        return {"matchLabels": {key: rng.choice(keys[key])}}
    op = rng.choice(["In", "NotIn", "Exists", "DoesNotExist"])
    expr: dict[str, Any] = {"key": key, "operator": op}
    if op in ("In", "NotIn"):
        expr["values"] = rng.sample(keys[key], rng.randint(1, len(keys[key])))
    return {"matchExpressions": [expr]}


POD_KEYS = {"pod": ["a", "b"], "role": ["db", "web"]}
NS_KEYS = {"ns": list(NAMESPACES), "team": ["red", "blue"]}


def _peer(rng: random.Random, pods: list[str]) -> dict[str, Any]:
    kind = rng.random()
    if kind < 0.2:
        target = rng.choice(pods)
        block: dict[str, Any] = {"cidr": rng.choice([f"{{{{ip:{target}}}}}/32", "10.65.0.0/16", "10.65.1.0/24"])}
        if rng.random() < 0.5:
            block["except"] = [f"{{{{ip:{rng.choice(pods)}}}}}/32"]
        return {"ipBlock": block}
    peer: dict[str, Any] = {}
    if kind < 0.7:
        peer["podSelector"] = _selector(rng, POD_KEYS)
    if kind >= 0.5:
        peer["namespaceSelector"] = _selector(rng, NS_KEYS)
    return peer


def _rule(rng: random.Random, pods: list[str], direction: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if rng.random() < 0.7:
        rule["from" if direction == "ingress" else "to"] = [_peer(rng, pods) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.6:
        ports = []
        for _ in range(rng.randint(1, 2)):
            serve = rng.choice(SERVES)
            port: dict[str, Any] = {"port": rng.choice([serve["port"], serve["name"]])}
            if serve["protocol"] != "TCP" or rng.random() < 0.5:
                port["protocol"] = serve["protocol"]
            ports.append(port)
        rule["ports"] = ports
    return rule


def random_case(rng: random.Random) -> dict[str, Any]:
    namespaces = [{"name": ns, "labels": {"kubernetes.io/metadata.name": ns, "ns": ns,
                                          **({"team": rng.choice(["red", "blue"])} if rng.random() < 0.7 else {})}}
                  for ns in NAMESPACES]
    pods = []
    for index, (ns, name) in enumerate(rng.sample([(ns, p) for ns in NAMESPACES for p in "ab"], 4)):
        pods.append({"namespace": ns, "name": name, "labels": _labels(rng, name),
                     "node": f"node-{1 + index % 2}", "serves": SERVES})
    names = [f"{p['namespace']}/{p['name']}" for p in pods]
    steps = []
    for step in range(2):
        apply = []
        for n in range(rng.randint(1, 2)):
            types = rng.choice([["Ingress"], ["Egress"], ["Ingress", "Egress"]])
            spec: dict[str, Any] = {"podSelector": _selector(rng, POD_KEYS), "policyTypes": types}
            for direction in ("ingress", "egress"):
                if direction.capitalize() in types and rng.random() < 0.85:
                    spec[direction] = [_rule(rng, names, direction) for _ in range(rng.randint(0, 2))]
            apply.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                          "metadata": {"name": f"p{step}{n}", "namespace": rng.choice(NAMESPACES)}, "spec": spec})
        steps.append({"apply": apply})
    return {"id": "random", "flavor": "kubernetes", "namespaces": namespaces, "pods": pods, "steps": steps}


def model(cluster: Cluster) -> NetworkPolicyModel:
    """The shared model over the cluster as it stands after a step (labels may have changed)."""
    pods = [ModelPod(p["namespace"], p["name"], p["ip"], p["labels"],
                     tuple((s["name"], s["port"], s["protocol"]) for s in p["serves"])) for p in cluster.pods.values()]
    return NetworkPolicyModel(pods, cluster.namespaces, cluster.policies.values())


@pytest.mark.parametrize("seed", range(100))
def test_random_policies_match_the_model(seed):
    rng = random.Random(seed)
    case = random_case(rng)
    cluster = Cluster(case, single_node=seed % 3 == 0)
    cluster.sync()
    for index, step in enumerate(case["steps"]):
        cluster.run_step(step)
        wrong = cluster.mismatches(model(cluster).allowed, SERVES)
        assert not wrong, f"seed {seed} step {index + 1}: {wrong}\npolicies: {list(cluster.policies.values())}"
