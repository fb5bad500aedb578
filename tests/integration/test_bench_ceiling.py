"""`python -m bench ceiling` and `bench fanout --ceiling` at a tiny size: the harness delivers, counts and compares."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main
from bench.ceiling import deltas_message
from typha.proto import sync_pb2 as pb


def test_ceiling_payload_has_the_asked_kvs_and_about_the_asked_size() -> None:
    data = deltas_message(7, 3000)
    message = pb.ServerMessage.FromString(data)
    assert len(message.deltas.kvs) == 7
    assert 3000 - 7 * 4 <= len(data) <= 3000


def test_ceiling_delivers_every_message_to_every_stream(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ceiling.json"
    assert main(["ceiling", "--clients", "4", "--rate", "20", "--duration", "0.5", "--kvs-per-message", "3",
                 "--message-bytes", "600", "--no-pin", "--json", str(out)]) == 0
    assert "ceiling server CPU" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["clients_in_sync"] == 4
    assert not results["errors"]
    assert results["deliveries"] == results["deliveries_expected"] == 4 * 10 * 3
    assert results["messages"] == 4 * 10
    assert results["server_cpu_usec_per_delivery"] >= 0


def test_fanout_with_ceiling_prints_the_ratio(tmp_path: Path, capsys) -> None:
    out = tmp_path / "fanout.json"
    assert main(["fanout", "--clients", "3", "--rate", "40", "--duration", "0.5", "--keys", "30", "--nodes", "3",
                 "--no-pin", "--ceiling", "--json", str(out)]) == 0
    assert "typha / ceiling CPU per delivery" in capsys.readouterr().out
    results = json.loads(out.read_text())
    ceiling = results["ceiling"]
    assert ceiling["clients"] == 3
    assert ceiling["deliveries"] == ceiling["deliveries_expected"] > 0
    assert results["ceiling_ratio"] == (results["server_cpu_usec_per_delivery"]
                                        / max(ceiling["server_cpu_usec_per_delivery"], 1e-9))
