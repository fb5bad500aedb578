"""The Sync gRPC service: handshake, snapshot or resume, then shared pre-encoded deltas to each client.

One asyncio task per client stream. The method is registered with no request deserializer (we
parse, so garbage gets INVALID_ARGUMENT with a reason rather than a generic INTERNAL) and no
response serializer: the handler writes the cache's pre-encoded frames as they are, so an update is
encoded once whatever the number of clients.

Per client there is no queue of objects: a client's whole state is its position in the breadcrumb
chain. When it is behind, the frames from its position on are concatenated into one message. A
server-wide watchdog drops clients whose position left the resume window or grew too old (a
stalled reader is cut off while it pins memory, not after), with RESOURCE_EXHAUSTED and a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from typha import __version__
from typha.config import TyphaConfig
from typha.logs import clip
from typha.model.kv import SyncStatus
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import STATUS_TO_PB, Breadcrumb, ResumeUnavailable, SnapshotCache
from typha.snapcache.metrics import QuantileSummary, SummaryChild
from typha.syncproto.names import (
    FEATURE_CHECKSUM,
    FEATURE_CRUMB_RUNS,
    FEATURE_DIGEST_RESYNC,
    FEATURE_EXACT_CRUMBS,
    FEATURE_RECONNECT,
    KNOWN_FEATURES,
    METHOD_NAME,
    SERVICE_NAME,
)
from typha.syncserver import heap
from typha.syncserver.limits import PeerCounts, grpc_server_options, peer_ip
from typha.syncserver.metrics import ServerMetrics, run_kv_count
from typha.syncserver.resync import RepairDeclined, RepairPlanner

log = logging.getLogger(__name__)

MAX_INBOUND_MESSAGE_BYTES = 1024 * 1024  # Typha's maxInboundMessageBytes: clients only send hellos and pongs
# Our own limit, far below gRPC's: the largest honest hello (4,096 bucket digests, bounded strings) is
# ~22 KB. gRPC core ends a stream whose message is over its limit before the handler sees anything;
# one over ours only is read, so it is refused with a reason, logged and counted.
MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
# Longest accepted hello strings, in UTF-8 bytes: a hostname is a DNS name (a Kubernetes node name), ids
# and epochs are short tokens, `info` is free text for logs ("felix-client pid 42").
MAX_HELLO_FIELD_BYTES = {"hostname": 253, "client_id": 253, "version": 253, "syncer_type": 253, "info": 4096}
MAX_EPOCH_BYTES = 253


@dataclass(frozen=True, slots=True)
class ServerSettings:
    ping_interval_secs: float = 10.0
    pong_timeout_secs: float = 60.0
    handshake_timeout_secs: float = 10.0
    max_fall_behind_secs: float = 300.0
    new_client_grace_secs: float = 300.0
    write_timeout_secs: float = 120.0
    max_connections: int = 10000
    max_connections_per_ip: int = 0  # Sync streams per client IP; 0: no cap (an extension, see limits.py)
    checksum_interval_secs: float = 30.0
    drain_reconnect_grace_secs: float = 10.0  # after a Reconnect hint, how long the client may take to move
    watchdog_interval_secs: float = 1.0
    reuse_port: bool = False
    # digest-resync: above this fraction of differing buckets a (shared) snapshot is the cheaper answer.
    digest_resync_max_fraction: float = 0.25
    # A client moving from another replica of the same upstream may be ahead of this one: how long to
    # wait for this replica to reach its position before answering with a snapshot instead.
    resume_catch_up_secs: float = 5.0

    @classmethod
    def from_config(cls, config: TyphaConfig) -> ServerSettings:
        pong_timeout = config.server_pong_timeout_secs
        if pong_timeout <= 2 * config.server_ping_interval_secs:
            pong_timeout = 6 * config.server_ping_interval_secs  # as Typha forces it
        return cls(
            ping_interval_secs=config.server_ping_interval_secs,
            pong_timeout_secs=pong_timeout,
            handshake_timeout_secs=config.server_handshake_timeout_secs,
            max_fall_behind_secs=config.server_max_fall_behind_secs,
            new_client_grace_secs=config.server_new_client_fall_behind_grace_period,
            write_timeout_secs=config.server_write_timeout_secs,
            max_connections=config.max_connections_upper_limit,
            max_connections_per_ip=config.server_max_connections_per_ip,
            checksum_interval_secs=config.checksum_interval_secs,
            reuse_port=config.server_reuse_port,
        )


class _Drop(Exception):
    """End a client's stream with a status; `error` (a fixed word, a metric label) when the client misbehaved."""

    def __init__(self, code: grpc.StatusCode, details: str, error: str = "") -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.error = error


