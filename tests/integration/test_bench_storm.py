"""`python -m bench storm` at a tiny size, so the harness cannot rot: both phases, real processes.

Asserts what the protocol promises (after a restart every client resyncs by snapshot; after a cut
while the server keeps running every client resumes and receives no snapshot chunk), and the shape
of the JSON that `bench report` reads, never how long anything took.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.cutproxy import CutProxy

CLIENTS = 8
WRITES = 20  # pod writes from each event: a resume must deliver the ones a client missed


def test_storm_restart_resyncs_by_snapshot_and_cut_resumes(tmp_path: Path, capsys) -> None:
    out = tmp_path / "storm.json"
    assert main(["storm", "--clients", str(CLIENTS), "--keys", "60", "--nodes", "3", "--cut-secs", "0.3",
                 "--churn-writes", str(WRITES), "--churn-rate", "100",
                 "--client-processes", "2", "--no-pin", "--no-progress", "--timeout", "60",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "restart: back in sync" in printed
    assert "cut: resumed / snapshot" in printed
    results = json.loads(out.read_text())
    assert results["benchmark"] == "storm"
    assert set(results["phases"]) == {"restart", "cut"}
    for name, phase in results["phases"].items():
        assert phase["initial"]["clients_in_sync"] == CLIENTS, name
        assert phase["back_in_sync"] == CLIENTS and phase["failures"] == 0, (name, phase["failure_errors"])
        assert phase["extra_stream_ends"] == 0, name
        assert phase["all_back_secs"] is not None
        assert len(phase["secs_from_event_quantiles"]) == 101
        assert phase["secs_from_event_p50"] <= phase["secs_from_event_max"]
    restart, cut = results["phases"]["restart"], results["phases"]["cut"]
    # A new server has a new epoch: nobody can resume, everybody gets the whole KV set again.
    assert restart["snapshotted"] == CLIENTS
    assert restart["resumed"] == 0
    assert restart["server_ready_secs"] is not None
    assert restart["kvs_in_snapshots"] + restart["kvs_in_deltas"] >= CLIENTS * 60
    assert cut["resumed"] == CLIENTS
    assert cut["snapshotted"] == 0
    assert cut["resumed_but_sent_chunks"] == 0
    assert cut["kvs_in_snapshots"] == 0
    assert cut["kvs_in_deltas"] >= CLIENTS * WRITES  # each write relabels another pod
    for phase in (restart, cut):
        assert phase["caught_up"] == CLIENTS  # all at one final sequence after the writes
    assert cut["connections_dropped"] >= CLIENTS
    assert cut["cut_mode"] == "hold"
    assert cut["refused_connects"] == 0

    plots = tmp_path / "plots"
    assert main(["report", str(out), "--out", str(plots)]) == 0
    assert (plots / "storm_time_to_sync.png").read_bytes().startswith(b"\x89PNG")


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A loopback TCP echo server in a thread: the proxy's upstream."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def roundtrip(port: int, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(payload)
    assert sock.recv(100) == payload
    return sock


@pytest.mark.parametrize("mode", ["hold", "refuse"])
def test_cut_proxy_drops_connections_and_holds_or_refuses_new_ones(echo_port: int, mode: str) -> None:
    proxy = CutProxy(echo_port)
    try:
        port = proxy.start()
        before = roundtrip(port, b"before")
        proxy.start_cut(0.5, mode)
        before.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            assert before.recv(100) == b""  # dropped by the proxy
        before.close()
        if mode == "refuse":
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=10).close()
            cut = proxy.wait_cut(30)
            roundtrip(port, b"after").close()
        else:
            during = socket.create_connection(("127.0.0.1", port), timeout=10)
            during.sendall(b"during")
            during.settimeout(0.2)  # well inside the 0.5 s cut: a relayed echo would take milliseconds
            with pytest.raises(TimeoutError):
                during.recv(100)
            during.settimeout(10)
            cut = proxy.wait_cut(30)
            assert during.recv(100) == b"during"  # relayed once the cut ended
            during.close()
            assert cut["held"] == 1
        assert cut["dropped"] == 1
        assert cut["restored_at"] > cut["cut_at"]
    finally:
        proxy.stop()
