"""The raw HTTP/2 bench sink's frame parser and gRPC message reassembly, on hand-built bytes.

Every byte string is also fed split at every possible point, since TCP may cut anywhere.
"""

from __future__ import annotations

import asyncio
import struct

import hpack
import msgpack
import pytest

from bench import h2sink
from bench.h2sink import (
    CONTINUATION,
    DATA,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FLAG_PADDED,
    FLAG_PRIORITY,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    H2GrpcConnection,
    MessageAssembler,
    SinkStream,
    StreamStats,
    frame,
    grpc_message,
)
from typha.proto import sync_pb2 as pb


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class Recorder(H2GrpcConnection):
    def __init__(self) -> None:
        super().__init__("127.0.0.1:1")
        self.messages: list[tuple[bool, bytes]] = []
        self.ends: list[str] = []
        self.transport_ = FakeTransport()
        self.connection_made(self.transport_)

    def on_message(self, compressed: bool, data: memoryview | bytearray) -> None:
        self.messages.append((compressed, bytes(data)))

    def on_stream_end(self, reason: str) -> None:
        self.ends.append(reason)


def feed(conn: H2GrpcConnection, data: bytes, chunk: int = 1 << 30) -> None:
    """As asyncio's selector transport does: recv_into the offered buffer, then report the count."""
    pos = 0
    while pos < len(data):
        buf = conn.get_buffer(-1)
        n = min(len(buf), chunk, len(data) - pos)
        assert n > 0
        buf[:n] = data[pos:pos + n]
        conn.buffer_updated(n)
        pos += n


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    if data.startswith(PREFACE):
        data = data[len(PREFACE):]
    frames, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        stream_id = struct.unpack_from(">I", data, pos + 5)[0]
        frames.append((data[pos + 3], data[pos + 4], stream_id, data[pos + 9:pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data)
    return frames


def grpc_messages(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        assert data[pos] == 0
        length = int.from_bytes(data[pos + 1:pos + 5], "big")
        out.append(data[pos + 5:pos + 5 + length])
        pos += 5 + length
    return out


# -- encoding ------------------------------------------------------------------------------------


def test_hpack_integer_matches_rfc7541_examples():
    assert h2sink._hpack_int(10, 5) == b"\x0a"
    assert h2sink._hpack_int(1337, 5) == b"\x1f\x9a\x0a"  # RFC 7541 C.1.2
    assert h2sink._hpack_int(42, 8) == b"\x2a"
    assert h2sink._hpack_int(127, 7) == b"\x7f\x00"


def test_connection_start_preface_settings_window_and_request_headers():
    frames = parse_frames(h2sink.connection_start("127.0.0.1:5473"))
    assert h2sink.connection_start("x").startswith(PREFACE)
    (st, sf, ss, sp), (wt, _, ws, wp), (ht, hf, hs, hp) = frames
    assert (st, sf, ss) == (SETTINGS, 0, 0)
    settings = dict(struct.unpack_from(">HI", sp, i) for i in range(0, len(sp), 6))
    assert settings == {2: 0, 4: MAX_WINDOW, 5: 2**24 - 1}
    assert (wt, ws) == (WINDOW_UPDATE, 0)
    assert struct.unpack(">I", wp)[0] + 65_535 == MAX_WINDOW
    assert (ht, hf, hs) == (HEADERS, FLAG_END_HEADERS, 1)
    # Decode our own literal-without-indexing block (all lengths here are below 127).
    headers, pos = [], 0
    while pos < len(hp):
        assert hp[pos] == 0
        name_len = hp[pos + 1]
        name = hp[pos + 2:pos + 2 + name_len]
        pos += 2 + name_len
        value_len = hp[pos]
        headers.append((name.decode(), hp[pos + 1:pos + 1 + value_len].decode()))
        pos += 1 + value_len
    assert headers[:6] == [(":method", "POST"), (":scheme", "http"), (":path", "/typha.v1.Sync/Sync"),
                           (":authority", "127.0.0.1:5473"), ("content-type", "application/grpc"),
                           ("te", "trailers")]


def test_grpc_message_prefix():
    assert grpc_message(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert grpc_message(b"", compressed=True) == b"\x01\x00\x00\x00\x00"


# -- message reassembly --------------------------------------------------------------------------

MESSAGES = [b"", b"a", b"hello world", bytes(range(256)) * 3, b"z" * 70_000, b"", b"tail"]
STREAM = b"".join(grpc_message(m) for m in MESSAGES)


def assemble(pieces: list[bytes]) -> list[bytes]:
    got: list[bytes] = []
    assembler = MessageAssembler(lambda compressed, data: got.append(bytes(data)))
    for piece in pieces:
        assembler.feed(memoryview(piece))
    assert assembler.partial_bytes == 0
    return got


def test_assembler_whole_stream_in_one_payload():
    assert assemble([STREAM]) == MESSAGES


def test_assembler_split_at_every_point():
    small = b"".join(grpc_message(m) for m in (b"", b"a", b"hello world", b"xy" * 20, b""))
    expected = [b"", b"a", b"hello world", b"xy" * 20, b""]
    for cut in range(len(small) + 1):
        assert assemble([small[:cut], small[cut:]]) == expected, cut
    for first in range(0, len(small) + 1, 3):
        for second in range(first, len(small) + 1, 2):
            assert assemble([small[:first], small[first:second], small[second:]]) == expected, (first, second)
    assert assemble([small[i:i + 1] for i in range(len(small))]) == expected


def test_assembler_large_message_in_many_pieces():
    for size in (1, 7, 4096, 16_384, 65_535):
        assert assemble([STREAM[i:i + size] for i in range(0, len(STREAM), size)]) == MESSAGES, size


def test_assembler_reports_the_compressed_flag():
    got = []
    assembler = MessageAssembler(lambda compressed, data: got.append((compressed, bytes(data))))
    assembler.feed(memoryview(grpc_message(b"x", compressed=True) + grpc_message(b"y")))
    assert got == [(True, b"x"), (False, b"y")]


# -- frames --------------------------------------------------------------------------------------

SERVER_SETTINGS = frame(SETTINGS, 0, 0, struct.pack(">HIHI", 4, 1 << 20, 5, 32_768))


def server_bytes() -> tuple[bytes, list[bytes]]:
    """A server's side of a whole call: settings, ping, headers, messages in all shapes, trailers."""
    messages = [b"first", b"m" * 1000, b"split-across-frames" * 50, b"padded", b"", b"last"]
    split = grpc_message(messages[2])
    padded = grpc_message(messages[3])
    data = b"".join([
        SERVER_SETTINGS,
        frame(SETTINGS, FLAG_ACK, 0),
        frame(PING, 0, 0, b"12345678"),
        frame(HEADERS, FLAG_END_HEADERS, 1, b"\x88"),  # :status 200, indexed; its content is never decoded
        frame(DATA, 0, 1, grpc_message(messages[0]) + grpc_message(messages[1]) + split[:3]),
        frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1000)),
        frame(DATA, 0, 1, split[3:400]),
        frame(2, 0, 1, b"\x00\x00\x00\x00\x10"),  # PRIORITY: ignored
        frame(0xEE, 0, 0, b"unknown frame types are ignored"),
        frame(DATA, 0, 1, split[400:]),
        frame(DATA, FLAG_PADDED, 1, bytes((7,)) + padded + b"\x00" * 7),
        frame(DATA, 0, 1, grpc_message(messages[4]) + grpc_message(messages[5])),
        frame(HEADERS, FLAG_END_STREAM, 1, b"\x40\x0bgrpc-status"),  # trailers, continued below
        frame(CONTINUATION, FLAG_END_HEADERS, 1, b"\x010"),
    ])
    return data, messages


def check_call(conn: Recorder, messages: list[bytes]) -> None:
    assert conn.messages == [(False, m) for m in messages]
    assert conn.ends == ["server ended the stream: grpc-status 0"]
    assert conn.response_headers == {":status": "200"}
    assert conn.transport_.closed
    written = parse_frames(bytes(conn.transport_.written))
    assert (SETTINGS, FLAG_ACK, 0, b"") in written, "the server's SETTINGS must be acknowledged"
    assert (PING, FLAG_ACK, 0, b"12345678") in written, "the server's PING must be answered"
    assert conn._peer_max_frame == 32_768
    assert conn._send_window_stream == 1 << 20
    assert conn._send_window_conn == 65_535 + 1000


def test_whole_call_in_one_read():
    data, messages = server_bytes()
    conn = Recorder()
    feed(conn, data)
    check_call(conn, messages)


def test_whole_call_split_at_every_point():
    data, messages = server_bytes()
    for cut in range(len(data) + 1):
        conn = Recorder()
        feed(conn, data[:cut])
        feed(conn, data[cut:])
        check_call(conn, messages)


@pytest.mark.parametrize("chunk", [1, 9, 10, 1000])
def test_whole_call_in_small_reads(chunk: int):
    data, messages = server_bytes()
    conn = Recorder()
    feed(conn, data, chunk)
    check_call(conn, messages)


def test_frames_larger_than_the_buffer_grow_it_and_it_shrinks_back():
    big = [bytes([i]) * 300_000 for i in range(3)]
    data = b"".join(frame(DATA, 0, 1, grpc_message(m)) for m in big)
    conn = Recorder()
    feed(conn, data[:-10], 50_000)
    assert len(conn._buf) > h2sink.INITIAL_BUFFER_BYTES
    feed(conn, data[-10:])
    assert conn.messages == [(False, m) for m in big]
    assert len(conn._buf) == h2sink.INITIAL_BUFFER_BYTES, "an idle connection keeps only the small buffer"


def test_consumed_data_is_returned_with_window_updates(monkeypatch):
    monkeypatch.setattr(h2sink, "WINDOW_REFRESH_BYTES", 1000)
    conn = Recorder()
    start = len(conn.transport_.written)
    payload = grpc_message(b"x" * 595)  # 600 bytes a frame
    feed(conn, frame(DATA, 0, 1, payload) * 5)
    updates = [f for f in parse_frames(bytes(conn.transport_.written[start:])) if f[0] == WINDOW_UPDATE]
    increment = struct.pack(">I", 1200)
    assert updates == [(WINDOW_UPDATE, 0, 0, increment), (WINDOW_UPDATE, 0, 1, increment)] * 2
    assert conn._unacked_bytes == 600


def test_rst_stream_ends_the_stream_with_its_code():
    conn = Recorder()
    feed(conn, frame(DATA, 0, 1, grpc_message(b"a")) + frame(RST_STREAM, 0, 1, struct.pack(">I", 8))
         + frame(DATA, 0, 1, grpc_message(b"after")))
    assert conn.messages == [(False, b"a")]
    assert conn.ends == ["RST_STREAM error code 8"]
    assert conn.transport_.closed


def test_data_end_stream_and_a_cut_message_are_reported():
    conn = Recorder()
    feed(conn, frame(DATA, FLAG_END_STREAM, 1, grpc_message(b"abcdef")[:7]))
    assert conn.ends == ["server ended the stream (DATA END_STREAM); 7 bytes of a message were cut off"]


def test_goaway_before_our_stream_ends_it_and_after_is_noted():
    conn = Recorder()
    feed(conn, frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
    assert conn.ends == ["GOAWAY error code 0 before our stream started"]
    conn = Recorder()
    feed(conn, frame(GOAWAY, 0, 0, struct.pack(">II", 1, 2)) + frame(DATA, 0, 1, grpc_message(b"still")))
    assert conn.ends == []
    assert conn.messages == [(False, b"still")]
    conn.connection_lost(None)
    assert conn.ends == ["connection closed by the server after GOAWAY error code 2"]


def test_connection_lost_after_our_own_close_is_not_an_error():
    conn = Recorder()
    conn.close()
    conn.connection_lost(None)
    assert conn.ends == [""]


def test_sends_wait_for_the_servers_window():
    conn = Recorder()
    start = len(conn.transport_.written)
    feed(conn, frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 10)))  # stream window 10 bytes
    conn.send_message(b"0123456789")  # 15 bytes framed: must wait
    data_frames = [f for f in parse_frames(bytes(conn.transport_.written[start:])) if f[0] == DATA]
    assert data_frames == []
    feed(conn, frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 5)))
    data_frames = [f for f in parse_frames(bytes(conn.transport_.written[start:])) if f[0] == DATA]
    assert data_frames == [(DATA, 0, 1, grpc_message(b"0123456789"))]


