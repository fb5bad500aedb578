"""Hostile peers for the fault matrix (issue 17's probes), over raw sockets on loopback.

- `StalledStream`: sends its hello, then stops reading, before its snapshot has been sent. It keeps
  HTTP/2's default 64 KiB windows and a small receive buffer, so the server's writes block early.
- `stream_flood`: one HTTP/2 connection that opens many Sync streams at once and never sends a hello.
- `silent_sockets` / `still_open`: TCP connections that never send the HTTP/2 preface.

Each is bounded in count and time; what they report are outcomes (streams refused, sockets closed),
never durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from dataclasses import dataclass

import psutil

from bench import h2sink
from bench.h2sink import (
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    GOAWAY,
    HEADERS,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    SETTINGS_ENABLE_PUSH,
    SinkStream,
    StreamStats,
    frame,
    request_headers,
)

STALLED_RECEIVE_BUFFER = 4096


class StalledStream(SinkStream):
    """A Sync client that sends its hello and then never reads again (until `resume`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # Unlike h2sink's streams, no window increase: the server may have 64 KiB in flight, no more.
        settings = h2sink._SETTING.pack(SETTINGS_ENABLE_PUSH, 0)
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                        + frame(HEADERS, FLAG_END_HEADERS, h2sink.STREAM_ID, request_headers(self.authority)))
        self.send_message(self.hello)
        transport.pause_reading()


async def open_stalled(host: str, port: int, index: int, syncer_type: str = "felix") -> StalledStream:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RECEIVE_BUFFER)  # before the SYN
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    _, stream = await loop.create_connection(
        lambda: StalledStream(f"{host}:{port}", syncer_type, index, False, StreamStats(), asyncio.Event()),
        sock=sock)
    return stream


@dataclass
class FloodResult:
    opened: int  # HEADERS frames sent, one per new stream
    refused: int  # streams reset before any response headers or trailers: no handler saw them
    ended: int  # streams the server ended with trailers: a handler ran (it counted toward the limit)
    reset_codes: dict[int, int]  # RST_STREAM error codes of the refused streams
    connection_closed: bool

    @property
    def all_answered(self) -> bool:
        """Every stream was refused or ended: `refused` is complete, whatever the time it took."""
        return self.refused + self.ended == self.opened


async def stream_flood(host: str, port: int, streams: int, *, settle_secs: float = 60.0) -> FloodResult:
    """Open `streams` Sync streams on one connection, none with a hello, then tally the server's answers
    until every stream has one (`settle_secs` only bounds the wait). Accepted streams wait for a hello:
    they end with trailers only at the handshake timeout, so `opened - refused` is what the server took.

    Waiting for every answer rather than for a fixed time: gRPC core resets the streams beyond its limit
    (ENHANCE_YOUR_CALM) as it gets to them, not all on reading their HEADERS, so how long the refusals
    take depends on the machine's load, and a tally cut short counts the missing ones as accepted. A PING
    sent after the HEADERS is no fence either: its acknowledgement came after 1,378 of the refusals."""
    reader, writer = await asyncio.open_connection(host, port)
    refused = ended = 0
    answered: set[int] = set()  # streams that got headers or trailers (a later RST_STREAM only closes them)
    codes: dict[int, int] = {}
    closed = False
    try:
        writer.write(PREFACE + frame(SETTINGS, 0, 0, h2sink._SETTING.pack(SETTINGS_ENABLE_PUSH, 0)))
        block = request_headers(f"{host}:{port}")
        # Stream ids are odd and increasing (RFC 9113 §5.1.1); one write, as an attacker would.
        writer.write(b"".join(frame(HEADERS, FLAG_END_HEADERS, 2 * n + 1, block) for n in range(streams)))
        await writer.drain()
        buffer = b""
        deadline = time.monotonic() + settle_secs
        while refused + ended < streams and not closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), remaining)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            buffer += chunk
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + length:
                    break
                kind, flags = buffer[3], buffer[4]
                stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                payload, buffer = buffer[9:9 + length], buffer[9 + length:]
                if kind == SETTINGS and not flags & FLAG_ACK:
                    writer.write(frame(SETTINGS, FLAG_ACK, 0))
                elif kind == RST_STREAM and stream_id not in answered:
                    answered.add(stream_id)
                    code = int.from_bytes(payload[:4], "big")
                    codes[code] = codes.get(code, 0) + 1
                    refused += 1
                elif kind == HEADERS:
                    answered.add(stream_id)
                    if flags & FLAG_END_STREAM:
                        ended += 1
                elif kind == GOAWAY:
                    closed = True
    except (ConnectionError, OSError):
        closed = True
    finally:
        writer.transport.abort()
    return FloodResult(streams, refused, ended, codes, closed)


class SilentSocket:
    """A TCP connection that never sends a byte (no HTTP/2 preface); keeps what the server sent it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = b""
        self.closed = False

    def poll(self) -> bool:
        """Whether the server still holds the connection: drain what it sent, look for EOF or a reset."""
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                    raise
                data = b""
            if not data:
                self.closed = True
            self.received += data
        return False

    def goaway_debug(self) -> str:
        """The debug text of the GOAWAY the server closed with (gRPC names its reason there), or ""."""
        data = self.received
        while len(data) >= 9:
            length = int.from_bytes(data[:3], "big")
            if data[3] == GOAWAY:
                return data[9 + 8:9 + length].decode(errors="replace")
            data = data[9 + length:]
        return ""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def silent_sockets(host: str, port: int, count: int) -> list[SilentSocket]:
    """`count` TCP connections that never send a byte."""
    sockets: list[SilentSocket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection((host, port), timeout=5)
            sock.setblocking(False)
            sockets.append(SilentSocket(sock))
    except BaseException:
        close_all(sockets)
        raise
    return sockets


def still_open(sockets: list[SilentSocket]) -> int:
    return sum(sock.poll() for sock in sockets)


def close_all(sockets: list[SilentSocket]) -> None:
    for sock in sockets:
        sock.close()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


async def settled_rss_mb(pid: int, target_mb: float, *, samples: int = 20, step: float = 0.5) -> float:
    """The lowest RSS over up to `samples` samples, stopping early once one is at or under `target_mb`.

    Freed memory reaches the OS a moment after the objects die (the server's event loop has to run
    their last callbacks, the allocator to release its arenas): this is that settle step, bounded."""
    lowest = rss_mb(pid)
    for _ in range(samples):
        if lowest <= target_mb:
            break
        await asyncio.sleep(step)
        lowest = min(lowest, rss_mb(pid))
    return lowest
