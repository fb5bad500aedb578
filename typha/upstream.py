"""A Source that follows another typha: keeps local caches exact replicas of the upstream's.

Used by fan-out worker processes (following the ingest process over a Unix socket) and by a typha
that follows another typha over the network (`typha serve --upstream ADDR`), so that the Kubernetes
API sees one watch per kind however many fan-out layers there are (DESIGN §3).

The follower asks for `exact-crumbs` and `crumb-runs`: the upstream sends breadcrumbs as their own
frames (several back to back in one message when the replica lags; `split_frames` takes them apart),
and the replica appends the very same bytes under the very same sequence number. Epoch and sequences
therefore mean the same on every replica, and a client can resume on any of them. Nothing is
re-encoded: the upstream's encode-once carries through the whole hierarchy.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import socket
from dataclasses import dataclass

import grpc
import zstandard

from typha.cache import PB_TO_STATUS, ReplicaGap, SnapshotCache
from typha.client.tls import ClientTLS, ServerIdentityError, ServerVerifier
from typha.proto import sync_pb2 as pb
from typha.server import FEATURE_CHECKSUM, FEATURE_CRUMB_RUNS, FEATURE_EXACT_CRUMBS

log = logging.getLogger(__name__)

SYNC_METHOD = "/typha.v1.Sync/Sync"


class UpstreamError(Exception):
    """The upstream broke the protocol; the follower starts over with a snapshot."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise UpstreamError("truncated varint in a message from upstream")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def split_frames(data: bytes) -> list[bytes]:
    """A message of back-to-back ServerMessage frames → the frames. Each frame is exactly one
    length-delimited top-level field (deltas, status, …), so the boundaries are the fields'."""
    frames = []
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        tag, pos = _varint(data, pos)
        if tag & 7 != 2:
            raise UpstreamError(f"unexpected wire type {tag & 7} in a message from upstream")
        length, pos = _varint(data, pos)
        pos += length
        if pos > end:
            raise UpstreamError("truncated frame in a message from upstream")
        frames.append(data[start:pos])
    return frames


@dataclass(frozen=True, slots=True)
class FollowerBackoff:
    initial: float = 0.1
    maximum: float = 5.0

    def delay(self, failures: int) -> float:
        return min(self.maximum, self.initial * 2 ** max(failures - 1, 0)) * random.uniform(0.5, 1.0)


