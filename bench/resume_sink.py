"""A reconnecting load client: raw-HTTP/2 Sync streams that keep their resume point and come back.

Like `bench.h2sink` (it reuses its HTTP/2 connection) but each stream, when it ends, reconnects at
once and offers `{epoch, sequence}` so the server may resume it instead of sending a snapshot. It
keeps no mirror: it tracks only what a real client needs to resume (the epoch, the sequence of the
last complete snapshot or delta batch) and what the storm benchmark reports per client (when it was
cut off, when it was back in sync, whether that was by resume or by snapshot, bytes, failures).

Snapshot chunks are counted, not decompressed or parsed: at 1,000+ clients on one core that cost
would be the client's, and the benchmark is about the server and the reconnect protocol. Times are
`time.monotonic()`, which on Linux is one clock for every process, so the orchestrator can compare
them with its own event times.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from dataclasses import dataclass
from typing import Any

from bench import h2sink
from bench.sink import drive_streams
from typha.proto import sync_pb2 as pb

# The first attempt after losing a stream is immediate; refused attempts retry after 50 to 150 ms.
# Jitter spreads 1,000 clients' retries instead of having them hammer a closed port in lockstep.
RETRY_SECS = 0.1


@dataclass
class ResumeStats(h2sink.StreamStats):
    epoch: str = ""
    sequence: int = 0
    resumable: bool = False  # epoch/sequence describe a complete state (not a half-received snapshot)
    connects: int = 0  # ServerHellos received
    resumes: int = 0
    snapshots: int = 0  # ServerHellos that announced a snapshot
    connect_failures: int = 0
    disconnects: int = 0
    # Connections that ended before their ServerHello: a dying server's listen backlog accepts a few
    # reconnects in the moment before its listening socket closes. Expected around a kill, not a failure.
    ends_before_hello: int = 0
    started_at: float = 0.0  # first connection attempt
    lost_at: float = 0.0  # latest stream end
    connected_at: float = 0.0  # latest TCP connection (to the server, or to the proxy)
    hello_at: float = 0.0  # latest ServerHello
    synced_at: float = 0.0  # latest IN_SYNC
    sequence_at: float = 0.0  # when `sequence` last changed: once writes stop, when this client caught up
    last_resumed: bool = False
    last_chunks: int = 0  # snapshot chunks on the latest connection (0 if it resumed, as it must)
    # Counters at the orchestrator's latest "mark", so a report covers only what followed it.
    mark_bytes: int = 0
    mark_kvs: int = 0
    mark_connects: int = 0
    mark_failures: int = 0
    mark_disconnects: int = 0
    mark_ends_before_hello: int = 0


class ResumeStream(h2sink.H2GrpcConnection):
    def __init__(self, authority: str, syncer_type: str, index: int, stats: ResumeStats) -> None:
        super().__init__(authority)
        self.stats = stats
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        hello = pb.ClientHello(hostname=f"bench-{index}", syncer_type=syncer_type, compressions=["zstd"],
                               info="bench resume_sink", client_id=f"bench-{index}")
        if stats.resumable:
            hello.resume.epoch = stats.epoch
            hello.resume.sequence = stats.sequence
        self.hello = pb.ClientMessage(hello=hello).SerializeToString()
        self.chunks_left = 0
        self.got_hello = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stats.connected_at = time.monotonic()
        super().connection_made(transport)
        self.send_message(self.hello)

    def on_message(self, compressed: bool, data: memoryview | bytearray) -> None:
        stats = self.stats
        message = h2sink.sync_message(self, stats, compressed, data)
        if message is None:
            return
        kind = message.WhichOneof("payload")
        if kind == "deltas":
            stats.kvs += len(message.deltas.kvs)
            if not self.chunks_left and message.deltas.sequence != stats.sequence:
                stats.sequence = message.deltas.sequence
                stats.sequence_at = time.monotonic()
        elif kind == "snapshot":
            chunk = message.snapshot
            stats.last_chunks += 1
            stats.snapshot_kvs = chunk.total_kvs
            self.chunks_left = chunk.count - chunk.index - 1
            if not self.chunks_left:
                stats.sequence = chunk.sequence
                stats.sequence_at = time.monotonic()
                stats.resumable = True
        elif kind == "hello":
            hello = message.hello
            self.got_hello = True
            stats.connects += 1
            stats.hello_at = time.monotonic()
            stats.last_resumed = hello.resumed
            stats.last_chunks = 0
            stats.epoch = hello.epoch
            stats.sequence = hello.sequence
            stats.sequence_at = stats.hello_at
            if hello.resumed:
                stats.resumes += 1
                stats.resumable = True
            else:
                # Until the last chunk arrives our state is neither the old one nor the new one.
                stats.snapshots += 1
                stats.resumable = False
                self.chunks_left = 1
        elif kind == "status":
            if self.chunks_left:
                self.chunks_left = 0  # statuses follow the snapshot's last chunk (or an empty snapshot)
                stats.resumable = True
            if message.status.status == pb.SyncStatus.IN_SYNC and not stats.in_sync:
                stats.in_sync = True
                stats.synced_at = time.monotonic()
                if not stats.snapshot_secs:
                    stats.snapshot_secs = stats.synced_at - stats.started_at
        elif kind == "ping":
            stats.pings += 1
            self.send_message(pb.ClientMessage(pong=pb.Pong(ping_timestamp_ns=message.ping.timestamp_ns))
                              .SerializeToString())

    def on_stream_end(self, reason: str) -> None:
        if reason:
            self.stats.error = reason
        if not self.done.done():
            self.done.set_result(None)


async def run_stream(address: str, syncer_type: str, index: int, probe: bool, stats: ResumeStats,
                     ready: asyncio.Event, retry_secs: float = RETRY_SECS) -> None:
    """Keeps one stream up until cancelled: reconnects (resuming if it can) whenever it ends."""
    del probe  # no latency probes: the storm measures time to get back in sync, not delivery latency
    host, port = address.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    stats.started_at = time.monotonic()
    # "Ready" once started: the orchestrator follows the first sync, like later ones, through
    # `progress` (drive_streams answers no request until every stream is ready).
    ready.set()
    while True:
        stream: ResumeStream | None = None
        try:
            _, stream = await loop.create_connection(
                lambda: ResumeStream(address, syncer_type, index, stats), host, int(port))
            await stream.done
        except OSError as exc:
            stats.connect_failures += 1
            stats.error = f"connect: {exc}"
            await asyncio.sleep(retry_secs * (0.5 + random.random()))
            continue
        finally:
            if stream is not None:
                stream.close()
        stats.in_sync = False
        stats.disconnects += 1
        if not stream.got_hello:
            stats.ends_before_hello += 1
        stats.lost_at = time.monotonic()


def mark(stats: list[ResumeStats], _arg: Any) -> tuple[Any, ...]:
    for s in stats:
        s.mark_bytes, s.mark_kvs, s.mark_connects = s.bytes, s.kvs, s.connects
        s.mark_failures, s.mark_disconnects = s.connect_failures, s.disconnects
        s.mark_ends_before_hello = s.ends_before_hello
    return ("marked", len(stats))


def back(s: ResumeStats, since: float) -> bool:
    """In sync again on a connection made after the mark and the event at `since`."""
    return s.in_sync and s.connects > s.mark_connects and s.synced_at > since


def progress(stats: list[ResumeStats], since: float) -> tuple[Any, ...]:
    return ("progress", sum(back(s, since) for s in stats), sum(s.bytes - s.mark_bytes for s in stats))


def report(stats: list[ResumeStats], since: float) -> tuple[Any, ...]:
    """Per client, since the mark: (synced_at or None, hello_at, lost_at, resumed, chunks on the
    latest connection, bytes, connects, refused connects, stream ends, last error, KVs in deltas,
    KVs in the latest connection's snapshot, stream ends before a ServerHello, connected_at, sequence,
    sequence_at)."""
    rows = []
    for s in stats:
        ok = back(s, since)
        rows.append((s.synced_at if ok else None, s.hello_at if ok else None, s.lost_at, s.last_resumed,
                     s.last_chunks, s.bytes - s.mark_bytes, s.connects - s.mark_connects,
                     s.connect_failures - s.mark_failures, s.disconnects - s.mark_disconnects, s.error,
                     s.kvs - s.mark_kvs, s.snapshot_kvs if s.last_chunks else 0,
                     s.ends_before_hello - s.mark_ends_before_hello, s.connected_at, s.sequence,
                     s.sequence_at))
    return ("report", rows)


def first_syncs(stats: list[ResumeStats], _arg: Any) -> tuple[Any, ...]:
    """Per client: (first connection attempt, first in-sync or None, bytes, snapshot KVs, last error)."""
    return ("first_syncs", [(s.started_at, s.started_at + s.snapshot_secs if s.snapshot_secs else None,
                             s.bytes, s.snapshot_kvs, s.error) for s in stats])


COMMANDS = {"mark": mark, "progress": progress, "report": report, "first_syncs": first_syncs}


def client_process(address: str, syncer_type: str, indexes: list[int], probe_every: int, conn: Any,
                   cpus: set[int] | None) -> None:
    if cpus:
        import os

        os.sched_setaffinity(0, cpus)
    h2sink.raise_fd_limit()
    asyncio.run(drive_streams(functools.partial(run_stream, retry_secs=RETRY_SECS), ResumeStats, address,
                              syncer_type, indexes, probe_every, conn, commands=COMMANDS))
