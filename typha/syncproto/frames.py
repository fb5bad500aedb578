"""Protobuf framing the Sync protocol relies on: varints and runs of ServerMessage frames.

A ServerMessage is one field of its `payload` oneof, so one encoded message is exactly one
length-delimited top-level field: a frame. The server writes a run of breadcrumbs as their frames
back to back (`crumb-runs`); `split_frames` takes such a message apart into the very same bytes.
The snapshot builder uses `encode_varint` to cut chunks from pre-encoded KV fields.
"""

from __future__ import annotations

# The wire type of a length-delimited field (every ServerMessage payload is a message).
LENGTH_DELIMITED = 2


class FrameError(ValueError):
    """Bytes that are not a run of length-delimited protobuf fields."""


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise FrameError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def split_frames(data: bytes) -> list[bytes]:
    """A message of back-to-back ServerMessage frames → the frames, as slices of `data`."""
    frames = []
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        tag, pos = read_varint(data, pos)
        if tag & 7 != LENGTH_DELIMITED:
            raise FrameError(f"unexpected wire type {tag & 7}")
        length, pos = read_varint(data, pos)
        pos += length
        if pos > end:
            raise FrameError("truncated frame")
        frames.append(data[start:pos])
    return frames
