"""A scripted fake Sync server for the client transport tests (no tests in this module).

`FakeCluster` runs one or more grpc.aio servers on 127.0.0.1, port 0, in a thread with its own
event loop, so the asyncio client (on the test's loop) and the trio client (whose gRPC runs on
another thread) can both use it. Each server plays an async script per incoming stream; the script
sees the ClientHello and writes ServerMessages, aborts with a status or returns (a clean close).
Everything the servers see goes to `cluster.log` in order, for make-before-break assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

import grpc
import msgpack
import zstandard

from typha.proto import sync_pb2 as pb
from typha.syncproto.checksum import digest_of
from typha.testing.wait import wait_until

Script = Callable[["Stream"], Awaitable[None]]
_zstd = zstandard.ZstdCompressor(level=3)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def kv(key: str, value: Any, revision: str = "1") -> pb.KV:
    return pb.KV(key=key, value=b"" if value is None else pack(value), revision=revision)


def server_hello(epoch: str, sequence: int, *, resumed: bool = False, server_id: str = "fake") -> pb.ServerMessage:
    return pb.ServerMessage(hello=pb.ServerHello(
        version="fake", server_id=server_id, epoch=epoch, resumed=resumed, syncer_type="felix", sequence=sequence,
    ))


def snapshot(state: dict[str, Any], sequence: int, chunks: int = 2) -> list[pb.ServerMessage]:
    keys = sorted(state)
    per = max(1, -(-len(keys) // chunks))
    return [
        pb.ServerMessage(snapshot=pb.SnapshotChunk(
            sequence=sequence, index=i, count=chunks, compression="zstd", total_kvs=len(keys),
            data=_zstd.compress(pb.Deltas(kvs=[kv(k, state[k]) for k in keys[i * per:(i + 1) * per]])
                                .SerializeToString()),
        ))
        for i in range(chunks)
    ]


def deltas(sequence: int, *kvs: pb.KV) -> pb.ServerMessage:
    return pb.ServerMessage(deltas=pb.Deltas(kvs=list(kvs), sequence=sequence))


def in_sync(sequence: int) -> pb.ServerMessage:
    return pb.ServerMessage(status=pb.SyncStatus(status=pb.SyncStatus.IN_SYNC, sequence=sequence))


def checksum_of(state: dict[str, Any], sequence: int) -> pb.ServerMessage:
    digest = digest_of((k, pack(v)) for k, v in state.items())
    return pb.ServerMessage(checksum=pb.Checksum(sequence=sequence, digest=digest, count=len(state)))


def ping(timestamp: int) -> pb.ServerMessage:
    return pb.ServerMessage(ping=pb.Ping(timestamp_ns=timestamp))


def reconnect(reason: str, endpoint: str, after_ms: int) -> pb.ServerMessage:
    return pb.ServerMessage(reconnect=pb.Reconnect(reason=reason, endpoint=endpoint, after_ms=after_ms))


STATE = {"/calico/v1/a": {"v": 1}, "/calico/v1/b": {"v": 2}, "/calico/v1/c": {"v": 3}}


class Stream:
    """One client stream as a script sees it."""

    def __init__(self, cluster: FakeCluster, server: int, number: int, hello: pb.ClientHello, context: Any) -> None:
        self.cluster = cluster
        self.server = server  # which server of the cluster
        self.number = number  # 0 for the first stream this server accepted, 1 for the next...
        self.hello = hello
        self.context = context
        self.pongs: list[int] = []
        self._pong_arrived = asyncio.Event()

    @property
    def resume(self) -> tuple[str, int] | None:
        return (self.hello.resume.epoch, self.hello.resume.sequence) if self.hello.HasField("resume") else None

    async def send(self, *messages: pb.ServerMessage) -> None:
        for message in messages:
            await self.context.write(message)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.cluster.record(self.server, "abort", self.number, code.name)
        await self.context.abort(code, details)

    async def hold(self, seconds: float = 15.0) -> None:
        """Keep the stream open until the client closes it (the handler is then cancelled)."""
        await asyncio.sleep(seconds)

    async def wait_pongs(self, count: int, timeout: float = 5.0) -> None:
        """Until `count` pongs arrived, or `timeout` passed (the caller's assertion then says what is missing)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(self.pongs) < count:
                    self._pong_arrived.clear()
                    await self._pong_arrived.wait()

    async def _read_pongs(self) -> None:
        while True:
            message = await self.context.read()
            if message is grpc.aio.EOF:
                return
            self.pongs.append(message.pong.ping_timestamp_ns)
            self._pong_arrived.set()


class FakeCluster:
    def __init__(self, *scripts: Script, tls: tuple[bytes, bytes] | None = None) -> None:
        self.scripts = scripts
        self.tls = tls  # (key PEM, certificate chain PEM): serve TLS instead of plaintext
        self.addresses: list[str] = []
        self.log: list[tuple[Any, ...]] = []
        self.hellos: list[list[pb.ClientHello]] = [[] for _ in scripts]
        self.gates: dict[str, asyncio.Event] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[grpc.aio.Server] = []
        self._stop: asyncio.Event | None = None

    # Scripts coordinate through named gates (they all run on the cluster's loop).
    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    def record(self, *entry: Any) -> None:
        with self._lock:
            self.log.append(entry)

    def wait_logged(self, *entry: Any, timeout: float = 5.0) -> bool:
        """Wait (from any thread) until the servers logged `entry`, e.g. (0, "closed", 0)."""

        def logged() -> bool:
            with self._lock:
                return entry in self.log

        wait_until(logged, f"the servers to log {entry}", timeout=timeout, interval=0.01)
        return True

    def index(self, *entry: Any) -> int:
        with self._lock:
            return self.log.index(entry)

    def __enter__(self) -> FakeCluster:
        started: Future[None] = Future()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(started)), daemon=True)
        self._thread.start()
        started.result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        assert self._thread is not None
        self._thread.join(timeout=10)

    async def _main(self, started: Future[None]) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            for index in range(len(self.scripts)):
                server = grpc.aio.server()
                handler = grpc.stream_stream_rpc_method_handler(
                    self._handler(index),
                    request_deserializer=pb.ClientMessage.FromString,
                    response_serializer=pb.ServerMessage.SerializeToString,
                )
                server.add_generic_rpc_handlers(
                    [grpc.method_handlers_generic_handler("typha.v1.Sync", {"Sync": handler})]
                )
                if self.tls is not None:
                    credentials = grpc.ssl_server_credentials([self.tls])
                    port = server.add_secure_port("127.0.0.1:0", credentials)
                else:
                    port = server.add_insecure_port("127.0.0.1:0")
                await server.start()
                self._servers.append(server)
                self.addresses.append(f"127.0.0.1:{port}")
        except BaseException as exc:
            started.set_exception(exc)
            raise
        started.set_result(None)
        await self._stop.wait()
        for server in self._servers:
            await server.stop(grace=None)

    def _handler(self, index: int) -> Callable[[Any, Any], Awaitable[None]]:
        async def handle(request_iterator: Any, context: Any) -> None:
            first = await context.read()
            with self._lock:
                number = len(self.hellos[index])
                self.hellos[index].append(first.hello)
                self.log.append((index, "hello", number))
            context.add_done_callback(lambda _ctx: self.record(index, "closed", number))
            stream = Stream(self, index, number, first.hello, context)
            pongs = asyncio.get_running_loop().create_task(stream._read_pongs())
            try:
                await self.scripts[index](stream)
            finally:
                pongs.cancel()

        return handle


# Scripts shared by the asyncio and trio transport tests.


async def resume_script(stream: Stream) -> None:
    if stream.number == 0:
        await stream.send(server_hello("e1", 5), *snapshot(STATE, 5), in_sync(6), deltas(7, kv("/x", 1)))
        return  # the server closes the stream: a cut
    assert stream.resume == ("e1", 7), stream.resume
    await stream.send(server_hello("e1", 7, resumed=True), deltas(8, kv("/y", 2)))
    await stream.hold()

async def exhausted_script(stream: Stream) -> None:
    if stream.number == 0:
        await stream.send(server_hello("e1", 5), *snapshot(STATE, 5), in_sync(6), deltas(7, kv("/x", 1)))
        await asyncio.sleep(0.1)
        await stream.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "client fell behind")
    assert stream.resume is None, "a client that fell behind must not resume"
    new_state = {"/calico/v1/a": {"v": 10}, "/calico/v1/c": {"v": 3}, "/calico/v1/n": {"v": 5}}
    await stream.send(server_hello("e1", 30), *snapshot(new_state, 30), in_sync(31))
    await stream.hold()
