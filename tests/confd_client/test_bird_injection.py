"""Nothing an object sends reaches BIRD as a statement of its own (issue 17: validation before BIRD).

A scenario with every kind of object confd renders (nodes, the default BGPConfiguration, global,
node-specific and selector BGPPeers with a password and a BGPFilter, IP pools, a block affinity, a
Service, the Secret with the passwords, the environment) is rendered with one string field replaced
by a hostile string: a random text around at least one fragment that would break out of a BIRD
statement (newline, quote, `;`, `}`, `include "…";`, NUL, other scripts' digits, emoji, 300 chars…).

The rendered six files must then be exactly what some harmless input renders:
- `absent`: the objects the value belongs to left out (the object or peering was rejected);
- `removed`: the field left out (the value was ignored, as an unparsable duration is);
- `alt`: the field set to another harmless value (an unknown enum value is one);
- `sub`: the benign value's rendering with the benign value replaced by the hostile one (the value
  was valid for its grammar, e.g. a password with `;` inside BIRD's quotes);
- `refused`: rendering refused outright (a malformed CALICO_ROUTER_ID), so the old config stays.
Anything else would be a statement the same input without the hostile field would not produce.
A sample of the accepted renders is also parsed by BIRD itself (`bird -p -c`).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from confd_client.bgp.store import BGPStore
from confd_client.bgp.validate import REJECTED, Invalid
from confd_client.render import FILES, render_all
from typha.model.keys import block_affinity_path, ip_pool_path, resource_path

ME = "node-a"
FRAGMENTS = [
    "\n", "\r", "\x00", '"', "'", ";", "}", "{", "#", " ", "\t", 'include "/etc/passwd";', "\u2028",
    "é", "\u0661", "\U0001f600", "x" * 300, "%eth0", "/", "\\", "protocol bgp evil { neighbor 1.2.3.4 as 1; }",
]
HOSTILE = st.builds(
    lambda before, fragment, after: before + fragment + after,
    st.text(max_size=12), st.sampled_from(FRAGMENTS), st.text(max_size=12),
)
EXAMPLES_PER_FAMILY = 2000
BATCH = 10


def _resource(kind: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels is not None:
        metadata["labels"] = labels
    return {"kind": kind, "apiVersion": "projectcalico.org/v3", "metadata": metadata, "spec": spec}


@dataclass
class Obj:
    """One KV of the scenario: its key is built from `name`, so a slot can rename it."""

    key_of: Callable[[str], str]
    name: str
    value: dict[str, Any]


def base_scenario() -> dict[str, Any]:
    # IPIP pools are left out: their `krt_tunnel` is an attribute of Calico's patched BIRD, which
    # stock BIRD 1.6 (what the parse check runs) does not know.
    def res(kind: str) -> Callable[[str], str]:
        return lambda name: resource_path(kind, name)

    objects = {
        "node-a": Obj(res("Node"), "node-a", _resource("Node", "node-a", {
            "bgp": {"ipv4Address": "10.0.0.1/24", "ipv6Address": "fd00::1/64"},
            "wireguard": {"interfaceIPv4Address": "10.99.0.1"},
        }, {"rack": "r1"})),
        "node-b": Obj(res("Node"), "node-b", _resource("Node", "node-b", {
            "bgp": {"ipv4Address": "10.0.0.2/24", "ipv6Address": "fd00::2/64", "asNumber": 64513},
            "wireguard": {"interfaceIPv4Address": "10.99.0.2"},
        }, {"rack": "r2"})),
        "node-c": Obj(res("Node"), "node-c", _resource("Node", "node-c", {
            "bgp": {"ipv4Address": "10.0.1.3/24", "routeReflectorClusterID": "10.0.0.9"},
        }, {"rack": "r3"})),
        "config": Obj(res("BGPConfiguration"), "default", _resource("BGPConfiguration", "default", {
            "asNumber": 64512,
            "logSeverityScreen": "Info",
            "bindMode": "None",
            "ignoredInterfaces": ["eth9"],
            "serviceClusterIPs": [{"cidr": "10.96.0.0/12"}],
            "serviceExternalIPs": [{"cidr": "192.0.2.0/24"}],
            "serviceLoadBalancerIPs": [{"cidr": "198.51.100.0/24"}],
            "communities": [{"name": "bench", "value": "65000:100"}],
            "prefixAdvertisements": [{"cidr": "10.244.0.0/16", "communities": ["bench", "65000:200"]}],
            "nodeMeshPassword": {"secretKeyRef": {"name": "bgp-secrets", "key": "mesh"}},
            "nodeMeshMaxRestartTime": "120s",
            "programClusterRoutes": "Enabled",
        })),
        "peer-global": Obj(res("BGPPeer"), "peer-global", _resource("BGPPeer", "peer-global", {
            "peerIP": "192.0.2.10",
            "asNumber": "65010",
            "localASNumber": "64999",
            "password": {"secretKeyRef": {"name": "bgp-secrets", "key": "peer"}},
            "filters": ["filter-a"],
            "keepaliveTime": "30s",
            "maxRestartTime": "90s",
            "reachableBy": "10.0.0.254",
            "sourceAddress": "UseNodeIP",
            "nextHopMode": "Self",
            "ttlSecurity": 2,
        })),
        "peer-node": Obj(res("BGPPeer"), "peer-node", _resource("BGPPeer", "peer-node", {
            "node": ME, "peerIP": "[fd00::99]:1790", "asNumber": "1.10", "reversePeering": "Manual",
        })),
        "peer-sel": Obj(res("BGPPeer"), "peer-sel", _resource("BGPPeer", "peer-sel", {
            "nodeSelector": "rack == 'r1'", "peerSelector": "rack == 'r3'",
        })),
        "filter-a": Obj(res("BGPFilter"), "filter-a", _resource("BGPFilter", "filter-a", {
            "importV4": [{
                "action": "Accept", "matchOperator": "In", "cidr": "10.50.0.0/16",
                "prefixLength": {"min": 24, "max": 28}, "interface": "eth*", "source": "RemotePeers",
                "communities": {"values": ["65000:1"]}, "asPathPrefix": [65001], "priority": 10,
                "peerType": "eBGP",
                "operations": [
                    {"addCommunity": {"value": "65000:2"}},
                    {"prependASPath": {"prefix": [65002]}},
                    {"setPriority": {"value": 20}},
                ],
            }],
            "exportV6": [{"action": "Reject", "matchOperator": "Equal", "cidr": "fd00:50::/48"}],
        })),
        "pool-v4": Obj(lambda seg: f"/calico/v1/ipam/v4/pool/{seg}", "10.244.0.0-16",
                       {"cidr": "10.244.0.0/16", "ipip_mode": "never", "vxlan_mode": "never"}),
        "pool-v6": Obj(lambda seg: f"/calico/v1/ipam/v6/pool/{seg}", "fd00:244::-48",
                       {"cidr": "fd00:244::/48", "ipip_mode": "never", "vxlan_mode": "never",
                        "disableBGPExport": True}),
        "affinity": Obj(lambda host: block_affinity_path(host, "10.244.1.0/26"), ME,
                        {"state": "confirmed", "deleted": False}),
    }
    assert objects["pool-v4"].key_of(objects["pool-v4"].name) == ip_pool_path("10.244.0.0/16")
    return {
        "objects": objects,
        "secrets": {"mesh": "mesh-secret", "peer": "peer;pass}word"},
        "services": {"svc": {
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "externalIPs": ["192.0.2.5"],
                     "externalTrafficPolicy": "Local"},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}},
        }},
        "slices": [{"metadata": {"namespace": "default", "name": "web-1",
                                 "labels": {"kubernetes.io/service-name": "web"}},
                    "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": ME, "conditions": {"ready": True}}]}],
        "env": {"CALICO_ROUTER_ID": "10.0.0.1"},
    }


def render(scenario: dict[str, Any]) -> dict[str, str] | None:
    """The six files for ME, or None when rendering is refused."""
    store = BGPStore()
    for obj in scenario["objects"].values():
        store.apply(obj.key_of(obj.name), obj.value)
    secrets = scenario["secrets"]
    store.secret_source = lambda name, key: secrets.get(key) if name == "bgp-secrets" else None
    services, slices = scenario["services"], scenario["slices"]
    store.services_source = lambda: [(svc, slices) for svc in services.values()]
    try:
        return render_all(store, ME, scenario["env"])
    except Invalid:
        return None


# -- slots: where a hostile value goes, and what it may render like ------------------------------------

Path_ = tuple[Any, ...]  # ("objects", "peer-global", "value", "spec", "asNumber"), or ending in "@name"


@dataclass(frozen=True)
class Slot:
    family: str
    path: Path_
    benign: Any
    outcomes: tuple[str, ...]  # absent, removed, alt, sub, refused
    absent: tuple[Path_, ...] = ()  # what `absent` leaves out
    alt: Any = "zzz"
    also: tuple[Path_, ...] = ()  # other places that carry the same value (a renamed filter's users)
    instead: tuple[tuple[Path_, Any], ...] = ()  # what `absent` sets rather than deletes


def _walk(scenario: dict[str, Any], path: Path_) -> Any:
    target: Any = scenario
    for part in path:
        target = getattr(target, part) if isinstance(target, Obj) else target[part]
    return target


def _set(scenario: dict[str, Any], path: Path_, value: Any) -> None:
    target = _walk(scenario, path[:-1])
    if path[-1] == "@name":
        target.name = value
        if "metadata" in target.value:
            target.value["metadata"]["name"] = value
    else:
        target[path[-1]] = value


def _delete(scenario: dict[str, Any], path: Path_) -> None:
    target = _walk(scenario, path[:-1])
    del target[path[-1]]


def _obj(name: str, *rest: Any) -> Path_:
    return ("objects", name, "value", *rest)


def _name(name: str) -> Path_:
    return ("objects", name, "@name")


OBJ = ("objects",)
PEER_G, PEER_N, PEER_S = (*OBJ, "peer-global"), (*OBJ, "peer-node"), (*OBJ, "peer-sel")
A, R, ALT, S = "absent", "removed", "alt", "sub"
RULE = ("spec", "importV4", 0)

SLOTS: list[Slot] = [
    # BGPPeers and the password Secret.
    Slot("peers", _name("peer-global"), "peer-global", (A,), (PEER_G,)),
    Slot("peers", _obj("peer-global", "spec", "peerIP"), "192.0.2.10", (A,), (PEER_G,)),
    Slot("peers", _obj("peer-global", "spec", "asNumber"), "65010", (A,), (PEER_G,)),
    Slot("peers", _obj("peer-global", "spec", "localASNumber"), "64999", (A,), (PEER_G,)),
    Slot("peers", _obj("peer-global", "spec", "filters", 0), "filter-a", (A,), (PEER_G,)),
    Slot("peers", _obj("peer-global", "spec", "keepaliveTime"), "30s", (R,)),
    Slot("peers", _obj("peer-global", "spec", "maxRestartTime"), "90s", (R,)),
    Slot("peers", _obj("peer-global", "spec", "keepOriginalNextHop"), None, (A,), (PEER_G,)),
    Slot("bgpconfig", _obj("config", "spec", "nodeToNodeMeshEnabled"), None, (A,), ((*OBJ, "config"),)),
    Slot("pools", _obj("pool-v6", "disableBGPExport"), True, (A,), ((*OBJ, "pool-v6"),)),
    Slot("peers", _obj("peer-global", "spec", "reachableBy"), "10.0.0.254", (A,), (PEER_G,)),
    Slot("peers", _obj("peer-global", "spec", "sourceAddress"), "UseNodeIP", (ALT,)),
    Slot("peers", _obj("peer-global", "spec", "nextHopMode"), "Self", (R,)),
    Slot("peers", _obj("peer-global", "spec", "ttlSecurity"), 2, (A,), (PEER_G,)),
    Slot("peers", _obj("peer-global", "spec", "localWorkloadSelector"), None, (A,), (PEER_G,)),
    Slot("peers", _obj("peer-global", "spec", "password", "secretKeyRef", "name"), "bgp-secrets", (R,)),
    Slot("peers", ("secrets", "peer"), "benign-peer-password", (A, S), (PEER_G,)),
    Slot("peers", _name("peer-node"), "peer-node", (A,), (PEER_N,)),
    Slot("peers", _obj("peer-node", "spec", "node"), ME, (A,), (PEER_N,)),
    Slot("peers", _obj("peer-node", "spec", "peerIP"), "[fd00::99]:1790", (A,), (PEER_N,)),
    Slot("peers", _obj("peer-node", "spec", "asNumber"), "1.10", (A,), (PEER_N,)),
    Slot("peers", _obj("peer-node", "spec", "reversePeering"), "Manual", (R,)),
    Slot("peers", _obj("peer-sel", "spec", "nodeSelector"), "rack == 'r1'", (A,), (PEER_S,)),
    Slot("peers", _obj("peer-sel", "spec", "peerSelector"), "rack == 'r3'", (A,), (PEER_S,)),
    # The default BGPConfiguration and the mesh password.
    Slot("bgpconfig", _name("config"), "default", (A,), ((*OBJ, "config"),)),
    *(
        Slot("bgpconfig", _obj("config", "spec", *field), benign, (A,), ((*OBJ, "config"),))
        for field, benign in (
            (("asNumber",), 64512),
            (("ignoredInterfaces", 0), "eth9"),
            (("serviceClusterIPs", 0, "cidr"), "10.96.0.0/12"),
            (("serviceExternalIPs", 0, "cidr"), "192.0.2.0/24"),
            (("serviceLoadBalancerIPs", 0, "cidr"), "198.51.100.0/24"),
            (("communities", 0, "name"), "bench"),
            (("communities", 0, "value"), "65000:100"),
            (("prefixAdvertisements", 0, "cidr"), "10.244.0.0/16"),
            (("prefixAdvertisements", 0, "communities", 0), "bench"),
            (("prefixAdvertisements", 0, "communities", 1), "65000:200"),
            (("listenPort",), None),
            (("ipv4NormalRoutePriority",), None),
        )
    ),
    Slot("bgpconfig", _obj("config", "spec", "logSeverityScreen"), "Info", (ALT,)),
    Slot("bgpconfig", _obj("config", "spec", "bindMode"), "None", (ALT,)),
    Slot("bgpconfig", _obj("config", "spec", "nodeMeshMaxRestartTime"), "120s", (R,)),
    Slot("bgpconfig", _obj("config", "spec", "programClusterRoutes"), "Enabled", (ALT,)),
    Slot("bgpconfig", _obj("config", "spec", "nodeMeshPassword", "secretKeyRef", "key"), "mesh", (R,)),
    # A mesh password BIRD cannot take rejects the mesh: as if it were turned off.
    Slot("bgpconfig", ("secrets", "mesh"), "benign-mesh-password", (A, S),
         instead=((_obj("config", "spec", "nodeToNodeMeshEnabled"), False),)),
    # Nodes (this one and others).
    Slot("nodes", _name("node-b"), "node-b", (A,), ((*OBJ, "node-b"),)),
    *(
        Slot("nodes", _obj(node, *field), benign, outcomes, absent)
        for node, field, benign, outcomes, absent in (
            ("node-b", ("spec", "bgp", "ipv4Address"), "10.0.0.2/24", (R,), ()),
            ("node-b", ("spec", "bgp", "ipv6Address"), "fd00::2/64", (R,), ()),
            ("node-b", ("spec", "bgp", "asNumber"), 64513, (A,), ((*OBJ, "node-b"),)),
            ("node-b", ("spec", "wireguard", "interfaceIPv4Address"), "10.99.0.2", (S,), ()),
            ("node-b", ("metadata", "labels", "rack"), "r2", (R,), ()),
            ("node-c", ("spec", "bgp", "routeReflectorClusterID"), "10.0.0.9", (A,), ((*OBJ, "node-c"),)),
            ("node-c", ("metadata", "labels", "rack"), "r3", (R,), ()),
            ("node-a", ("spec", "bgp", "ipv4Address"), "10.0.0.1/24", (R,), ()),
            ("node-a", ("spec", "bgp", "ipv6Address"), "fd00::1/64", (R,), ()),
            ("node-a", ("spec", "bgp", "asNumber"), None, (A,), ((*OBJ, "node-a"),)),
        )
    ),
    # IP pools and block affinities.
    Slot("pools", _name("pool-v4"), "10.244.0.0-16", (A,), ((*OBJ, "pool-v4"),)),
    Slot("pools", _obj("pool-v4", "cidr"), "10.244.0.0/16", (A,), ((*OBJ, "pool-v4"),)),
    Slot("pools", _obj("pool-v4", "ipip_mode"), "never", (R,)),
    Slot("pools", _obj("pool-v4", "vxlan_mode"), "never", (R,)),
    Slot("pools", _obj("pool-v6", "cidr"), "fd00:244::/48", (A,), ((*OBJ, "pool-v6"),)),
    Slot("pools", _name("affinity"), ME, (A,), ((*OBJ, "affinity"),)),
    Slot("pools", _obj("affinity", "state"), "confirmed", (A,), ((*OBJ, "affinity"),)),
    # BGPFilters: a rejected filter takes the peers that use it along.
    Slot("filters", _name("filter-a"), "filter-a", (A,), ((*OBJ, "filter-a"), PEER_G),
         also=(_obj("peer-global", "spec", "filters", 0),)),
    *(
        Slot("filters", _obj("filter-a", *RULE, *field), benign, (A,), ((*OBJ, "filter-a"), PEER_G))
        for field, benign in (
            (("action",), "Accept"), (("matchOperator",), "In"), (("cidr",), "10.50.0.0/16"),
            (("interface",), "eth*"), (("source",), "RemotePeers"), (("peerType",), "eBGP"),
            (("communities", "values", 0), "65000:1"), (("asPathPrefix", 0), 65001),
            (("prefixLength", "min"), 24), (("priority",), 10),
            (("operations", 0, "addCommunity", "value"), "65000:2"),
            (("operations", 1, "prependASPath", "prefix", 0), 65002),
        )
    ),
    Slot("filters", _obj("filter-a", "spec", "exportV6", 0, "cidr"), "fd00:50::/48", (A,),
         ((*OBJ, "filter-a"), PEER_G)),
    # Services and the environment.
    Slot("services", ("services", "svc", "spec", "clusterIP"), "10.96.0.10", (A,), (("services", "svc"),)),
    Slot("services", ("services", "svc", "spec", "externalIPs", 0), "192.0.2.5", (R,)),
    Slot("services", ("services", "svc", "status", "loadBalancer", "ingress", 0, "ip"), "198.51.100.7", (R,)),
    Slot("services", ("services", "svc", "spec", "externalTrafficPolicy"), "Local", (ALT,)),
    Slot("services", ("services", "svc", "spec", "type"), "LoadBalancer", (ALT,)),
    Slot("services", ("env", "CALICO_ROUTER_ID"), "10.0.0.1", ("refused", S)),
    Slot("services", ("env", "CALICO_ADVERTISE_CLUSTER_IPS"), None, ("refused",)),
]
FAMILIES = sorted({slot.family for slot in SLOTS})


def _with(slot: Slot, value: Any) -> dict[str, Any]:
    scenario = base_scenario()
    for path in (slot.path, *slot.also):
        if value is None and path[-1] != "@name":
            _delete_if_present(scenario, path)
        else:
            _set(scenario, path, value)
    return scenario


def _delete_if_present(scenario: dict[str, Any], path: Path_) -> None:
    try:
        _delete(scenario, path)
    except (KeyError, IndexError):
        pass


@functools.cache
def references(index: int) -> dict[str, dict[str, str] | None]:
    """The renders a hostile value in SLOTS[index] may produce, but for `sub`'s substitution."""
    slot = SLOTS[index]
    refs: dict[str, dict[str, str] | None] = {"benign": render(_with(slot, slot.benign))}
    if "absent" in slot.outcomes:
        scenario = _with(slot, slot.benign)
        for path in slot.absent:
            _delete(scenario, path)
        for path, value in slot.instead:
            _set(scenario, path, value)
        refs["absent"] = render(scenario)
    if "removed" in slot.outcomes:
        scenario = base_scenario()
        _delete_if_present(scenario, slot.path)
        refs["removed"] = render(scenario)
    if "alt" in slot.outcomes:
        refs["alt"] = render(_with(slot, slot.alt))
    return refs


