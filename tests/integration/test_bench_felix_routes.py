"""`python -m bench felix-routes` at a tiny size: it runs, and each block update recomputes one block's route."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main


def test_felix_routes_reports_one_recomputation_per_update(tmp_path: Path, capsys) -> None:
    out = tmp_path / "routes.json"
    assert main(["felix-routes", "--blocks", "50", "400", "--reps", "20", "--json", str(out)]) == 0
    assert "400 blocks: block update + routes()" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["benchmark"] == "felix-routes"
    assert [s["blocks"] for s in results["sizes"]] == [50, 400]
    for size in results["sizes"]:
        assert size["block_computations_per_update"] == 1.0
        assert 0 < size["update_p50_ms"] <= size["update_max_ms"]
