"""The agent's minimal HTTP/1.0 server over trio, for the health probes and `/metrics`.

Just enough HTTP for kubelet probes, Prometheus and curl: one request per connection, the request
line read (bounded in size and time), a status line and a body. Written here rather than taken from a
web framework because the agent serves two fixed paths and already runs trio.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

_MAX_REQUEST = 8192
_REQUEST_SECS = 5  # a client that never finishes its request must not pin a task

# (method, path without the query) -> (status, content type, body)
Responder = Callable[[bytes, bytes], tuple[str, str, bytes]]


async def _handle(stream: trio.SocketStream, respond: Responder) -> None:
    with trio.move_on_after(_REQUEST_SECS):
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < _MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
        parts = data.split(b"\r\n", 1)[0].split()
        method = parts[0] if parts else b""
        path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
        status, content_type, body = respond(method, path)
        head = (f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n")
        try:
            await stream.send_all(head.encode() + body)
        except trio.BrokenResourceError:
            pass
    await stream.aclose()


async def serve_http(host: str, port: int, respond: Responder, *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; `task_status.started` gets the bound port (useful with port 0)."""
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, lambda s: _handle(s, respond), listeners)
        task_status.started(bound)
