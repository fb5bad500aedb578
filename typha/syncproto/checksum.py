"""The Sync protocol's order-independent digest of a KV set (proto/typha/v1/sync.proto: Checksum).

The one definition: the server's cache, the client core (mirror and replica) and the digests all take
it from here, since agents must not import server code (docs/architecture.md §1). The per-key hash
is BLAKE2b-64 of key || 0x00 || value, read little-endian; the set's digest is their XOR.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

_blake2b = hashlib.blake2b


def kv_hash(key: str, value: bytes) -> int:
    """64-bit hash of one live key: BLAKE2b-64 of key || 0x00 || msgpack value, read little-endian."""
    return int.from_bytes(_blake2b(key.encode() + b"\0" + value, digest_size=8).digest(), "little")


def digest_of(items: Iterable[tuple[str, bytes]]) -> int:
    """XOR of `kv_hash` over (key, value bytes) pairs; XOR makes it order-independent and incremental."""
    digest = 0
    for key, value in items:
        digest ^= kv_hash(key, value)
    return digest
