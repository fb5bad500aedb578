"""`typha demo --netns` at its small default: the probed matrix equals what the final policies say.

The demo writes the final Pods, Namespaces and NetworkPolicies next to its matrix; the expectation is
recomputed here from those objects (typha.testing.netpol_model) rather than taken from the demo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from typha import cli
from typha.testing.netpol_model import ModelPod, NetworkPolicyModel
from typha.testing.vcluster import missing_tools


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())}")
def test_netns_demo_matrix_matches_the_policies(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "typha.cli", "demo", "--netns", "--out", str(out)],
                            capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "matrix matches the policies" in result.stdout
    assert "connectivity on TCP 8080" in result.stdout

    data = json.loads((out / "matrix.json").read_text())
    objs = data["objects"]
    model = NetworkPolicyModel(
        [ModelPod.from_object(o) for o in objs if o["kind"] == "Pod"],
        {o["metadata"]["name"]: o["metadata"].get("labels") or {} for o in objs if o["kind"] == "Namespace"},
        [o for o in objs if o["kind"] == "NetworkPolicy"])
    want = model.matrix("TCP", data["port"])
    probed = {(row["src"], row["dst"]): row["probe"] for row in data["matrix"]}
    assert set(probed) == set(want)
    wrong = {pair: got for pair, got in probed.items() if got != ("ok" if want[pair] else "timeout")}
    assert not wrong
    assert data["ok"]
    assert data["mismatches"] == []
    # Not a trivial matrix: both outcomes, pods on all three nodes, in both pools.
    assert 0 < sum(want.values()) < len(want)
    assert {p["node"] for p in data["pods"].values()} == {"node-000", "node-001", "node-002"}
    assert {p["ip"].split(".")[1] for p in data["pods"].values()} == {"244", "245"}
    assert data["churn_writes"].get("policy") == 1
    assert not any(line.startswith(data["nodes"]["node-000"]["netns"]) for line in _netns_list())


def _netns_list() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout.splitlines()


def test_netns_demo_without_root_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    # The subcommand itself, not cli.main: that would reconfigure this process's logging.
    args = cli.build_parser().parse_args(["demo", "--netns", "--out", "/nonexistent/never-written"])
    assert args._module.run(args) == 2
    assert "run it as root" in capsys.readouterr().out
