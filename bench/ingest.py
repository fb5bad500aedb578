"""Ingest benchmark: how fast the datastore side turns Kubernetes objects into Calico KVs.

Three numbers: conversion alone (no I/O), list+convert of N pods over HTTP from the API emulator
(paginated list, orjson parse, felix conversion, syncer bookkeeping), and watch-event throughput
(a burst of pod label changes written by the emulator's process, received and converted here).
The emulator runs in a child process so that its serving cost does not share our GIL.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from bench.apiproc import EmulatorProcess, make_pod
from bench.output import report
from typha.kube.client import KubeClient
from typha.model.kv import SyncStatus, Update
from typha.source.datastore import Datastore, Syncer, converters_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pods", type=int, default=50_000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--watch-events", type=int, default=20_000)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--json", metavar="OUT", help="write the results here as JSON")


def make_pods(count: int, nodes: int) -> list[dict[str, Any]]:
    return [make_pod(i, nodes) for i in range(count)]


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

    api = EmulatorProcess(args.pods, args.nodes)
    try:
        hello = api.start()
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
        api.start_churn(args.watch_events, rate=None, stamp=False)
        if not counting.reached.wait(600):
            raise SystemExit("watch events did not all arrive within 600 s")
        watch_secs = time.perf_counter() - started
        written = api.wait_churn()
        results["watch"] = {"events": args.watch_events, "secs": watch_secs,
                            "events_per_sec": args.watch_events / watch_secs,
                            "emulator_write_secs": written["secs"]}
        datastore.stop()
    finally:
        api.stop()

    report(table_rows(results), results, args.json)
    return 0


def table_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    convert, listed, watch = results["convert_only"], results["list_convert"], results["watch"]
    return [
        ("convert only (felix, pods)",
         f"{convert['objects_per_sec']:,.0f} objects/s, {convert['usec_per_object']:.1f} µs/object"),
        (f"list+convert {listed['objects']:,} pods",
         f"{listed['objects_per_sec']:,.0f} objects/s, {listed['secs']:.2f} s"),
        (f"watch {watch['events']:,} events",
         f"{watch['events_per_sec']:,.0f} events/s, {watch['secs']:.2f} s "
         f"(emulator writes took {watch['emulator_write_secs']:.2f} s)"),
    ]
