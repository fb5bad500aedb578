"""Make-before-break chain edits against the real kernel (nft backend), in namespaces this test
creates: an edited policy chain gets its new rules on top, closed by a RETURN, in one transaction
that deletes nothing; `tidy()` then rewrites it clean, ending where one full apply of the same state
does in a fresh namespace; a chain edited again before the tidy-up is rewritten whole, never stacked.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from felix_client.calc import Calculator
from felix_client.calc.graph import DesiredState
from felix_client.dataplane import Dataplane
from typha.testing import objects as o

from .test_iptables_incremental_netns import felix_kvs, kernel_tables, namespaces, pytestmark, run  # noqa: F401
from .worked_example import POLICY_CHAIN, kvs

needs_nft = pytest.mark.skipif(not shutil.which("iptables-nft-restore"), reason="needs iptables-nft")


def moved(port: int) -> dict[str, Any]:
    policy = o.network_policy("demo", "allow-frontend", pod_selector={"app": "backend"},
                              from_labels={"app": "frontend"}, port=port)
    return felix_kvs(policy)


def chain_rules(ns: str, dp: Dataplane, chain: str) -> list[str]:
    return kernel_tables(ns, dp)["filter"][chain]


@needs_nft
def test_an_edit_takes_effect_on_top_and_tidy_leaves_what_a_full_apply_does(namespaces: list[str]) -> None:  # noqa: F811
    node, fresh = namespaces
    calc = Calculator("node-1")
    calc.apply(sorted(kvs().items()))
    dp = Dataplane(node, backend="nft", make_before_break=True)
    dp.apply(calc.snapshot())
    before = chain_rules(node, dp, POLICY_CHAIN)

    calc.apply(sorted(moved(9090).items()))
    state = calc.snapshot()
    dp.apply(state, resync=False)
    wanted = kernel_tables_of(fresh, state)["filter"][POLICY_CHAIN]
    # The new rules first, then a RETURN; the old rules below it are never reached.
    assert chain_rules(node, dp, POLICY_CHAIN) == [*wanted, "-j RETURN", *before]
    assert dp.untidy == {(4, "filter"): {POLICY_CHAIN}}

    restores = dp.stats.iptables_tables
    dp.tidy()
    assert dp.stats.iptables_tables == restores + 1
    assert chain_rules(node, dp, POLICY_CHAIN) == wanted
    assert not any(dp.untidy.values())
    full = Dataplane(fresh, backend="nft")
    assert kernel_tables(node, dp) == kernel_tables(fresh, full)
    # Memory matches the kernel: a resync restores nothing.
    restores = dp.stats.iptables_tables
    dp.apply(calc.snapshot())
    assert dp.stats.iptables_tables == restores


@needs_nft
def test_a_chain_edited_again_before_tidy_is_rewritten_whole(namespaces: list[str]) -> None:  # noqa: F811
    node, fresh = namespaces
    calc = Calculator("node-1")
    calc.apply(sorted(kvs().items()))
    dp = Dataplane(node, backend="nft", make_before_break=True)
    dp.apply(calc.snapshot())
    calc.apply(sorted(moved(9090).items()))
    dp.apply(calc.snapshot(), resync=False)
    calc.apply(sorted(moved(9091).items()))
    state = calc.snapshot()
    dp.apply(state, resync=False)  # no tidy in between
    assert chain_rules(node, dp, POLICY_CHAIN) == kernel_tables_of(fresh, state)["filter"][POLICY_CHAIN]
    assert not any(dp.untidy.values())
    dp.tidy()  # nothing left to do
    assert kernel_tables(node, dp) == kernel_tables(fresh, Dataplane(fresh, backend="nft"))


def test_legacy_ignores_make_before_break() -> None:
    # Legacy replaces the table's whole blob on any change: inserting would only cost a second one.
    assert not Dataplane("unused", backend="legacy", make_before_break=True).make_before_break


def kernel_tables_of(ns: str, state: DesiredState) -> dict[str, dict[str, list[str]]]:
    """`state` programmed whole into the (fresh) namespace `ns`, as iptables-save shows it."""
    full = Dataplane(ns, backend="nft")
    full.apply(state)
    return kernel_tables(ns, full)
