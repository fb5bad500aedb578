"""Typha's /liveness and /readiness endpoints on the health port.

Ready only when every served syncer's cache is in sync (so a Service routes clients only to a
typha that has the whole picture); live while the event loop answers and ingest has not died.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


class HealthEndpoints:
    def __init__(self, ready: Callable[[], tuple[bool, str]], live: Callable[[], tuple[bool, str]]) -> None:
        self._ready = ready
        self._live = live
        self._runner: web.AppRunner | None = None
        self.port = 0

    @staticmethod
    def _answer(check: Callable[[], tuple[bool, str]]) -> web.Response:
        ok, detail = check()
        return web.Response(status=200 if ok else 503, text=detail + "\n")

    async def start(self, host: str, port: int) -> int:
        async def liveness(_request: web.Request) -> web.Response:
            return self._answer(self._live)

        async def readiness(_request: web.Request) -> web.Response:
            return self._answer(self._ready)

        app = web.Application()
        app.router.add_get("/liveness", liveness)
        app.router.add_get("/readiness", readiness)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
