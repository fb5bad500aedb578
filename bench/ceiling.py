"""Ceiling: what a bare grpc.aio server spends per delivery, to put a fan-out result in proportion.

The server here does nothing but what typha's serving loop cannot avoid: N Sync streams, each reads
the client's hello, sends IN_SYNC, then on every tick of one shared broadcaster writes the same
pre-encoded `ServerMessage(deltas=…)` of K KVs and B bytes. No cache, no breadcrumbs, no pings, no
metrics. It runs pinned as `typha serve` is (core 0) against the same load client (bench.h2sink),
so `typha CPU per delivery / ceiling CPU per delivery` measured in one run is the cost of typha's own
Python per delivery; 1.0 is the floor for a grpc.aio server on this interpreter.

`bench fanout --ceiling` runs this after the fan-out with that run's N, messages/s per client, KVs
per message and bytes per message, and prints the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import threading
import time
from typing import Any

import grpc
import psutil

from bench.output import report
from typha.proto import sync_pb2 as pb
from typha.syncproto.names import METHOD_NAME, SERVICE_NAME
from typha.syncproto.values import pack_value
from typha.testing.procs import free_port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=25.0, help="messages per second to every client")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of broadcasting")
    parser.add_argument("--kvs-per-message", type=int, default=40)
    parser.add_argument("--message-bytes", type=int, default=16_000, help="encoded size of each message")
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server to core 0")
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")


def deltas_message(kvs: int, size: int) -> bytes:
    """An encoded ServerMessage(deltas) of `kvs` KVs, padded (in the values) to at most and about `size` bytes."""
    kvs = max(kvs, 1)

    def encode(value_bytes: int) -> bytes:
        return pb.ServerMessage(deltas=pb.Deltas(sequence=1, kvs=[
            pb.KV(key=f"/calico/v1/host/node-{i % 50}/workload/k8s/ns%2fpod-{i}/endpoint/eth0",
                  value=pack_value({"pad": "x" * value_bytes}), revision=str(100_000 + i)) for i in range(kvs)
        ])).SerializeToString()

    # Length prefixes grow with the values, so shrink the padding until the message fits.
    value_bytes = max(0, (size - len(encode(0))) // kvs)
    data = encode(value_bytes)
    while len(data) > size and value_bytes > 0:
        value_bytes = max(0, value_bytes - -(-(len(data) - size) // kvs))
        data = encode(value_bytes)
    return data


class _Broadcast:
    """One payload to every stream per tick: a shared event, as the cheapest asyncio fan-out there is."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.ticks = 0
        self.finished = False

    def tick(self) -> None:
        self.ticks += 1
        event, self.event = self.event, asyncio.Event()
        event.set()


def _server_child(port: int, payload: bytes, ticks: int, rate: float, cpus: set[int] | None,
                  listening: Any, go: Any, done: Any) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    in_sync = pb.ServerMessage(status=pb.SyncStatus(status=pb.SyncStatus.IN_SYNC, sequence=0)).SerializeToString()

    async def main() -> None:
        broadcast = _Broadcast()

        async def handle(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
            await context.read()  # the hello
            await context.write(in_sync)
            seen = 0
            while not broadcast.finished:
                if seen == broadcast.ticks:
                    await broadcast.event.wait()
                    continue
                seen += 1
                await context.write(payload)

        server = grpc.aio.server(options=[("grpc.max_send_message_length", -1), ("grpc.enable_channelz", 0),
                                          ("grpc.http2.bdp_probe", 0)])
        handler = grpc.stream_stream_rpc_method_handler(handle, request_deserializer=None, response_serializer=None)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD_NAME: handler})])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        listening.set()
        loop = asyncio.get_running_loop()
        started = loop.create_future()
        threading.Thread(target=lambda: (go.wait(), loop.call_soon_threadsafe(started.set_result, None)),
                         daemon=True).start()
        await started
        t0 = loop.time()
        for n in range(ticks):
            delay = t0 + n / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            broadcast.tick()
        await asyncio.to_thread(done.wait)
        broadcast.finished = True
        broadcast.tick()
        await server.stop(0.5)

    asyncio.run(main())


