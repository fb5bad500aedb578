"""Felix's health endpoints (`/liveness`, `/readiness` on FELIX_HEALTHPORT, default 9099) over the
agent's small HTTP server (`felix_client.httpd`). The agent decides what ready means (in sync and
applied at least once).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from felix_client.httpd import serve_http

DEFAULT_HEALTH_PORT = 9099


def _probe(ready: Callable[[], bool], path: bytes) -> tuple[str, str, bytes]:
    if path == b"/liveness":
        return "200 OK", "text/plain", b"live\n"
    if path == b"/readiness":
        return ("200 OK", "text/plain", b"ready\n") if ready() else (
            "503 Service Unavailable", "text/plain", b"not ready\n")
    return "404 Not Found", "text/plain", b"not found\n"


async def serve_health(
    host: str, port: int, ready: Callable[[], bool], *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; `task_status.started` gets the bound port (useful with port 0)."""
    await serve_http(host, port, lambda _method, path: _probe(ready, path), task_status=task_status)
