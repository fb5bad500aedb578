"""felix-client's route calculation: the cost of one IPAM-block update, and of a snapshot with no change.

A cluster of N blocks over N/2 remote nodes in a VXLAN pool, plus 100 local endpoints, is loaded
into a `RouteCalculator`; then each repetition moves one block to another node and asks for the
routes (what the agent's next apply does), and separately asks for the routes without a change (a
periodic resync). Printed per N; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.output import report
from felix_client.calc.routes import RouteCalculator

LOCAL_ENDPOINTS = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blocks", type=int, nargs="+", default=[1_000, 10_000], help="cluster sizes (IPAM blocks)")
    parser.add_argument("--reps", type=int, default=200, help="updates timed per size")
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")


def build(blocks: int) -> RouteCalculator:
    calc = RouteCalculator("node-0")
    calc.set_pool("10.0.0.0/8", {"vxlan_mode": "always"})
    nodes = max(1, blocks // 2)
    for n in range(nodes):
        calc.set_host_ip(f"node-{n}", f"192.168.{n // 250}.{n % 250 + 1}")
        calc.set_host_config(f"node-{n}", "IPv4VXLANTunnelAddr", f"10.{n // 250}.{n % 250}.1")
    for i in range(blocks):
        calc.set_block(_block(i), {"affinity": f"host:node-{i % nodes}"})
    for e in range(LOCAL_ENDPOINTS):
        calc.set_local_endpoint(f"ep{e}", f"cali{e:011x}", (f"10.255.{e // 250}.{e % 250 + 2}/32",))
    calc.routes()
    return calc


def _block(i: int) -> str:
    return f"10.{i // 1024}.{(i // 4) % 256}.{(i % 4) * 64}/26"


def run(args: argparse.Namespace) -> int:
    rows: list[tuple[str, str]] = []
    results: dict[str, Any] = {"benchmark": "felix-routes", "local_endpoints": LOCAL_ENDPOINTS, "sizes": []}
    for blocks in args.blocks:
        calc = build(blocks)
        nodes = max(1, blocks // 2)
        update: list[float] = []
        for r in range(args.reps):
            started = time.perf_counter()
            calc.set_block(_block(r % blocks), {"affinity": f"host:node-{(r + 1) % nodes}"})
            calc.routes()
            update.append(time.perf_counter() - started)
        unchanged: list[float] = []
        for _ in range(args.reps):
            started = time.perf_counter()
            calc.routes()
            unchanged.append(time.perf_counter() - started)
        size = {"blocks": blocks, "update_p50_ms": statistics.median(update) * 1e3,
                "update_max_ms": max(update) * 1e3, "unchanged_p50_ms": statistics.median(unchanged) * 1e3,
                "block_computations_per_update": (calc.block_computations - blocks) / args.reps}
        results["sizes"].append(size)
        rows.append((f"{blocks} blocks: block update + routes()",
                     f"p50 {size['update_p50_ms']:.3f} ms, max {size['update_max_ms']:.3f} ms, "
                     f"{size['block_computations_per_update']:.1f} block routes recomputed per update"))
        rows.append((f"{blocks} blocks: routes() unchanged", f"p50 {size['unchanged_p50_ms']:.4f} ms"))
    report(rows, results, args.json)
    return 0
