"""A small, bounded HTTP/1.1 server on the event loop: GET or HEAD of a fixed set of paths, one request per
connection. It serves /metrics and the health probes (/liveness, /readiness).

Both need a status line, a body and nothing else: a web framework (aiohttp) cost ~12 MB of RSS in every
typha for two probe paths (docs/memory.md). Bounds as for /metrics: a deep backlog, a cap on open
connections, a deadline for the request and for the response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import NamedTuple

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
MAX_OPEN = 2048  # connections beyond this are closed at once (each costs an fd and a task)
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_SECS = 5.0
WRITE_TIMEOUT_SECS = 10.0
TEXT = "text/plain; charset=utf-8"


class Response(NamedTuple):
    status: int
    body: bytes
    content_type: str = TEXT


Handler = Callable[[], Response]


class BoundedHTTPServer:
    """Answers GET and HEAD of `routes`' paths (query strings ignored); 404 elsewhere, 405 for other methods."""

    def __init__(self, routes: Mapping[str, Handler], not_found: str = "not found\n") -> None:
        self.routes = dict(routes)
        self.not_found = not_found.encode()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str | None, port: int) -> int:
        """Listen on host:port (all interfaces for "" or None); OSError when it cannot bind."""
        self._server = await asyncio.start_server(self._accept, host or None, port, backlog=BACKLOG,
                                                  limit=MAX_REQUEST_BYTES, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._open += 1
        try:
            if self._open > MAX_OPEN:
                return
            await self._serve_one(reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a slow, silent or vanished client: its connection is simply closed
        finally:
            self._open -= 1
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    def answer(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return Response(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET\n")
        handler = self.routes.get(path)
        if handler is None:
            return Response(HTTPStatus.NOT_FOUND, self.not_found)
        return handler()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(REQUEST_TIMEOUT_SECS):
            head = await reader.readuntil(b"\r\n\r\n")
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        status, body, kind = self.answer(method, path)
        reason = HTTPStatus(status).phrase
        writer.write(f"HTTP/1.1 {int(status)} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode())
        if method != "HEAD":
            writer.write(body)
        async with asyncio.timeout(WRITE_TIMEOUT_SECS):
            await writer.drain()
