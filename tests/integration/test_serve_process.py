"""`typha serve` as a process: readiness, then SIGTERM drains clients with Reconnect hints and exits."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import wait_ready

from .sync_raw import RawClient
from .test_daemon import free_port


def test_sigterm_drains_clients_then_exits(tmp_path):
    with KubeAPIEmulator().start() as api:
        api.create(objects.node("node-1", ipv4="192.168.56.11/24"))
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        port, health_port = free_port(), free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "typha.cli", "--log-format", "json", "serve", "--workers", "1",
             "--kubeconfig", str(kubeconfig), "--server-host", "127.0.0.1", "--server-port", str(port),
             "--health-enabled", "true",
             "--health-host", "127.0.0.1", "--health-port", str(health_port), "--shutdown-timeout-secs", "2"],
            stderr=subprocess.PIPE, text=True)
        try:
            wait_ready(health_port, process)

            async def drained() -> str:
                client = RawClient(port)
                await client.hello("bgp")
                await client.read_snapshot()
                process.send_signal(signal.SIGTERM)
                hint = (await client.read_kind("reconnect")).reconnect
                await client.close()  # the client has "moved": close, as make-before-break does
                return hint.reason

            assert "shutting down" in asyncio.run(asyncio.wait_for(drained(), 30))
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
            _, stderr = process.communicate(timeout=10)
        entries = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
        assert any("Shutting down" in entry["msg"] for entry in entries), stderr[-2000:]
        assert all({"time", "level", "logger", "msg"} <= entry.keys() for entry in entries)
