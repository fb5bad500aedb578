"""Shared pieces of the hostile-input tests: an asyncio loop on a thread, and a garbage Sync server.

Hypothesis runs each example as a plain function call, while grpc.aio wants one long-lived loop: the
servers and raw clients of a module live on a `LoopThread`, and examples submit coroutines to it.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import grpc
import msgpack
import zstandard

from typha.proto import sync_pb2 as pb

T = TypeVar("T")


class LoopThread:
    """An asyncio loop on a daemon thread; `run` waits (bounded) for a coroutine to finish on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hostile-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self.loop).result(timeout + 5)

    def close(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        # Not through run(): its wait_for wrapper would be one of the tasks cancelled.
        asyncio.run_coroutine_threadsafe(cancel_rest(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def frame(**payload: Any) -> bytes:
    return pb.ServerMessage(**payload).SerializeToString()


def valid_hello(syncer_type: str = "felix") -> bytes:
    return frame(hello=pb.ServerHello(version="evil", server_id="garbage", epoch="e1", syncer_type=syncer_type))


def snapshot_of(kvs: dict[str, bytes], sequence: int = 1) -> bytes:
    data = pb.Deltas(kvs=[pb.KV(key=k, value=v, revision="1") for k, v in sorted(kvs.items())]).SerializeToString()
    return frame(snapshot=pb.SnapshotChunk(sequence=sequence, index=0, count=1, compression="zstd",
                                           data=zstandard.ZstdCompressor().compress(data), total_kvs=len(kvs)))


def in_sync(sequence: int = 1) -> bytes:
    return frame(status=pb.SyncStatus(status=pb.SyncStatus.IN_SYNC, sequence=sequence))


# What a garbage server sends on each stream, by mode: a function of a seeded Random (so that a failing
# run can be replayed) and of the syncer type the client asked for.
def _random_bytes(rng: random.Random, syncer: str) -> list[bytes]:
    return [rng.randbytes(rng.randint(1, 200)) for _ in range(5)]


def _wrong_order(rng: random.Random, syncer: str) -> list[bytes]:
    return [frame(deltas=pb.Deltas(kvs=[pb.KV(key="/calico/v1/x", value=msgpack.packb({"a": 1}))], sequence=5))]


def _bad_snapshot(rng: random.Random, syncer: str) -> list[bytes]:
    chunk = pb.SnapshotChunk(sequence=1, index=0, count=1, compression="zstd", data=rng.randbytes(64))
    return [valid_hello(syncer), frame(snapshot=chunk)]


def _bad_values(rng: random.Random, syncer: str) -> list[bytes]:
    """Valid protocol, values that are not msgpack: the client must refuse them, not pass them on."""
    return [valid_hello(syncer), snapshot_of({"/calico/v1/config/LogSeverityScreen": b"\xc1\xc1\xc1"}), in_sync()]


# Keys each agent interprets, with values of the wrong shape (valid msgpack, valid protocol).
WRONG_SHAPES = {
    "/calico/v1/host/node-1/workload/k8s/demo%2fp/endpoint/eth0": "not a dict",
    "/calico/v1/policy/tier/default/policy/default.p": [1, 2, 3],
    "/calico/v1/policy/GlobalNetworkPolicy//p": {"inbound_rules": "all", "selector": 7},
    "/calico/v1/policy/profile/kns.demo/rules": 42,
    "/calico/v1/host/node-1/bird_ip": {"ip": True},
    "/calico/v1/ipam/v2/host/node-1/ipv4/block/10.65.0.0-26": "x",
    "/calico/resources/v3/projectcalico.org/nodes/node-1": {"spec": "nope"},
    "/calico/resources/v3/projectcalico.org/bgppeers/p": [None],
    "/calico/resources/v3/projectcalico.org/bgpconfigurations/default": {"spec": {"asNumber": "many"}},
    "/calico/v1/ipam/v4/pool/10.65.0.0-16": {"cidr": 5},
    "/calico/v1/config/LogSeverityScreen": {"not": "a string"},
    "/calico/bgp/v1/global/as_num": [],
}


def _wrong_shapes(rng: random.Random, syncer: str) -> list[bytes]:
    kvs = {key: msgpack.packb(value, use_bin_type=True) for key, value in WRONG_SHAPES.items()}
    return [valid_hello(syncer), snapshot_of(kvs), in_sync()]


MODES: dict[str, Callable[[random.Random, str], list[bytes]]] = {
    "random-bytes": _random_bytes,
    "wrong-order": _wrong_order,
    "bad-snapshot": _bad_snapshot,
    "bad-values": _bad_values,
    "wrong-shapes": _wrong_shapes,
}


class GarbageServer:
    """A grpc.aio server whose Sync method answers every stream with the frames of `mode`, then waits.

    It reads the client's hello first (as a real server would), counts streams, and ends each stream
    after its frames when the client goes away (or after `hold_secs`).
    """

    def __init__(self, mode: str | Callable[[random.Random, str], Iterable[bytes]], seed: int = 0,
                 hold_secs: float = 5.0) -> None:
        self.produce = MODES[mode] if isinstance(mode, str) else mode
        self.rng = random.Random(seed)
        self.hold_secs = hold_secs
        self.streams = 0
        self.port = 0
        self._server: grpc.aio.Server | None = None

    async def _handle(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        self.streams += 1
        raw = await context.read()
        try:  # echo the syncer type, so that the garbage gets past the client's first check
            syncer = pb.ClientMessage.FromString(raw).hello.syncer_type or "felix"
        except Exception:
            syncer = "felix"
        for data in self.produce(self.rng, syncer):
            await context.write(data)
        await asyncio.sleep(self.hold_secs)

    async def start(self) -> int:
        server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(self._handle, request_deserializer=None,
                                                        response_serializer=None)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("typha.v1.Sync", {"Sync": handler})])
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
