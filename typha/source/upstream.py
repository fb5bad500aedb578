"""A Source that follows another typha: keeps local caches exact replicas of the upstream's.

Used by fan-out worker processes (following the ingest process over a Unix socket) and by a typha
that follows another typha over the network (`typha serve --upstream ADDR`), so that the Kubernetes
API sees one watch per kind however many fan-out layers there are (docs/architecture.md §3).

The follower asks for `exact-crumbs` and `crumb-runs`: the upstream sends breadcrumbs as their own
frames (several back to back in one message when the replica lags; `split_frames` takes them apart),
and the replica appends the very same bytes under the very same sequence number. Epoch and sequences
therefore mean the same on every replica, and a client can resume on any of them. Nothing is
re-encoded: the upstream's encode-once carries through the whole hierarchy.

When the upstream cannot resume the replica (it restarted: a new epoch), a replica holding a large cache
sends its per-bucket digests (`digest-resync`, typha.syncproto.digests) and receives only the buckets that
differ instead of a snapshot; the repaired set must match the upstream's checksum before it replaces
the cache.
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

from typha.client.tls import ClientTLS, ServerIdentityError, ServerVerifier
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import PB_TO_STATUS, ReplicaGap, SnapshotCache, kv_hash
from typha.syncproto.digests import FEATURE_DIGEST_RESYNC, MIN_BUCKETS, bucket_count_for, bucket_hash
from typha.syncserver.server import FEATURE_CHECKSUM, FEATURE_CRUMB_RUNS, FEATURE_EXACT_CRUMBS

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
        self.digest_resyncs = 0
        self.bytes_received = 0  # serialized messages from the upstream, all sessions
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
                                   features=[FEATURE_EXACT_CRUMBS, FEATURE_CRUMB_RUNS, FEATURE_CHECKSUM,
                                             FEATURE_DIGEST_RESYNC])
            if self.replicated:
                hello.resume.CopyFrom(pb.ResumePoint(epoch=self.cache.epoch, sequence=self.cache.newest.sequence))
                # Below MIN_BUCKETS keys the summary (4 bytes a bucket) is about the size of a snapshot.
                if len(self.cache) >= MIN_BUCKETS:
                    count = bucket_count_for(len(self.cache))
                    hello.digests.count = count
                    hello.digests.digests.extend(self.cache.buckets.folded(count))
            await call.write(pb.ClientMessage(hello=hello).SerializeToString())
            self.sessions += 1
            server_hello = (await self._expect(call, "hello")).hello
            if server_hello.resumed:
                self.resumes += 1
                await self._expect(call, "status")  # where we stand: already known
                how = "resumed"
            elif server_hello.bucket_count:
                if server_hello.bucket_count != hello.digests.count:
                    raise UpstreamError(f"upstream answered {server_hello.bucket_count} buckets to a summary of "
                                        f"{hello.digests.count}")
                await self._receive_repair(call, server_hello)
                how = "repaired by digest"
            else:
                await self._receive_snapshot(call, server_hello)
                how = "snapshot"
            self.connected = True
            log.info("following %s (%s) from sequence %d (%s)", self.address, self.syncer_type,
                     self.cache.newest.sequence, how)
            await self._follow(call)
        finally:
            call.cancel()
            await channel.close()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> tuple[bytes, pb.ServerMessage]:
        raw = await call.read()
        if raw is grpc.aio.EOF:
            raise UpstreamError(f"stream ended: {await call.code()} {await call.details()}")
        self.bytes_received += len(raw)
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

    async def _receive_repair(self, call: grpc.aio.StreamStreamCall, hello: pb.ServerHello) -> None:
        """digest-resync: the upstream's full contents of the buckets that differ from our summary.

        Checked like the snapshot's chunks, then the repaired set must match the upstream's digest and
        key count before it replaces the cache (a failure is an UpstreamError: the next session takes a
        snapshot). The cache is reset under the upstream's epoch as after a snapshot, so its own clients
        resync (by digest, too) against the new epoch.
        """
        mask = hello.bucket_count - 1
        decompressor = zstandard.ZstdDecompressor()
        replaced: set[int] = set()
        fresh: dict[str, tuple[bytes, str]] = {}
        first: pb.BucketChunk | None = None
        index = 0
        while True:
            chunk = (await self._expect(call, "buckets")).buckets
            if chunk.index != index or chunk.sequence != hello.sequence:
                raise UpstreamError(f"bucket chunk {chunk.index} (sequence {chunk.sequence}) out of order")
            if first is None:
                first = chunk
            elif (chunk.count, chunk.digest, chunk.key_count) != (first.count, first.digest, first.key_count):
                raise UpstreamError(f"bucket chunk {chunk.index} disagrees with the first chunk")
            buckets = set(chunk.buckets)
            if len(buckets) != len(chunk.buckets) or buckets & replaced or any(b > mask for b in buckets):
                raise UpstreamError(f"bucket chunk {chunk.index} lists buckets twice or out of range")
            if chunk.compression not in ("", "zstd"):
                raise UpstreamError(f"unknown bucket chunk compression {chunk.compression!r}")
            data = decompressor.decompress(chunk.data) if chunk.compression else chunk.data
            for kv in pb.Deltas.FromString(data).kvs:
                if not kv.value or bucket_hash(kv.key) & mask not in buckets or kv.key in fresh:
                    raise UpstreamError(f"bucket chunk {chunk.index} holds {kv.key!r} as a deletion, outside its "
                                        "buckets or twice")
                fresh[kv.key] = (kv.value, kv.revision)
            replaced |= buckets
            index += 1
            if index >= chunk.count:
                break
        assert first is not None  # the loop reads at least one chunk
        status = (await self._expect(call, "status")).status
        cache = self.cache
        # The new digest follows from the keys that leave and arrive: no pass over the whole set to check it.
        digest, count = cache.digest, len(cache)
        gone = {key for bucket in replaced for key in cache.buckets.keys_in(bucket, hello.bucket_count)}
        for key in gone:
            entry = cache.get(key)
            assert entry is not None, f"the bucket index has {key!r}, the cache does not"
            digest ^= kv_hash(key, entry[0])
        for key, (value, _) in fresh.items():
            digest ^= kv_hash(key, value)
        count += len(fresh) - len(gone)
        if (digest, count) != (first.digest, first.key_count):
            raise UpstreamError(f"replica repaired from {len(replaced)} buckets does not match the upstream's "
                                f"checksum ({count} keys, upstream {first.key_count})")
        kvs = [(key, value, revision) for key, value, revision in cache.items() if key not in gone]
        kvs.extend((key, value, revision) for key, (value, revision) in fresh.items())
        cache.replicate_reset(hello.epoch, hello.sequence, kvs, PB_TO_STATUS.get(status.status, cache.status))
        self.replicated = True
        self.digest_resyncs += 1
        log.info("upstream %s (%s): repaired %d of %d buckets (%d keys received) instead of a snapshot",
                 self.address, self.syncer_type, len(replaced), hello.bucket_count, len(fresh))

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
                    self.bytes_received += len(raw)
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