@dataclass(eq=False, slots=True)
class Connection:
    peer: str
    hostname: str = ""
    syncer_type: str = ""
    features: frozenset[str] = frozenset()
    position: Breadcrumb | None = None
    # While its snapshot (or digest repair) is being sent: the crumb it leads to. The client pins it as
    # surely as a position, so the watchdog's fall-behind checks apply to it too.
    start: Breadcrumb | None = None
    grace_until: float = 0.0
    grace_used: bool = False
    last_pong: float = field(default_factory=time.monotonic)
    reconnect: pb.Reconnect | None = None
    drop: _Drop | None = None
    writing_since: float = 0.0  # when the write in progress started; 0 when none is
    generation: int = 0  # the cache chain its position belongs to
    task: asyncio.Task[Any] | None = None
    client_closed: bool = False
    # Reads the client's next message (the pong to our last ping), started only after a ping: an idle
    # stream then holds no pending read, which is most of its memory (see _expect_pong).
    pong_reader: asyncio.Task[None] | None = None

    def supports(self, feature: str) -> bool:
        return feature in self.features


def _check_lengths(hello: pb.ClientHello) -> None:
    """Refuse a hello whose strings are longer than any honest client's (they end up in logs and memory)."""
    fields = [(name, getattr(hello, name)) for name in MAX_HELLO_FIELD_BYTES]
    for name, value in fields:
        size = len(value.encode())
        if size > MAX_HELLO_FIELD_BYTES[name]:
            raise _Drop(grpc.StatusCode.INVALID_ARGUMENT,
                        f"ClientHello.{name} is {size} bytes, over the limit of {MAX_HELLO_FIELD_BYTES[name]}",
                        "invalid_hello")
    epoch = len(hello.resume.epoch.encode())
    if epoch > MAX_EPOCH_BYTES:
        raise _Drop(grpc.StatusCode.INVALID_ARGUMENT,
                    f"ClientHello.resume.epoch is {epoch} bytes, over the limit of {MAX_EPOCH_BYTES}", "invalid_hello")


def _oversized(raw: bytes) -> str:
    return f"a ClientMessage of {len(raw)} bytes is over the limit of {MAX_CLIENT_MESSAGE_BYTES} bytes"


# The handler tasks whose stream's end the server has already recorded (as a drop, a disconnect or an end
# before the hello). gRPC then logs its failure to send their final status from the same task: that is the
# same end, not another one, so it must not be counted again (_QuietGoneClients).
_ENDS_RECORDED: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # gRPC logged from a thread without an event loop
        return None


