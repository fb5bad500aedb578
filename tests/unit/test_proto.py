"""The committed generated code matches the .proto, and the concatenation contract holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from typha.proto import sync_pb2 as pb
from typha.proto.generate import OUTPUTS, generate

GENERATED_DIR = Path(__file__).resolve().parents[2] / "typha" / "proto"


def test_generated_modules_are_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    generate(tmp_path)
    for name in OUTPUTS:
        committed = (GENERATED_DIR / name).read_text()
        assert (tmp_path / name).read_text() == committed, (
            f"typha/proto/{name} is stale: run python -m typha.proto.generate and commit the result"
        )


def encoded_deltas(sequence: int, *kvs: pb.KV) -> bytes:
    return pb.ServerMessage(deltas=pb.Deltas(kvs=list(kvs), sequence=sequence)).SerializeToString()


def test_concatenated_delta_frames_parse_as_one_batch_in_order():
    frames = [
        encoded_deltas(7, pb.KV(key="/a", value=b"\x01", revision="10")),
        encoded_deltas(8, pb.KV(key="/b", value=b"\x02", revision="11"), pb.KV(key="/a", revision="12")),
        encoded_deltas(9, pb.KV(key="/c", value=b"\x03", revision="13")),
    ]
    merged = pb.ServerMessage.FromString(b"".join(frames))
    assert merged.WhichOneof("payload") == "deltas"
    assert [(kv.key, kv.value, kv.revision) for kv in merged.deltas.kvs] == [
        ("/a", b"\x01", "10"), ("/b", b"\x02", "11"), ("/a", b"", "12"), ("/c", b"\x03", "13"),
    ]
    assert merged.deltas.sequence == 9, "the newest breadcrumb's sequence must win"


def test_unknown_fields_are_ignored():
    # A newer server may add fields; field 99 (varint) must not break an older parser.
    extra = bytes([0x98, 0x06, 0x01])  # tag (99 << 3 | 0) as varint, then value 1
    message = pb.ServerMessage.FromString(encoded_deltas(3, pb.KV(key="/k", value=b"v")) + extra)
    assert message.deltas.sequence == 3
    assert message.deltas.kvs[0].key == "/k"
