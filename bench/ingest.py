"""Ingest benchmark: how fast the datastore side turns Kubernetes objects into Calico KVs.

Three numbers: conversion alone (no I/O), list+convert of N pods over HTTP from the API emulator
(paginated list, orjson parse, felix conversion, syncer bookkeeping), and watch-event throughput
(a burst of pod label changes written by the emulator's process, received and converted here).
The emulator runs in a child process so that its serving cost does not share our GIL.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
from typing import Any

from typha.datastore.kubeclient import KubeClient
from typha.datastore.syncers import Datastore, Syncer, converters_for
from typha.model.kv import SyncStatus, Update
from typha.testing import objects


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pods", type=int, default=50_000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--watch-events", type=int, default=20_000)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")


def make_pods(count: int, nodes: int) -> list[dict[str, Any]]:
    pods = []
    for i in range(count):
        ip = f"10.{64 + (i >> 16) % 64}.{(i >> 8) & 255}.{i & 255}"
        pods.append(objects.pod(
            f"ns{i % 50}", f"pod-{i}", node=f"node-{i % nodes}", ip=ip,
            labels={"app": f"app-{i % 200}", "tier": ("web", "db", "cache")[i % 3],
                    "pod-template-hash": "5d9c"},
            ports=[("http", 8080, "TCP")],
        ))
    return pods


class Counting:
    """Syncer callbacks that only count, so the consumer costs nearly nothing."""

    def __init__(self) -> None:
        self.updates = 0
        self.in_sync = threading.Event()
        self.target = 0
        self.reached = threading.Event()

    def on_updates(self, updates: list[Update]) -> None:
        self.updates += len(updates)
        if self.target and self.updates >= self.target:
            self.reached.set()

    def on_status(self, status: SyncStatus) -> None:
        if status is SyncStatus.IN_SYNC:
            self.in_sync.set()


def _serve(pods: int, nodes: int, conn) -> None:  # runs in the child process
    from typha.testing.apiserver import KubeAPIEmulator

    api = KubeAPIEmulator(history_limit=max(100_000, 2 * pods))
    started = time.perf_counter()
    for pod in make_pods(pods, nodes):
        api.create(pod)
    populate = time.perf_counter() - started
    api.start()
    path = os.path.join(tempfile.mkdtemp(prefix="bench-ingest-"), "kubeconfig")
    api.write_kubeconfig(path)
    conn.send({"kubeconfig": path, "populate_secs": populate})
    while True:
        command = conn.recv()
        if command[0] == "churn":
            count = command[1]
            started = time.perf_counter()
            for i in range(count):
                api.patch("v1", "Pod", f"pod-{i % pods}", {"metadata": {"labels": {"rev": str(i)}}},
                          f"ns{(i % pods) % 50}")
            conn.send({"write_secs": time.perf_counter() - started})
        elif command[0] == "stop":
            api.stop()
            conn.send({})
            return


def measure_convert(pods: list[dict[str, Any]]) -> dict[str, float]:
    convert_pod = converters_for("felix")["pods"]
    started = time.perf_counter()
    produced = sum(len(convert_pod(pod)) for pod in pods)
    elapsed = time.perf_counter() - started
    return {"objects": len(pods), "kvs": produced, "secs": elapsed,
            "objects_per_sec": len(pods) / elapsed, "usec_per_object": elapsed / len(pods) * 1e6}


def run(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"benchmark": "ingest", "pods": args.pods, "nodes": args.nodes}
    results["convert_only"] = measure_convert(make_pods(min(args.pods, 20_000), args.nodes))

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(args.pods, args.nodes, child), daemon=True)
    server.start()
    try:
        hello = parent.recv()
        results["emulator_populate_secs"] = hello["populate_secs"]
        client = KubeClient.from_kubeconfig(hello["kubeconfig"])
        counting = Counting()
        syncer = Syncer("felix", counting, {"pods": converters_for("felix")["pods"]})
        datastore = Datastore(client, [syncer], page_size=args.page_size)
        started = time.perf_counter()
        datastore.start()
        if not counting.in_sync.wait(600):
            raise SystemExit("initial list did not complete within 600 s")
        list_secs = time.perf_counter() - started
        results["list_convert"] = {"objects": args.pods, "secs": list_secs,
                                   "objects_per_sec": args.pods / list_secs, "page_size": args.page_size}

        counting.target = counting.updates + args.watch_events
        started = time.perf_counter()
        parent.send(("churn", args.watch_events))
        if not counting.reached.wait(600):
            raise SystemExit("watch events did not all arrive within 600 s")
        watch_secs = time.perf_counter() - started
        written = parent.recv()
        results["watch"] = {"events": args.watch_events, "secs": watch_secs,
                            "events_per_sec": args.watch_events / watch_secs,
                            "emulator_write_secs": written["write_secs"]}
        datastore.stop()
        parent.send(("stop",))
        parent.recv()
    finally:
        server.join(10)
        if server.is_alive():
            server.kill()

    print_table(results)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


def print_table(results: dict[str, Any]) -> None:
    convert, listed, watch = results["convert_only"], results["list_convert"], results["watch"]
    rows = [
        ("convert only (felix, pods)", f"{convert['objects_per_sec']:,.0f} objects/s",
         f"{convert['usec_per_object']:.1f} µs/object"),
        (f"list+convert {listed['objects']:,} pods", f"{listed['objects_per_sec']:,.0f} objects/s",
         f"{listed['secs']:.2f} s"),
        (f"watch {watch['events']:,} events", f"{watch['events_per_sec']:,.0f} events/s",
         f"{watch['secs']:.2f} s (emulator writes took {watch['emulator_write_secs']:.2f} s)"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, rate, extra in rows:
        print(f"{name:<{width}}  {rate:>22}  {extra}")
