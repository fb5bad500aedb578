"""A load client process: many Sync streams that count what they receive and answer pings.

Kept deliberately lean (raw frames, no mirror) so that the client side is not what limits the
benchmark. A few "probe" streams decode every value to read the pod's write timestamp label and
record end-to-end latency; the rest only count KVs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import zstandard

from typha.proto import sync_pb2 as pb
from typha.syncproto.names import SYNC_METHOD
from typha.syncproto.values import unpack_value

TIMESTAMP_LABEL = "bench-ts"


@dataclass
class StreamStats:
    kvs: int = 0
    messages: int = 0
    bytes: int = 0
    snapshot_secs: float = 0.0
    in_sync: bool = False
    error: str = ""
    latencies_ns: list[int] = field(default_factory=list)


async def run_stream(
    address: str, syncer_type: str, index: int, probe: bool, stats: StreamStats, ready: asyncio.Event
) -> None:
    """Runs until the stream ends or the task is cancelled (which is how the process stops it)."""
    # Each stream gets its own TCP connection, as separate nodes would (gRPC would otherwise share one).
    channel = grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", -1), ("grpc.use_local_subchannel_pool", 1)])
    call = channel.stream_stream(SYNC_METHOD, request_serializer=None, response_deserializer=None)()
    decompressor = zstandard.ZstdDecompressor()
    started = time.perf_counter()
    hello = pb.ClientHello(hostname=f"bench-{index}", syncer_type=syncer_type, compressions=["zstd"],
                           info="bench sink")
    try:
        await call.write(pb.ClientMessage(hello=hello).SerializeToString())
        while True:
            raw = await call.read()
            if raw is grpc.aio.EOF:
                stats.error = f"stream ended: {await call.code()} {await call.details()}"
                break
            stats.messages += 1
            stats.bytes += len(raw)
            message = pb.ServerMessage.FromString(raw)
            kind = message.WhichOneof("payload")
            if kind == "deltas":
                received_ns = time.time_ns()
                kvs = message.deltas.kvs
                stats.kvs += len(kvs)
                if probe:
                    for kv in kvs:
                        if kv.value:
                            labels = (unpack_value(kv.value) or {}).get("labels") or {}
                            stamp = labels.get(TIMESTAMP_LABEL)
                            if stamp:
                                stats.latencies_ns.append(received_ns - int(stamp))
            elif kind == "snapshot":
                chunk = message.snapshot
                if chunk.compression:
                    decompressor.decompress(chunk.data)
            elif kind == "status" and message.status.status == pb.SyncStatus.IN_SYNC and not stats.in_sync:
                stats.in_sync = True
                stats.snapshot_secs = time.perf_counter() - started
                ready.set()
            elif kind == "ping":
                pong = pb.ClientMessage(pong=pb.Pong(ping_timestamp_ns=message.ping.timestamp_ns))
                await call.write(pong.SerializeToString())
    except grpc.aio.AioRpcError as exc:
        stats.error = f"{exc.code()}: {exc.details()}"
    finally:
        ready.set()
        call.cancel()
        with contextlib.suppress(Exception):
            await channel.close()


async def drive_streams(
    run: Callable[..., Coroutine[Any, Any, None]], make_stats: Callable[[], Any], address: str, syncer_type: str,
    indexes: list[int], probe_every: int, conn: Any,
    commands: Mapping[str, Callable[[list[Any], Any], tuple[Any, ...]]] | None = None,
) -> None:
    """The load-client side of the pipe protocol bench.fanout speaks, for any stream implementation.

    `run(address, syncer_type, index, probe, stats, ready)` runs one stream, filling `stats` (which
    has kvs, messages, bytes, snapshot_secs, in_sync, error and latencies_ns). `commands` adds
    requests of a client's own, sent as `name` or `(name, arg)`: the answer is `commands[name](stats, arg)`.
    """
    stats = [make_stats() for _ in indexes]
    readies = [asyncio.Event() for _ in indexes]
    tasks: list[asyncio.Task[None]] = []
    for slot, (index, stat, ready) in enumerate(zip(indexes, stats, readies, strict=True)):
        tasks.append(asyncio.create_task(
            run(address, syncer_type, index, index % probe_every == 0, stat, ready)))
        if slot % 50 == 49:
            await asyncio.sleep(0.01)  # spread connects a little, as nodes booting do
    await asyncio.gather(*(ready.wait() for ready in readies))
    conn.send(("ready", sum(s.in_sync for s in stats), max((s.snapshot_secs for s in stats), default=0.0),
               [s.error for s in stats if s.error][:3]))
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        command, arg = command if isinstance(command, tuple) else (command, None)
        if commands and command in commands:
            conn.send(commands[command](stats, arg))
        elif command == "sample":
            conn.send(("sample", sum(s.kvs for s in stats), sum(s.messages for s in stats),
                       sum(s.bytes for s in stats)))
        elif command == "latencies":
            samples = [ns for s in stats for ns in s.latencies_ns]
            for s in stats:
                s.latencies_ns.clear()
            conn.send(("latencies", samples))
        elif command == "stop":
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            conn.send(("stopped", [s.error for s in stats if s.error][:3]))
            return


def client_process(address: str, syncer_type: str, indexes: list[int], probe_every: int, conn: Any,
                   cpus: set[int] | None) -> None:
    if cpus:
        import os

        os.sched_setaffinity(0, cpus)
    asyncio.run(drive_streams(run_stream, StreamStats, address, syncer_type, indexes, probe_every, conn))
