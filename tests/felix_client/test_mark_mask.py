"""IptablesMarkMask (issue #14 item 4): Felix allocates its mark bits from the mask (felix/dataplane/
driver.go with markbits.MarkBitsManager: the mask's bits from the lowest up to accept, pass, drop,
scratch0, scratch1, the rest to the endpoint mark). A non-default mask moves every mark felix_client
renders, in every table of both families, and none falls outside the mask; a mask Felix could not
allocate from is refused with one log line and the default is kept."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from felix_client import rules
from felix_client.calc import Calculator
from felix_client.calc.model import FelixSettings
from felix_client.names import (
    DEFAULT_MARKS,
    MARK_ACCEPT,
    MARK_ALL,
    MARK_CLEAR_FORWARD,
    MARK_DROP,
    MARK_PASS,
    MARK_SCRATCH0,
    MARK_SCRATCH1,
    Marks,
)
from typha.model import keys

from .test_calc import NODE, _routing_calc, policy, wep

_MARK = re.compile(r"(?:--set-xmark|--mark) (0x[0-9a-f]+)/(0x[0-9a-f]+)")


def test_default_allocation_is_the_module_constants() -> None:
    assert Marks.from_mask(0xFFFF0000) == DEFAULT_MARKS
    assert (MARK_ACCEPT, MARK_PASS, MARK_DROP, MARK_SCRATCH0, MARK_SCRATCH1) == (
        0x10000, 0x20000, 0x40000, 0x80000, 0x100000)
    assert (MARK_ALL, MARK_CLEAR_FORWARD, DEFAULT_MARKS.endpoint) == (0x1B0000, 0x1A0000, 0xFFE00000)


@pytest.mark.parametrize(("mask", "expected"), [
    # markbits: the n-th set bit from the lowest, whatever the gaps between them.
    (0x0000FFFF, (0x1, 0x2, 0x4, 0x8, 0x10, 0xFFE0)),
    (0x83300F00, (0x100, 0x200, 0x400, 0x800, 0x100000, 0x83200000)),
    (0x1F, (0x1, 0x2, 0x4, 0x8, 0x10, 0)),
])
def test_allocation_from_other_masks(mask: int, expected: tuple[int, ...]) -> None:
    marks = Marks.from_mask(mask)
    assert (marks.accept, marks.pass_, marks.drop, marks.scratch0, marks.scratch1, marks.endpoint) == expected


@pytest.mark.parametrize("mask", [0, 0xF, 0x80000003, 1 << 32, -1])
def test_masks_felix_cannot_allocate_from_are_refused(mask: int) -> None:
    with pytest.raises(ValueError, match=r"mask|bits"):
        Marks.from_mask(mask)


def _rich_calc(mask: str | None) -> Calculator:
    """IPIP and VXLAN pools with NAT outgoing, an IPv6 pool, local endpoints and policies with every
    action in two tiers: every kind of mark the renderers write."""
    calc = _routing_calc({"vxlan_mode": "always", "masquerade": True}, vxlan=True)
    updates: list[tuple[str, Any]] = [
        (keys.ip_pool_path("fd65::/48"), {"cidr": "fd65::/48", "ipip_mode": "never", "vxlan_mode": "never",
                                          "masquerade": True}),
        (keys.block_path("fd65::/122"), {"cidr": "fd65::/122", "affinity": f"host:{NODE}"}),
        wep(NODE, "demo", "web", "10.65.0.2", {"app": "web"}, ipv6_nets=["fd65::2/128"]),
        wep(NODE, "demo", "db", "10.65.0.3", {"app": "db"}),
        (keys.tier_path("security"), {"order": 10, "default_action": "Pass"}),
        policy("p", "all()", types=["ingress", "egress"], inbound_rules=[
            {"action": "deny", "protocol": "tcp", "dst_ports": [22]},
            {"action": "next-tier", "src_selector": "app == 'db'"},
            {"action": "log"},
            {"action": "allow", "src_nets": ["10.0.0.0/8", "fd00::/8"]},
        ], outbound_rules=[{"action": "allow", "protocol": "udp"}]),
        policy("s", "app == 'web'", tier="security", types=["ingress"], inbound_rules=[{"action": "pass"}]),
    ]
    if mask is not None:
        updates.append((keys.global_config_path("IptablesMarkMask"), mask))
    calc.apply(updates)
    return calc


def _marks_by_rule(calc: Calculator) -> dict[tuple[int, str, str, int], list[tuple[int, int]]]:
    """(family, table, chain, rule index) -> the (value, mask) pairs of that rule, in order."""
    state = calc.snapshot()
    assert state.ipv6
    out = {}
    for version in (4, 6):
        for name, table in rules.render_tables(state, version=version).items():
            for chain, rules_ in table.chains.items():
                for i, rule in enumerate(rules_):
                    found = [(int(v, 16), int(m, 16)) for v, m in _MARK.findall(rule)]
                    if found:
                        out[version, name, chain, i] = found
    return out


@pytest.mark.parametrize("mask", ["0x0000ffff", "0xff00ff00", "0xf0000f80"])
def test_a_non_default_mask_moves_every_rendered_mark_inside_it(mask: str) -> None:
    allowed = int(mask, 16)
    default, moved = _marks_by_rule(_rich_calc(None)), _marks_by_rule(_rich_calc(str(allowed)))  # decimal, as v3
    assert moved.keys() == default.keys()  # the same rules, only their marks differ
    roles = {m for pairs in default.values() for _, m in pairs}
    # Every mark bit the renderers use is exercised: accept, pass, drop, scratch0 and the clears.
    assert {MARK_ACCEPT, MARK_PASS, MARK_DROP, MARK_SCRATCH0, MARK_ALL, MARK_CLEAR_FORWARD} <= roles
    marks = Marks.from_mask(allowed)
    for key, pairs in default.items():
        for (value, mark_mask), (new_value, new_mask) in zip(pairs, moved[key], strict=True):
            assert new_mask != mark_mask, key  # every mask moves (each one is non-zero)
            assert new_value == 0 or new_value != value, key
            assert (new_value | new_mask) & ~allowed == 0, key  # nothing outside IptablesMarkMask
            assert (new_value, new_mask) == (marks.translate(value), marks.translate(mark_mask))
    # The roles land on Felix's allocation for this mask.
    accept_rules = [p for pairs in moved.values() for p in pairs if p == (marks.accept, marks.accept)]
    assert accept_rules
    assert any(p == (0, marks.all) for pairs in moved.values() for p in pairs)
    assert any(p == (marks.drop, marks.drop) for pairs in moved.values() for p in pairs)


def test_comments_are_not_rewritten() -> None:
    table = rules.Table("filter", [], {"c": ['-m comment --comment "--mark 0x10000/0x10000" -m mark '
                                             "--mark 0x10000/0x10000 -j ACCEPT"]})
    (rule,) = table.remarked(Marks.from_mask(0xFF)).chains["c"]
    assert rule == '-m comment --comment "--mark 0x10000/0x10000" -m mark --mark 0x1/0x1 -j ACCEPT'


def test_mask_from_the_node_beats_the_global_one_and_the_environment_beats_both() -> None:
    def lookup(values: dict[str, str]) -> Any:
        return values.get

    host_first = FelixSettings.from_sources(lookup({"IptablesMarkMask": "0xff00"}))
    assert host_first.marks.accept == 0x100
    env = FelixSettings.from_sources(lookup({"IptablesMarkMask": "0xff00"}), {"FELIX_IPTABLESMARKMASK": "0xff0000"})
    assert env.marks.accept == 0x10000 and env.iptables_mark_mask == 0xFF0000
    calc = _rich_calc("0xff00")
    calc.apply([(keys.host_config_path(NODE, "IptablesMarkMask"), "0xff000000")])
    assert calc.snapshot().settings.marks.accept == 0x1000000


def test_a_bad_mask_is_refused_with_one_log_line_and_the_default_kept(caplog: Any) -> None:
    with caplog.at_level(logging.WARNING):
        calc = _rich_calc("0x7")  # three bits: Felix would stop ("Not enough mark bits available")
        for _ in range(3):
            state = calc.snapshot()
    assert state.settings.iptables_mark_mask == 0xFFFF0000
    assert state.settings.marks == DEFAULT_MARKS
    lines = [r.getMessage() for r in caplog.records if "IptablesMarkMask" in r.getMessage()]
    assert len(lines) == 1 and "0x7" in lines[0] and "bits" in lines[0], lines
    assert "--set-xmark 0x10000/0x10000" in rules.render_iptables(state)
