"""`typha dump`, felix-client and confd-client (as processes) against a Sync server that sends garbage.

Each must say what is wrong in a clear last line and exit non-zero, or keep running and reconnecting
when it is a daemon, never end with only a traceback and never hang (every run is bounded).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from confd_client.render import FILES

from .support import GarbageServer, LoopThread

RUN_TIMEOUT = 60


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def garbage(loop: LoopThread, request: pytest.FixtureRequest) -> Iterator[str]:
    server = GarbageServer(request.param, seed=3, hold_secs=1.0)
    port = loop.run(server.start())
    yield f"127.0.0.1:{port}"
    loop.run(server.stop())


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NODENAME": "node-1"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env)


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("I1")]  # grpc core noise
    return lines[-1] if lines else ""


@pytest.mark.parametrize("garbage", ["random-bytes", "bad-snapshot", "bad-values", "wrong-order"], indirect=True)
def test_dump_names_the_protocol_error_and_exits_1(garbage):
    result = run(["typha.cli", "dump", "--server", garbage, "--timeout", "20"])
    assert result.returncode == 1, result.stderr[-2000:]
    assert last_line(result.stderr).startswith("typha dump: gave up after"), result.stderr[-2000:]
    assert "protocol error" in last_line(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize("garbage", ["random-bytes", "bad-values"], indirect=True)
def test_felix_client_gives_up_with_a_clear_line(garbage, tmp_path):
    result = run(["felix_client.agent", "--typha", garbage, "--hostname", "node-1", "--dry-run", str(tmp_path),
                  "--max-consecutive-failures", "2"])
    assert result.returncode == 1, result.stderr[-2000:]
    assert last_line(result.stderr).startswith("felix-client: gave up after 2 consecutive"), result.stderr[-2000:]
    assert "protocol error" in last_line(result.stderr)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("garbage", ["wrong-shapes"], indirect=True)
def test_felix_client_survives_values_of_the_wrong_shape(garbage, tmp_path):
    """Valid protocol, nonsense values: each is dropped with a warning, the agent goes on reconnecting."""
    agent = subprocess.Popen(
        [sys.executable, "-m", "felix_client.agent", "--typha", garbage, "--hostname", "node-1",
         "--dry-run", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            agent.wait(timeout=4)  # the garbage server closes each stream after a second: 3+ reconnects
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=RUN_TIMEOUT)
    assert agent.returncode == 0, stderr[-2000:]
    assert "treating unusable update /calico/v1/host/node-1/workload/k8s/demo%2fp/endpoint/eth0" in stderr
    assert stderr.count("opening <stream") >= 2  # it reconnected after the server closed
    assert "Traceback" not in stderr


@pytest.mark.parametrize("garbage", ["random-bytes", "bad-snapshot"], indirect=True)
def test_confd_client_oneshot_times_out_clearly(garbage, tmp_path):
    result = run(["confd_client.agent", "--typha", garbage, "--config-dir", str(tmp_path), "--oneshot",
                  "--in-sync-timeout", "3"])
    assert result.returncode == 1, result.stderr[-2000:]
    assert last_line(result.stderr) == "confd-client: not in sync before the timeout", result.stderr[-2000:]
    assert "protocol error" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing rendered from garbage


@pytest.mark.parametrize("garbage", ["wrong-shapes"], indirect=True)
def test_confd_client_oneshot_rejects_wrong_shaped_objects(garbage, tmp_path):
    """Each object of the wrong shape is rejected with one line (issue 17); the rest renders without it."""
    result = run(["confd_client.agent", "--typha", garbage, "--config-dir", str(tmp_path), "--oneshot",
                  "--in-sync-timeout", "10"])
    assert result.returncode == 0, result.stderr[-2000:]
    for rejected in ("Node 'node-1'", "BGPPeer 'p'", "BGPConfiguration 'default'", "IPPool '10.65.0.0/16'"):
        assert result.stderr.count(f"rejecting {rejected}") == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    rendered = sorted(path.name for path in tmp_path.iterdir())
    assert rendered == sorted(FILES)
    assert not any("10.65.0.0/16" in (tmp_path / name).read_text() for name in rendered)  # the rejected pool