def measure(clients: int, rate: float, duration: float, kvs_per_message: int, message_bytes: int,
            client_processes: int = 1, pin: bool = True, catch_up_secs: float = 30.0) -> dict[str, Any]:
    """Run the ceiling once; CPU per delivery of the server process, from the first tick to the last receipt."""
    from bench.fanout import Clients  # not at the top: bench.fanout imports this module

    pin = bool(pin and (os.cpu_count() or 1) >= 2)
    others = {1} if pin else None
    payload = deltas_message(kvs_per_message, message_bytes)
    ticks = max(1, round(rate * duration))
    ctx = mp.get_context("spawn")
    listening, go, done = ctx.Event(), ctx.Event(), ctx.Event()
    port = free_port()
    server_proc = ctx.Process(target=_server_child, daemon=True,
                              args=(port, payload, ticks, rate, {0} if pin else None, listening, go, done))
    server_proc.start()
    client_group: Clients | None = None
    try:
        if not listening.wait(60):
            raise TimeoutError("the ceiling server did not start")
        client_group = Clients(f"127.0.0.1:{port}", clients, client_processes, 10**9, others, sink="h2")
        in_sync, _, errors = client_group.wait_ready(300)
        server = psutil.Process(server_proc.pid)
        kvs0, msgs0, _ = client_group.sample()
        cpu0 = sum(server.cpu_times()[:2])
        t0 = time.perf_counter()
        go.set()
        expected = kvs0 + ticks * kvs_per_message * in_sync
        deadline = t0 + duration + catch_up_secs
        kvs1, msgs1, _ = client_group.sample()
        while kvs1 < expected and time.perf_counter() < deadline:
            time.sleep(0.05)
            kvs1, msgs1, _ = client_group.sample()
        elapsed = time.perf_counter() - t0
        cpu = sum(server.cpu_times()[:2]) - cpu0
    finally:
        done.set()
        if client_group is not None:
            client_group.stop()
        server_proc.join(10)
        if server_proc.is_alive():
            server_proc.kill()
    deliveries = kvs1 - kvs0
    return {
        "benchmark": "ceiling", "clients": clients, "clients_in_sync": in_sync, "rate": rate,
        "duration": duration, "kvs_per_message": kvs_per_message, "message_bytes": len(payload),
        "pinned": pin, "deliveries": deliveries, "deliveries_expected": ticks * kvs_per_message * clients,
        "messages": msgs1 - msgs0, "elapsed_secs": elapsed, "server_cpu_secs": cpu,
        "server_cpu_util": cpu / elapsed if elapsed else float("nan"),
        "server_cpu_usec_per_delivery": cpu / max(deliveries, 1) * 1e6,
        "server_cpu_usec_per_message": cpu / max(msgs1 - msgs0, 1) * 1e6,
        "errors": errors,
    }


def run(args: argparse.Namespace) -> int:
    results = measure(args.clients, args.rate, args.duration, args.kvs_per_message, args.message_bytes,
                      args.client_processes, not args.no_pin)
    report(table_rows(results), results, args.json)
    return 0


def table_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("ceiling setup", f"{r['clients_in_sync']}/{r['clients']} streams, {r['rate']:g} msgs/s each for "
                          f"{r['duration']:g} s, {r['kvs_per_message']} KVs in {r['message_bytes']:,} B per message"),
        ("ceiling deliveries", f"{r['deliveries']:,} of {r['deliveries_expected']:,} in {r['elapsed_secs']:.2f} s"),
        ("ceiling server CPU", f"{r['server_cpu_util'] * 100:.0f}% of a core, "
                               f"{r['server_cpu_usec_per_delivery']:.3f} µs/delivery, "
                               f"{r['server_cpu_usec_per_message']:.1f} µs/message"),
    ] + ([("ceiling errors", "; ".join(r["errors"]))] if r["errors"] else [])
