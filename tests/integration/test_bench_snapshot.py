"""`python -m bench snapshot` at a tiny size: every joining client gets the whole snapshot, each round."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main


def test_snapshot_rounds_bring_every_joiner_in_sync(tmp_path: Path, capsys) -> None:
    out = tmp_path / "snapshot.json"
    assert main(["snapshot", "--keys", "120", "--nodes", "3", "--clients", "5", "--rounds", "2", "--no-pin",
                 "--no-progress", "--timeout", "60", "--json", str(out)]) == 0
    assert "round 2: per client" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["benchmark"] == "snapshot"
    assert len(results["rounds"]) == 2
    for round_ in results["rounds"]:
        assert round_["in_sync"] == round_["clients"] == 5
        assert not round_["errors"]
        assert round_["snapshot_kvs"] >= 120  # the pods, plus nodes, profiles and the like
        assert round_["bytes_per_client"] > 0
        assert len(round_["secs_quantiles"]) == 101
        assert 0 < round_["secs_p50"] <= round_["secs_max"] <= round_["total_secs"]

    plots = tmp_path / "plots"
    assert main(["report", str(out), "--out", str(plots)]) == 0
    assert (plots / "snapshot_join.png").read_bytes().startswith(b"\x89PNG")
