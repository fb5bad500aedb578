"""`python -m bench report` on the committed results: the plots the README links must keep drawing."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.image import imread

from bench.__main__ import main

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _committed(benchmark: str) -> list[str]:
    return sorted(str(p) for p in RESULTS.glob("*.json") if json.loads(p.read_text()).get("benchmark") == benchmark)


def test_report_draws_fanout_plots_from_committed_results(tmp_path: Path, capsys) -> None:
    files = _committed("fanout")
    assert files
    assert main(["report", *files, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in ("latency_cdf.png", "deliveries_vs_clients.png", "rss_vs_clients.png"):
        image = imread(tmp_path / name)
        assert image.shape[0] > 100 and image.shape[1] > 100, name
        assert image.std() > 0, f"{name} is blank"
        assert name in printed
    assert not (tmp_path / "storm_time_to_sync.png").exists()  # no storm file given, no storm plot


def test_report_draws_every_plot_the_committed_results_allow(tmp_path: Path, capsys) -> None:
    files = sorted(str(p) for p in RESULTS.glob("*.json"))
    assert main(["report", *files, "--out", str(tmp_path)]) == 0
    for name, benchmark in (("storm_time_to_sync.png", "storm"), ("snapshot_join.png", "snapshot")):
        assert _committed(benchmark), f"bench/results has no {benchmark} run to plot"
        assert imread(tmp_path / name).std() > 0, f"{name} is blank"


def test_report_draws_a_cdf_from_recorded_quantiles(tmp_path: Path) -> None:
    # A fan-out file in the current format: quantiles as written by bench.fanout.quantiles.
    from bench.fanout import quantiles

    run = json.loads((RESULTS / "fanout-n100.json").read_text())
    run["latency_ms_quantiles"] = quantiles([float(i % 37) + 0.5 for i in range(500)])
    path = tmp_path / "fanout-new.json"
    path.write_text(json.dumps(run))
    assert main(["report", str(path), "--out", str(tmp_path / "plots")]) == 0
    assert imread(tmp_path / "plots" / "latency_cdf.png").std() > 0