class UpstreamFollower:
    """Follows one syncer of an upstream typha into `cache`, reconnecting and resuming for ever."""

    def __init__(
        self,
        address: str,
        syncer_type: str,
        cache: SnapshotCache,
        *,
        hostname: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        backoff: FollowerBackoff | None = None,
        tls: ClientTLS | None = None,
        connect_timeout: float = 10.0,
        coalesce_secs: float = 0.002,
        max_coalesce_secs: float = 0.05,
    ) -> None:
        self.address = address
        self.syncer_type = syncer_type
        self.cache = cache
        self.hostname = hostname or socket.gethostname()
        self.credentials = credentials
        self.backoff = backoff or FollowerBackoff()
        self.connect_timeout = connect_timeout
        self.coalesce_secs = coalesce_secs
        self.max_coalesce_secs = max_coalesce_secs
        # Over the network a replica is a Typha client like any agent: it verifies the upstream's CN /
        # URI SAN exactly as they do (typha.client.tls) before each session, and presents its certificate.
        self._verifier = ServerVerifier(tls) if tls is not None and tls.enabled else None
        if self._verifier is not None:
            self.credentials = self._verifier.channel_credentials()
        self.last_error = ""
        self.connected = False  # streaming from the upstream right now (readiness)
        self.replicated = False  # the cache holds a replica (possibly stale while reconnecting)
        self.first_replica = asyncio.Event()  # set once the cache first holds a replica
        self.sessions = 0
        self.resumes = 0
        self.snapshots = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"upstream-{self.syncer_type}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self._session()
                failures = 0
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, UpstreamError, ReplicaGap, ServerIdentityError, OSError) as exc:
                if isinstance(exc, UpstreamError | ReplicaGap):
                    self.replicated = False  # do not resume from a replica we no longer trust
                failures += 1
                detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                self.last_error = detail
                log.warning("upstream %s (%s): %s; reconnecting", self.address, self.syncer_type, detail)
            finally:
                self.connected = False
            await asyncio.sleep(self.backoff.delay(failures))

    async def _open(self) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall]:
        # No BDP probing: the receive window stays small, so when this replica falls behind the upstream's
        # writes block and its next message carries the whole run (crumb-runs) instead of many small ones
        # queued in a window grown to megabytes, each costing this replica an event-loop turn to read.
        options: list[tuple[str, object]] = [("grpc.max_receive_message_length", -1), ("grpc.http2.bdp_probe", 0)]
        if self._verifier is not None:
            name = await self._verifier.check(self.address, self.connect_timeout)
            # gRPC's own name check then holds the stream to a certificate carrying the verified name.
            options.append(("grpc.ssl_target_name_override", name))
        channel = (
            grpc.aio.secure_channel(self.address, self.credentials, options=options)
            if self.credentials else grpc.aio.insecure_channel(self.address, options=options)
        )
        call = channel.stream_stream(SYNC_METHOD, request_serializer=None, response_deserializer=None)()
        return channel, call

    async def _session(self) -> None:
        channel, call = await self._open()
        try:
            hello = pb.ClientHello(hostname=self.hostname, info="typha replica", syncer_type=self.syncer_type,
                                   compressions=["zstd"],
                                   features=[FEATURE_EXACT_CRUMBS, FEATURE_CRUMB_RUNS, FEATURE_CHECKSUM])
            if self.replicated:
                hello.resume.CopyFrom(pb.ResumePoint(epoch=self.cache.epoch, sequence=self.cache.newest.sequence))
            await call.write(pb.ClientMessage(hello=hello).SerializeToString())
            self.sessions += 1
            server_hello = (await self._expect(call, "hello")).hello
            if server_hello.resumed:
                self.resumes += 1
                await self._expect(call, "status")  # where we stand: already known
            else:
                await self._receive_snapshot(call, server_hello)
            self.connected = True
            log.info("following %s (%s) from sequence %d (%s)", self.address, self.syncer_type,
                     self.cache.newest.sequence, "resumed" if server_hello.resumed else "snapshot")
            await self._follow(call)
        finally:
            call.cancel()
            await channel.close()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> tuple[bytes, pb.ServerMessage]:
        raw = await call.read()
        if raw is grpc.aio.EOF:
            raise UpstreamError(f"stream ended: {await call.code()} {await call.details()}")
        return raw, pb.ServerMessage.FromString(raw)

    async def _expect(self, call: grpc.aio.StreamStreamCall, kind: str) -> pb.ServerMessage:
        while True:
            _, message = await self._read(call)
            payload = message.WhichOneof("payload")
            if payload == "ping":
                await self._pong(call, message)
                continue
            if payload != kind:
                raise UpstreamError(f"expected {kind}, got {payload}")
            return message

    @staticmethod
    async def _pong(call: grpc.aio.StreamStreamCall, message: pb.ServerMessage) -> None:
        pong = pb.ClientMessage(pong=pb.Pong(ping_timestamp_ns=message.ping.timestamp_ns))
        await call.write(pong.SerializeToString())

    async def _receive_snapshot(self, call: grpc.aio.StreamStreamCall, hello: pb.ServerHello) -> None:
        decompressor = zstandard.ZstdDecompressor()
        kvs: list[tuple[str, bytes, str]] = []
        index = 0
        while True:
            chunk = (await self._expect(call, "snapshot")).snapshot
            if chunk.index != index or chunk.sequence != hello.sequence:
                raise UpstreamError(f"snapshot chunk {chunk.index} (sequence {chunk.sequence}) out of order")
            if chunk.compression not in ("", "zstd"):
                raise UpstreamError(f"unknown snapshot compression {chunk.compression!r}")
            data = decompressor.decompress(chunk.data) if chunk.compression else chunk.data
            kvs.extend((kv.key, kv.value, kv.revision) for kv in pb.Deltas.FromString(data).kvs)
            index += 1
            if index == chunk.count:
                break
        status = (await self._expect(call, "status")).status
        self.cache.replicate_reset(hello.epoch, hello.sequence, kvs, PB_TO_STATUS.get(status.status, self.cache.status))
        self.replicated = True
        self.first_replica.set()
        self.snapshots += 1

    async def _follow(self, call: grpc.aio.StreamStreamCall) -> None:
        """Replicate what arrives, in batches: every crumb appended wakes every stream of this replica,
        so appending them one read at a time would give each client one crumb per message (and the
        clients' writes, run between two reads, would slow the reads down in turn). A reader task
        queues the messages; they are appended together after a pause, then the clients run once and
        each sends the whole run in one message. The pause is as long as the clients' last round took
        (within `coalesce_secs`..`max_coalesce_secs`): under load the rounds get fewer and their messages
        longer, and between two rounds the loop is free for other work, such as taking new streams
        (grpc.aio's server takes one new call per loop iteration)."""
        inbox: collections.deque[bytes] = collections.deque()
        arrived = asyncio.Event()

        async def receive() -> None:
            try:
                while (raw := await call.read()) is not grpc.aio.EOF:
                    inbox.append(raw)
                    arrived.set()
            finally:
                arrived.set()

        loop = asyncio.get_running_loop()
        reader = loop.create_task(receive(), name=f"upstream-read-{self.syncer_type}")
        pause = self.coalesce_secs
        try:
            while True:
                await arrived.wait()
                if not reader.done():
                    await asyncio.sleep(pause)
                arrived.clear()
                while inbox:
                    for frame in split_frames(inbox.popleft()):
                        await self._handle(call, frame)
                # The streams just woken run before this task resumes: that is the round's length.
                started = loop.time()
                await asyncio.sleep(0)
                pause = min(max(loop.time() - started, self.coalesce_secs), self.max_coalesce_secs)
                if reader.done():
                    reader.result()  # the read's error, if any
                    raise UpstreamError(f"stream ended: {await call.code()} {await call.details()}")
        finally:
            reader.cancel()

    async def _handle(self, call: grpc.aio.StreamStreamCall, raw: bytes) -> None:
        cache = self.cache
        message = pb.ServerMessage.FromString(raw)
        payload = message.WhichOneof("payload")
        if payload in ("deltas", "status"):
            cache.replicate(raw, message)
        elif payload == "ping":
            await self._pong(call, message)
        elif payload == "checksum":
            checksum = message.checksum
            if checksum.sequence == cache.newest.sequence and (
                checksum.digest != cache.digest or checksum.count != len(cache)
            ):
                raise UpstreamError(f"replica checksum differs at sequence {checksum.sequence}")
        elif payload == "reconnect":
            raise UpstreamError(f"upstream asked us to reconnect: {message.reconnect.reason}")
        else:
            raise UpstreamError(f"unexpected {payload} from upstream")
