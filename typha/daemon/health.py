"""Typha's /liveness and /readiness endpoints on the health port.

Ready only when every served syncer's cache is in sync (so a Service routes clients only to a
typha that has the whole picture); live while the event loop answers and ingest has not died.
"""

from __future__ import annotations

from collections.abc import Callable

from typha.daemon.httpd import BoundedHTTPServer, Response


class HealthEndpoints:
    def __init__(self, ready: Callable[[], tuple[bool, str]], live: Callable[[], tuple[bool, str]]) -> None:
        self._http = BoundedHTTPServer({"/liveness": lambda: self._answer(live),
                                        "/readiness": lambda: self._answer(ready)})

    @property
    def port(self) -> int:
        return self._http.port

    @staticmethod
    def _answer(check: Callable[[], tuple[bool, str]]) -> Response:
        ok, detail = check()
        return Response(200 if ok else 503, (detail + "\n").encode())

    async def start(self, host: str, port: int) -> int:
        """OSError when the port cannot be bound (the caller names the setting)."""
        return await self._http.start(host, port)

    async def stop(self) -> None:
        await self._http.stop()
