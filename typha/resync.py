"""The server's answer to a client's bucket digests (`digest-resync`): only the buckets that differ.

A client that moves to a replica with another epoch cannot resume by sequence number. If it sent
BucketDigests of its mirror, the server compares them with its cache's (kept incrementally,
typha.digests) and, when few differ, sends the complete contents of just those buckets as
BucketChunk frames; otherwise the caller falls back to a snapshot, which is cheaper once a large
part of the set has to travel anyway (and is shared by every joining client, this answer is not).

Runs synchronously on the event loop, so the contents and the crumb the client continues from
belong to the same moment. Cost: one CRC-32 per cached key to find the differing buckets' keys, then
encoding and compressing only those KVs.
"""

from __future__ import annotations

from dataclasses import dataclass

import zstandard

from typha.cache import Breadcrumb, SnapshotCache
from typha.digests import bucket_hash, valid_count
from typha.model.kv import SyncStatus
from typha.proto import sync_pb2 as pb


class RepairDeclined(Exception):
    """A snapshot serves this client better (or is the only safe answer); the message says why."""


@dataclass(slots=True)
class BucketRepair:
    crumb: Breadcrumb  # the client continues after this crumb
    bucket_count: int
    frames: list[bytes]  # encoded ServerMessage(buckets=…) frames
    buckets: int  # how many differ
    kvs: int  # KVs sent


def plan_repair(cache: SnapshotCache, summary: pb.BucketDigests, max_fraction: float) -> BucketRepair:
    count = summary.count
    if not valid_count(count) or len(summary.digests) != count:
        raise RepairDeclined(f"unusable summary: {len(summary.digests)} digests for {count} buckets")
    crumb = cache.newest
    if crumb.status is not SyncStatus.IN_SYNC:
        # A partial set would make the client delete what the server has not listed yet.
        raise RepairDeclined("the cache is not in sync yet")
    differing = cache.buckets.differing(summary.digests)
    if len(differing) > max_fraction * count:
        raise RepairDeclined(f"{len(differing)} of {count} buckets differ")
    mask = count - 1
    wanted = set(differing)
    by_bucket: dict[int, list[tuple[str, bytes, str]]] = {bucket: [] for bucket in differing}
    if wanted:
        for key, value, revision in cache.items():
            bucket = bucket_hash(key) & mask
            if bucket in wanted:
                by_bucket[bucket].append((key, value, revision))
    frames = _encode(cache, crumb, count, by_bucket)
    return BucketRepair(crumb, count, frames, len(differing), sum(map(len, by_bucket.values())))


def _encode(
    cache: SnapshotCache, crumb: Breadcrumb, count: int, by_bucket: dict[int, list[tuple[str, bytes, str]]]
) -> list[bytes]:
    """Chunks of ~snapshot_chunk_bytes raw, each carrying whole buckets (at least one chunk)."""
    limit = cache.limits.snapshot_chunk_bytes
    compressor = zstandard.ZstdCompressor(level=cache.limits.zstd_level)
    parts: list[tuple[list[int], list[pb.KV]]] = []
    buckets: list[int] = []
    kvs: list[pb.KV] = []
    size = 0
    for bucket in sorted(by_bucket):
        buckets.append(bucket)
        for key, value, revision in sorted(by_bucket[bucket]):
            kvs.append(pb.KV(key=key, value=value, revision=revision))
            size += len(key) + len(value) + len(revision) + 8
        if size >= limit:
            parts.append((buckets, kvs))
            buckets, kvs, size = [], [], 0
    if buckets or not parts:
        parts.append((buckets, kvs))
    frames = []
    for index, (chunk_buckets, chunk_kvs) in enumerate(parts):
        data = compressor.compress(pb.Deltas(kvs=chunk_kvs).SerializeToString())
        chunk = pb.BucketChunk(
            sequence=crumb.sequence, index=index, count=len(parts), buckets=chunk_buckets, compression="zstd",
            data=data, digest=crumb.digest, key_count=crumb.key_count,
        )
        frames.append(pb.ServerMessage(buckets=chunk).SerializeToString())
    return frames
