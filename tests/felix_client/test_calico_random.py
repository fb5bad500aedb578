"""Random Calico v3 policies: the rendered tables agree with a direct model of Calico's rule semantics.

The model evaluates the policies the way the Calico documentation describes them, without any of
felix_client: policies that select the endpoint, in (order, name) order; the first rule that matches
decides (Allow, Deny, or Pass to the profiles); a selected endpoint that no rule decided for is
denied at the end of the tier; an endpoint no policy selects falls through to its profiles. Only the
selector language itself is shared (typha.model.selector, tested on its own). This exercises what
the Kubernetes cases cannot: Deny, Pass, order, notSelector, notNets, notPorts, notProtocol, global
policies and default types.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from typha.model.selector import parse

from .test_netpol_logic import Cluster

SERVES = [{"port": 8055, "protocol": "TCP", "name": "http"},
          {"port": 8056, "protocol": "TCP", "name": "alt"},
          {"port": 53, "protocol": "UDP", "name": "dns"}]
SELECTORS = ["color == 'red'", "color == 'blue'", "has(color)", "!has(color)", "all()",
             "name in {'w0', 'w1'}", "name == 'w2' || color == 'red'", "default == ''"]
PROFILE = {"name": "default", "labelsToApply": {"default": ""},
           "ingress": [{"action": "Allow", "source": {"selector": "default == ''"}}],
           "egress": [{"action": "Allow"}]}


def _entity(rng: random.Random, pods: list[str]) -> dict[str, Any]:
    er: dict[str, Any] = {}
    roll = rng.random()
    if roll < 0.4:
        er["selector"] = rng.choice(SELECTORS)
    elif roll < 0.55:
        er["notSelector"] = rng.choice(SELECTORS)
    elif roll < 0.7:
        er["nets"] = [rng.choice(["10.65.0.0/24", "10.65.1.0/24", "10.65.0.0/16", f"{{{{ip:{rng.choice(pods)}}}}}/32"])]
        if rng.random() < 0.4:
            er["notNets"] = [f"{{{{ip:{rng.choice(pods)}}}}}/32"]
    elif roll < 0.8:
        er["notNets"] = [f"{{{{ip:{rng.choice(pods)}}}}}/32", "192.0.2.0/24"]
    return er


def _rule(rng: random.Random, pods: list[str]) -> dict[str, Any]:
    rule: dict[str, Any] = {"action": rng.choice(["Allow", "Allow", "Deny", "Pass"])}
    source, destination = _entity(rng, pods), _entity(rng, pods)
    roll = rng.random()
    if roll < 0.5:
        rule["protocol"] = rng.choice(["TCP", "UDP"])
        ports: list[Any] = rng.sample([8055, 8056, 53, "8050:8055", "http", "dns"], rng.randint(1, 2))
        if rng.random() < 0.7:
            destination["ports"] = ports
        else:
            destination["notPorts"] = [p for p in ports if not isinstance(p, str) or ":" in p] or [53]
    elif roll < 0.6:
        rule["notProtocol"] = rng.choice(["TCP", "UDP"])
    if source:
        rule["source"] = source
    if destination:
        rule["destination"] = destination
    return rule


def random_case(rng: random.Random) -> dict[str, Any]:
    pods = []
    for i in range(4):
        labels = {"name": f"w{i}"}
        if rng.random() < 0.6:
            labels["color"] = rng.choice(["red", "blue"])
        pods.append({"namespace": "fv", "name": f"w{i}", "labels": labels, "node": f"node-{1 + i % 2}",
                     "profiles": ["default"], "serves": SERVES})
    names = [f"fv/w{i}" for i in range(4)]
    steps = []
    for step in range(2):
        apply = []
        for n in range(rng.randint(1, 3)):
            spec: dict[str, Any] = {"selector": rng.choice(SELECTORS)}
            if rng.random() < 0.7:
                spec["order"] = rng.choice([1, 2, 10])
            for direction in ("ingress", "egress"):
                if rng.random() < 0.6:
                    spec[direction] = [_rule(rng, names) for _ in range(rng.randint(0, 3))]
            if rng.random() < 0.3:
                spec["types"] = rng.choice([["Ingress"], ["Egress"], ["Ingress", "Egress"]])
            glob = rng.random() < 0.25
            md = {"name": f"p{step}{n}"} if glob else {"name": f"p{step}{n}", "namespace": "fv"}
            apply.append({"apiVersion": "projectcalico.org/v3",
                          "kind": "GlobalNetworkPolicy" if glob else "NetworkPolicy", "metadata": md, "spec": spec})
        steps.append({"apply": apply})
    return {"id": "random", "flavor": "calico", "namespaces": [{"name": "fv", "labels": {}}],
            "profiles": [PROFILE], "pods": pods, "steps": steps}


# --- the model ----------------------------------------------------------------------------------


def labels_of(pod: dict[str, Any]) -> dict[str, str]:
    return {"default": "", **pod["labels"], "projectcalico.org/namespace": pod["namespace"],
            "projectcalico.org/orchestrator": "k8s", "projectcalico.org/serviceaccount": "default"}


def _types(spec: dict[str, Any]) -> list[str]:
    if spec.get("types"):
        return spec["types"]
    if spec.get("egress") and not spec.get("ingress"):
        return ["Egress"]
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def _in_ports(ports: list[Any], number: int, proto: str, pod: dict[str, Any]) -> bool:
    for p in ports:
        if isinstance(p, int) and p == number:
            return True
        if isinstance(p, str) and ":" in p:
            low, high = map(int, p.split(":"))
            if low <= number <= high:
                return True
        elif isinstance(p, str) and any(s["name"] == p and s["protocol"] == proto and s["port"] == number
                                        for s in pod["serves"]):
            return True
    return False


def _side(er: dict[str, Any], pod: dict[str, Any], port: int, proto: str, ns: str) -> bool:
    ip = ipaddress.ip_address(pod["ip"])
    if er.get("nets") and not any(ip in ipaddress.ip_network(n) for n in er["nets"]):
        return False
    if any(ip in ipaddress.ip_network(n) for n in er.get("notNets") or ()):
        return False
    # A namespaced policy's selector only sees endpoints of its own namespace.
    if er.get("selector") and ((ns and pod["namespace"] != ns) or not parse(er["selector"]).evaluate(labels_of(pod))):
        return False
    if er.get("notSelector") and parse(er["notSelector"]).evaluate(labels_of(pod)):
        return False
    if er.get("ports") and not _in_ports(er["ports"], port, proto, pod):
        return False
    return not (er.get("notPorts") and _in_ports(er["notPorts"], port, proto, pod))


def _rule_matches(rule: dict[str, Any], ns: str, src: dict[str, Any], dst: dict[str, Any], proto: str,
                  port: int) -> bool:
    if rule.get("protocol") and rule["protocol"] != proto:
        return False
    if rule.get("notProtocol") and rule["notProtocol"] == proto:
        return False
    return (_side(rule.get("source") or {}, src, 40000, proto, ns)
            and _side(rule.get("destination") or {}, dst, port, proto, ns))


def _verdict(cluster: Cluster, ep: dict[str, Any], direction: str, src: dict[str, Any], dst: dict[str, Any],
             proto: str, port: int) -> bool:
    selecting = []
    for manifest in cluster.policies.values():
        ns, spec = manifest["metadata"].get("namespace", ""), manifest["spec"]
        if ns and ep["namespace"] != ns:
            continue
        if direction.capitalize() not in _types(spec) or not parse(spec.get("selector") or "").evaluate(labels_of(ep)):
            continue
        order = spec.get("order", float("inf"))
        selecting.append((order, f"{manifest['metadata']['name']}/{ns}/{manifest['kind']}", ns, spec))
    if selecting:
        for _, _, ns, spec in sorted(selecting, key=lambda s: (s[0], s[1])):
            for rule in spec.get(direction) or ():
                if _rule_matches(rule, ns, src, dst, proto, port):
                    if rule["action"] == "Pass":
                        break
                    return rule["action"] == "Allow"
            else:
                continue
            break  # passed: the rest of the tier is skipped
        else:
            return False  # end of tier: selected, and nothing allowed or passed
    # The profile: ingress from any endpoint with default == '', egress to anywhere.
    return direction == "egress" or parse("default == ''").evaluate(labels_of(src))


def allowed(cluster: Cluster, src_name: str, dst_name: str, proto: str, port: int) -> bool:
    src, dst = cluster.pods[src_name], cluster.pods[dst_name]
    return (_verdict(cluster, src, "egress", src, dst, proto, port)
            and _verdict(cluster, dst, "ingress", src, dst, proto, port))


@pytest.mark.parametrize("seed", range(100))
def test_random_calico_policies_match_the_model(seed):
    rng = random.Random(seed)
    case = random_case(rng)
    cluster = Cluster(case, single_node=seed % 3 == 0)
    cluster.sync()
    for index, step in enumerate(case["steps"]):
        cluster.run_step(step)
        wrong = cluster.mismatches(lambda src, dst, proto, port: allowed(cluster, src, dst, proto, port), SERVES)
        assert not wrong, f"seed {seed} step {index + 1}: {wrong}\npolicies: {list(cluster.policies.values())}"
