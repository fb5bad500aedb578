"""digest-resync vs a snapshot: bytes and CPU of a client moving to an independent replica.

In process, no network: the numbers are the sizes of the very frames the server writes (a snapshot's
chunks, or the ServerHello-less BucketChunks of a repair) and the client's hello, and the CPU each
side spends. Two caches are fed the same generated cluster (typha.demo.cluster, felix syncer), a
fraction of the keys then changes on one of them (values edited, a fifth deleted and as many added),
and a client synced from the other moves to it.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from bench.output import report
from typha.client import SyncClientCore
from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import SnapshotCache
from typha.syncserver.resync import RepairDeclined, plan_repair
from typha.syncserver.server import ServerSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 500], help="cluster sizes (nodes)")
    parser.add_argument("--pods-per-node", type=int, default=96)
    parser.add_argument("--changes", type=float, nargs="+", default=[0.001, 0.01, 0.05],
                        help="fractions of the keys changed on the new replica")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each step (best is kept)")
    parser.add_argument("--json", default=None, help="write the numbers here")


def _cluster(nodes: int, pods_per_node: int) -> dict[str, Any]:
    from typha.demo.cluster import Cluster, ClusterSpec
    from typha.source.datastore import convert_objects

    return convert_objects("felix", Cluster(ClusterSpec(nodes=nodes, pods_per_node=pods_per_node)).initial_objects())


def _replica(kvs: dict[str, Any]) -> SnapshotCache:
    cache = SnapshotCache("felix")
    cache.apply([Update(key, value, "1") for key, value in kvs.items()])
    cache.set_status(SyncStatus.IN_SYNC)
    return cache


def _changes(kvs: dict[str, Any], fraction: float, rng: random.Random) -> list[Update]:
    out = []
    for i, key in enumerate(rng.sample(sorted(kvs), max(1, int(len(kvs) * fraction)))):
        value = kvs[key]
        edited = {**value, "edit": i} if isinstance(value, dict) else [value, i]
        if i % 5 == 0:
            out += [Update(key, None, "2"), Update(f"{key}-new", edited, "2")]
        else:
            out.append(Update(key, edited, "2"))
    return out


def _best(reps: int, fn: Any) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(reps):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def _synced_client(cache: SnapshotCache) -> SyncClientCore:
    core = SyncClientCore("felix", hostname="bench")
    session = core.open_session()
    snap = cache.snapshot()
    core.receive(session, pb.ServerMessage(hello=pb.ServerHello(epoch=cache.epoch, sequence=snap.sequence)))
    for frame in snap.frames:
        core.receive(session, pb.ServerMessage.FromString(frame))
    return core


def measure(nodes: int, pods_per_node: int, fraction: float, reps: int) -> dict[str, Any]:
    kvs = _cluster(nodes, pods_per_node)
    old, new = _replica(kvs), _replica(kvs)
    new.apply(_changes(kvs, fraction, random.Random(8)))
    snapshot_secs, snapshot = _best(reps, lambda: new._build_snapshot(time.monotonic()))
    snapshot_bytes = sum(map(len, snapshot.frames))
    client = _synced_client(old)
    summary_secs = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        session = client.open_session()
        summary_secs = min(summary_secs, time.perf_counter() - started)
        client.close_session(session)
    session = client.open_session()  # the one answered
    hello_bytes = session.hello.ByteSize()
    result: dict[str, Any] = {
        "keys": len(new), "changed_fraction": fraction, "snapshot_bytes": snapshot_bytes,
        "snapshot_build_ms": snapshot_secs * 1e3, "hello_bytes": hello_bytes,
        "buckets": session.hello.hello.digests.count, "client_summary_ms": summary_secs * 1e3,
    }
    max_fraction = ServerSettings().digest_resync_max_fraction
    try:
        plan_secs, repair = _best(reps, lambda: plan_repair(new, session.hello.hello.digests, max_fraction))
    except RepairDeclined as exc:
        result["declined"] = str(exc)
        return result
    repair_bytes = sum(map(len, repair.frames))
    hello = pb.ServerMessage(hello=pb.ServerHello(epoch=new.epoch, sequence=repair.crumb.sequence,
                                                  bucket_count=repair.bucket_count))
    messages = [hello, *map(pb.ServerMessage.FromString, repair.frames)]
    started = time.perf_counter()
    for message in messages:
        client.receive(session, message)
    apply_secs = time.perf_counter() - started
    assert client.digest == new.digest and len(client) == len(new), "the repaired mirror is not exact"
    result.update({
        "differing_buckets": repair.buckets, "kvs_sent": repair.kvs, "repair_bytes": repair_bytes,
        "repair_vs_snapshot": repair_bytes / snapshot_bytes, "server_plan_ms": plan_secs * 1e3,
        "client_apply_ms": apply_secs * 1e3,
    })
    return result


def run(args: argparse.Namespace) -> int:
    results = [measure(nodes, args.pods_per_node, fraction, args.reps)
               for nodes in args.nodes for fraction in args.changes]
    rows = []
    for r in results:
        name = f"{r['keys']:,} keys, {r['changed_fraction']:.1%} changed"
        if "declined" in r:
            rows.append((name, f"snapshot ({r['declined']}); snapshot {r['snapshot_bytes']:,} B"))
            continue
        rows.append((name, (
            f"repair {r['repair_bytes']:,} B = {r['repair_vs_snapshot']:.2%} of snapshot {r['snapshot_bytes']:,} B; "
            f"{r['differing_buckets']}/{r['buckets']} buckets, {r['kvs_sent']:,} KVs; hello {r['hello_bytes']:,} B; "
            f"CPU: server {r['server_plan_ms']:.1f} ms (snapshot build {r['snapshot_build_ms']:.0f} ms), "
            f"client summary {r['client_summary_ms']:.1f} ms + apply {r['client_apply_ms']:.1f} ms"
        )))
    report(rows, {"runs": results}, args.json)
    return 0
