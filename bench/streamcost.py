"""Stream cost: typha's own Python per client per message, with gRPC taken out.

N `SyncServer._stream` tasks follow one SnapshotCache in this process; their context's `write`
only counts and yields to the loop once (as a grpc.aio write does at least). Each round applies one
update and lets every stream write it. The CPU time per client per message is what the serving loop
itself costs: wake-up, bookkeeping, the run lookup, the metric, the loop's scheduling. It is
process CPU time in one process, so the load of the rest of the machine hardly moves it, unlike
`bench fanout`; compare trees with it, and read `bench fanout --ceiling` for the whole picture.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from typing import Any

from bench.output import report
from typha.model.kv import SyncStatus, Update
from typha.snapcache.cache import SnapshotCache
from typha.syncserver.server import Connection, SyncServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=300, help="updates, each written to every stream")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the fastest is reported")
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")


class _Tally:
    """Writes by every stream; `reached` is set once they add up to `target`."""

    def __init__(self) -> None:
        self.writes = 0
        self.target = 0
        self.reached = asyncio.Event()


class _CountingContext:
    __slots__ = ("tally", "writes")

    def __init__(self, tally: _Tally) -> None:
        self.tally = tally
        self.writes = 0

    async def write(self, data: bytes) -> None:
        self.writes += 1
        tally = self.tally
        tally.writes += 1
        if tally.writes >= tally.target:
            tally.reached.set()
        await asyncio.sleep(0)


async def _measure(clients: int, rounds: int) -> tuple[float, int]:
    cache = SnapshotCache("felix")
    cache.set_status(SyncStatus.IN_SYNC)
    server = SyncServer({"felix": cache})
    tally = _Tally()
    contexts = [_CountingContext(tally) for _ in range(clients)]
    tasks = [
        asyncio.create_task(server._stream(
            Connection(peer=f"bench-{i}", syncer_type="felix", position=cache.newest, generation=cache.generation),
            cache, context))
        for i, context in enumerate(contexts)
    ]
    try:
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        value = {"labels": {"app": "x" * 20}, "pad": "y" * 200}
        started = time.process_time()
        for r in range(rounds):
            tally.target += clients
            tally.reached.clear()
            cache.apply([Update(f"/bench/{r % 100}", {**value, "r": r}, str(r))])
            await tally.reached.wait()
        cpu = time.process_time() - started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return cpu, sum(context.writes for context in contexts)


def run(args: argparse.Namespace) -> int:
    runs = [asyncio.run(_measure(args.clients, args.rounds)) for _ in range(max(args.repeat, 1))]
    per_delivery = [cpu / max(writes, 1) * 1e6 for cpu, writes in runs]
    results: dict[str, Any] = {
        "benchmark": "streamcost", "clients": args.clients, "rounds": args.rounds,
        "deliveries": [writes for _, writes in runs], "deliveries_expected": args.clients * args.rounds,
        "usec_per_delivery": per_delivery, "usec_per_delivery_min": min(per_delivery),
    }
    report([("setup", f"{args.clients} streams, {args.rounds} messages each, {len(runs)} runs"),
            ("deliveries", ", ".join(f"{w:,}" for w in results["deliveries"])
             + f" of {results['deliveries_expected']:,} per run"),
            ("CPU per client per message", f"{min(per_delivery):.2f} µs (runs: "
             + ", ".join(f"{u:.2f}" for u in per_delivery) + ")")], results, args.json)
    return 0
