"""Nothing in a KV can add, break or widen an iptables rule or an IP set (issue 17's probes).

KVs are fed to the calculation directly, bypassing conversion and its validation, as a Calico CRD
written straight into the datastore (or a bug upstream) would reach the agent. The property test
puts hostile strings into every string field of the policy, endpoint, profile, pool and host-config
KVs felix-client consumes and compares the output's *shape* (names of sets, hashed chains,
interfaces and comments replaced by placeholders) with the same input where the field holds a
benign value or is absent: the hostile output may only lack lines, never have one of its own.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from felix_client import rules, validate
from felix_client.calc import Calculator, ParsedRule

from .worked_example import POLICY_KEY, kvs

NODE = "node-1"
BACKEND = "/calico/v1/host/node-1/workload/k8s/demo%2fbackend/endpoint/eth0"
POOL = "/calico/v1/ipam/v4/pool/10.65.0.0-16"
PROFILE = "/calico/v1/policy/profile/kns.demo/rules"
GNP = "/calico/v1/policy/GlobalNetworkPolicy/probe"
VXLAN_ADDR = "/calico/v1/host/node-2/config/IPv4VXLANTunnelAddr"
VXLAN_MAC = "/calico/v1/host/node-2/config/VXLANTunnelMACAddr"

PROBES = ["TCP\n--append cali-fw-x --jump cali-pro-kns.demo", 'ICMP" -j ACCEPT']


def _base() -> dict[str, Any]:
    out = dict(kvs())
    out[GNP] = {
        "tier": "default", "order": 5, "selector": "app == 'backend'", "types": ["ingress", "egress"],
        "inbound_rules": [
            {"action": "allow", "protocol": "tcp", "src_nets": ["10.1.0.0/16", "10.2.0.0/16"],
             "dst_ports": ["http", 80, "1000:2000"], "metadata": {"annotations": {"team": "blue"}}},
            {"action": "deny", "protocol": "icmp", "icmp_type": 8, "icmp_code": 0, "!src_selector": "app == 'x'"},
            {"action": "allow", "protocol": "tcp", "dst_service": "web", "dst_service_ns": "demo"},
        ],
        "outbound_rules": [{"action": "log", "!protocol": "sctp", "dst_nets": ["192.168.0.0/16"]}],
    }
    out[BACKEND] = {**out[BACKEND], "ports": [{"name": "http", "protocol": "tcp", "port": 8080}]}
    out[VXLAN_ADDR] = "10.65.1.0"
    out[VXLAN_MAC] = "66:1b:2e:39:aa:01"
    return out


BASE = _base()


def render(kv: dict[str, Any]) -> tuple[str, str]:
    calc = Calculator(NODE)
    calc.apply(sorted(kv.items()))
    state = calc.snapshot()
    sets_and_routes = rules.render_ipset_save(rules.desired_ipsets(state)) + rules.render_routes(state)
    return rules.render_iptables(state), sets_and_routes


def _rejected() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name in ("felix_client_rules_rejected", "felix_client_objects_rejected"):
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


# --- the shape of the output ----------------------------------------------------------------------

_SET = re.compile(r"cali4[0t][A-Za-z0-9:_-]*")
_HASHED = re.compile(r"(cali-p(?:ri|ro|i|o)-|cali-[tf]w-|cali-(?:from|to)-wl-dispatch-)[^\s]*")
_COMMENT = re.compile(r'-m comment --comment "[^"]*"')
_IFACE = re.compile(r"(-[io]) cali[A-Za-z0-9_.-]*")


def shape(text: str) -> set[str]:
    out = set()
    for line in text.splitlines():
        line = _COMMENT.sub('-m comment --comment "C"', line)
        line = _SET.sub("SET", line)
        line = _HASHED.sub(lambda m: m[1] + "*", line)
        out.add(_IFACE.sub(r"\1 IFACE", line))
    return out


def well_formed(iptables: str, ipsets: str) -> None:
    chain = None
    for line in iptables.splitlines():
        assert validate._PRINTABLE.fullmatch(line), f"unprintable line {line!r}"
        if line.startswith("-A "):
            chain, _, rule = line[3:].partition(" ")
            assert validate.check_rule_line(chain, rule) is None, line
        else:
            assert re.fullmatch(r"\*(filter|nat|raw|mangle)|:[A-Za-z0-9_.:/@+=%,~-]+ (ACCEPT|-) \[0:0\]|COMMIT",
                                line), line
    for line in ipsets.splitlines():
        assert re.fullmatch(
            r"create [A-Za-z0-9_.:-]{1,31} hash:(net|ip,port|ip) family inet hashsize 1024 maxelem 1048576"
            r"|add [A-Za-z0-9_.:-]{1,31} [0-9.]+(/[0-9]+)?(,(tcp|udp|sctp):[0-9]+)?"
            r"|[0-9./]+ (dev|via) [^\s]+.*|blackhole [0-9./]+ proto 80|neigh .*|fdb .*",
            line,
        ), line


# --- the probes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("probe", PROBES)
def test_protocol_probe_adds_no_rule(probe: str) -> None:
    kv = copy.deepcopy(BASE)
    kv[POLICY_KEY]["inbound_rules"][0]["protocol"] = probe
    before = _rejected()
    iptables, ipsets = render(kv)
    assert _rejected() > before  # logged (validate.reject_rule) and counted
    well_formed(iptables, ipsets)
    assert "--append" not in iptables and 'ACCEPT"' not in iptables
    without_rule = copy.deepcopy(BASE)
    without_rule[POLICY_KEY]["inbound_rules"] = []
    # The rule is rejected as a whole: exactly what the policy renders without it.
    assert (iptables, ipsets) == render(without_rule)


def test_probe_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    kv = copy.deepcopy(BASE)
    kv[POLICY_KEY]["inbound_rules"][0]["protocol"] = PROBES[0] + "-log-probe"
    with caplog.at_level("WARNING", logger="felix_client.validate"):
        render(kv)
        render(kv)
    lines = [r for r in caplog.records if "bad-protocol" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]


# --- the property test ----------------------------------------------------------------------------

_PAYLOADS = [
    "\n-A cali-fw-x -j ACCEPT", '" -j ACCEPT', "' || all() || x == '", "\x00", " --append cali-INPUT -j ACCEPT",
    "\r\nCOMMIT\n", "\nadd cali40x 0.0.0.0/1", " -j", "\u202e", "é", "\t", "\\", "$(reboot)", "`x`", ";",
]
_SEEDS = ["tcp", "TCP", "10.0.0.0/8", "10.65.0.3/32", "cali6793bd60945", "http", "8080", "kns.demo", "app", "x",
          "00:11:22:33:44:55", "default", "web", "demo", ""]


@st.composite
def hostile(draw: st.DrawFn) -> str:
    """A seed value with hostile text spliced in (or a very long one): never a valid value."""
    seed = draw(st.sampled_from(_SEEDS))
    payload = draw(st.one_of(st.sampled_from(_PAYLOADS), st.text(min_size=1, max_size=20).map(lambda t: t + "\n")))
    where = draw(st.integers(0, len(seed)))
    text = seed[:where] + payload + seed[where:]
    if draw(st.booleans()) and draw(st.booleans()):
        text = text + "A" * draw(st.integers(300, 5000))
    return text


Setter = Callable[[dict[str, Any], Any], None]


def _at(key: str, *path: str | int) -> Setter:
    """Sets (or with _ABSENT removes) the field at `path` inside the value of `key` (the value
    itself when `path` is empty)."""

    def setter(kv: dict[str, Any], value: Any) -> None:
        if not path:
            if value is _ABSENT:
                kv.pop(key, None)
            else:
                kv[key] = value
            return
        target = kv[key]
        for part in path[:-1]:
            target = target[part]
        if value is _ABSENT:
            if isinstance(target, list):
                del target[path[-1]]  # type: ignore[arg-type]
            else:
                target.pop(path[-1], None)
        else:
            target[path[-1]] = value

    return setter


_ABSENT = object()

# field family -> (setter, benign value of the same role)
FIELDS: dict[str, tuple[Setter, Any]] = {
    "rule.protocol": (_at(GNP, "inbound_rules", 0, "protocol"), "udp"),
    "rule.!protocol": (_at(GNP, "outbound_rules", 0, "!protocol"), "udp"),
    "rule.port": (_at(GNP, "inbound_rules", 0, "dst_ports", 1), 81),
    "rule.named_port": (_at(GNP, "inbound_rules", 0, "dst_ports", 0), "https"),
    "rule.net": (_at(GNP, "inbound_rules", 0, "src_nets", 0), "10.3.0.0/16"),
    "rule.selector": (_at(GNP, "inbound_rules", 1, "!src_selector"), "app == 'y'"),
    "rule.action": (_at(GNP, "inbound_rules", 1, "action"), "log"),
    "rule.service": (_at(GNP, "inbound_rules", 2, "dst_service"), "db"),
    "rule.service_ns": (_at(GNP, "inbound_rules", 2, "dst_service_ns"), "other"),
    "rule.annotation": (_at(GNP, "inbound_rules", 0, "metadata", "annotations", "team"), "red"),
    "policy.selector": (_at(GNP, "selector"), "app == 'frontend'"),
    "policy.tier": (_at(GNP, "tier"), "default"),
    "endpoint.iface": (_at(BACKEND, "name"), "cali0123456789a"),
    "endpoint.net": (_at(BACKEND, "ipv4_nets", 0), "10.65.0.9/32"),
    "endpoint.profile": (_at(BACKEND, "profile_ids", 0), "kns.other"),
    "endpoint.label": (_at(BACKEND, "labels", "app"), "zzz"),
    "endpoint.port_name": (_at(BACKEND, "ports", 0, "name"), "https"),
    "endpoint.port_protocol": (_at(BACKEND, "ports", 0, "protocol"), "udp"),
    "profile.protocol": (_at(PROFILE, "inbound_rules", 0, "protocol"), "udp"),
    "pool.cidr": (_at(POOL, "cidr"), "10.65.0.0/16"),
    "pool.ipip_mode": (_at(POOL, "ipip_mode"), "cross-subnet"),
    "hostconfig.vxlan_addr": (_at(VXLAN_ADDR), "10.65.1.9"),
    "hostconfig.vxlan_mac": (_at(VXLAN_MAC), "66:1b:2e:39:aa:02"),
}


def _key_of(field: str) -> str:
    family = field.split(".")[0]
    if family == "hostconfig":
        return VXLAN_ADDR if field.endswith("addr") else VXLAN_MAC
    return {"rule": GNP, "policy": GNP, "endpoint": BACKEND, "profile": PROFILE, "pool": POOL}[family]


def _with(field: str, value: Any) -> dict[str, Any]:
    kv = dict(BASE)
    key = _key_of(field)
    kv[key] = copy.deepcopy(BASE[key])  # only the KV the field lives in
    FIELDS[field][0](kv, value)
    return kv


class _Incremental:
    """One calculation of BASE, changed and changed back per example: the calculation is incremental,
    so this is what the agent does with an update and much cheaper than building it anew."""

    def __init__(self) -> None:
        self.calc = Calculator(NODE)
        self.calc.apply(sorted(BASE.items()))

    def render(self, field: str, value: Any) -> tuple[str, str]:
        key = _key_of(field)
        changed = _with(field, value).get(key)
        self.calc.update(key, changed)
        try:
            state = self.calc.snapshot()
            return (rules.render_iptables(state),
                    rules.render_ipset_save(rules.desired_ipsets(state)) + rules.render_routes(state))
        finally:
            self.calc.update(key, BASE[key])


_ALLOWED: dict[str, tuple[set[str], set[str]]] = {}


def _allowed(field: str) -> tuple[set[str], set[str]]:
    """The output shapes the field may produce: with a benign value, or without the field."""
    if field not in _ALLOWED:
        shapes = [render(_with(field, v)) for v in (FIELDS[field][1], _ABSENT)]
        _ALLOWED[field] = (shape(shapes[0][0]) | shape(shapes[1][0]), shape(shapes[0][1]) | shape(shapes[1][1]))
    return _ALLOWED[field]


FAMILIES = sorted({f.split(".")[0] for f in FIELDS})


def test_incremental_render_matches_a_fresh_one() -> None:
    inc = _Incremental()
    for field in sorted(FIELDS):
        for value in (FIELDS[field][1], PROBES[0]):
            assert inc.render(field, value) == render(_with(field, value)), field
    assert inc.render("rule.protocol", "tcp") == render(BASE)


@pytest.mark.parametrize("family", FAMILIES)
def test_hostile_strings_add_nothing(family: str) -> None:
    """2,000 hostile values per family, spread over the family's fields (`FIELDS`)."""
    fields = sorted(f for f in FIELDS if f.split(".")[0] == family)
    inc = _Incremental()

    @settings(max_examples=2000, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(field=st.sampled_from(fields), value=hostile())
    def check(field: str, value: str) -> None:
        allowed_ipt, allowed_sets = _allowed(field)
        iptables, ipsets = inc.render(field, value)
        well_formed(iptables, ipsets)
        extra = (shape(iptables) - allowed_ipt) | (shape(ipsets) - allowed_sets)
        assert not extra, f"{field}={value!r} produced {sorted(extra)[:5]}"

    check()


@pytest.mark.parametrize("probe", PROBES)
def test_the_checks_catch_an_unvalidated_value(probe: str) -> None:
    """The property's checks can fail: a probe rendered without validation (nor the guard) trips them."""
    unchecked = rules.Table("filter", [], {"cali-pi-x": rules.render_rule(ParsedRule("allow", protocol=probe), "c")})
    with pytest.raises(AssertionError):
        well_formed(unchecked.render(), "")
    assert unchecked.guarded().chains["cali-pi-x"][0] == rules.GUARD_DROP


def test_json_round_trip_of_probe_values() -> None:
    # The KVs arrive JSON-decoded; the probes survive that unchanged (so the tests above are the wire case).
    assert json.loads(json.dumps(PROBES)) == PROBES


# --- the real tools, in a namespace ------------------------------------------------------------

_needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("ip", "iptables-restore", "ipset")),
    reason="needs ip, iptables-restore and ipset",
)