def check_slot(index: int, hostile: str) -> dict[str, str] | None:
    slot = SLOTS[index]
    got = render(_with(slot, hostile))
    refs = references(index)
    assert refs["benign"] is not None, "the benign scenario must render"
    if got is None:
        assert "refused" in slot.outcomes, f"{slot.path}: rendering refused for {hostile!r}"
        return None
    if any(got == refs.get(outcome) for outcome in ("absent", "removed", "alt")):
        return got
    if "sub" in slot.outcomes and isinstance(slot.benign, str) and slot.benign:
        benign = refs["benign"]
        substituted = {name: text.replace(slot.benign, hostile) for name, text in benign.items()}
        if got == substituted:
            return got
    changed = [name for name in FILES if got[name] != refs["benign"][name]]
    raise AssertionError(f"{slot.path} = {hostile!r} renders something no harmless input renders ({changed})")


def test_the_scenario_touches_every_template_path() -> None:
    files = render(base_scenario())
    assert files is not None
    text = files["bird.cfg"] + files["bird6.cfg"] + files["bird_aggr.cfg"] + files["bird_ipam.cfg"]
    for expected in ("protocol bgp Mesh_10_0_0_2", "protocol bgp Global_192_0_2_10", 'password "peer;pass}word"',
                     "protocol bgp Node_fd00__99_port_1790", "protocol bgp Node_10_0_1_3",
                     "'bgp_filter-a_importFilterV4'", '-"eth9"', "route 10.96.0.10/32 blackhole",
                     "route 10.244.1.0/26 blackhole", "bgp_community.add((65000, 100));",
                     "via 10.0.0.254",
                     "if (net ~ 10.244.0.0/16) then { accept; }"):
        assert expected in text, expected


