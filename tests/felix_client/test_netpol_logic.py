"""The NetworkPolicy conformance cases, checked logically: no kernel, no network namespaces.

Each case of the vendored case file (tests/fixtures/netpol/README.md; `NETPOL_CASES` overrides the path)
is turned into the felix syncer's KVs, fed step by step into one incremental `Calculator` per
node, rendered, and every probe is walked through the rendered filter tables by a small iptables
interpreter (iptables_sim.py): the sending node's FORWARD, then the receiving node's. That checks
the calculation and the rule shapes against the cases' truth tables; the real-packet runner in
network namespaces (tests/netns) is still to come and remains the acceptance test.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from felix_client import rules
from felix_client.calc import Calculator
from typha.model import keys
from typha.model.convert.base import rules_v1
from typha.model.convert.k8s import veth_name
from typha.source.datastore import convert_objects
from typha.testing import objects

from ..fixtures import netpol_cases
from .iptables_sim import Dataplane, Packet

CASES_PATH = netpol_cases()
NODES = ("node-1", "node-2")


EXTRA_CASES_PATH = Path(__file__).parent / "data" / "extra_cases.yaml"


def load_cases(path: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["cases"]


# The shared file, plus our own D cases (deletes, label changes, ipBlock except on egress).
CASES = load_cases(CASES_PATH) + load_cases(EXTRA_CASES_PATH)


class Cluster:
    def __init__(self, case: dict[str, Any], single_node: bool) -> None:
        self.case = case
        self.flavor = case["flavor"]
        self.namespaces = {n["name"]: dict(n.get("labels") or {}) for n in case["namespaces"]}
        self.pods: dict[str, dict[str, Any]] = {}
        counters = dict.fromkeys(NODES, 10)
        for pod in case["pods"]:
            node = "node-1" if single_node else pod["node"]
            ip = f"10.65.{NODES.index(node)}.{counters[node]}"
            counters[node] += 1
            self.pods[f"{pod['namespace']}/{pod['name']}"] = {**pod, "node": node, "ip": ip,
                                                              "labels": dict(pod.get("labels") or {})}
        self.policies: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.calcs = {node: Calculator(node) for node in NODES}
        self.kvs: dict[str, Any] = {}

    # -- building the KV set ------------------------------------------------------------------

    def _substitute(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._substitute(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._substitute(v) for v in value]
        if isinstance(value, str) and "{{" in value:
            def repl(m: re.Match[str]) -> str:
                ip = self.pods[m.group(2)]["ip"]
                if m.group(1) == "ip":
                    return ip
                return str(ipaddress.ip_network(f"{ip}/4", strict=False))
            return re.sub(r"\{\{(ip|cidr4):([^}]+)\}\}", repl, value)
        return value

    def _objects(self) -> list[dict[str, Any]]:
        objs: list[dict[str, Any]] = [
            objects.node("node-1", ipv4="192.168.56.11/24"), objects.node("node-2", ipv4="192.168.56.12/24"),
            objects.ip_pool("pool", "10.65.0.0/16"),
        ]
        for name, labels in self.namespaces.items():
            ns = objects.namespace(name)
            ns["metadata"]["labels"] = dict(labels)  # exactly the case's labels
            objs += [ns, objects.service_account(name)]
        if self.flavor == "kubernetes":
            for pod in self.pods.values():
                ports = [(s["name"], s["port"], s["protocol"]) for s in pod.get("serves") or () if s.get("name")]
                objs.append(objects.pod(pod["namespace"], pod["name"], node=pod["node"], ip=pod["ip"],
                                        labels=pod["labels"], ports=ports))
        for manifest in self.policies.values():
            obj = copy.deepcopy(manifest)
            if obj["apiVersion"] == "projectcalico.org/v3":
                obj["apiVersion"] = objects.CRD  # the same spec, as the CRD that stores it
            objs.append(obj)
        return objs

    def _calico_kvs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for profile in self.case.get("profiles") or ():
            name = profile["name"]
            out[keys.profile_labels_path(name)] = dict(profile.get("labelsToApply") or {})
            out[keys.profile_rules_path(name)] = {
                "inbound_rules": rules_v1(profile.get("ingress"), "", name),
                "outbound_rules": rules_v1(profile.get("egress"), "", name),
            }
        for pod in self.pods.values():
            ns, name = pod["namespace"], pod["name"]
            labels = {**pod["labels"], "projectcalico.org/namespace": ns, "projectcalico.org/orchestrator": "k8s",
                      "projectcalico.org/serviceaccount": "default"}
            ports = [{"name": s["name"], "protocol": s["protocol"].lower(), "port": s["port"]}
                     for s in pod.get("serves") or () if s.get("name")]
            path = keys.workload_endpoint_path(pod["node"], "k8s", f"{ns}/{name}", "eth0")
            out[path] = {"state": "active", "name": veth_name(ns, name), "profile_ids": list(pod["profiles"]),
                         "ipv4_nets": [f"{pod['ip']}/32"], "labels": labels, "ports": ports}
        return out

    def sync(self) -> None:
        """Recompute the KV set and feed only the differences to each node's calculation."""
        kvs = convert_objects("felix", self._objects())
        if self.flavor == "calico":
            kvs.update(self._calico_kvs())
        changes = [(k, None) for k in self.kvs if k not in kvs]
        changes += [(k, v) for k, v in kvs.items() if self.kvs.get(k) != v]
        for calc in self.calcs.values():
            calc.apply(changes)
        self.kvs = kvs

    # -- steps and probes ---------------------------------------------------------------------

    def run_step(self, step: dict[str, Any]) -> None:
        for manifest in step.get("apply") or ():
            md = manifest["metadata"]
            key = (manifest["apiVersion"], manifest["kind"], md.get("namespace", ""), md["name"])
            self.policies[key] = self._substitute(manifest)
        for ref in step.get("delete") or ():
            del self.policies[(ref["apiVersion"], ref["kind"], ref.get("namespace", ""), ref["name"])]
        for change in step.get("label") or ():
            labels = self.pods[change["pod"]]["labels"] if "pod" in change else self.namespaces[change["namespace"]]
            labels.update(change.get("add") or {})
            for name in change.get("remove") or ():
                labels.pop(name, None)
        self.sync()

    def dataplanes(self) -> dict[str, Dataplane]:
        out = {}
        for node, calc in self.calcs.items():
            state = calc.snapshot()
            out[node] = Dataplane.from_text(rules.render_iptables(state),
                                            rules.render_ipset_save(rules.desired_ipsets(state)))
        return out

    def allowed(self, planes: dict[str, Dataplane], src: str, dst: str, proto: str, port: int) -> bool:
        a, b = self.pods[src], self.pods[dst]
        a_if, b_if = veth_name(a["namespace"], a["name"]), veth_name(b["namespace"], b["name"])
        same = a["node"] == b["node"]
        out = planes[a["node"]].forward(Packet(a["ip"], b["ip"], proto, 40000, port, a_if, b_if if same else "tunl0"))
        if same or out != "ACCEPT":
            return out == "ACCEPT"
        return planes[b["node"]].forward(Packet(a["ip"], b["ip"], proto, 40000, port, "tunl0", b_if)) == "ACCEPT"

    def mismatches(self, model: Callable[[str, str, str, int], bool], serves: list[dict[str, Any]]) -> list[str]:
        """Every ordered pair on every served port where the rendered tables disagree with `model`."""
        planes = self.dataplanes()
        wrong = []
        for serve in serves:
            proto, port = serve["protocol"], serve["port"]
            for src in self.pods:
                for dst in self.pods:
                    if src != dst:
                        want = model(src, dst, proto, port)
                        if self.allowed(planes, src, dst, proto.lower(), port) != want:
                            wrong.append(f"{src}>{dst} {proto}/{port} expected {'allow' if want else 'deny'}")
        return wrong

    def check(self, expect: list[dict[str, Any]], where: str) -> None:
        planes = self.dataplanes()
        wrong = []
        for probe in expect:
            proto, port = probe["protocol"].lower(), probe["port"]
            if probe["mode"] == "full-matrix":
                deny = set(probe["deny"])
                pairs = {f"{s}>{d}": f"{s}>{d}" not in deny for s in self.pods for d in self.pods if s != d}
            else:
                pairs = dict.fromkeys(probe.get("allow") or (), True) | dict.fromkeys(probe.get("deny") or (), False)
            for pair, want in sorted(pairs.items()):
                src, dst = pair.split(">")
                if self.allowed(planes, src, dst, proto, port) != want:
                    wrong.append(f"{pair} {proto}/{port}: expected {'allow' if want else 'deny'}")
        assert not wrong, f"{where}: " + "; ".join(wrong)

    def baseline(self) -> None:
        probes = {(p["protocol"], p["port"]) for step in self.case["steps"] for p in step["expect"]}
        planes = self.dataplanes()
        for proto, port in probes:
            for s in self.pods:
                for d, pod in self.pods.items():
                    serves = {(x["protocol"], x["port"]) for x in pod.get("serves") or ()}
                    if s != d and (proto, port) in serves:
                        assert self.allowed(planes, s, d, proto.lower(), port), f"baseline {s}>{d} {proto}/{port}"


@pytest.mark.parametrize("placement", ["spread", "one-node"])
@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case: dict[str, Any], placement: str) -> None:
    cluster = Cluster(case, single_node=placement == "one-node")
    cluster.sync()
    cluster.baseline()
    for index, step in enumerate(case["steps"]):
        cluster.run_step(step)
        cluster.check(step["expect"], f"{case['id']} step {index + 1} ({placement})")
