"""Local processes and ports that tests, benchmarks and the demo start and stop."""

from __future__ import annotations

import subprocess
from typing import Any

# One implementation: the workers supervisor needs it too, and production code never imports typha.testing.
from typha.daemon.ports import free_port

__all__ = ["free_port", "stop_process"]


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
