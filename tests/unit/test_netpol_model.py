"""typha.testing.netpol_model against the shared NetworkPolicy cases' truth tables (no kernel, no Calico).

The model is what `typha demo --netns` and the e2e test compare real connectivity with, so it is held
to the fixture file's expectations here: every step of every Kubernetes-flavor case
(tests/fixtures/netpol/README.md; `NETPOL_CASES` overrides the path), every listed pair.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from typing import Any

import pytest
import yaml

from typha.testing.netpol_model import ModelPod, NetworkPolicyModel

from ..fixtures import netpol_cases

CASES_PATH = netpol_cases()


def _cases() -> list[Any]:
    cases = [c for c in yaml.safe_load(CASES_PATH.read_text())["cases"] if c["flavor"] == "kubernetes"]
    return [pytest.param(c, id=c["id"]) for c in cases]


def _substitute(value: Any, ips: dict[str, str]) -> Any:
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            ip = ips[m.group(2)]
            return ip if m.group(1) == "ip" else str(ipaddress.ip_network(f"{ip}/4", strict=False))

        return re.sub(r"\{\{(ip|cidr4):([^}]+)\}\}", repl, value)
    if isinstance(value, list):
        return [_substitute(v, ips) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, ips) for k, v in value.items()}
    return value


def _ports(spec: dict[str, Any]) -> tuple[tuple[str, int, str], ...]:
    return tuple((s.get("name", ""), int(s["port"]), s["protocol"].upper()) for s in spec.get("serves") or ())


@pytest.mark.parametrize("case", _cases())
def test_model_matches_the_case_expectations(case: dict[str, Any]) -> None:
    namespaces = {ns["name"]: dict(ns.get("labels") or {}) for ns in case["namespaces"]}
    specs = {f"{p['namespace']}/{p['name']}": p for p in case["pods"]}
    ips = {ref: f"10.65.{i // 200}.{10 + i % 200}" for i, ref in enumerate(specs)}
    labels = {ref: dict(p.get("labels") or {}) for ref, p in specs.items()}
    policies: dict[tuple[str, str], dict[str, Any]] = {}
    for index, step in enumerate(case["steps"], 1):
        for manifest in step.get("apply") or ():
            assert manifest["apiVersion"] == "networking.k8s.io/v1", manifest["apiVersion"]
            md = manifest["metadata"]
            policies[(md["namespace"], md["name"])] = _substitute(copy.deepcopy(manifest), ips)
        for ref in step.get("delete") or ():
            del policies[(ref["namespace"], ref["name"])]
        for change in step.get("label") or ():
            target = labels[change["pod"]] if "pod" in change else namespaces[change["namespace"]]
            target.update({str(k): str(v) for k, v in (change.get("add") or {}).items()})
            for key in change.get("remove") or ():
                target.pop(key, None)
        pods = [ModelPod(p["namespace"], p["name"], ips[ref], labels[ref], _ports(p)) for ref, p in specs.items()]
        model = NetworkPolicyModel(pods, namespaces, list(policies.values()))
        wrong = []
        for probe in step["expect"]:
            protocol, port = probe["protocol"].upper(), int(probe["port"])
            deny = set(probe.get("deny") or ())
            if probe["mode"] == "full-matrix":
                want = {f"{a}>{b}": f"{a}>{b}" not in deny for a in specs for b in specs if a != b}
            else:
                want = dict.fromkeys(probe.get("allow") or (), True) | dict.fromkeys(deny, False)
            for pair, allowed in want.items():
                src, dst = pair.split(">")
                if model.allowed(src, dst, protocol, port) != allowed:
                    wrong.append(f"{pair} {protocol}/{port}: want {'allow' if allowed else 'deny'}")
        assert not wrong, f"{case['id']} step {index}: {wrong}"
