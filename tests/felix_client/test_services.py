"""Service matches in rules (felix/serviceindex, rule_scanner.go): IP sets from EndpointSlices.

Objects go through the felix syncer's real conversion (`convert_objects`), so the EndpointSlice KV
path and value are the ones typha sends.
"""

from __future__ import annotations

from typing import Any

from felix_client import rules
from felix_client.calc import Calculator
from typha.source.datastore import convert_objects

from .worked_example import BACKEND_IF, cluster_objects


def endpoint_slice(ns: str, name: str, service: str, addresses: list[str], ports: list[dict[str, Any]]
                   ) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
        "ports": ports,
    }


def service_policy(side: str = "destination") -> dict[str, Any]:
    """A Calico NetworkPolicy: backend may talk to (or hear from) service demo/web only."""
    direction = "egress" if side == "destination" else "ingress"
    return {
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "to-web", "namespace": "demo"},
        "spec": {
            "selector": "app == 'backend'",
            "types": ["Egress" if direction == "egress" else "Ingress"],
            direction: [{"action": "Allow", "protocol": "TCP" if side == "destination" else None,
                         side: {"services": {"name": "web", "namespace": "demo"}}}],
        },
    }


WEB_PORTS = [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]
WEB = [endpoint_slice("demo", "web-abc", "web", ["10.65.1.2", "10.65.0.2"], WEB_PORTS)]


def calc_with(objs: list[dict[str, Any]]) -> Calculator:
    calc = Calculator("node-1")
    calc.apply(sorted(convert_objects("felix", cluster_objects() + objs).items()))
    return calc


def _service_set(calc: Calculator, kind: str) -> tuple[str, frozenset[str]]:
    state = calc.snapshot()
    (name,) = [n for n, s in state.ipsets.items() if s.spec.kind == kind]
    return name, state.ipsets[name].members


def test_endpoint_slice_kv_path() -> None:
    kvs = convert_objects("felix", WEB)
    assert list(kvs) == ["/calico/resources/v3/projectcalico.org/kubernetesendpointslices/demo/web-abc"]


def test_destination_service_set_holds_endpoints_and_ports() -> None:
    calc = calc_with([service_policy(), *WEB])
    name, members = _service_set(calc, "service")
    assert name.startswith("cali40svc:")
    assert members == {"10.65.1.2,tcp:80", "10.65.1.2,udp:53", "10.65.0.2,tcp:80", "10.65.0.2,udp:53"}
    state = calc.snapshot()
    text = rules.render_iptables(state)
    assert f"-p tcp -m comment --comment \"NetworkPolicy demo/to-web egress\" -m set --match-set {name} dst,dst " \
           "-j MARK --set-xmark 0x10000/0x10000" in text
    assert f"create {name} hash:ip,port" in rules.render_ipset_save(rules.desired_ipsets(state))
    # The backend's egress chain runs the policy (the rule is on the backend's egress).
    assert f"cali-fw-{BACKEND_IF}" in text


def test_source_service_set_holds_addresses() -> None:
    calc = calc_with([service_policy("source"), *WEB])
    name, members = _service_set(calc, "service-noport")
    assert name.startswith("cali40svcnoport:")
    assert members == {"10.65.1.2", "10.65.0.2"}
    assert f"-m set --match-set {name} src " in rules.render_iptables(calc.snapshot())


def test_slices_update_delete_and_other_services() -> None:
    calc = calc_with([service_policy()])
    assert _service_set(calc, "service")[1] == frozenset()  # no slice yet: matches nothing
    (path, value), = convert_objects("felix", WEB).items()
    calc.update(path, value)
    assert len(_service_set(calc, "service")[1]) == 4
    # A second slice of the same service adds; a slice of another service does not.
    (p2, v2), = convert_objects("felix", [endpoint_slice("demo", "web-def", "web", ["10.65.1.9"],
                                                        [{"port": 80}])]).items()
    db = endpoint_slice("demo", "db-x", "db", ["10.65.1.7"], [{"port": 5432}])
    (p3, v3), = convert_objects("felix", [db]).items()
    calc.update(p2, v2)
    calc.update(p3, v3)
    assert "10.65.1.9,tcp:80" in _service_set(calc, "service")[1]
    assert not any(m.startswith("10.65.1.7") for m in _service_set(calc, "service")[1])
    dirty = calc.take_dirty()
    assert dirty.ipsets
    calc.update(path, None)
    assert _service_set(calc, "service")[1] == {"10.65.1.9,tcp:80"}
    # A slice moving to another service leaves this one.
    moved = {**v2, "metadata": {**v2["metadata"], "labels": {"kubernetes.io/service-name": "db"}}}
    calc.update(p2, moved)
    assert _service_set(calc, "service")[1] == frozenset()


def test_slice_ports_without_number_and_non_ip_addresses_are_skipped() -> None:
    slice_ = endpoint_slice("demo", "web-fqdn", "web", ["10.65.0.5", "web.example.com", "fd00::5"],
                            [{"name": "none"}, {"port": 8443, "protocol": "SCTP"}])
    calc = calc_with([service_policy(), slice_])
    assert _service_set(calc, "service")[1] == {"10.65.0.5,sctp:8443"}


def test_unused_service_set_goes_away() -> None:
    calc = calc_with([service_policy(), *WEB])
    calc.update("/calico/v1/policy/NetworkPolicy/demo/to-web", None)
    assert not [s for s in calc.snapshot().ipsets.values() if s.spec.kind.startswith("service")]
    assert not calc.services._active
