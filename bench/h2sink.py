"""A lean load client: Sync streams over raw HTTP/2 (h2c, prior knowledge), one TCP connection each.

Drop-in for `bench.sink` (same `client_process` entry point and pipe protocol). grpc.aio costs about
30 µs per received message in the client, so 1000 grpc.aio streams saturate the load core long before
the server does and the benchmark ends up measuring the clients' backlog. Here each connection is an
asyncio BufferedProtocol: the kernel copies into a per-connection buffer (recv_into), frames are cut
with slicing and struct (no per-byte Python loops), gRPC messages are passed to upb as memoryviews,
and the windows are opened to 2^31-1 so the server never waits for us on flow control.

Header blocks (two per call) are decoded with the `hpack` package only to report a stream's grpc-status
and grpc-message when it ends. Not implemented: TLS, priorities, more than one stream per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import struct
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hpack
import zstandard

from bench import sink
from bench.sink import drive_streams
from typha.proto import sync_pb2 as pb
from typha.syncproto.names import SYNC_METHOD
from typha.syncproto.values import unpack_value

TIMESTAMP_LABEL = "bench-ts"  # written by bench/apiproc.py: the pod's write time, ns since the epoch

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_BYTES = 9
GRPC_PREFIX_BYTES = 5

# Frame types (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5

MAX_WINDOW = 2**31 - 1
MAX_FRAME_SIZE = 2**24 - 1
DEFAULT_WINDOW = 65_535  # a connection window starts here whatever SETTINGS say (RFC 9113 §6.9.2)
DEFAULT_FRAME_SIZE = 16_384
STREAM_ID = 1  # the only stream on each connection: clients use odd ids, starting at 1
# Replenish after this much is consumed: frequent enough that the 2^31-1 windows never run low, rare
# enough that WINDOW_UPDATEs cost nothing measurable.
WINDOW_REFRESH_BYTES = 16 * 2**20

INITIAL_BUFFER_BYTES = 64 * 1024  # most connections only ever see small delta frames
# Each socket's kernel receive buffer, fixed (which also turns off its autotuning up to tcp_rmem's 32 MiB).
# Thousands of loopback clients share one kernel: a server outrunning them (typha --workers 2 on 2 cores)
# filled ~1.8 GB of socket buffers, past tcp_mem's pressure mark, and the kernel then dropped segments
# (TCPRcvQDrop) and single streams sat in retransmission backoff for seconds. Real nodes each have their
# own kernel. 256 KiB still holds several of the largest catch-up messages of a lagging client.
RECEIVE_BUFFER_BYTES = 256 * 1024
MIN_READ_BYTES = 16 * 1024  # never offer recv_into less than this

_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")
_GOAWAY = struct.Struct(">II")


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((frame_type, flags)) + _U32.pack(stream_id) + payload


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return bytes((int(compressed),)) + _U32.pack(len(payload)) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: str, value: str) -> bytes:
    """A 'literal header field without indexing, new name' (RFC 7541 §6.2.2), no Huffman.

    The literal form needs no dynamic table on either side, so we can encode without an HPACK
    library; it costs a few bytes per header on a request that is sent once per connection.
    """
    raw_name, raw_value = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(raw_name), 7) + raw_name + _hpack_int(len(raw_value), 7) + raw_value


def request_headers(authority: str, user_agent: str = "typha-bench-h2sink") -> bytes:
    return b"".join(hpack_literal(name, value) for name, value in (
        (":method", "POST"), (":scheme", "http"), (":path", SYNC_METHOD), (":authority", authority),
        ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", user_agent),
    ))


def connection_start(authority: str) -> bytes:
    """Everything a connection sends before its first message, as one write."""
    settings = b"".join(_SETTING.pack(key, value) for key, value in (
        (SETTINGS_ENABLE_PUSH, 0),
        (SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW),
        (SETTINGS_MAX_FRAME_SIZE, MAX_FRAME_SIZE),
    ))
    return (PREFACE + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, _U32.pack(MAX_WINDOW - DEFAULT_WINDOW))
            + frame(HEADERS, FLAG_END_HEADERS, STREAM_ID, request_headers(authority)))


class MessageAssembler:
    """Cuts a gRPC stream's DATA payloads into length-prefixed messages.

    Messages that lie whole inside one payload are handed over as memoryviews of it (no copy); only a
    message split across frames is collected in `_pending`. The callback must not keep the view.
    """

    __slots__ = ("_on_message", "_pending")

    def __init__(self, on_message: Callable[[bool, memoryview | bytearray], None]) -> None:
        self._on_message = on_message
        self._pending = bytearray()

    @property
    def partial_bytes(self) -> int:
        return len(self._pending)

    def feed(self, data: memoryview) -> None:
        pending = self._pending
        if pending:
            if len(pending) < GRPC_PREFIX_BYTES:
                take = GRPC_PREFIX_BYTES - len(pending)
                pending += data[:take]
                data = data[take:]
                if len(pending) < GRPC_PREFIX_BYTES:
                    return
            want = GRPC_PREFIX_BYTES + _U32.unpack_from(pending, 1)[0] - len(pending)
            if len(data) < want:
                pending += data
                return
            pending += data[:want]
            data = data[want:]
            self._pending = bytearray()  # a fresh one: the callback gets this one's contents
            self._on_message(bool(pending[0]), memoryview(pending)[GRPC_PREFIX_BYTES:])
        on_message = self._on_message
        unpack = _U32.unpack_from
        pos, end = 0, len(data)
        while end - pos >= GRPC_PREFIX_BYTES:
            stop = pos + GRPC_PREFIX_BYTES + unpack(data, pos + 1)[0]
            if stop > end:
                break
            on_message(bool(data[pos]), data[pos + GRPC_PREFIX_BYTES:stop])
            pos = stop
        if pos < end:
            self._pending += data[pos:]


class H2GrpcConnection(asyncio.BufferedProtocol):
    """One HTTP/2 connection carrying one bidirectional gRPC call (stream 1), client side.

    Subclasses implement `on_message` and `on_stream_end`. Feeding bytes through `get_buffer` and
    `buffer_updated` by hand (as the unit tests do) exercises the whole receive path without a socket.
    """

    def __init__(self, authority: str) -> None:
        self.authority = authority
        self.transport: asyncio.Transport | None = None
        self.stream_ended = False
        self.goaway: str = ""
        self._closing = False  # we closed it: the connection's loss is not an error
        self._buf = bytearray(INITIAL_BUFFER_BYTES)
        self._view = memoryview(self._buf)
        self._start = 0  # unparsed bytes are _buf[_start:_end]
        self._end = 0
        self._need = 0  # bytes the incomplete frame at _start needs in all
        self._assembler = MessageAssembler(self.on_message)
        self._in_header_block = False  # inside HEADERS..CONTINUATION on stream 1
        self._header_block_ends_stream = False
        self._header_fragments: list[bytes] = []
        # Every block must go through one decoder in order: HPACK's dynamic table spans the connection.
        self._hpack = hpack.Decoder()
        self.response_headers: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self._unacked_bytes = 0  # consumed DATA not yet returned by WINDOW_UPDATE
        self._send_window_conn = DEFAULT_WINDOW
        self._send_window_stream = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_FRAME_SIZE
        self._send_queue: list[bytes] = []  # gRPC-framed messages waiting for the server's window

    # -- hooks -----------------------------------------------------------------------------------

    def on_message(self, compressed: bool, data: memoryview | bytearray) -> None:
        raise NotImplementedError

    def on_stream_end(self, reason: str) -> None:
        raise NotImplementedError

    # -- sending ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(connection_start(self.authority))

    def send_message(self, payload: bytes) -> None:
        """Queue one gRPC message on stream 1, sent as soon as the server's windows allow."""
        self._send_queue.append(grpc_message(payload))
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or self.stream_ended or transport.is_closing():
            return
        out: list[bytes] = []
        while self._send_queue:
            message = self._send_queue[0]
            if len(message) > min(self._send_window_conn, self._send_window_stream):
                break  # grpc replenishes as it reads; resumed from a WINDOW_UPDATE
            self._send_queue.pop(0)
            self._send_window_conn -= len(message)
            self._send_window_stream -= len(message)
            out.extend(frame(DATA, 0, STREAM_ID, message[pos:pos + self._peer_max_frame])
                       for pos in range(0, len(message), self._peer_max_frame))
        if out:
            transport.write(b"".join(out))

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    # -- receiving -------------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        free = len(self._buf) - self._end
        if free < MIN_READ_BYTES or self._start + self._need > len(self._buf):
            pending = self._end - self._start
            required = max(pending, self._need) + MIN_READ_BYTES
            if required > len(self._buf):
                # A new array rather than a resize: asyncio may still hold a view of the old one.
                grown = bytearray(max(2 * len(self._buf), required))
                grown[:pending] = self._view[self._start:self._end]
                self._buf, self._view = grown, memoryview(grown)
            else:
                self._buf[:pending] = self._buf[self._start:self._end]  # same length: no resize
            self._start, self._end = 0, pending
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        buf, view = self._buf, self._view
        pos, end = self._start, self._end
        unpack = _U32.unpack_from
        while end - pos >= FRAME_HEADER_BYTES:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            stop = pos + FRAME_HEADER_BYTES + length
            if stop > end:
                self._need = FRAME_HEADER_BYTES + length
                break
            self._frame(buf[pos + 3], buf[pos + 4], unpack(buf, pos + 5)[0] & 0x7FFFFFFF,
                        view[pos + FRAME_HEADER_BYTES:stop])
            pos = stop
            if self.stream_ended:
                break
        else:
            self._need = 0
        if pos == end:
            pos = self._end = 0
            self._need = 0
            if len(self._buf) > INITIAL_BUFFER_BYTES:
                # A snapshot grew it; don't keep megabytes per idle connection.
                self._buf = bytearray(INITIAL_BUFFER_BYTES)
                self._view = memoryview(self._buf)
        self._start = pos

    def _frame(self, frame_type: int, flags: int, stream_id: int, payload: memoryview) -> None:
        if frame_type == DATA:
            self._data(flags, stream_id, payload)
        elif frame_type == HEADERS:
            if flags & FLAG_PADDED:
                payload = payload[1:len(payload) - payload[0]]
            if flags & FLAG_PRIORITY:
                payload = payload[5:]
            # Response headers first, trailers (END_STREAM) last, each perhaps continued.
            self._header_block_ends_stream = bool(flags & FLAG_END_STREAM) and stream_id == STREAM_ID
            self._header_fragments = [bytes(payload)]
            self._in_header_block = True
            if flags & FLAG_END_HEADERS:
                self._header_block_done(stream_id)
        elif frame_type == CONTINUATION:
            if self._in_header_block:
                self._header_fragments.append(bytes(payload))
                if flags & FLAG_END_HEADERS:
                    self._header_block_done(stream_id)
        elif frame_type == SETTINGS:
            if not flags & FLAG_ACK:
                self._settings(payload)
                self._write(frame(SETTINGS, FLAG_ACK, 0))
        elif frame_type == PING:
            if not flags & FLAG_ACK:
                self._write(frame(PING, FLAG_ACK, 0, bytes(payload)))
        elif frame_type == WINDOW_UPDATE:
            increment = _U32.unpack_from(payload)[0] & 0x7FFFFFFF
            if stream_id == 0:
                self._send_window_conn += increment
            elif stream_id == STREAM_ID:
                self._send_window_stream += increment
            self._flush()
        elif frame_type == RST_STREAM:
            if stream_id == STREAM_ID:
                self._end_stream(f"RST_STREAM error code {_U32.unpack_from(payload)[0]}")
        elif frame_type == GOAWAY:
            last_stream, code = _GOAWAY.unpack_from(payload)
            self.goaway = f"GOAWAY error code {code}"
            if last_stream & 0x7FFFFFFF < STREAM_ID:
                self._end_stream(f"{self.goaway} before our stream started")
        # PRIORITY, PUSH_PROMISE (disabled) and unknown types are ignored, as RFC 9113 allows.

    def _header_block_done(self, stream_id: int) -> None:
        self._in_header_block = False
        block = b"".join(self._header_fragments)
        self._header_fragments = []
        try:
            headers = {str(name): str(value) for name, value in self._hpack.decode(block)}
        except hpack.HPACKError as exc:
            headers = {"grpc-message": f"undecodable header block: {exc}"}
        if stream_id != STREAM_ID:
            return
        if not self._header_block_ends_stream:
            self.response_headers = headers
            return
        self.trailers = headers
        status = headers.get("grpc-status", "?")
        detail = urllib.parse.unquote(headers.get("grpc-message", ""))  # percent-encoded on the wire
        self._end_stream(f"server ended the stream: grpc-status {status}" + (f" {detail}" if detail else ""))

    def _data(self, flags: int, stream_id: int, payload: memoryview) -> None:
        self._unacked_bytes += len(payload)  # padding counts against the windows too
        if flags & FLAG_PADDED:
            payload = payload[1:len(payload) - payload[0]]
        if stream_id == STREAM_ID and not self.stream_ended:
            self._assembler.feed(payload)
        if self._unacked_bytes >= WINDOW_REFRESH_BYTES:
            increment = _U32.pack(self._unacked_bytes)
            self._unacked_bytes = 0
            self._write(frame(WINDOW_UPDATE, 0, 0, increment) + frame(WINDOW_UPDATE, 0, STREAM_ID, increment))
        if flags & FLAG_END_STREAM and stream_id == STREAM_ID:
            self._end_stream("server ended the stream (DATA END_STREAM)")

    def _settings(self, payload: memoryview) -> None:
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                self._send_window_stream += value - self._peer_initial_window
                self._peer_initial_window = value
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self._peer_max_frame = value
        self._flush()

    def _end_stream(self, reason: str) -> None:
        if self.stream_ended:
            return
        self.stream_ended = True
        if self._assembler.partial_bytes:
            reason += f"; {self._assembler.partial_bytes} bytes of a message were cut off"
        self.on_stream_end(reason)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stream_ended:
            reason = f"connection lost: {exc}" if exc else "connection closed by the server"
            if self.goaway:
                reason += f" after {self.goaway}"
            self.stream_ended = True
            if not self._closing:
                self.on_stream_end(reason)
            else:
                self.on_stream_end("")


