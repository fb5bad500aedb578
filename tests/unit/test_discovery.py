"""Typha discovery from EndpointSlices: which addresses, in which order, from which settings."""

from __future__ import annotations

import random

import pytest

from typha.client.discovery import (
    DiscoveryError,
    TyphaAddress,
    TyphaDiscovery,
    order_for_node,
    ready_addresses,
    with_default_port,
)


def _slice(endpoints, ports=(("calico-typha", 5473),)):
    return {"endpoints": endpoints, "ports": [{"name": n, "port": p} for n, p in ports]}


def test_ready_addresses_skip_not_ready_and_other_ports():
    slices = [
        _slice([
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "nodeName": "n1"},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False}, "nodeName": "n2"},
            {"addresses": ["10.0.0.3"], "nodeName": "n3"},  # unset ready means ready
        ], ports=(("calico-typha", 5473), ("metrics", 9093))),
        _slice([{"addresses": ["fd00::4"], "nodeName": "n4"}]),
        _slice([{"addresses": ["10.0.0.5"]}], ports=(("other", 1),)),  # no calico-typha port: not a Sync server
        _slice([{"addresses": ["10.0.0.1"], "nodeName": "n1"}]),  # duplicate across slices counts once
    ]
    assert ready_addresses(slices) == [
        TyphaAddress("10.0.0.1:5473", "n1"),
        TyphaAddress("10.0.0.3:5473", "n3"),
        TyphaAddress("[fd00::4]:5473", "n4"),
    ]


def test_own_node_first_then_the_rest_shuffled():
    addresses = [TyphaAddress(f"10.0.0.{i}:5473", f"n{i % 4}") for i in range(12)]
    local = {a.address for a in addresses if a.node == "n1"}
    orders = set()
    for seed in range(20):
        order = order_for_node(addresses, "n1", random.Random(seed))
        assert set(order[: len(local)]) == local
        assert sorted(order) == sorted(a.address for a in addresses)
        orders.add(tuple(order[len(local):]))
    assert len(orders) > 1, "the remote endpoints are never shuffled"
    # A node without a Typha of its own gets only the shuffled list.
    assert sorted(order_for_node(addresses, "elsewhere", random.Random(1))) == sorted(a.address for a in addresses)


@pytest.mark.parametrize(("given", "dial"), [
    ("typha", "typha:5473"), ("typha:1234", "typha:1234"), ("10.1.2.3", "10.1.2.3:5473"),
    ("fd00::1", "[fd00::1]:5473"), ("[fd00::1]", "[fd00::1]:5473"), ("[fd00::1]:99", "[fd00::1]:99"),
    ("unix:/run/typha.sock", "unix:/run/typha.sock"),
])
def test_default_port(given, dial):
    assert with_default_port(given) == dial


def test_settings_precedence():
    env = {"FELIX_TYPHAADDR": "a:1,b", "FELIX_TYPHAK8SSERVICENAME": "calico-typha"}
    assert TyphaDiscovery.from_env(env, ("FELIX_",), node="n").addresses() == ["a:1", "b:5473"]
    assert TyphaDiscovery.from_env(env, ("FELIX_",), node="n", override=["c:2"]).static == ("c:2",)
    by_service = TyphaDiscovery.from_env({"CALICO_TYPHAK8SSERVICENAME": "svc", "CONFD_TYPHAK8SNAMESPACE": "calico"},
                                         ("CONFD_", "FELIX_", "CALICO_"), node="n")
    assert (by_service.static, by_service.service_name, by_service.namespace) == ((), "svc", "calico")
    assert by_service.dynamic
    with pytest.raises(DiscoveryError, match="no Typha configured"):
        TyphaDiscovery.from_env({}, ("FELIX_",), node="n").addresses()


def test_api_failure_is_a_discovery_error():
    def unreachable(_kubeconfig: str):
        raise OSError("connection refused")

    discovery = TyphaDiscovery(service_name="calico-typha", kube_factory=unreachable)
    with pytest.raises(DiscoveryError, match="connection refused"):
        discovery.addresses()
