"""`python -m bench memory` at a tiny size: RSS per size above the empty process, and the traced sites."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main


def test_memory_reports_rss_per_size_and_traced_sites(tmp_path: Path, capsys) -> None:
    out = tmp_path / "memory.json"
    assert main(["memory", "--keys", "0,200", "--nodes", "3", "--settle", "0", "--tracemalloc", "--top", "5",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RSS, 200 pods" in printed
    assert "B per pod above the empty process" in printed
    results = json.loads(out.read_text())
    assert [s["keys"] for s in results["sizes"]] == [0, 200]
    assert all(s["rss_mb"] > 0 for s in results["sizes"])
    assert results["empty_rss_mb"] == results["sizes"][0]["rss_mb"] == results["sizes"][0]["total_rss_mb"]
    traced = results["traced"]
    assert traced["keys"] == 200
    assert 0 < traced["traced_mb"] <= traced["traced_peak_mb"]
    assert 0 < len(traced["sites"]) <= 5
