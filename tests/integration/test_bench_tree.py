"""`python -m bench tree` at a tiny size: one watch per kind at the API, every client converges through a relay."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main


def test_tree_relays_converge_with_one_watch_per_kind(tmp_path: Path, capsys) -> None:
    out = tmp_path / "tree.json"
    assert main(["tree", "--relays", "3", "--clients", "7", "--rate", "20", "--duration", "1", "--keys", "30",
                 "--nodes", "3", "--probe-every", "2", "--json", str(out)]) == 0
    assert "API watches" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["clients_in_sync"] == 7
    assert not results["connect_errors"]
    assert results["api_open_watches"] == results["felix_kinds"] > 0
    assert results["converged"]
    assert results["deliveries"] == results["deliveries_expected"] == 20 * 7
    assert results["latency_samples"] > 0
    assert results["latency_ms_p50"] <= results["latency_ms_p99"]
    assert not results["stream_errors"]
