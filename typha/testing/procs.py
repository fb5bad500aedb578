"""Local processes and ports that tests, benchmarks and the demo start and stop."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from typing import Any

# One implementation: the workers supervisor needs it too, and production code never imports typha.testing.
from typha.daemon.ports import free_port

__all__ = ["free_port", "stop_process", "wait_ready"]


def stop_process(proc: subprocess.Popen[Any], grace: float = 15.0, kill_wait: float = 5.0) -> int | None:
    """SIGTERM, then SIGKILL if it has not exited within `grace` seconds; returns its exit code.

    A clean SIGTERM exit is what lets a child flush its logs and release namespaces and ports,
    so it gets the first chance; the kill is the bound that keeps a wedged child from hanging us.
    """
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(kill_wait)
    return proc.returncode


def wait_ready(health_port: int, process: subprocess.Popen[Any] | None = None, timeout: float = 30.0) -> None:
    """Poll a typha's /readiness on loopback until it answers 200 (every cache in sync).

    RuntimeError at once if `process`, the typha waited for, has exited; TimeoutError after `timeout`.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"typha exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readiness", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # refused while it starts, or 503 (HTTPError) until it is in sync
            pass
        time.sleep(0.1)
    raise TimeoutError(f"typha (health port {health_port}) not ready after {timeout:g} s")