@pytest.fixture
def scratch_netns() -> Iterator[str]:
    name = f"felixinj-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.mark.root
@pytest.mark.root
@_needs_tools
def test_hostile_samples_restore_in_a_namespace(scratch_netns: str) -> None:
    """A sample of hostile inputs per field family: `ipset restore` and `iptables-restore --test` accept
    the output (a malformed line would make iptables-restore refuse the whole table on every node)."""
    samples = [(field, PROBES[i % 2] if i % 3 else payload + "x")
               for i, field in enumerate(sorted(FIELDS)) for payload in _PAYLOADS[:2]]
    for field, value in samples:
        kv = _with(field, value)
        calc = Calculator(NODE)
        calc.apply(sorted(kv.items()))
        state = calc.snapshot()
        sets = rules.desired_ipsets(state)
        run = ["ip", "netns", "exec", scratch_netns]
        subprocess.run([*run, "ipset", "destroy"], capture_output=True, check=False)
        done = subprocess.run([*run, "ipset", "restore"], input=rules.render_ipset_restore(sets),
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, (field, value, done.stderr)
        tested = subprocess.run([*run, "iptables-restore", "--test"], input=rules.render_iptables(state),
                                capture_output=True, text=True, check=False)
        assert tested.returncode == 0, (field, value, tested.stderr)