class _QuietGoneClients(logging.Filter):
    """gRPC's own ERROR line, with traceback, when it cannot send the final status of a stream whose
    client has gone (issue 17: 41 in one run). That is routine for a proxy of thousands of nodes: it is
    logged at debug, without the traceback, and counted with the other disconnects unless the handler
    already recorded that stream's end (gRPC logs it from the handler's own task)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, grpc.aio.InternalError) or "raised in core by servicer method" not in str(record.msg):
            return True
        task = _current_task()
        if task is not None and task in _ENDS_RECORDED:
            log.debug("A client went away before the final status of its (already counted) stream: %s",
                      clip(str(error)))
            return False
        log.debug("A client went away before its stream's final status could be sent: %s", clip(str(error)))
        self.metrics.client_errors.labels("disconnected").inc()
        return False


_GRPC_SERVER_LOG = "grpc._cython.cygrpc"


def _frame(**payload: Any) -> bytes:
    return pb.ServerMessage(**payload).SerializeToString()


class _Deferred:
    """Observations of one summary child, appended on the hot path and folded in on the watchdog's tick.

    A QuantileSummary observation takes a lock and updates a reservoir (a few µs); per client per
    message that was a tenth of a delivery's whole cost. A list append is not, and the tick observes
    the batch under one lock. The stream keeps the bound `values.append`, so a flush empties the list
    in place (streams and watchdog share one event loop: nothing runs between the copy and the clear).
    """

    __slots__ = ("child", "values")

    def __init__(self, child: SummaryChild) -> None:
        self.child = child
        self.values: list[float] = []

    def flush(self) -> None:
        if self.values:
            values = self.values[:]
            self.values.clear()
            self.child.observe_many(values)


class SyncServer:
    def __init__(
        self,
        caches: Mapping[str, SnapshotCache],
        settings: ServerSettings | None = None,
        *,
        server_id: str | None = None,
    ) -> None:
        self.caches = dict(caches)
        self.settings = settings or ServerSettings()
        self.server_id = server_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.connections: set[Connection] = set()
        # Streams accepted whose hello has not been handled yet: they count toward the connection limit.
        self.awaiting_hello = 0
        self.per_ip = PeerCounts(self.settings.max_connections_per_ip)
        self.metrics = ServerMetrics(caches)
        self._deferred: dict[tuple[str, str], _Deferred] = {}
        self.health = health.aio.HealthServicer()
        self.draining = False
        self._feature_sets: dict[frozenset[str], frozenset[str]] = {}
        self.repairs = {name: RepairPlanner(cache, self.settings.digest_resync_max_fraction)
                        for name, cache in self.caches.items()}
        self._server: grpc.aio.Server | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.stopping = False  # streams cancelled from now on end because of the server, not their client
        self.port = 0
        # mTLS: awaited first on every stream; aborts the call to refuse the client (typha.syncserver.tls).
        self.authorizer: Callable[[grpc.aio.ServicerContext], Awaitable[None]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, credentials: grpc.ServerCredentials | None = None
    ) -> int:
        heap.fix_mmap_threshold()
        grpc_log = logging.getLogger(_GRPC_SERVER_LOG)
        if not any(isinstance(f, _QuietGoneClients) for f in grpc_log.filters):
            grpc_log.addFilter(_QuietGoneClients(self.metrics))
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", MAX_INBOUND_MESSAGE_BYTES),
            ("grpc.max_send_message_length", -1),
            # gRPC core cancels new calls beyond these with RESOURCE_EXHAUSTED; a reconnect storm of
            # thousands of nodes must queue instead.
            ("grpc.server.max_pending_requests", 100_000),
            ("grpc.server.max_pending_requests_hard_limit", 100_000),
            ("grpc.so_reuseport", int(self.settings.reuse_port)),
            ("grpc.http2.max_pings_without_data", 0),
            # Per-connection memory is what limits clients per process (~40 KB each, mostly gRPC core):
            # channelz bookkeeping and BDP probing (we receive only pongs) are not worth their bytes.
            ("grpc.enable_channelz", 0),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # Handshake timeout for sockets that never start HTTP/2, idle timeout for connections with no
            # stream, and a small MAX_CONCURRENT_STREAMS (typha.syncserver.limits).
            *grpc_server_options(self.settings.handshake_timeout_secs, self.settings.ping_interval_secs,
                                 self.settings.pong_timeout_secs, self.settings.max_connections),
        ])
        handler = grpc.stream_stream_rpc_method_handler(
            self._handle, request_deserializer=None, response_serializer=None
        )
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD_NAME: handler})])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        address = host if host.startswith("unix:") else f"{host}:{port}"
        bound = (
            server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        )
        if bound == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        self.port = bound
        self._watchdog = asyncio.create_task(self._watch_connections(), name="typha-watchdog")
        await self.update_health()
        log.info("Sync server %s listening on %s:%d (syncers: %s)", self.server_id, host, bound,
                 ", ".join(sorted(self.caches)))
        return bound

    async def stop(self, grace: float | None = 1.0) -> None:
        self.stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._server is not None:
            await self._server.stop(grace)

    async def drain(self, duration_secs: float, max_interval_secs: float = 1.0) -> None:
        """Move every client elsewhere over `duration_secs`: Reconnect hints, then close (Typha's shutdown)."""
        self.draining = True
        await self.health.enter_graceful_shutdown()
        victims = list(self.connections)
        random.shuffle(victims)
        interval = min(duration_secs * 0.95 / max(len(victims), 1), max_interval_secs)
        log.info("Draining %d connections, one every %.3f s", len(victims), interval)
        for conn in victims:
            self.ask_to_reconnect(conn, "server is shutting down")
            await asyncio.sleep(interval * random.uniform(0.5, 1.0))
        # Polled (bounded in count): the clients leave on their own time, after their Reconnect hint.
        for _ in range(math.ceil(self.settings.drain_reconnect_grace_secs / 0.05)):
            if not self.connections:
                break
            await asyncio.sleep(0.05)

    def ask_to_reconnect(self, conn: Connection, reason: str, endpoint: str = "") -> None:
        conn.reconnect = pb.Reconnect(reason=reason, endpoint=endpoint)
        cache = self.caches.get(conn.syncer_type)
        if cache is not None:
            cache.wake_all()

    async def update_health(self) -> None:
        all_ready = True
        for syncer_type, cache in self.caches.items():
            ready = cache.status is SyncStatus.IN_SYNC
            all_ready &= ready
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.health.set(f"{SERVICE_NAME}/{syncer_type}", status)
        overall = health_pb2.HealthCheckResponse.SERVING if all_ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", overall)
        await self.health.set(SERVICE_NAME, overall)

    # -- one client --------------------------------------------------------------------------------

    async def _handle(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        if self.authorizer is not None:
            await self.authorizer(context)
        conn = Connection(peer=context.peer())
        conn.task = asyncio.current_task()
        self.metrics.connections_accepted.inc()
        ip = peer_ip(conn.peer)
        counted = False
        try:
            counted = self._count_ip(conn, ip)
            hello = await self._admit(conn, context)
            if hello is None:
                return
            cache = self.caches[conn.syncer_type]
            self.connections.add(conn)
            self.metrics.connections_active.set(len(self.connections))
            await self._send_start(conn, cache, hello, context)
            del hello  # a long-lived stream need not keep its hello alive
            streaming = self.metrics.connections_streaming.labels(conn.syncer_type)
            streaming.inc()
            try:
                await self._stream(conn, cache, context)
            finally:
                streaming.dec()
        except _Drop as drop:
            await self._end(conn, context, drop)
        except asyncio.CancelledError:
            if conn.drop is None:
                # When its peer goes away, gRPC cancels the handler's task as soon as it sees the stream
                # end, which can come before the failure of a write in flight: the same end as below, so
                # counted the same way. Or the server is stopping, which ends streams the same way.
                if not self.stopping:
                    self._client_left(conn, "its stream was cancelled")
                raise
            await self._end(conn, context, conn.drop)
        except grpc.aio.InternalError as exc:
            # A write failed because the client went away (gRPC's ExecuteBatchError), typically in the
            # middle of its snapshot. Routine for a proxy of thousands of nodes: no traceback, counted.
            self._client_left(conn, f"a write failed: {clip(str(exc))}")
        finally:
            if counted:
                self.per_ip.release(ip)
            if conn.pong_reader is not None:
                conn.pong_reader.cancel()
            self.connections.discard(conn)
            self.metrics.connections_active.set(len(self.connections))

    def _count_ip(self, conn: Connection, ip: str) -> bool:
        """Count the stream against its IP's cap (when one is set); refuse it when the cap is reached."""
        if self.per_ip.limit <= 0:
            return False
        if not self.per_ip.acquire(ip):
            raise _Drop(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"too many connections from {ip} (limit {self.per_ip.limit} per IP)", "per_ip_limit")
        return True

    def _client_left(self, conn: Connection, how: str) -> None:
        """Record, once per stream, a client that went away on its own (whichever way gRPC reported it)."""
        self._ended(conn)
        if conn.reconnect is not None:
            log.debug("%s (%s %s) left after its Reconnect hint (%s)", conn.peer, clip(conn.hostname),
                      conn.syncer_type, how)
            return  # it moved, as asked: not an error
        if not conn.syncer_type:  # only set once its hello is read
            log.info("%s ended its stream before a ClientHello (%s)", conn.peer, how)
            self.metrics.client_errors.labels("ended_before_hello").inc()
            return
        # Routine for a proxy of thousands of nodes: no traceback, counted.
        log.debug("%s (%s %s) went away: %s", conn.peer, clip(conn.hostname), conn.syncer_type, how)
        self.metrics.client_errors.labels("disconnected").inc()

    @staticmethod
    def _ended(conn: Connection) -> None:
        """This stream's end is recorded: gRPC's failure to send its final status is not another one."""
        if conn.task is not None:
            _ENDS_RECORDED.add(conn.task)

    async def _end(self, conn: Connection, context: grpc.aio.ServicerContext, drop: _Drop) -> None:
        self._ended(conn)
        log.info("Dropping %s (%s %s): %s", conn.peer, clip(conn.hostname), conn.syncer_type, drop.details)
        self.metrics.connections_dropped.inc()
        if drop.error:
            self.metrics.client_errors.labels(drop.error).inc()
        context.set_code(drop.code)
        context.set_details(drop.details)

    async def _admit(self, conn: Connection, context: grpc.aio.ServicerContext) -> pb.ClientHello | None:
        """The handshake, counted toward the connection limit while it waits for the hello.

        Without this, streams that never send a hello would pile up (each holding a task and gRPC core's
        per-call memory) until their handshake timeout, however many the limit allows. One stream beyond
        the limit is still let in, so that a client that does send its hello gets its Reconnect hint.
        """
        limit = self.settings.max_connections
        if len(self.connections) + self.awaiting_hello > limit:
            raise _Drop(grpc.StatusCode.UNAVAILABLE,
                        f"too many connections ({len(self.connections)} open, {self.awaiting_hello} awaiting "
                        f"a hello; limit {limit}); reconnect to another typha")
        self.awaiting_hello += 1
        self.metrics.connections_awaiting_hello.set(self.awaiting_hello)
        try:
            return await self._handshake(conn, context)
        finally:
            self.awaiting_hello -= 1
            self.metrics.connections_awaiting_hello.set(self.awaiting_hello)

    async def _handshake(self, conn: Connection, context: grpc.aio.ServicerContext) -> pb.ClientHello | None:
        timeout = self.settings.handshake_timeout_secs
        try:
            async with asyncio.timeout(timeout):
                raw = await context.read()
        except TimeoutError:
            raise _Drop(grpc.StatusCode.DEADLINE_EXCEEDED, f"no ClientHello within {timeout:g} s", "no_hello") from None
        if raw is grpc.aio.EOF:
            # What the handler sees, too, when gRPC core ended the stream for a message over its limit.
            log.info("%s ended its stream before a ClientHello (it went away, or sent a message over %d bytes)",
                     conn.peer, MAX_INBOUND_MESSAGE_BYTES)
            self.metrics.client_errors.labels("ended_before_hello").inc()
            self._ended(conn)
            return None
        if len(raw) > MAX_CLIENT_MESSAGE_BYTES:
            raise _Drop(grpc.StatusCode.RESOURCE_EXHAUSTED, _oversized(raw), "oversized")
        try:
            message = pb.ClientMessage.FromString(raw)
        except DecodeError as exc:
            raise _Drop(grpc.StatusCode.INVALID_ARGUMENT, f"malformed ClientMessage: {exc}", "malformed") from None
        if message.WhichOneof("payload") != "hello":
            raise _Drop(grpc.StatusCode.INVALID_ARGUMENT,
                        f"the first message must be a ClientHello, not {message.WhichOneof('payload')}",
                        "invalid_hello")
        hello = message.hello
        _check_lengths(hello)
        syncer_type = hello.syncer_type or "felix"  # as in Typha, empty means felix
        if syncer_type not in self.caches:
            raise _Drop(grpc.StatusCode.INVALID_ARGUMENT,
                        f"unknown syncer type {clip(syncer_type)}; this server serves {', '.join(sorted(self.caches))}",
                        "invalid_hello")
        features = frozenset(hello.features) & KNOWN_FEATURES
        # Thousands of clients send the same few feature sets: share one frozenset per distinct set.
        conn.hostname, conn.syncer_type = hello.hostname, syncer_type
        conn.features = self._feature_sets.setdefault(features, features)
        if self.draining or len(self.connections) >= self.settings.max_connections:
            reason = "server is shutting down" if self.draining else (
                f"too many connections ({len(self.connections)} >= {self.settings.max_connections})")
            if conn.supports(FEATURE_RECONNECT):
                # Not yet watched by the watchdog, and holding a slot of the limit: bound the write here.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.write_timeout_secs):
                        await context.write(_frame(reconnect=pb.Reconnect(reason=reason, after_ms=1000)))
            raise _Drop(grpc.StatusCode.UNAVAILABLE, f"{reason}; reconnect to another typha")
        return hello

    async def _send_start(
        self, conn: Connection, cache: SnapshotCache, hello: pb.ClientHello, context: grpc.aio.ServicerContext
    ) -> None:
        """Resume, repair by digest or send a snapshot. Every write goes through `_write`, so the write
        timeout covers this phase too, and `conn.start` lets the watchdog apply the fall-behind checks to
        the crumb a not-yet-positioned client pins (a client that stalls before its snapshot is read
        would otherwise hold its own snapshot version forever)."""
        start: Breadcrumb | None = None
        if hello.HasField("resume") and hello.resume.epoch == cache.epoch:
            await self._catch_up(cache, hello.resume.sequence)
        conn.generation = cache.generation  # taken with the position, before any await
        if hello.HasField("resume"):
            try:
                start = cache.crumb_after(hello.resume.epoch, hello.resume.sequence)
            except ResumeUnavailable as exc:
                log.info("%s (%s) cannot resume: %s", conn.peer, clip(conn.hostname), exc)
        if start is not None:
            self.metrics.resumes.inc()
            conn.start = start
            await self._write(conn, context,
                              _frame(hello=self._server_hello(cache, conn, resumed=True, sequence=start.sequence)))
            await self._send_status(conn, context, start)
            conn.position, conn.start = start, None  # `start` must not pin the crumb once the client moves on
            return
        if conn.supports(FEATURE_DIGEST_RESYNC) and hello.HasField("digests"):
            try:
                repair = self.repairs[conn.syncer_type].plan(hello.digests)
            except RepairDeclined as exc:
                log.info("%s (%s) cannot resync by digest: %s; sending a snapshot", conn.peer, clip(conn.hostname),
                         exc)
            else:
                hello_frame = self._server_hello(cache, conn, resumed=False, sequence=repair.crumb.sequence)
                hello_frame.bucket_count = repair.bucket_count
                conn.start = repair.crumb
                conn.grace_until = time.monotonic() + self.settings.new_client_grace_secs
                await self._write(conn, context, _frame(hello=hello_frame))
                for frame in repair.frames:
                    await self._write(conn, context, frame)
                await self._send_status(conn, context, repair.crumb)
                conn.position, conn.start = repair.crumb, None
                conn.grace_until = time.monotonic() + self.settings.new_client_grace_secs
                self.metrics.digest_resyncs.inc()
                return
        started = time.perf_counter()
        snapshot = cache.snapshot()
        conn.generation = cache.generation
        conn.start = snapshot.crumb
        # The new-client grace covers the snapshot's own transfer too; the resume window still bounds it.
        conn.grace_until = time.monotonic() + self.settings.new_client_grace_secs
        await self._write(conn, context,
                          _frame(hello=self._server_hello(cache, conn, resumed=False, sequence=snapshot.sequence)))
        for frame in snapshot.frames:
            await self._write(conn, context, frame)
        del snapshot  # from here on the client pins only its crumb, like every other client
        conn.position, conn.start = conn.start, None
        await self._send_status(conn, context, conn.position)
        conn.grace_until = time.monotonic() + self.settings.new_client_grace_secs
        self.metrics.snapshot_send_secs.labels(conn.syncer_type).observe(time.perf_counter() - started)
        self.metrics.snapshots_sent.inc()

    async def _send_status(self, conn: Connection, context: grpc.aio.ServicerContext, crumb: Breadcrumb) -> None:
        """The status as of the client's starting point: later changes reach it as crumbs."""
        status = pb.SyncStatus(status=STATUS_TO_PB[crumb.status], sequence=crumb.sequence)
        await self._write(conn, context, _frame(status=status))

    async def _catch_up(self, cache: SnapshotCache, sequence: int) -> None:
        """Wait (bounded) until `cache` has reached `sequence`: replicas of one upstream (fan-out workers)
        trail it by different amounts, and the clients of a dead one come with their own position."""
        if sequence <= cache.newest.sequence:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.resume_catch_up_secs):
                while cache.newest.sequence < sequence:
                    await cache.new_crumb_event.wait()

    def _server_hello(self, cache: SnapshotCache, conn: Connection, *, resumed: bool, sequence: int) -> pb.ServerHello:
        return pb.ServerHello(version=__version__, server_id=self.server_id, epoch=cache.epoch, resumed=resumed,
                              syncer_type=conn.syncer_type, sequence=sequence)

    async def _read_client(self, conn: Connection, context: grpc.aio.ServicerContext, *, until_closed: bool) -> None:
        """Read what the client sends after its hello: pongs, until one arrives (or the stream ends).

        Clients only ever answer pings, so there is nothing to read between a pong and the next
        ping; not keeping a read pending saves ~4 KB per idle client. A client that sends anything
        else is cut off when it is read, at the latest one ping interval later.
        """
        try:
            while True:
                raw = await context.read()
                if raw is grpc.aio.EOF:
                    break
                if len(raw) > MAX_CLIENT_MESSAGE_BYTES:
                    self._drop_later(conn, grpc.StatusCode.RESOURCE_EXHAUSTED, _oversized(raw), "oversized")
                    return
                try:
                    message = pb.ClientMessage.FromString(raw)
                except DecodeError as exc:
                    self._drop_later(conn, grpc.StatusCode.INVALID_ARGUMENT, f"malformed ClientMessage: {exc}",
                                     "malformed")
                    return
                if message.WhichOneof("payload") != "pong":
                    self._drop_later(conn, grpc.StatusCode.INVALID_ARGUMENT,
                                     f"unexpected {message.WhichOneof('payload')} after the handshake", "unexpected")
                    return
                conn.last_pong = time.monotonic()
                sent = message.pong.ping_timestamp_ns
                if sent:
                    self.metrics.ping_latency.labels(conn.syncer_type).observe(
                        max(0.0, (time.monotonic_ns() - sent) / 1e9))
                if not until_closed:
                    return
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            return
        conn.client_closed = True
        cache = self.caches.get(conn.syncer_type)
        if cache is not None:
            cache.wake_all()

    def _drop_later(self, conn: Connection, code: grpc.StatusCode, details: str, error: str = "") -> None:
        """End a stream from outside its task (watchdog, reader): cancel it with a reason."""
        if conn.drop is None and conn.task is not None:
            conn.drop = _Drop(code, details, error)
            conn.task.cancel()

    def _deferred_for(self, metric: QuantileSummary, syncer: str) -> _Deferred:
        deferred = self._deferred.get((metric.name, syncer))
        if deferred is None:
            deferred = self._deferred[metric.name, syncer] = _Deferred(metric.labels(syncer))
        return deferred

    async def _write(self, conn: Connection, context: grpc.aio.ServicerContext, data: bytes) -> None:
        # The watchdog enforces the write timeout, so no timer is armed per write on the hot path.
        conn.writing_since = started = time.monotonic()
        await context.write(data)
        conn.writing_since = 0.0
        self.metrics.client_write_latency.labels(conn.syncer_type).observe(time.monotonic() - started)

    async def _stream(self, conn: Connection, cache: SnapshotCache, context: grpc.aio.ServicerContext) -> None:
        """Send the client every crumb after its position, plus pings and checksums, until it goes.

        A wait is woken by a new crumb or by the watchdog's tick (which is how ping and checksum
        deadlines are noticed): no per-client timers.
        """
        settings = self.settings
        assert conn.position is not None
        next_ping = time.monotonic() + settings.ping_interval_secs * random.uniform(0.9, 1.1)
        next_checksum = 0.0  # first one as soon as the client is in sync
        send_checksums = conn.supports(FEATURE_CHECKSUM)
        exact = conn.supports(FEATURE_EXACT_CRUMBS) and not conn.supports(FEATURE_CRUMB_RUNS)
        syncer = conn.syncer_type
        latency = self._deferred_for(self.metrics.client_latency, syncer).values.append
        write_latency = self._deferred_for(self.metrics.client_write_latency, syncer).values.append
        kvs_per_msg = self._deferred_for(self.metrics.kvs_per_msg, syncer).values.append
        next_latency = self._deferred_for(self.metrics.next_breadcrumb_latency, syncer).values.append
        crumb_metrics = cache.metrics
        monotonic = time.monotonic
        write = context.write
        while True:
            crumb, behind = conn.position, False
            if crumb.next is None and not conn.client_closed and conn.reconnect is None:
                now = monotonic()
                due = now >= next_ping or (
                    send_checksums and crumb.status is SyncStatus.IN_SYNC and now >= next_checksum)
                if not due:
                    crumb_metrics.breadcrumb_block.inc()
                    await cache.new_crumb_event.wait()
            elif behind := crumb.next is not None:
                crumb_metrics.breadcrumb_non_block.inc()
            if conn.client_closed:
                return
            if conn.reconnect is not None:
                await self._move_client(conn, context)
                return
            if cache.generation != conn.generation:
                raise _Drop(grpc.StatusCode.UNAVAILABLE, "this server's upstream started over; resync")
            first = crumb.next
            if first is not None:
                fetched = monotonic()
                data, last = (first.frame, first) if exact else first.run_to_newest()
                if behind:
                    next_latency(monotonic() - fetched)
                kvs_per_msg(run_kv_count(first, last))
                # self._write inlined: a coroutine less per delivery, for every client. The watchdog
                # enforces the write timeout from writing_since.
                conn.writing_since = started = monotonic()
                await write(data)
                conn.writing_since = 0.0
                conn.position = crumb = last
                now = monotonic()
                write_latency(now - started)
                latency(now - last.timestamp)
            else:
                now = monotonic()
            if now >= next_ping:
                if now - conn.last_pong > settings.pong_timeout_secs:
                    raise _Drop(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no pong for {now - conn.last_pong:.0f} s (timeout {settings.pong_timeout_secs:g} s)")
                await self._write(conn, context, _frame(ping=pb.Ping(timestamp_ns=time.monotonic_ns())))
                if conn.pong_reader is None or conn.pong_reader.done():
                    conn.pong_reader = asyncio.create_task(self._read_client(conn, context, until_closed=False))
                next_ping = now + settings.ping_interval_secs * random.uniform(0.9, 1.1)
            if send_checksums and crumb.status is SyncStatus.IN_SYNC and crumb.next is None and now >= next_checksum:
                checksum = pb.Checksum(sequence=crumb.sequence, digest=crumb.digest, count=crumb.key_count)
                await self._write(conn, context, _frame(checksum=checksum))
                next_checksum = now + settings.checksum_interval_secs

    async def _move_client(self, conn: Connection, context: grpc.aio.ServicerContext) -> None:
        """Make-before-break: hint, let the client attach elsewhere and close us, then end."""
        assert conn.reconnect is not None
        if conn.supports(FEATURE_RECONNECT):
            await self._write(conn, context, _frame(reconnect=conn.reconnect))
            if conn.pong_reader is not None:
                conn.pong_reader.cancel()
            # The client moves, then cancels this stream (which cancels this task) or half-closes it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.drain_reconnect_grace_secs):
                    await self._read_client(conn, context, until_closed=True)
        if not conn.client_closed:
            raise _Drop(grpc.StatusCode.UNAVAILABLE, f"{conn.reconnect.reason}; reconnect to another typha")

    # -- watchdog ----------------------------------------------------------------------------------

    @property
    def tick_secs(self) -> float:
        """How often waiting streams are woken to check their ping and checksum deadlines."""
        settings = self.settings
        return min(settings.watchdog_interval_secs, settings.ping_interval_secs / 2,
                   settings.checksum_interval_secs / 2)

    async def _watch_connections(self) -> None:
        """Wake every stream on a tick, and drop clients that stalled or fell too far behind."""
        settings = self.settings
        next_trim = time.monotonic() + heap.TRIM_INTERVAL_SECS
        trimming: asyncio.Future[bool] | None = None
        while True:
            await asyncio.sleep(self.tick_secs)
            for deferred in self._deferred.values():
                deferred.flush()
            for cache in self.caches.values():
                cache.wake_all()
            now = time.monotonic()
            if now >= next_trim and (trimming is None or trimming.done()):
                # Peers that came and went (dropped, timed out in their handshake) leave free pages behind.
                trimming = asyncio.ensure_future(asyncio.to_thread(heap.trim))
                next_trim = now + heap.TRIM_INTERVAL_SECS
            for conn in list(self.connections):
                if conn.drop is not None:
                    continue
                # Before and during its snapshot too: a client that stops reading there pins that snapshot.
                if conn.writing_since and now - conn.writing_since > settings.write_timeout_secs:
                    self._drop_later(conn, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     f"a write blocked for {now - conn.writing_since:.0f} s "
                                     f"(limit {settings.write_timeout_secs:g} s): client is not reading")
                    continue
                position = conn.position or conn.start
                if position is None:
                    continue
                cache = self.caches[conn.syncer_type]
                behind = position.next
                if behind is None:
                    continue
                if not cache.in_window(behind):
                    self.metrics.fell_behind.inc()
                    self._drop_later(conn, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     f"client fell behind: it is at sequence {position.sequence} but the server "
                                     f"keeps only {cache.oldest.sequence}..{cache.newest.sequence}; resync")
                elif now - behind.timestamp > settings.max_fall_behind_secs and now <= conn.grace_until:
                    if not conn.grace_used:  # once per connection, as Typha counts it
                        conn.grace_used = True
                        self.metrics.connections_grace_used.labels(conn.syncer_type).inc()
                elif now - behind.timestamp > settings.max_fall_behind_secs:
                    self.metrics.fell_behind.inc()
                    self._drop_later(conn, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     f"client fell behind by {now - behind.timestamp:.0f} s "
                                     f"(limit {settings.max_fall_behind_secs:g} s); resync")
