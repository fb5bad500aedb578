"""Felix's health endpoints (`/liveness`, `/readiness` on FELIX_HEALTHPORT, default 9099) over trio.

Just enough HTTP/1.0 for kubelet probes and curl: one request per connection, status line and a
short body. The agent decides what ready means (in sync and applied at least once).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

DEFAULT_HEALTH_PORT = 9099
_MAX_REQUEST = 8192


async def _handle(stream: trio.SocketStream, ready: Callable[[], bool]) -> None:
    with trio.move_on_after(5):  # a client that never finishes its request must not pin a task
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < _MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
        parts = data.split(b"\r\n", 1)[0].split()
        path = parts[1].decode(errors="replace") if len(parts) > 1 else ""
        if path == "/liveness":
            status, body = "200 OK", "live\n"
        elif path == "/readiness":
            status, body = ("200 OK", "ready\n") if ready() else ("503 Service Unavailable", "not ready\n")
        else:
            status, body = "404 Not Found", "not found\n"
        response = (f"HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                    f"Connection: close\r\n\r\n{body}")
        try:
            await stream.send_all(response.encode())
        except trio.BrokenResourceError:
            pass
    await stream.aclose()


async def serve_health(
    host: str, port: int, ready: Callable[[], bool], *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; `task_status.started` gets the bound port (useful with port 0)."""
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, lambda s: _handle(s, ready), listeners)
        task_status.started(bound)
