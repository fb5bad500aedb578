"""Fuzzing the Sync server's decoding of client messages over real gRPC streams (issue 8, hostile input).

One server for the module, on a loop thread, with a well-behaved client that follows it throughout.
Each example opens a fresh stream and sends hostile bytes, as the first message (the hello) or after
the handshake (where a pong is expected). The server must answer with the status an independent
parse of those bytes predicts, with a reason, and the well-behaved client must still receive the
next update afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import SnapshotCache
from typha.syncserver.server import ServerSettings, SyncServer

from ..integration.sync_raw import RawClient
from .support import LoopThread

REAL_EPOCH = "<the server's epoch>"  # replaced by the real one when sent, so resumes can succeed


class Follower:
    """The well-behaved client: answers pings, records the newest deltas sequence it saw."""

    def __init__(self, port: int) -> None:
        self.client = RawClient(port)
        self.sequence = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.client.hello(features=())
        await self.client.read_snapshot()
        self.task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            message = await self.client.call.read()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("payload")
            if kind == "ping":
                await self.client.send(pb.ClientMessage(pong=pb.Pong(ping_timestamp_ns=message.ping.timestamp_ns)))
            elif kind == "deltas":
                self.sequence = message.deltas.sequence
                self.changed.set()

    async def receives(self, cache: SnapshotCache, counter: Iterator[int]) -> None:
        """A new update reaches this client (bounded wait: a hang is a failure, not a timing claim)."""
        cache.apply([Update("/calico/v1/config/Probe", {"n": next(counter)}, "1")])
        target = cache.newest.sequence
        while self.sequence < target:
            assert self.task is not None and not self.task.done(), "the well-behaved client lost its stream"
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)


class Harness:
    def __init__(self) -> None:
        self.loop = LoopThread()
        self.counter = itertools.count()

        async def start() -> None:
            self.caches = {name: SnapshotCache(name) for name in ("felix", "bgp")}
            for cache in self.caches.values():
                cache.apply([Update("/calico/v1/config/A", {"x": 1}, "1")])
                cache.set_status(SyncStatus.IN_SYNC)
            # Short pings: the server reads a client's message after pinging it, so post-handshake
            # garbage is noticed within one interval.
            self.server = SyncServer(self.caches, ServerSettings(handshake_timeout_secs=5, ping_interval_secs=0.1,
                                                                 pong_timeout_secs=30))
            await self.server.start("127.0.0.1", 0)
            self.follower = Follower(self.server.port)
            await self.follower.start()

        self.loop.run(start())

    def close(self) -> None:
        async def stop() -> None:
            if self.follower.task is not None:
                self.follower.task.cancel()
            await self.follower.client.close()
            await self.server.stop(0)

        with contextlib.suppress(Exception):
            self.loop.run(stop())
        self.loop.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def expected_for_hello(raw: bytes, serves: set[str]) -> tuple[grpc.StatusCode, str] | None:
    """What the server must answer to `raw` as a first message; None: it is a hello it accepts."""
    try:
        message = pb.ClientMessage.FromString(raw)
    except DecodeError:
        return grpc.StatusCode.INVALID_ARGUMENT, "malformed ClientMessage"
    if message.WhichOneof("payload") != "hello":
        return grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a ClientHello"
    if (message.hello.syncer_type or "felix") not in serves:
        return grpc.StatusCode.INVALID_ARGUMENT, "unknown syncer type"
    return None


texts = st.text(max_size=8)
resumes = st.builds(pb.ResumePoint, epoch=st.sampled_from(["", "stale", REAL_EPOCH]),
                    sequence=st.one_of(st.integers(0, 4), st.integers(0, 2**64 - 1)))
hellos = st.builds(
    pb.ClientHello, hostname=texts, info=texts, version=texts,
    syncer_type=st.one_of(st.sampled_from(["", "felix", "bgp", "tunnel-ip-allocation"]), texts),
    compressions=st.lists(st.sampled_from(["zstd", "lz4", ""]), max_size=3),
    features=st.lists(st.sampled_from(["checksum", "reconnect", "exact-crumbs", "digest-resync", "?"]), max_size=5),
    client_id=texts,
).flatmap(lambda h: st.one_of(st.just(h), resumes.map(lambda r: _with_resume(h, r))))
# digest-resync summaries: right or wrong bucket counts, with as many digests or not.
summaries = st.sampled_from([0, 1, 1000, 1024, 4096, 8192, 2**32 - 1]).flatmap(lambda count: st.builds(
    pb.BucketDigests, count=st.just(count),
    digests=st.one_of(st.lists(st.integers(0, 2**32 - 1), max_size=8),
                      st.just(list(range(count)) if count <= 4096 else []))))
hellos = st.one_of(hellos, st.tuples(hellos, summaries).map(lambda t: _with_digests(*t)))


def _with_digests(hello: pb.ClientHello, summary: pb.BucketDigests) -> pb.ClientHello:
    out = pb.ClientHello()
    out.CopyFrom(hello)
    out.digests.CopyFrom(summary)
    out.features.append("digest-resync")
    return out


def _with_resume(hello: pb.ClientHello, resume: pb.ResumePoint) -> pb.ClientHello:
    out = pb.ClientHello()
    out.CopyFrom(hello)
    out.resume.CopyFrom(resume)
    return out


client_messages = st.one_of(
    hellos.map(lambda h: pb.ClientMessage(hello=h).SerializeToString()),
    st.integers(-(2**63), 2**63 - 1).map(lambda t: pb.ClientMessage(pong=pb.Pong(ping_timestamp_ns=t))
                                         .SerializeToString()),
    st.just(b""),  # no payload at all
)
# Concatenations merge (the oneof's last member wins); random and bit-flipped bytes mostly do not parse.
first_messages = st.one_of(
    client_messages,
    st.lists(client_messages, min_size=2, max_size=3).map(b"".join),
    st.binary(max_size=64),
    st.tuples(client_messages, st.integers(0, 2**16), st.integers(0, 7)).map(
        lambda t: _flip(t[0], t[1], t[2])),
)


def _flip(data: bytes, at: int, bit: int) -> bytes:
    if not data:
        return b"\x80"
    buf = bytearray(data)
    buf[at % len(buf)] ^= 1 << bit
    return bytes(buf)


def _real(raw: bytes, epoch: str) -> bytes:
    return raw.replace(REAL_EPOCH.encode(), epoch.encode())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=first_messages)
def test_any_first_message_gets_its_status_and_others_keep_being_served(harness, raw):
    raw = _real(raw, harness.caches["felix"].epoch)
    expected = expected_for_hello(raw, set(harness.caches))

    async def scenario() -> None:
        client = RawClient(harness.server.port)
        try:
            await client.send(raw)
            if expected is None:
                first = await client.read()
                assert first.WhichOneof("payload") == "hello"
                assert first.hello.syncer_type == (pb.ClientMessage.FromString(raw).hello.syncer_type or "felix")
            else:
                code, details = await client.status()
                assert code == expected[0] and expected[1] in details, (code, details)
        finally:
            await client.close()
        await harness.follower.receives(harness.caches["felix"], harness.counter)

    harness.loop.run(scenario())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=first_messages)
def test_any_message_after_the_handshake_gets_its_status_and_others_keep_being_served(harness, raw):
    raw = _real(raw, harness.caches["felix"].epoch)
    try:
        message = pb.ClientMessage.FromString(raw)
        kind = message.WhichOneof("payload")
    except DecodeError:
        kind = "undecodable"

    async def scenario() -> None:
        client = RawClient(harness.server.port)
        try:
            await client.hello("bgp", features=())
            await client.read_snapshot()
            await client.send(raw)
            if kind == "pong":
                # A pong is what the server waits for: the stream goes on (the next ping arrives).
                await client.read_kind("ping", answer_pings=False)
            else:
                code, details = await client.status()
                reason = "malformed ClientMessage" if kind == "undecodable" else f"unexpected {kind} after"
                assert code == grpc.StatusCode.INVALID_ARGUMENT and reason in details, (code, details)
        finally:
            await client.close()
        await harness.follower.receives(harness.caches["felix"], harness.counter)

    harness.loop.run(scenario())

