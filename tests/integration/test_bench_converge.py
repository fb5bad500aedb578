"""`python -m bench converge` at a tiny size, so the benchmark cannot rot. Its numbers are not checked:
only that every change was seen applied, the final rules hold every last edit, and nothing is left
behind (processes, namespaces)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.__main__ import main

TINY = ["--local-endpoints", "10", "--remote-endpoints", "10", "--policies", "4", "--changes", "5",
        "--scale", "10", "--debounce", "0.01", "--timeout", "120", "--change-timeout", "30"]


def namespaces() -> set[str]:
    if shutil.which("ip") is None:
        return set()
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("bconv-")}


def run_bench(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "converge.json"
    assert main(["converge", *TINY, "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def check_common(results: dict) -> None:
    conv = results["convergence"]
    assert conv["changes"] == 5
    assert len(conv["latencies_secs"]) == 5
    assert conv["final_state_ok"], conv["final_state_missing"]
    assert conv["programmed_endpoints"] == 10
    assert conv["active_policies"] == 4  # policy p selects pod p, and pods 0..9 are the node's
    assert results["remote_endpoints"] == 10
    [scale] = results["programming"]
    assert scale["policies"] == scale["active_policies"] == 10
    assert scale["endpoints"] == 10
    assert scale["rules"] > 0


def test_dry_run(tmp_path: Path) -> None:
    before = namespaces()
    results = run_bench(tmp_path, "--dry-run", str(tmp_path / "out"))
    assert results["mode"] == "dry-run"
    check_common(results)
    assert "20004" in (tmp_path / "out" / "iptables.save").read_text()  # the last change's port
    assert namespaces() == before


@pytest.mark.root
@pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "iptables-restore", "ipset")),
                    reason="needs ip, iptables, ipset")
def test_netns(tmp_path: Path) -> None:
    before = namespaces()
    results = run_bench(tmp_path)
    assert results["mode"] == "netns"
    check_common(results)
    [scale] = results["programming"]
    assert scale["backends"]
    for name, backend in scale["backends"].items():
        assert "iptables" in backend["first"] and "iptables" in backend["again"], name
        edit, relabel = backend["policy_edit"], backend["remote_relabel"]
        # Every edit is a change of contents only: the edited policy's chain is written from memory
        # (on nft once more by the tidy-up after make-before-break); a relabel touches only IP sets.
        assert edit["count"] > 0 and edit["contents_only_applies"] == edit["count"], name
        assert edit["count"] <= edit["chains_written"] <= 2 * edit["count"], name
        assert relabel["contents_only_applies"] == relabel["count"] and relabel["chains_written"] == 0, name
    assert namespaces() == before