@dataclass
class StreamStats(sink.StreamStats):
    """The grpc sink's counters, plus what the raw protocol lets us see cheaply."""

    snapshot_kvs: int = 0
    pings: int = 0


def sync_message(conn: H2GrpcConnection, stats: StreamStats, compressed: bool,
                 data: memoryview | bytearray) -> pb.ServerMessage | None:
    """Count a Sync stream's message and parse it; None once a compressed one has ended the stream."""
    stats.messages += 1
    stats.bytes += len(data)
    if compressed:
        # We never offer grpc-accept-encoding, so the server must not compress.
        conn._end_stream("server sent a compressed gRPC message")
        return None
    # upb parses any buffer: handing it the view saves copying every message into bytes.
    return pb.ServerMessage.FromString(data)  # type: ignore[arg-type]


class SinkStream(H2GrpcConnection):
    """A Sync stream that counts what it receives, answers pings and (if a probe) records latency."""

    def __init__(self, authority: str, syncer_type: str, index: int, probe: bool, stats: StreamStats,
                 ready: asyncio.Event) -> None:
        super().__init__(authority)
        self.stats = stats
        self.probe = probe
        self.ready = ready
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started = time.perf_counter()
        self.hello = pb.ClientMessage(hello=pb.ClientHello(
            hostname=f"bench-{index}", syncer_type=syncer_type, compressions=["zstd"], info="bench h2sink",
        )).SerializeToString()
        self._decompressor = zstandard.ZstdDecompressor()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.send_message(self.hello)

    def on_message(self, compressed: bool, data: memoryview | bytearray) -> None:
        stats = self.stats
        message = sync_message(self, stats, compressed, data)
        if message is None:
            return
        kind = message.WhichOneof("payload")
        if kind == "deltas":
            received_ns = time.time_ns()
            kvs = message.deltas.kvs
            stats.kvs += len(kvs)
            if self.probe:
                for kv in kvs:
                    if kv.value:
                        labels = (unpack_value(kv.value) or {}).get("labels") or {}
                        stamp = labels.get(TIMESTAMP_LABEL)
                        if stamp:
                            stats.latencies_ns.append(received_ns - int(stamp))
        elif kind == "snapshot":
            chunk = message.snapshot
            raw = self._decompressor.decompress(chunk.data) if chunk.compression else chunk.data
            stats.snapshot_kvs += len(pb.Deltas.FromString(raw).kvs)
        elif kind == "status" and message.status.status == pb.SyncStatus.IN_SYNC and not stats.in_sync:
            stats.in_sync = True
            stats.snapshot_secs = time.perf_counter() - self.started
            self.ready.set()
        elif kind == "ping":
            stats.pings += 1
            self.send_message(pb.ClientMessage(pong=pb.Pong(ping_timestamp_ns=message.ping.timestamp_ns))
                              .SerializeToString())

    def on_stream_end(self, reason: str) -> None:
        if reason and not self.stats.error:
            self.stats.error = reason
        self.ready.set()
        if not self.done.done():
            self.done.set_result(None)


