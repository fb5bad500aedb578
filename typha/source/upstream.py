"""A Source that follows another typha: keeps local caches exact replicas of the upstream's.

Used by fan-out worker processes (following the ingest process over a Unix socket) and by a typha
that follows another typha over the network (`typha serve --upstream ADDR`), so that the Kubernetes
API sees one watch per kind however many fan-out layers there are (docs/architecture.md §3).

The follower asks for `exact-crumbs` and `crumb-runs`: the upstream sends breadcrumbs as their own
frames (several back to back in one message when the replica lags; typha.syncproto.frames),
and the replica appends the very same bytes under the very same sequence number. Epoch and sequences
therefore mean the same on every replica, and a client can resume on any of them. Nothing is
re-encoded: the upstream's encode-once carries through the whole hierarchy.

When the upstream cannot resume the replica (it restarted: a new epoch), a replica holding a large cache
sends its per-bucket digests (`digest-resync`, typha.syncproto.digests) and receives only the buckets that
differ instead of a snapshot; the repaired set must match the upstream's checksum before it replaces
the cache.

The protocol itself - handshake, snapshot chunks, bucket repair, checksums, which message may come
when - is the client core's (typha.client.core, in replica mode): this module is only its transport
over gRPC, with reconnecting, backoff and the batching of appends described in `_follow`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket

import grpc

from typha.backoff import Backoff
from typha.client.core import Step, SyncClientCore
from typha.client.session import ProtocolError, Session
from typha.client.tls import ClientTLS, ServerIdentityError, ServerVerifier
from typha.snapcache.cache import SnapshotCache
from typha.syncproto.names import SYNC_METHOD

log = logging.getLogger(__name__)

# Between attempts to reach the upstream; a replica's clients keep being served from its cache meanwhile.
FOLLOWER_BACKOFF = Backoff(initial=0.1, maximum=5.0)


class StreamEnded(Exception):
    """The upstream ended the stream (or asked this replica to go elsewhere): reconnect and resume."""


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
        backoff: Backoff | None = None,
        tls: ClientTLS | None = None,
        connect_timeout: float = 10.0,
        coalesce_secs: float = 0.002,
        max_coalesce_secs: float = 0.05,
    ) -> None:
        self.address = address
        self.syncer_type = syncer_type
        self.cache = cache
        self.hostname = hostname or socket.gethostname()
        # The protocol, in replica mode: the cache is its state. A replica's checksum is exact (the same
        # crumbs at the same numbers), so one mismatch means it has diverged.
        self.core = SyncClientCore(syncer_type, hostname=self.hostname, info="typha replica", replica=cache,
                                   checksum_mismatch_limit=1)
        self.credentials = credentials
        self.backoff = backoff or FOLLOWER_BACKOFF
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
        self.first_replica = asyncio.Event()  # set once the cache first holds a replica
        self.sessions = 0
        self.resumes = 0
        self.snapshots = 0
        self.digest_resyncs = 0
        self.bytes_received = 0  # serialized messages from the upstream, all sessions
        self._task: asyncio.Task[None] | None = None
        self._how = ""  # how the current session established the replica, for the log

    @property
    def replicated(self) -> bool:
        """The cache holds a replica the next session may resume from (possibly stale while reconnecting)."""
        return self.core.resume_point is not None

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
            session = self.core.open_session()
            try:
                await self._session(session)
            except asyncio.CancelledError:
                self.core.close_session(session)
                raise
            except (grpc.aio.AioRpcError, StreamEnded, ProtocolError, ServerIdentityError, OSError) as exc:
                # A protocol error (a gap, a checksum that differs, a repair that does not add up) means the
                # replica cannot be trusted to resume from: the next session takes a snapshot (or a repair).
                self.core.close_session(session, resync=isinstance(exc, ProtocolError))
                # A session that got as far as following the upstream was a success: back off afresh.
                failures = 1 if self.connected else failures + 1
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

    async def _session(self, session: Session) -> None:
        channel, call = await self._open()
        self._how = ""
        try:
            await call.write(session.hello.SerializeToString())
            self.sessions += 1
            # The handshake: until the session is live (resumed, or snapshot or repair and its status).
            while self.core.live_session is not session:
                await self._act(call, self.core.receive_frames(session, await self._read(call)))
            self.connected = True
            log.info("following %s (%s) from sequence %d (%s)", self.address, self.syncer_type,
                     self.cache.newest.sequence, self._how)
            await self._follow(call, session)
        finally:
            call.cancel()
            await channel.close()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> bytes:
        raw = await call.read()
        if raw is grpc.aio.EOF:
            raise StreamEnded(f"stream ended: {await call.code()} {await call.details()}")
        self.bytes_received += len(raw)
        return raw

    async def _act(self, call: grpc.aio.StreamStreamCall, step: Step) -> None:
        """Do what the core says: answer pings, count how the replica was established, give up the stream."""
        for message in step.send:
            await call.write(message.SerializeToString())
        if step.resumed:
            self.resumes += 1
            self._how = "resumed"
        if step.snapshot_complete:
            self._how = "snapshot"
        if step.repaired:
            self._how = "repaired by digest"
        if step.promoted:
            if self._how == "snapshot":
                self.snapshots += 1
            elif self._how == "repaired by digest":
                self.digest_resyncs += 1
                log.info("upstream %s (%s): repaired by digest instead of a snapshot (%d keys)", self.address,
                         self.syncer_type, len(self.cache))
            self.first_replica.set()
        if step.resync is not None:
            raise ProtocolError(step.resync)
        if step.reconnect is not None:
            raise StreamEnded(f"upstream asked us to reconnect: {step.reconnect.reason}")

    async def _follow(self, call: grpc.aio.StreamStreamCall, session: Session) -> None:
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
        core = self.core
        try:
            while True:
                await arrived.wait()
                if not reader.done():
                    await asyncio.sleep(pause)
                arrived.clear()
                while inbox:
                    await self._act(call, core.receive_frames(session, inbox.popleft()))
                # The streams just woken run before this task resumes: that is the round's length.
                started = loop.time()
                await asyncio.sleep(0)
                pause = min(max(loop.time() - started, self.coalesce_secs), self.max_coalesce_secs)
                if reader.done():
                    reader.result()  # the read's error, if any
                    raise StreamEnded(f"stream ended: {await call.code()} {await call.details()}")
        finally:
            reader.cancel()