# -- the Sync stream on top ----------------------------------------------------------------------


def server_message(**payload) -> bytes:
    return grpc_message(pb.ServerMessage(**payload).SerializeToString())


def test_sink_stream_sends_hello_answers_pings_counts_and_probes():
    async def scenario() -> None:
        stats, ready = StreamStats(), asyncio.Event()
        stream = SinkStream("127.0.0.1:1", "felix", 7, True, stats, ready)
        transport = FakeTransport()
        stream.connection_made(transport)
        sent = [f for f in parse_frames(bytes(transport.written)) if f[0] == DATA]
        (hello_bytes,) = grpc_messages(sent[0][3])
        hello = pb.ClientMessage.FromString(hello_bytes).hello
        assert (hello.hostname, hello.syncer_type, list(hello.compressions)) == ("bench-7", "felix", ["zstd"])

        now = 1_700_000_000_000_000_000
        value = msgpack.packb({"labels": {"bench-ts": str(now)}})
        snapshot = pb.Deltas(kvs=[pb.KV(key="/a", value=b"x"), pb.KV(key="/b", value=b"y")]).SerializeToString()
        data = b"".join([
            server_message(hello=pb.ServerHello(epoch="e")),
            server_message(snapshot=pb.SnapshotChunk(index=0, count=1, data=snapshot)),
            server_message(status=pb.SyncStatus(status=pb.SyncStatus.IN_SYNC)),
            server_message(ping=pb.Ping(timestamp_ns=42)),
            server_message(deltas=pb.Deltas(kvs=[pb.KV(key="/c", value=value), pb.KV(key="/d")], sequence=3)),
        ])
        start = len(transport.written)
        feed(stream, frame(DATA, 0, 1, data[:30]) + frame(DATA, 0, 1, data[30:]), 17)
        assert ready.is_set()
        assert stats.in_sync
        assert stats.snapshot_kvs == 2
        assert (stats.kvs, stats.messages, stats.pings) == (2, 5, 1)
        assert len(stats.latencies_ns) == 1
        assert stats.latencies_ns[0] > 0
        pongs = [m for f in parse_frames(bytes(transport.written[start:])) if f[0] == DATA for m in grpc_messages(f[3])]
        assert [pb.ClientMessage.FromString(m).pong.ping_timestamp_ns for m in pongs] == [42]
        feed(stream, frame(RST_STREAM, 0, 1, struct.pack(">I", 2)))
        assert stats.error == "RST_STREAM error code 2"
        assert stream.done.done()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_trailers_are_decoded_across_continuations_with_huffman_and_the_dynamic_table():
    encoder = hpack.Encoder()  # Huffman-codes and indexes, as grpc does
    headers = encoder.encode([(":status", "200"), ("content-type", "application/grpc")])
    trailers = encoder.encode([("content-type", "application/grpc"), ("grpc-status", "14"),
                               ("grpc-message", "too many connections (5 %3E= 5)")])
    padded_priority = bytes((3,)) + b"\x00\x00\x00\x00\x10" + headers + b"\x00\x00\x00"
    data = (frame(HEADERS, FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY, 1, padded_priority)
            + frame(HEADERS, FLAG_END_STREAM, 1, trailers[:5])
            + frame(CONTINUATION, 0, 1, trailers[5:9])
            + frame(CONTINUATION, FLAG_END_HEADERS, 1, trailers[9:]))
    for cut in range(len(data) + 1):
        conn = Recorder()
        feed(conn, data[:cut])
        feed(conn, data[cut:])
        assert conn.response_headers == {":status": "200", "content-type": "application/grpc"}
        assert conn.ends == ["server ended the stream: grpc-status 14 too many connections (5 >= 5)"]


def test_an_undecodable_header_block_still_ends_the_stream():
    conn = Recorder()
    feed(conn, frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, b"\xff\xff\xff\xff\xff\xff"))
    assert len(conn.ends) == 1
    assert conn.ends[0].startswith("server ended the stream: grpc-status ? undecodable")
