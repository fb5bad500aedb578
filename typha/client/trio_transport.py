"""trio transport of the Sync client, for the agents (docs/architecture.md §3).

grpc.aio cannot run under trio (python-performance.md §6), so the stream runs on a worker thread.
The thread runs an asyncio loop with the same `AsyncSyncClient` the asyncio transport uses, rather
than the sync grpc API, because:
- reconnect, resume, backoff and make-before-break are then one implementation, tested once;
- one thread serves both streams of a move (the sync API needs a thread per stream, plus one per
  request iterator, and a blocked `next()` can only be interrupted by cancelling the call);
- a hop between the loops costs ~4 µs per event and events are batches (measured, §6).

Hand-off: the worker delivers each event through `TrioToken.run_sync_soon` into a bounded trio
memory channel. Back-pressure without blocking the worker's loop: the worker takes a credit from an
asyncio semaphore (as many credits as the channel holds) before posting, and the trio side gives
the credit back once the agent has taken the event; so `send_nowait` never finds the channel full,
and a slow agent stops the worker reading its stream (gRPC flow control) instead of growing memory.

The core and its mirror live on the worker thread; the agent sees events. Cancelling the task that
holds the client (or leaving `open_trio_sync_client`) closes the streams and joins the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio

from typha.client.aio import AsyncSyncClient
from typha.client.core import SyncClientCore
from typha.client.events import ClientCounters, SyncEvent

log = logging.getLogger(__name__)

_END = object()  # the worker stopped; the iteration ends


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class TrioSyncClient:
    """An async iterator of `UpdateBatch` / `StatusChange` events; create with `open_trio_sync_client`."""

    def __init__(
        self, endpoints: Sequence[str], syncer_type: str, *, hostname: str, buffer: int = 16, **options: Any
    ) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        if "callbacks" in options or "sink" in options:
            raise TypeError("the trio client delivers events by iteration only")
        self._args = (list(endpoints), syncer_type)
        self._options = {"hostname": hostname, **options}
        self._buffer = buffer
        # Room for the terminal item on top of the credited events, so it can always be posted.
        self._send, self._receive = trio.open_memory_channel[Any](buffer + 1)
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._credits: asyncio.Semaphore | None = None
        self._client: AsyncSyncClient | None = None
        self._started = trio.Event()
        self._finished = False

    # -- trio side ---------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._thread_main, name="typha-sync-client", daemon=True)
        self._thread.start()
        with trio.fail_after(10):
            await self._started.wait()

    def __aiter__(self) -> TrioSyncClient:
        return self

    async def __anext__(self) -> SyncEvent:
        if self._finished:
            raise StopAsyncIteration
        item = await self._receive.receive()
        if item is _END:
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, _Failed):
            self._finished = True
            raise item.error
        self._return_credit()
        return item

    async def receive(self) -> SyncEvent:
        """The next event; raises trio.EndOfChannel once the client stopped."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise trio.EndOfChannel from None

    @property
    def counters(self) -> ClientCounters:
        """Written by the worker thread; reads of plain ints are safe and good enough for tests."""
        assert self._client is not None
        return self._client.counters

    @property
    def core(self) -> SyncClientCore:
        """The worker's core; its mirror may be ahead of the events consumed so far."""
        assert self._client is not None
        return self._client.core

    @property
    def in_sync(self) -> bool:
        return self._client is not None and self._client.in_sync

    @property
    def endpoint(self) -> str | None:
        return None if self._client is None else self._client.endpoint

    async def aclose(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            # Shielded: closing must finish even when we are here because of a cancellation.
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)
            if thread.is_alive():
                log.warning("sync client worker thread did not stop within 10 s")
        self._finished = True
        await self._receive.aclose()

    def _return_credit(self) -> None:
        loop, credits = self._loop, self._credits
        if loop is not None and credits is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(credits.release)

    # -- worker thread -----------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._amain())
        except ConnectionError as exc:
            # The client gave up (max_consecutive_failures): expected, and its message says why.
            log.error("sync client stopped: %s", exc)
            self._post(_Failed(exc))
            self._post_sync(self._started.set)
        except BaseException as exc:
            log.exception("sync client worker failed")
            self._post(_Failed(exc))
            self._post_sync(self._started.set)  # do not leave _start waiting for a dead worker
        else:
            self._post(_END)

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._credits = asyncio.Semaphore(self._buffer)
        client = AsyncSyncClient(*self._args, sink=self._sink, **self._options)
        self._client = client
        client.start()
        self._post_sync(self._started.set)
        stopper = asyncio.get_running_loop().create_task(self._stop.wait())
        runner = asyncio.get_running_loop().create_task(client.wait())
        try:
            await asyncio.wait({stopper, runner}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            await client.close()
        if runner.done() and not runner.cancelled() and runner.exception() is not None:
            raise runner.exception()  # type: ignore[misc]

    async def _sink(self, event: SyncEvent) -> None:
        assert self._credits is not None
        await self._credits.acquire()
        self._post(event)

    def _post(self, item: Any) -> None:
        send = self._send

        def deliver() -> None:
            # Runs in trio's run loop, where an exception would be a TrioInternalError.
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                send.send_nowait(item)

        self._post_sync(deliver)

    def _post_sync(self, fn: Any) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)


@contextlib.asynccontextmanager
async def open_trio_sync_client(
    endpoints: Sequence[str], syncer_type: str, *, hostname: str, buffer: int = 16, **options: Any
) -> AsyncIterator[TrioSyncClient]:
    """`async with open_trio_sync_client(["typha:5473"], "felix", hostname=node) as client:
    async for event in client: ...` — options are AsyncSyncClient's (backoff, credentials, ...)."""
    client = TrioSyncClient(endpoints, syncer_type, hostname=hostname, buffer=buffer, **options)
    await client._start()
    try:
        yield client
    finally:
        await client.aclose()
