"""A loopback TCP proxy, in its own process, that can cut the network for a while.

Clients connect to the proxy and it relays each connection to the server. On `cut(secs, mode)` it
aborts every relayed connection on both sides; for `secs` after that, new connections are either
held (mode "hold": accepted, but nothing is relayed until the cut ends, as if the SYN were lost and
retransmitted at the end of the partition) or refused (mode "refuse": the proxy stops listening, so
clients see ECONNREFUSED and must retry). The server keeps running throughout. No change to the
host's network is needed.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from typing import Any

from bench.h2sink import raise_fd_limit

CUT_MODES = ("hold", "refuse")


class _Relay(asyncio.Protocol):
    """One side of a relayed connection; writes what it reads to its peer's transport."""

    def __init__(self, proxy: _Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.peer: _Relay | None = None
        self.pending: list[bytes] = []  # client bytes that arrive before the server side is connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.proxy.relays.add(self)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    # Back-pressure: when the peer cannot take more, stop reading this side.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.relays.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.relays: set[_Relay] = set()
        self.server: asyncio.Server | None = None
        self.accepted = 0
        self.held: list[_Relay] | None = None  # during a "hold" cut: accepted clients not relayed yet
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    async def listen(self, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._accept, "127.0.0.1", port, reuse_address=True, backlog=4096)
        return self.server.sockets[0].getsockname()[1]

    def _accept(self) -> _Relay:
        self.accepted += 1
        client = _Relay(self)
        if self.held is not None:
            self.held.append(client)
        else:
            self._relay(client)
        return client

    def _relay(self, client: _Relay) -> None:
        task = asyncio.get_running_loop().create_task(self._connect_upstream(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_upstream(self, client: _Relay) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(lambda: _Relay(self), "127.0.0.1", self.target_port)
        except OSError:
            client.abort()
            return
        if client.transport is None or client.transport.is_closing():
            upstream.abort()
            return
        upstream.peer, client.peer = client, upstream
        assert upstream.transport is not None
        for data in client.pending:
            upstream.transport.write(data)
        client.pending.clear()

    async def cut(self, secs: float, mode: str) -> dict[str, Any]:
        assert self.server is not None
        assert mode in CUT_MODES
        port = self.server.sockets[0].getsockname()[1]
        cut_at = time.monotonic()
        if mode == "refuse":
            self.server.close()
        else:
            self.held = []
        dropped = len(self.relays) // 2
        for relay in list(self.relays):
            relay.abort()
        await asyncio.sleep(secs)
        held, self.held = self.held or [], None
        if mode == "refuse":
            await self.listen(port)
        restored_at = time.monotonic()
        for client in held:
            self._relay(client)
        return {"cut_at": cut_at, "restored_at": restored_at, "dropped": dropped, "held": len(held)}


async def _serve(target_port: int, cpus: set[int] | None, conn: Any) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    proxy = _Proxy(target_port)
    conn.send(await proxy.listen(0))
    loop = asyncio.get_running_loop()
    while True:
        command, arg = await loop.run_in_executor(None, conn.recv)
        if command == "cut":
            conn.send(await proxy.cut(*arg))
        elif command == "stop":
            for relay in list(proxy.relays):
                relay.abort()
            conn.send({"accepted": proxy.accepted})
            return


def _child(target_port: int, cpus: set[int] | None, conn: Any) -> None:
    raise_fd_limit()
    asyncio.run(_serve(target_port, cpus, conn))


class CutProxy:
    """Handle on the proxy process: `port` to connect to, `start_cut`/`wait_cut`, `stop`."""

    def __init__(self, target_port: int, cpus: set[int] | None = None) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_child, args=(target_port, cpus, child), daemon=True)
        self.port = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self, timeout: float = 60) -> int:
        self._process.start()
        if not self._conn.poll(timeout):
            raise TimeoutError("the proxy did not come up")
        self.port = self._conn.recv()
        return self.port

    def start_cut(self, secs: float, mode: str = "hold") -> None:
        self._conn.send(("cut", (secs, mode)))

    def wait_cut(self, timeout: float) -> dict[str, Any]:
        """{cut_at, restored_at} (time.monotonic()), relayed connections dropped, connections held."""
        if not self._conn.poll(timeout):
            raise TimeoutError("the proxy did not finish its cut")
        return self._conn.recv()

    def stop(self) -> None:
        try:
            self._conn.send(("stop", None))
            self._conn.poll(10)
        finally:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
