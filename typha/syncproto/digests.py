"""Per-bucket digests of a KV set: the summary behind the digest-resync feature (proto: BucketDigests).

A client that cannot resume on a server (another replica, another epoch) sends the digests of its
mirror cut into buckets; the server compares them with its own and sends only the buckets that
differ. Shared by the cache (kept incrementally), the server (compare) and the client (summarise),
so it imports neither side. The per-key hash is the Checksum's, passed in by the caller: each side
already computes it for the whole-set checksum.

Bucket numbers are taken from the low bits of the key's CRC-32, so a summary at `count` buckets is
the finest one folded: bucket i of `count // 2` is bucket i XOR bucket i + count // 2 of `count`.
The cache keeps MAX_BUCKETS and folds to whatever (smaller) count a client chose.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence

MIN_BUCKETS = 1024
MAX_BUCKETS = 4096
# Bits of each bucket digest on the wire (proto: BucketDigests): halves the hello; the repair's final
# checksum check catches the rare difference they miss.
WIRE_MASK = 0xFFFF_FFFF
# Mean keys per bucket a client aims for: fewer means more digests in the hello, more means more
# unchanged KVs resent with each differing bucket.
KEYS_PER_BUCKET = 4
_FINE = MAX_BUCKETS - 1
_crc32 = zlib.crc32


def bucket_hash(key: str) -> int:
    """The key's position in bucket space; `bucket_hash(key) & (count - 1)` is its bucket."""
    return zlib.crc32(key.encode())


def bucket_count_for(key_count: int) -> int:
    """The bucket count a client with `key_count` keys uses: a power of two in [MIN, MAX]_BUCKETS."""
    count = MIN_BUCKETS
    while count < MAX_BUCKETS and count * KEYS_PER_BUCKET < key_count:
        count *= 2
    return count


def valid_count(count: int) -> bool:
    return 0 < count <= MAX_BUCKETS and count & (count - 1) == 0


def summarise(items: Iterable[tuple[str, int]], count: int) -> list[int]:
    """Digests of (key, per-key hash) pairs cut into `count` buckets, as sent (WIRE_MASK)."""
    mask = count - 1
    digests = [0] * count
    for key, value_hash in items:
        digests[bucket_hash(key) & mask] ^= value_hash
    return [digest & WIRE_MASK for digest in digests]


class BucketDigests:
    """MAX_BUCKETS digests, and the keys in each bucket, updated in O(1) per change.

    The key index is what lets the server answer a summary in O(KVs sent) rather than with a pass
    over the whole cache per reconnecting client (a replica that dies sends all its clients at once).
    """

    __slots__ = ("_digests", "_keys")

    def __init__(self) -> None:
        self._digests = [0] * MAX_BUCKETS
        self._keys: list[set[str]] = [set() for _ in range(MAX_BUCKETS)]

    @classmethod
    def of(cls, items: Iterable[tuple[str, int]]) -> BucketDigests:
        made = cls()
        for key, value_hash in items:
            made.add(key, value_hash)
        return made

    # These three run for every cache update: bucket_hash is inlined (a call costs ~20% of them).

    def add(self, key: str, value_hash: int) -> None:
        bucket = _crc32(key.encode()) & _FINE
        self._digests[bucket] ^= value_hash
        self._keys[bucket].add(key)

    def discard(self, key: str, value_hash: int) -> None:
        bucket = _crc32(key.encode()) & _FINE
        self._digests[bucket] ^= value_hash
        self._keys[bucket].discard(key)

    def change(self, key: str, old_hash: int, new_hash: int) -> None:
        self._digests[_crc32(key.encode()) & _FINE] ^= old_hash ^ new_hash

    def folded(self, count: int) -> list[int]:
        if not valid_count(count):
            raise ValueError(f"bucket count {count} is not a power of two up to {MAX_BUCKETS}")
        digests = list(self._digests)
        width = MAX_BUCKETS
        while width > count:
            width //= 2
            low, high = digests[:width], digests[width : 2 * width]
            digests = [a ^ b for a, b in zip(low, high, strict=True)]
        return [digest & WIRE_MASK for digest in digests]

    def differing(self, theirs: Sequence[int]) -> list[int]:
        """Bucket numbers (at len(theirs) buckets) where `theirs` differs from ours."""
        ours = self.folded(len(theirs))
        return [index for index, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]

    def keys_in(self, bucket: int, count: int) -> Iterator[str]:
        """The keys of bucket `bucket` at `count` buckets: the fine buckets with the same low bits."""
        for fine in range(bucket, MAX_BUCKETS, count):
            yield from self._keys[fine]
