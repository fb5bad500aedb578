"""Incremental iptables applies against the real kernel, in namespaces this test creates: after a
sequence of policy and endpoint edits programmed from memory (no iptables-save), the tables are what
one full apply of the final state gives in a fresh namespace; and a restore that fails because the
kernel drifted from memory is retried after reading the kernel.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from felix_client import rules
from felix_client.calc import Calculator
from felix_client.dataplane import Dataplane
from felix_client.dataplane.dataplane import HOOK_COMMENT, TABLES
from typha.source.datastore import convert_objects
from typha.testing import objects as o
from typha.testing.netns import Namespaces

from .worked_example import BACKEND_IF, POLICY_CHAIN, POLICY_KEY, cluster_objects, kvs, parse_save

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("ip", "iptables-restore", "ipset")), reason="needs ip, iptables, ipset"
    ),
]

run = Namespaces.run


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    names = [f"fxinc-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def kernel_tables(ns: str, dp: Dataplane) -> dict[str, dict[str, list[str]]]:
    return parse_save(run(ns, dp.save))


def felix_kvs(*objects: dict[str, Any]) -> dict[str, Any]:
    return convert_objects("felix", objects)


@pytest.fixture(params=["nft", "legacy"])
def backend(request: pytest.FixtureRequest) -> str:
    if not shutil.which(f"iptables-{request.param}-restore"):
        pytest.skip(f"no iptables-{request.param}")
    return str(request.param)


def backend_wep_key() -> str:
    return next(k for k in kvs() if "/workload/" in k and "backend" in k)


def test_edits_from_memory_end_where_a_full_apply_does(namespaces: list[str], backend: str) -> None:
    incremental, fresh = namespaces
    calc = Calculator("node-1")
    calc.apply(sorted(kvs().items()))
    dp = Dataplane(incremental, backend=backend)
    dp.apply(calc.snapshot())
    reads, restores = dp.stats.iptables_reads, dp.stats.iptables_tables

    def edit(changes: dict[str, Any]) -> tuple[int, int]:
        """Apply `changes` incrementally; the chains written and deleted."""
        written, deleted = dp.stats.chains_written, dp.stats.chains_deleted
        calc.apply(sorted(changes.items()))
        dp.apply(calc.snapshot(), resync=False)
        return dp.stats.chains_written - written, dp.stats.chains_deleted - deleted

    moved = o.network_policy("demo", "allow-frontend", pod_selector={"app": "backend"},
                             from_labels={"app": "frontend"}, port=9090)
    # A changed port is a rule in the policy's chain: that chain alone is rewritten.
    assert edit(felix_kvs(moved)) == (1, 0)
    assert "--dports 9090" in run(incremental, dp.save, "-t", "filter")
    assert dp.stats.contents_applies == 1  # rendered and written as a change of contents only
    second = o.network_policy("demo", "allow-other", pod_selector={"app": "frontend"},
                              from_labels={"app": "other"}, port=53)
    second_kvs = felix_kvs(second)
    written, _ = edit(second_kvs)
    assert written >= 2  # the new policy chain and the frontend's endpoint chain that now calls it
    # The first policy goes: its chain is deleted, the backend's endpoint chain no longer calls it.
    assert edit({POLICY_KEY: None}) == (1, 1)
    assert POLICY_CHAIN not in run(incremental, dp.save, "-t", "filter")
    wep = backend_wep_key()
    written, deleted = edit({wep: None})  # the backend pod goes: its endpoint chains and dispatch entries
    assert deleted == 2
    assert written >= 2
    edit({wep: kvs()[wep], POLICY_KEY: felix_kvs(moved)[POLICY_KEY]})
    edit({next(iter(second_kvs)): None})
    # No table was read back between the first apply and here, and each edit was one restore of filter.
    assert dp.stats.iptables_reads == reads
    assert dp.stats.iptables_tables == restores + 6

    full = Dataplane(fresh, backend=backend)
    full.apply(calc.snapshot())
    assert kernel_tables(incremental, dp) == kernel_tables(fresh, full)
    # What the dataplane remembers is what the kernel holds: a resync finds nothing to restore.
    dp.apply(calc.snapshot())
    assert dp.stats.iptables_reads == reads + len(TABLES)
    assert dp.stats.iptables_tables == restores + 6


def test_a_restore_that_fails_on_drift_is_retried_after_reading_the_kernel(namespaces: list[str], backend: str) -> None:
    ns = namespaces[0]
    calc = Calculator("node-1")
    calc.apply(sorted(felix_kvs(*cluster_objects()).items()))
    dp = Dataplane(ns, backend=backend)
    dp.apply(calc.snapshot())
    # Behind our back: the FORWARD accept-mark hook goes, so deleting it by memory must fail.
    filter_table = rules.render_tables(calc.snapshot())["filter"]
    run(ns, f"iptables-{backend}", "-D", "FORWARD", "-m", "comment", "--comment", HOOK_COMMENT,
        *filter_table.chains["FORWARD"][-1].split())
    changed = rules.Table("filter", filter_table.builtins, dict(filter_table.chains))
    changed.chains["FORWARD"] = filter_table.chains["FORWARD"][:-1]  # a hook change: the old ones are deleted
    reads = dp.stats.iptables_reads
    dp.apply_table("filter", changed, resync=False)
    assert dp.stats.iptables_reads == reads + 1
    forward = kernel_tables(ns, dp)["filter"]["FORWARD"]
    assert [r for r in forward if HOOK_COMMENT in r] == [
        f'-m comment --comment "{HOOK_COMMENT}" {r}' for r in changed.chains["FORWARD"]]
    assert f"-o {BACKEND_IF} -g cali-tw-{BACKEND_IF}" in kernel_tables(ns, dp)["filter"]["cali-to-wl-dispatch"]