@pytest.mark.parametrize("family", FAMILIES)
def test_hostile_values_render_nothing_of_their_own(family: str) -> None:
    indexes = [i for i, slot in enumerate(SLOTS) if slot.family == family]
    rejected_before = sum(sample.value for metric in REJECTED.collect() for sample in metric.samples
                          if sample.name.endswith("_total"))

    # Hypothesis' own cost per example exceeds a render's, so each example carries a batch of
    # (slot, value) pairs: EXAMPLES_PER_FAMILY values in all, in seconds.
    @settings(max_examples=EXAMPLES_PER_FAMILY // BATCH, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(st.tuples(st.sampled_from(indexes), HOSTILE), min_size=BATCH, max_size=BATCH))
    def run(batch: list[tuple[int, str]]) -> None:
        for index, hostile in batch:
            check_slot(index, hostile)

    run()
    rejected_after = sum(sample.value for metric in REJECTED.collect() for sample in metric.samples
                         if sample.name.endswith("_total"))
    if family != "services":  # a refused environment is the render's error, not a rejected value
        assert rejected_after > rejected_before, "rejections are counted"


BIRD = shutil.which("bird")
BIRD6 = shutil.which("bird6")


@pytest.mark.skipif(BIRD is None or BIRD6 is None, reason="BIRD 1.6 (bird, bird6) not installed")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, len(SLOTS) - 1), hostile=HOSTILE)
def test_bird_parses_what_survives(index: int, hostile: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    files = check_slot(index, hostile)
    if files is None:
        return
    directory = tmp_path_factory.mktemp("bird")
    for name, text in files.items():
        (directory / name).write_text(text)
    for binary, name in ((BIRD, "bird.cfg"), (BIRD6, "bird6.cfg")):
        assert binary is not None
        result = subprocess.run([binary, "-p", "-c", str(Path(directory) / name)],
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, f"{name} for {SLOTS[index].path} = {hostile!r}: {result.stderr}"


@pytest.mark.skipif(BIRD is None or BIRD6 is None, reason="BIRD 1.6 (bird, bird6) not installed")
def test_bird_parses_the_scenario(tmp_path: Path) -> None:
    """The base scenario itself is valid BIRD, so the sampled parses above can fail only on injection."""
    files = render(base_scenario())
    assert files is not None
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for binary, name in ((BIRD, "bird.cfg"), (BIRD6, "bird6.cfg")):
        assert binary is not None
        result = subprocess.run([binary, "-p", "-c", str(tmp_path / name)],
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
