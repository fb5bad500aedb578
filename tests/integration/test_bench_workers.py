"""`python -m bench workers` and `workerkill` at a tiny size, so the harnesses cannot rot (real processes).

Asserts what the protocol promises (every write reaches every client with any worker count; the
clients of a killed worker come back by resume, with the same KVs as everyone else) and the JSON's
shape, never how long anything took.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main

CLIENTS = 12


def test_workers_every_write_reaches_every_client_with_one_and_two_workers(tmp_path: Path) -> None:
    out = tmp_path / "workers.json"
    assert main(["workers", "--workers", "1,2", "--clients", str(CLIENTS), "--rate", "40", "--duration", "1",
                 "--keys", "60", "--nodes", "3", "--catch-up-secs", "30", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [run["workers"] for run in results["runs"]] == [1, 2]
    for run in results["runs"]:
        assert run["clients_in_sync"] == CLIENTS
        assert run["deliveries"] == run["deliveries_expected"] == 40 * CLIENTS
        assert run["deliveries_per_sec"] > 0
        assert run["ratio_to_first"] > 0
    assert [run["server_processes"] for run in results["runs"]] == [1, 4]  # supervisor, ingest, 2 workers


def test_workerkill_moved_clients_resume_and_nothing_is_lost(tmp_path: Path) -> None:
    out = tmp_path / "workerkill.json"
    assert main(["workerkill", "--workers", "2", "--clients", str(CLIENTS), "--client-processes", "2",
                 "--rate", "40", "--duration", "2", "--kill-at", "0.5", "--keys", "60", "--nodes", "3",
                 "--timeout", "60", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    moved = results["moved"]
    assert moved["clients"] > 0, "with 12 clients on 2 workers, some were on the killed one"
    assert moved["back_in_sync"] == moved["clients"] == moved["resumed"]
    assert moved["snapshotted"] == 0
    assert results["nothing_lost"]
    assert results["kvs_since_churn_min"] == results["kvs_since_churn_max"] == 80
    assert results["worker_restarted"]
    assert moved["secs_from_event_p50"] <= moved["secs_from_event_max"]
