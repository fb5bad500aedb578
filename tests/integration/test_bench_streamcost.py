"""`python -m bench streamcost` at a tiny size: every stream writes every message once."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main


def test_streamcost_delivers_each_message_to_each_stream(tmp_path: Path, capsys) -> None:
    out = tmp_path / "streamcost.json"
    assert main(["streamcost", "--clients", "20", "--rounds", "15", "--repeat", "2", "--json", str(out)]) == 0
    assert "CPU per client per message" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["deliveries"] == [20 * 15, 20 * 15] == [results["deliveries_expected"]] * 2
    assert results["usec_per_delivery_min"] == min(results["usec_per_delivery"]) > 0