async def _connect(host: str, port: int) -> socket.socket:
    """A connected non-blocking socket whose receive buffer is set before the SYN (it fixes the window scale)."""
    loop = asyncio.get_running_loop()
    family, kind, proto, _, addr = (await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM))[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.setblocking(False)
        await loop.sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


async def run_stream(
    address: str, syncer_type: str, index: int, probe: bool, stats: StreamStats, ready: asyncio.Event
) -> None:
    """Runs until the stream ends or the task is cancelled (which is how the process stops it)."""
    host, port = address.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    stream: SinkStream | None = None
    try:
        _, stream = await loop.create_connection(
            lambda: SinkStream(address, syncer_type, index, probe, stats, ready), sock=await _connect(host, int(port)))
        await stream.done
    except OSError as exc:
        stats.error = f"connect: {exc}"
    finally:
        ready.set()
        if stream is not None:
            stream.close()


def raise_fd_limit() -> None:
    """One socket per stream: 5000 streams need more than the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def client_process(address: str, syncer_type: str, indexes: list[int], probe_every: int, conn: Any,
                   cpus: set[int] | None) -> None:
    if cpus:
        import os

        os.sched_setaffinity(0, cpus)
    raise_fd_limit()
    asyncio.run(drive_streams(run_stream, StreamStats, address, syncer_type, indexes, probe_every, conn))
