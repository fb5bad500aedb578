"""`python -m bench soak` at a tiny size, so the harness cannot rot: real typha and agent processes,
every fault of the cycle once, and the guarantee checker's verdict. No timing or growth asserted."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main
from bench.soak import FAULTS, parse_duration, slope_per_minute


def test_duration_and_slope_helpers() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "10m", "1h")] == [90, 90, 600, 3600]
    assert slope_per_minute([(0, 100), (60, 160), (120, 220)]) == 60.0
    assert slope_per_minute([(0, 5)]) == 0.0


def test_soak_runs_every_fault_and_judges_the_clients(tmp_path: Path, capsys) -> None:
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    assert main(["soak", "--duration", "14", "--fault-interval", "2", "--sample-interval", "1", "--warmup", "3",
                 "--rate", "30", "--nodes", "4", "--pods-per-node", "3", "--policies", "3", "--clients", "2",
                 "--json", str(out), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "guarantee checker" in printed
    results = json.loads(out.read_text())
    assert results["verdict_ok"], results["verdict"]
    assert results["converged_after_secs"] is not None
    assert {f["fault"] for f in results["faults"]} == set(FAULTS)
    assert results["writes"] > 0
    assert results["clients_judged"] == 4
    totals = results["client_totals"]
    assert totals["checksum_mismatches"] == 0
    assert totals["protocol_errors"] == 0
    # The connection cut made every judged client reconnect at least once.
    assert totals["connections"] >= 2 * results["clients_judged"]
    for name in ("typha", "felix-client", "confd-client"):
        process = results["processes"][name]
        assert process["alive_at_end"], name
        assert process["samples"] and process["rss_kb_last"] > 0 and process["fds_last"] > 0, name
    assert png.stat().st_size > 10_000
