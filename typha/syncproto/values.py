"""KV values on the wire: msgpack, with str as UTF-8 and bytes as bin; an empty value is a deletion."""

from __future__ import annotations

from typing import Any

import msgpack


class UndecodableValue(ValueError):
    """A value that is not a msgpack document, or is nil (which no live key may hold)."""


def pack_value(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack_value(data: bytes) -> Any:
    """The decoded value; raises UndecodableValue (whose text completes "value of KEY …")."""
    try:
        decoded = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        # Some msgpack errors have an empty message: name the type so the log line says something.
        raise UndecodableValue(f"is not valid msgpack: {exc!r}") from exc
    if decoded is None:
        # None means "deleted" to every consumer of Update; a deletion is sent as empty bytes.
        raise UndecodableValue("is msgpack nil")
    return decoded
