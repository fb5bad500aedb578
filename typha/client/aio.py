"""asyncio transport of the Sync client, on grpc.aio.

Structure: one reader task per open stream pushes (connection, message) pairs into a small bounded
inbox; a single processor task feeds them to the sans-IO core in arrival order and acts on each
Step. One consumer of the core means no locking and a total order of events even while two
streams are open (make-before-break), and the inbox bound turns a slow consumer into gRPC flow
control instead of memory growth.

Connection policy:
- attempts rotate through the endpoint list; consecutive failures back off exponentially with
  jitter (`Backoff`), reset once a stream is in sync;
- a stream gets `connect_timeout` for its ServerHello and `read_timeout` between messages (the
  server pings, so silence means a dead peer, as Felix's TyphaReadTimeout);
- RESOURCE_EXHAUSTED (fell behind), INVALID_ARGUMENT and protocol errors drop the resume point so
  the next stream gets a snapshot, which the core reconciles against the mirror;
- a Reconnect hint opens a second stream (after a random wait up to `after_ms`) and closes the old
  one only when the new one is in sync; if every candidate fails the client stays on the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from typha.backoff import Backoff
from typha.client.core import ChecksumOutcome, ReconnectHint, Step, SyncClientCore
from typha.client.events import (
    ClientCounters,
    StatusChange,
    SyncCallbacks,
    SyncEvent,
    UpdateBatch,
)
from typha.client.session import ProtocolError, Session
from typha.client.tls import ClientTLS, ServerIdentityError, ServerVerifier
from typha.proto import sync_pb2 as pb
from typha.syncproto.names import SYNC_METHOD

log = logging.getLogger(__name__)

_RESYNC_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT})
_INBOX_SIZE = 16


class _Conn:
    """One stream to one endpoint."""

    __slots__ = ("call", "channel", "closed", "endpoint", "reader", "session")

    def __init__(self, endpoint: str, channel: grpc.aio.Channel | None, call: Any, session: Session) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.call = call
        self.session = session
        self.reader: asyncio.Task[None] | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"<stream {self.session.id} to {self.endpoint}>"


class _End:
    """Inbox marker: the stream ended, with the exception (or None for a clean end)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class _Undecodable:
    """Inbox item: bytes from the server that are not a ServerMessage (a protocol error)."""

    __slots__ = ("error",)

    def __init__(self, error: DecodeError) -> None:
        self.error = error


_CLOSED = object()  # iterator sentinel


