"""docs/calico/felix.md §2.4 end to end through the calculation and the renderer.

Names, jump structure, sets and routes.
"""

from __future__ import annotations

from felix_client import rules
from felix_client.calc import Calculator

from .worked_example import (
    BACKEND_IF,
    FRONTEND_IF,
    OTHER_IF,
    POLICY_CHAIN,
    POLICY_KEY,
    SOURCE_SET,
    expected_node1,
    kvs,
    parse_save,
)


def calculator(node: str, with_policy: bool = True) -> Calculator:
    # The worked example is a standard install: Calico's manifest sets FELIX_DEFAULTENDPOINTTOHOSTACTION
    # to ACCEPT (Felix's own default is DROP).
    calc = Calculator(node, env={"FELIX_DEFAULTENDPOINTTOHOSTACTION": "ACCEPT"})
    calc.apply(sorted(kvs(with_policy).items()))
    return calc


def test_node1_iptables_match_the_worked_example_chain_by_chain():
    state = calculator("node-1").snapshot()
    rendered = parse_save(rules.render_iptables(state))
    expected = expected_node1()
    for table, chains in expected.items():
        got = rendered[table]
        for chain, expected_rules in chains.items():
            assert got.get(chain) == expected_rules, f"{table}/{chain}"
        # Every other chain we program is one of the empty hook chains the example jumps to.
        for chain in set(got) - set(chains):
            assert got[chain] == [], f"{table}/{chain} is not in the worked example"


def test_node1_ip_sets_and_routes():
    state = calculator("node-1").snapshot()
    sets = rules.desired_ipsets(state)
    assert {name: sorted(s.members) for name, s in sets.items()} == {
        SOURCE_SET: ["10.65.0.2"],
        "cali40masq-ipam-pools": ["10.65.0.0/16"],
        "cali40network-ip-pools": ["10.65.0.0/16"],
        "cali40all-hosts-net": ["192.168.56.11", "192.168.56.12"],
    }
    save = rules.render_ipset_save(sets)
    create = f"create {SOURCE_SET} hash:net family inet hashsize 1024 maxelem 1048576"
    assert f"{create}\nadd {SOURCE_SET} 10.65.0.2\n" in save
    # Our output, not the reference worked example's (docs/calico/felix.md §2.4, like the FV comment it cites), which
    # shows local routes without a metric: we give them NormalRoutePriority (1024), as current Felix does,
    # because the BIRD templates we render export a /32 inside a local block whose metric is below that.
    assert rules.render_routes(state).splitlines() == [
        "blackhole 10.65.0.0/26 proto 80",
        f"10.65.0.2 dev {FRONTEND_IF} scope link metric 1024",
        f"10.65.0.3 dev {BACKEND_IF} scope link metric 1024",
        "10.65.1.0/26 via 192.168.56.12 dev tunl0 proto 80 onlink",
    ]


def test_node2_has_no_policy_chain_or_set():
    state = calculator("node-2").snapshot()
    text = rules.render_iptables(state)
    assert POLICY_CHAIN not in text
    assert "cali40s:" not in text
    assert f"-A cali-to-wl-dispatch -o {OTHER_IF} -g cali-tw-{OTHER_IF}" in text
    assert SOURCE_SET not in rules.desired_ipsets(state)
    assert rules.render_routes(state).splitlines() == [
        "10.65.0.0/26 via 192.168.56.11 dev tunl0 proto 80 onlink",
        "blackhole 10.65.1.0/26 proto 80",
        f"10.65.1.2 dev {OTHER_IF} scope link metric 1024",
    ]


def test_policy_delete_and_readd_are_incremental_and_reversible():
    calc = calculator("node-1")
    with_policy = rules.render_iptables(calc.snapshot())
    calc.take_dirty()
    calc.update(POLICY_KEY, None)
    dirty = calc.take_dirty()
    assert dirty.filter
    assert not dirty.routes
    assert {s.name for s in dirty.ipsets} == {SOURCE_SET}
    state = calc.snapshot()
    assert POLICY_CHAIN not in rules.render_iptables(state)
    assert SOURCE_SET not in rules.desired_ipsets(state)
    assert rules.render_iptables(state) == rules.render_iptables(calculator("node-1", with_policy=False).snapshot())
    calc.update(POLICY_KEY, kvs()[POLICY_KEY])
    assert rules.render_iptables(calc.snapshot()) == with_policy
