"""`python -m bench storm` at a tiny size, so the harness cannot rot: both phases, real processes.

Asserts what the protocol promises (after a restart every client resyncs by snapshot; after a cut
while the server keeps running every client resumes and receives no snapshot chunk), and the shape
of the JSON that `bench report` reads, never how long anything took.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main

CLIENTS = 8


def test_storm_restart_resyncs_by_snapshot_and_cut_resumes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "storm.json"
    assert main(["storm", "--clients", str(CLIENTS), "--keys", "60", "--nodes", "3", "--cut-secs", "0.3",
                 "--client-processes", "2", "--no-pin", "--no-progress", "--timeout", "60",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "restart: back in sync" in printed and "cut: resumed / snapshot" in printed
    results = json.loads(out.read_text())
    assert results["benchmark"] == "storm" and set(results["phases"]) == {"restart", "cut"}
    for name, phase in results["phases"].items():
        assert phase["initial"]["clients_in_sync"] == CLIENTS, name
        assert phase["back_in_sync"] == CLIENTS and phase["failures"] == 0, (name, phase["failure_errors"])
        assert phase["extra_stream_ends"] == 0, name
        assert phase["all_back_secs"] is not None
        assert len(phase["secs_from_event_quantiles"]) == 101
        assert phase["secs_from_event_p50"] <= phase["secs_from_event_max"]
    restart, cut = results["phases"]["restart"], results["phases"]["cut"]
    # A new server has a new epoch: nobody can resume, everybody gets the whole KV set again.
    assert restart["snapshotted"] == CLIENTS and restart["resumed"] == 0
    assert restart["server_ready_secs"] is not None
    assert restart["kvs_in_snapshots"] + restart["kvs_in_deltas"] >= CLIENTS * 60
    assert cut["resumed"] == CLIENTS and cut["snapshotted"] == 0 and cut["resumed_but_sent_chunks"] == 0
    assert cut["kvs_in_snapshots"] == 0
    assert cut["connections_dropped"] >= CLIENTS
    assert cut["bytes_per_client"] < restart["bytes_per_client"]

    plots = tmp_path / "plots"
    assert main(["report", str(out), "--out", str(plots)]) == 0
    assert (plots / "storm_time_to_sync.png").read_bytes().startswith(b"\x89PNG")