class AsyncSyncClient:
    """Follows one syncer of a typha server over gRPC and delivers its updates.

    Delivery, in order of precedence: `callbacks` (called on the loop, must not block), `sink` (an
    awaited coroutine function per event; the trio transport uses it), or else the client is an
    async iterator of `UpdateBatch` / `StatusChange` events with a bounded buffer of
    `max_pending_events` (a full buffer stops reading the stream: back-pressure).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        syncer_type: str,
        *,
        hostname: str,
        info: str = "",
        client_id: str | None = None,
        callbacks: SyncCallbacks | None = None,
        sink: Callable[[SyncEvent], Awaitable[None]] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        tls: ClientTLS | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        verify_checksums: bool = True,
        checksum_mismatch_limit: int = 2,
        digest_resync: bool = True,
        max_pending_events: int = 64,
        max_consecutive_failures: int | None = None,
        rediscover: Callable[[], Sequence[str]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = list(endpoints)
        self.core = SyncClientCore(
            syncer_type, hostname=hostname, info=info, client_id=client_id,
            verify_checksums=verify_checksums, checksum_mismatch_limit=checksum_mismatch_limit,
            digest_resync=digest_resync,
        )
        self.counters = ClientCounters()
        self._callbacks = callbacks
        self._sink = sink
        self._credentials = credentials
        # Typha-style mTLS (typha.client.tls): each stream is preceded by a check of the server's
        # certificate, and its channel is dialled only once that check named the server.
        self._verifier = ServerVerifier(tls) if tls is not None and tls.enabled else None
        if self._verifier is not None:
            self._credentials = self._verifier.channel_credentials()
        # A snapshot chunk is ~1 MiB compressed at most, but raise the 4 MiB default for headroom.
        # One TCP connection per client, as Felix's: gRPC would otherwise share one among every client of a
        # process dialling the same server, and the server allows few streams per connection.
        self._channel_options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                 ("grpc.use_local_subchannel_pool", 1), *channel_options]
        self._backoff = backoff or Backoff()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._rng = rng or random.Random()
        self._events: asyncio.Queue[Any] = asyncio.Queue(max_pending_events)
        self._inbox: asyncio.Queue[tuple[_Conn, Any]] = asyncio.Queue(_INBOX_SIZE)
        self._live: _Conn | None = None
        self._pending: _Conn | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._move_candidates: deque[str] = deque()
        self._hint: ReconnectHint | None = None
        self._failures = 0
        # None: retry for ever (a fan-out worker waits for its upstream). An agent may prefer to exit
        # and be restarted, as Felix does when it cannot reach Typha.
        self._max_failures = max_consecutive_failures
        self._last_error = ""
        self._next_index = 0
        # Blocking (an API list, run in a thread): refreshes `endpoints` before a reconnect that has
        # no target yet, as Felix re-discovers Typha each time it has lost it.
        self._rediscover = rediscover
        self._run_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[Any]] = set()
        self._in_sync = asyncio.Event()
        self._closed = False

    # -- public ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (needs a running loop)."""
        if self._run_task is None:
            self._run_task = asyncio.get_running_loop().create_task(self._run(), name="typha-sync-client")

    async def __aenter__(self) -> AsyncSyncClient:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def in_sync(self) -> bool:
        return self._in_sync.is_set()

    @property
    def endpoint(self) -> str | None:
        """The endpoint of the stream the mirror follows, if any."""
        return None if self._live is None else self._live.endpoint

    async def wait_in_sync(self, timeout: float | None = None) -> bool:
        """Wait until a stream is live and the server said IN_SYNC; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._in_sync.wait()
        except TimeoutError:
            return False
        return True

    async def wait(self) -> None:
        """Run until closed; re-raises what stopped the client (e.g. a callback's exception)."""
        self.start()
        task = self._run_task
        assert task is not None
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._run_task, self._connect_task):
            if task is not None:
                task.cancel()
        readers = [c.reader for c in (self._live, self._pending) if c is not None and c.reader is not None]
        for conn in (self._live, self._pending):
            if conn is not None:
                self._discard(conn)
        if self._run_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._run_task
        # Wait for the cancelled reads and channel shutdowns, so that no gRPC completion is left
        # pointing at this loop after the caller closes it.
        pending = {*readers, *self._closing}
        if pending:
            await asyncio.wait(pending, timeout=5.0)
            # Destroying a channel leaves its cancelled operations to complete a moment later; give
            # them that moment, or a loop closed right after this finds them (or another loop in the
            # process does, and logs "Event loop is closed").
            await asyncio.sleep(0.05)
        self._end_iteration()

    def __aiter__(self) -> AsyncSyncClient:
        self.start()
        return self

    async def __anext__(self) -> SyncEvent:
        item = await self._events.get()
        if item is _CLOSED:
            self._events.put_nowait(_CLOSED)  # later calls end too
            if self._run_task is not None and self._run_task.done() and not self._run_task.cancelled():
                exc = self._run_task.exception()
                if exc is not None:
                    raise exc
            raise StopAsyncIteration
        return item

    # -- the processor -----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            self._connect_later(0.0)
            while True:
                conn, item = await self._inbox.get()
                if conn.closed:
                    continue  # queued before the stream was discarded
                if isinstance(item, _End):
                    self._on_end(conn, item.error)
                    continue
                self.counters.messages_received += 1
                try:
                    if isinstance(item, _Undecodable):
                        raise ProtocolError(f"undecodable ServerMessage: {item.error}")
                    step = self.core.receive(conn.session, item)
                except ProtocolError as exc:
                    log.warning("protocol error on %r, resyncing: %s", conn, exc)
                    self._last_error = f"protocol error: {exc}"
                    self.counters.protocol_errors += 1
                    self.counters.resyncs += 1
                    self._lost(conn, resync=True)
                    continue
                await self._act(conn, step)
        finally:
            # Also when a callback raised: do not leave streams open with nobody reading them.
            if self._connect_task is not None:
                self._connect_task.cancel()
            for open_conn in (self._live, self._pending):
                if open_conn is not None:
                    self._discard(open_conn)
            self._end_iteration()

    async def _act(self, conn: _Conn, step: Step) -> None:
        write_failed = False
        for message in step.send:
            try:
                # Bounded: a server that stopped reading must not stall the other stream too.
                async with asyncio.timeout(self._read_timeout):
                    await conn.call.write(message)
                self.counters.pongs_sent += 1
            except Exception as exc:
                log.info("write on %r failed: %s", conn, _describe(exc))
                write_failed = True
        if step.promoted:
            self._on_promoted(conn, step)
        if step.updates:
            self.counters.updates_delivered += len(step.updates)
            await self._deliver(UpdateBatch(step.updates))
        if step.status is not None:
            await self._deliver(StatusChange(step.status))
        self._update_in_sync()
        verdict = step.checksum
        if verdict is not None:
            if verdict.outcome is ChecksumOutcome.MATCH:
                self.counters.checksum_matches += 1
            elif verdict.outcome is ChecksumOutcome.MISMATCH:
                self.counters.checksum_mismatches += 1
                log.warning("checksum mismatch on %r: %s", conn, verdict)
        if write_failed and not conn.closed:
            # Only now: the step's updates were already in the mirror and had to be delivered.
            self._lost(conn, resync=False)
        elif step.resync is not None:
            log.warning("resyncing from %r: %s", conn, step.resync)
            self.counters.resyncs += 1
            self._lost(conn, resync=True, prefer=conn.endpoint)
        elif step.reconnect is not None:
            self._on_hint(conn, step.reconnect)

    def _on_promoted(self, conn: _Conn, step: Step) -> None:
        old = self._live
        if old is not None and old is not conn:
            # Make-before-break: the new stream is in sync, only now let the old one go.
            log.info("moved from %r to %r", old, conn)
            self.counters.moves += 1
            self._discard(old)
        self._live = conn
        if self._pending is conn:
            self._pending = None
        self._move_candidates.clear()
        self._hint = None
        self._failures = 0
        if step.resumed:
            self.counters.resumes += 1
        if step.snapshot_complete:
            self.counters.snapshots += 1
        if step.repaired:
            self.counters.digest_resyncs += 1

    async def _deliver(self, event: SyncEvent) -> None:
        if self._callbacks is not None:
            if isinstance(event, UpdateBatch):
                self._callbacks.on_updates(event.updates)
            else:
                self._callbacks.on_status(event.status)
        elif self._sink is not None:
            await self._sink(event)
        else:
            await self._events.put(event)

    def _update_in_sync(self) -> None:
        if self.core.in_sync:
            self._in_sync.set()
        else:
            self._in_sync.clear()

    # -- connection management ---------------------------------------------------------------------

    def _on_end(self, conn: _Conn, error: BaseException | None) -> None:
        code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
        self._last_error = "closed by the server" if error is None else _describe(error)
        log.info("%r ended: %s", conn, self._last_error)
        resync = code in _RESYNC_CODES
        if resync:
            self.counters.resyncs += 1
        self._lost(conn, resync=resync)

    def _lost(self, conn: _Conn, *, resync: bool, prefer: str | None = None) -> None:
        was_live, was_pending = conn is self._live, conn is self._pending
        if not was_live:
            self.counters.failed_connections += 1
        # A stream that never fed the mirror while another one does cannot have spoiled it: keep
        # the resume point then.
        self.core.close_session(conn.session, resync=resync and (was_live or self._live is None))
        self._discard(conn)
        self._update_in_sync()
        if was_pending:
            live = self._live
            if live is not None and not live.closed:
                # A move failed before it got in sync: try the next candidate, else stay put.
                if self._move_candidates:
                    self._connect_later(self._backoff.initial, self._move_candidates.popleft())
                return
        elif was_live:
            if self._pending is not None or self._connect_task is not None:
                return  # a move or reconnect is already under way and will take over
        else:
            return
        self._move_candidates.clear()
        self._failures += 1
        if self._max_failures is not None and self._failures > self._max_failures:
            # Raised in the processor task: the iterator, wait() and the trio client re-raise it.
            raise ConnectionError(
                f"gave up after {self._max_failures} consecutive failed connections; last: {self._last_error}"
            )
        delay = self._backoff.delay(self._failures, self._rng)
        endpoint = prefer
        hint, self._hint = self._hint, None
        if hint is not None:
            # The server that refused us said where to go and how long to spread the herd over.
            delay = max(delay, self._spread(hint))
            endpoint = hint.endpoint or self._pick_endpoint(avoid=conn.endpoint)
        self._connect_later(delay, endpoint)

    def _on_hint(self, conn: _Conn, hint: ReconnectHint) -> None:
        self.counters.reconnect_hints += 1
        log.info("%r asks to reconnect (%s) to %r within %d ms", conn, hint.reason, hint.endpoint, hint.after_ms)
        if conn is not self._live:
            self._hint = hint  # used when this not-yet-live stream ends
            return
        if self._pending is not None or self._connect_task is not None:
            return  # already moving
        others = [e for e in self.endpoints if e not in (conn.endpoint, hint.endpoint)]
        candidates = ([hint.endpoint] if hint.endpoint else []) + others
        self._move_candidates = deque(candidates or [conn.endpoint])
        self._connect_later(self._spread(hint), self._move_candidates.popleft())

    def _spread(self, hint: ReconnectHint) -> float:
        """A random wait up to the hint's after_ms, but no longer than our own backoff maximum: a
        server's hint must not park the client (after_ms is a uint32: up to 49 days)."""
        return self._rng.uniform(0.0, min(hint.after_ms / 1000.0, self._backoff.maximum))

    def _pick_endpoint(self, avoid: str | None = None) -> str:
        for _ in range(len(self.endpoints)):
            endpoint = self.endpoints[self._next_index % len(self.endpoints)]
            self._next_index += 1
            if endpoint != avoid:
                return endpoint
        return self.endpoints[0]

    def _connect_later(self, delay: float, endpoint: str | None = None) -> None:
        if self._closed:
            return
        self._connect_task = asyncio.get_running_loop().create_task(self._connect(delay, endpoint))

    async def _connect(self, delay: float, endpoint: str | None) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            if endpoint is None and self._rediscover is not None:
                await self._refresh_endpoints()
            self._pending = self._open(endpoint or self._pick_endpoint())
        finally:
            self._connect_task = None

    async def _refresh_endpoints(self) -> None:
        assert self._rediscover is not None
        try:
            found = list(await asyncio.to_thread(self._rediscover))
        except Exception as exc:  # keep the last known list: a flaky API must not stop reconnects
            log.warning("Typha discovery failed, keeping %s: %s", self.endpoints, exc)
            return
        if found and found != self.endpoints:
            log.info("Typha endpoints now %s", found)
            self.endpoints = found
            self._next_index = 0

    def _open(self, endpoint: str) -> _Conn:
        conn = _Conn(endpoint, None, None, self.core.open_session())
        if self._verifier is None:
            self._dial(conn, ())
        # else the reader dials after verifying the server (it must await, _open cannot).
        conn.reader = asyncio.get_running_loop().create_task(self._read(conn), name=f"typha-sync-read-{endpoint}")
        self.counters.connections += 1
        log.info("opening %r (resume=%s)", conn, conn.session.resume_sent)
        return conn

    def _dial(self, conn: _Conn, extra_options: Sequence[tuple[str, Any]]) -> None:
        options = [*self._channel_options, *extra_options]
        if self._credentials is not None:
            conn.channel = grpc.aio.secure_channel(conn.endpoint, self._credentials, options=options)
        else:
            conn.channel = grpc.aio.insecure_channel(conn.endpoint, options=options)
        conn.call = conn.channel.stream_stream(
            SYNC_METHOD,
            request_serializer=pb.ClientMessage.SerializeToString,
            response_deserializer=self._deserialize,
        )()

    def _deserialize(self, data: bytes) -> pb.ServerMessage | _Undecodable:
        self.counters.bytes_received += len(data)
        try:
            return pb.ServerMessage.FromString(data)
        except DecodeError as exc:
            # Raising here would make grpc log a traceback and hand read() a None; the processor
            # turns this into a protocol error on the stream instead.
            return _Undecodable(exc)

    async def _read(self, conn: _Conn) -> None:
        error: BaseException | None = None
        try:
            timeout = self._connect_timeout
            if self._verifier is not None:
                name = await self._verifier.check(conn.endpoint, timeout)
                if conn.closed:
                    return
                self._dial(conn, [("grpc.ssl_target_name_override", name)])
            async with asyncio.timeout(timeout):
                await conn.call.write(conn.session.hello)
            while True:
                async with asyncio.timeout(timeout):
                    message = await conn.call.read()
                if message is grpc.aio.EOF:
                    break
                timeout = self._read_timeout
                await self._inbox.put((conn, message))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc
        if not conn.closed:
            await self._inbox.put((conn, _End(error)))

    def _discard(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.core.close_session(conn.session)
        if conn.reader is not None and conn.reader is not asyncio.current_task():
            conn.reader.cancel()
        if conn.call is not None:
            conn.call.cancel()
        if conn.channel is not None:
            task = asyncio.get_running_loop().create_task(conn.channel.close(grace=None))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if conn is self._live:
            self._live = None
        if conn is self._pending:
            self._pending = None

    def _end_iteration(self) -> None:
        # Make room for the sentinel: after close nobody wants the undelivered events.
        while True:
            try:
                self._events.put_nowait(_CLOSED)
                return
            except asyncio.QueueFull:
                self._events.get_nowait()


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    if isinstance(error, ServerIdentityError):
        return str(error)
    if isinstance(error, TimeoutError):
        return "timed out waiting for the server"
    return repr(error)


__all__ = ["AsyncSyncClient"]
