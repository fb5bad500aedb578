"""Fuzzing typha.client's sans-IO core with hostile server messages (issue 8, hostile input), as an
agent's mirror and in replica mode (a Typha following another, its cache fed the frames as received).

Streams mix valid protocol messages with structurally valid but wrong ones (any field, any value,
any order), mutated encodings of valid ones and random bytes. Whatever arrives, the core must:
- raise nothing but ProtocolError (the transport's cue to drop the stream and resync);
- leave the mirror exactly as it was when it raises;
- keep the mirror consistent: the updates it reported, applied in order, give the mirror; every value
  is the decoding of its bytes; the digest is the XOR over the mirror (what checksums compare).
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
import zstandard
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from typha.client import ChecksumOutcome, ProtocolError, Session, SyncClientCore
from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import SnapshotCache
from typha.syncproto.checksum import digest_of, kv_hash
from typha.syncproto.digests import summarise
from typha.syncproto.frames import FrameError, split_frames

KEYS = [f"/calico/v1/policy/tier/default/policy/p{i}" for i in range(4)] + ["/calico/v1/config/X", ""]
EPOCHS = ["e1", "e2", ""]

scalars = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=5))  # msgpack's integer range
model_values = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "selector"]), scalars, max_size=3),
    st.integers(-5, 5), st.text(max_size=4), st.lists(st.integers(0, 3), max_size=3), st.booleans(),
)
value_bytes = st.one_of(
    model_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.just(b""),  # a deletion (or, in a snapshot, a protocol error)
    st.just(msgpack.packb(None)),
    st.binary(max_size=12),  # mostly not msgpack, or msgpack with trailing bytes
)
kvs = st.lists(st.builds(pb.KV, key=st.sampled_from(KEYS), value=value_bytes,
                         revision=st.text(max_size=3)), max_size=5)
sequences = st.integers(0, 6)


@st.composite
def chunk_data(draw: st.DrawFn) -> tuple[str, bytes]:
    raw = pb.Deltas(kvs=draw(kvs), sequence=draw(sequences)).SerializeToString()
    how = draw(st.sampled_from(["raw", "zstd", "zstd-truncated", "zstd-trailing", "garbage", "lz4"]))
    if how == "raw":
        return "", raw
    if how == "garbage":
        return draw(st.sampled_from(["", "zstd"])), draw(st.binary(max_size=40))
    if how == "lz4":
        return "lz4", raw
    compressed = zstandard.ZstdCompressor().compress(raw)
    if how == "zstd-truncated":
        return "zstd", compressed[: draw(st.integers(0, max(0, len(compressed) - 1)))]
    if how == "zstd-trailing":
        return "zstd", compressed + draw(st.binary(min_size=1, max_size=8))
    return "zstd", compressed


@st.composite
def snapshot_chunks(draw: st.DrawFn) -> pb.ServerMessage:
    compression, data = draw(chunk_data())
    return pb.ServerMessage(snapshot=pb.SnapshotChunk(
        sequence=draw(sequences), index=draw(st.integers(0, 3)), count=draw(st.integers(0, 3)),
        compression=compression, data=data, total_kvs=draw(st.integers(0, 6)),
    ))


structured = st.one_of(
    st.builds(lambda h: pb.ServerMessage(hello=h), st.builds(
        pb.ServerHello, version=st.text(max_size=3), server_id=st.text(max_size=3), epoch=st.sampled_from(EPOCHS),
        resumed=st.booleans(), syncer_type=st.sampled_from(["felix", "", "bgp"]), sequence=sequences)),
    snapshot_chunks(),
    st.builds(lambda d: pb.ServerMessage(deltas=d), st.builds(pb.Deltas, kvs=kvs, sequence=sequences)),
    # Enum values beyond the known ones: proto3 enums are open, so these decode.
    st.builds(lambda s, q: pb.ServerMessage(status=pb.SyncStatus(status=s, sequence=q)), st.integers(0, 9), sequences),
    st.builds(lambda t: pb.ServerMessage(ping=pb.Ping(timestamp_ns=t)), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda q, d, c: pb.ServerMessage(checksum=pb.Checksum(sequence=q, digest=d, count=c)),
              sequences, st.integers(0, 2**64 - 1), st.integers(0, 6)),
    st.builds(lambda r, e, a: pb.ServerMessage(reconnect=pb.Reconnect(reason=r, endpoint=e, after_ms=a)),
              st.text(max_size=5), st.text(max_size=5), st.integers(0, 2**32 - 1)),
    st.just(pb.ServerMessage()),  # no payload: a kind newer than the client
    st.builds(lambda d, q, i, c, b, g, k: pb.ServerMessage(buckets=pb.BucketChunk(
        sequence=q, index=i, count=c, buckets=b, compression=d[0], data=d[1], digest=g, key_count=k)),
        chunk_data(), sequences, st.integers(0, 3), st.integers(0, 3), st.lists(st.integers(0, 2**32 - 1), max_size=4),
        st.integers(0, 2**64 - 1), st.integers(0, 6)),
    st.builds(lambda h, n: pb.ServerMessage(hello=pb.ServerHello(epoch=h, syncer_type="felix", bucket_count=n)),
              st.sampled_from(EPOCHS), st.integers(0, 2**32 - 1)),
)


def good_stream(seed: int) -> list[pb.ServerMessage]:
    """A protocol-correct stream (two-chunk snapshot, in-sync, deltas, checksum) to start mutating from."""
    rng = random.Random(seed)
    state = {key: msgpack.packb({"v": rng.randint(0, 3)}) for key in KEYS[:4]}
    keys = sorted(state)
    out = [pb.ServerMessage(hello=pb.ServerHello(version="t", server_id="s", epoch="e1", syncer_type="felix",
                                                 sequence=2))]
    for index, part in enumerate((keys[:2], keys[2:])):
        raw = pb.Deltas(kvs=[pb.KV(key=k, value=state[k], revision="1") for k in part]).SerializeToString()
        out.append(pb.ServerMessage(snapshot=pb.SnapshotChunk(
            sequence=2, index=index, count=2, compression="zstd", data=zstandard.ZstdCompressor().compress(raw),
            total_kvs=len(keys))))
    out.append(pb.ServerMessage(status=pb.SyncStatus(status=pb.SyncStatus.IN_SYNC, sequence=2)))
    for sequence in (3, 4):
        key = rng.choice(keys)
        value = b"" if rng.random() < 0.3 else msgpack.packb({"v": rng.randint(0, 9)})
        out.append(pb.ServerMessage(deltas=pb.Deltas(kvs=[pb.KV(key=key, value=value, revision=str(sequence))],
                                                     sequence=sequence)))
        if value:
            state[key] = value
        else:
            state.pop(key, None)
    out.append(pb.ServerMessage(checksum=pb.Checksum(sequence=4, digest=digest_of(state.items()), count=len(state))))
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        how = rng.randrange(4)
        if how == 0 and data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == 1 and data:
            del data[rng.randrange(len(data)):]
        elif how == 2:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 4))
        elif data:
            at = rng.randrange(len(data))
            data[at] = rng.randrange(256)
    return bytes(data)


# One event of a stream: the next good message, a mutation of one, a structured message or raw bytes.
events = st.one_of(
    st.just(("next", None)), st.just(("next", None)), st.just(("next", None)),
    st.tuples(st.just("mutated"), st.integers(0, 2**32)),
    st.tuples(st.just("structured"), structured),
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
    st.just(("new-session", None)),
    # Well-formed and in sequence, so that hostile keys and values reach a live mirror.
    st.tuples(st.just("next-deltas"), kvs),
    st.tuples(st.just("whole-snapshot"), kvs),
)


def state_of(core: SyncClientCore) -> tuple[dict[str, Any], int, Any, Any]:
    return {k: core.entry(k) for k in list(core.to_dict())}, core.digest, core.position, core.status


def check_consistent(core: SyncClientCore, shadow: dict[str, Any]) -> None:
    mirror = core.to_dict()
    assert mirror == shadow, "the updates reported do not add up to the mirror"
    entries = {key: core.entry(key) for key in mirror}
    for raw, decoded, _revision in entries.values():
        assert decoded == msgpack.unpackb(raw, raw=False)
        assert decoded is not None
    assert core.digest == digest_of((key, entry[0]) for key, entry in entries.items())


def feed(core: SyncClientCore, session: Session, message: pb.ServerMessage, shadow: dict[str, Any]) -> Session:
    """One server message into the core, checking the invariants; returns the session to go on with.

    A ProtocolError must leave the mirror as it was, and (like a resync request) ends the session;
    the updates reported are applied to `shadow`, which must then equal the mirror.
    """
    before = state_of(core)
    try:
        step = core.receive(session, message)
    except ProtocolError:
        assert state_of(core)[:2] == before[:2], "a protocol error changed the mirror"
        core.close_session(session, resync=True)
        check_consistent(core, shadow)
        return core.open_session()
    for update in step.updates:
        if update.value is None:
            shadow.pop(update.key, None)
        else:
            shadow[update.key] = update.value
    check_consistent(core, shadow)
    if step.resync is not None:
        core.close_session(session, resync=True)
        return core.open_session()
    return session


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), stream=st.lists(events, max_size=25))
def test_core_survives_hostile_streams_with_a_consistent_mirror(seed, stream):
    core = SyncClientCore("felix", hostname="n1")
    good = good_stream(seed)
    session, position, shadow = core.open_session(), 0, {}
    for kind, arg in stream:
        if kind == "new-session":
            core.close_session(session)
            session, position = core.open_session(), 0
            continue
        if kind == "next":
            message = good[position % len(good)]
            position += 1
        elif kind == "structured":
            message = arg
        elif kind == "next-deltas":
            message = pb.ServerMessage(deltas=pb.Deltas(kvs=arg, sequence=session.last_sequence + 1))
        elif kind == "whole-snapshot":
            data = pb.Deltas(kvs=arg).SerializeToString()
            message = pb.ServerMessage(snapshot=pb.SnapshotChunk(sequence=session.last_sequence + 1, index=0,
                                                                 count=1, data=data))
        else:
            data = mutate(good[position % len(good)].SerializeToString(), random.Random(arg)) if kind == "mutated" \
                else arg
            try:
                message = pb.ServerMessage.FromString(data)
            except DecodeError:
                continue  # the transport's case (tests/hostile/test_client_garbage.py)
        fed = feed(core, session, message, shadow)
        if fed is not session:
            session, position = fed, 0
    event(f"mirror holds {min(len(core), 3)}+ keys, in sync: {core.in_sync}")


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_the_unmutated_stream_is_accepted_whole(seed):
    """The baseline the mutations start from is itself valid, so the fuzzing above is not all rejection."""
    core = SyncClientCore("felix", hostname="n1")
    session = core.open_session()
    for message in good_stream(seed):
        step = core.receive(session, message)
        assert step.resync is None
    assert core.in_sync
    assert len(core) > 0


def _bomb_chunk(write_content_size: bool) -> pb.ServerMessage:
    # 256 MiB of zeros in a few KB: a hostile server's way to make the client allocate without bound.
    compressor = zstandard.ZstdCompressor(write_content_size=write_content_size)
    data = compressor.compress(b"\0" * (256 * 1024 * 1024))
    return pb.ServerMessage(snapshot=pb.SnapshotChunk(sequence=1, index=0, count=1, compression="zstd", data=data))


@pytest.mark.parametrize("declared", [True, False])
def test_decompression_bomb_is_a_protocol_error(declared):
    bomb = _bomb_chunk(declared)
    assert len(bomb.snapshot.data) < 64 * 1024
    core = SyncClientCore("felix", hostname="n1")
    session = core.open_session()
    core.receive(session, good_stream(0)[0])  # the ServerHello
    with pytest.raises(ProtocolError, match="limit"):
        core.receive(session, bomb)
    assert len(core) == 0


# -- replica mode (typha.source.upstream's protocol) -------------------------------------------------


def replica_stream(seed: int) -> tuple[SnapshotCache, list[bytes]]:
    """An upstream cache and what it sends a replica, as raw messages: hello, snapshot chunks, the status
    that goes with them, breadcrumbs (the last two as one run, as crumb-runs sends a lagging replica) and
    a checksum of the final state."""
    rng = random.Random(seed)
    upstream = SnapshotCache("felix")
    upstream.apply([Update(key, {"v": rng.randint(0, 3)}, "1") for key in KEYS[:4]])
    upstream.set_status(SyncStatus.IN_SYNC)
    snap = upstream.snapshot()
    out = [pb.ServerMessage(hello=pb.ServerHello(version="t", server_id="s", epoch=upstream.epoch,
                                                 syncer_type="felix", sequence=snap.sequence)).SerializeToString(),
           *snap.frames,
           pb.ServerMessage(status=pb.SyncStatus(status=pb.SyncStatus.IN_SYNC,
                                                 sequence=snap.sequence)).SerializeToString()]
    for revision in range(2, 6):
        key = rng.choice(KEYS[:4])
        upstream.apply([Update(key, None if rng.random() < 0.3 else {"v": rng.randint(0, 9)}, str(revision))])
    upstream.set_status(SyncStatus.RESYNC)
    upstream.set_status(SyncStatus.IN_SYNC)
    crumbs, crumb = [], upstream.crumb_after(upstream.epoch, snap.sequence).next  # the crumb at it, then on
    while crumb is not None:
        crumbs.append(crumb.frame)
        crumb = crumb.next
    out += [*crumbs[:-2], crumbs[-2] + crumbs[-1]]
    out.append(pb.ServerMessage(checksum=pb.Checksum(sequence=upstream.newest.sequence, digest=upstream.digest,
                                                     count=len(upstream))).SerializeToString())
    return upstream, out


def replica_state(cache: SnapshotCache) -> tuple[Any, ...]:
    return cache.epoch, cache.newest.sequence, cache.digest, sorted(cache.items()), cache.status


def check_replica(cache: SnapshotCache) -> None:
    """The cache's digests are those of what it holds, whatever was passed through to it."""
    items = [(key, value) for key, value, _ in cache.items()]
    assert cache.digest == digest_of(items)
    assert cache.buckets.folded(1024) == summarise(((key, kv_hash(key, value)) for key, value in items), 1024)
    assert all(value for _, value in items), "a replica holds a deletion"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), stream=st.lists(events, max_size=25))
def test_replica_mode_survives_hostile_streams_with_a_consistent_cache(seed, stream):
    """The same hostile events fed to a replica (raw frames passed through to a SnapshotCache): only
    ProtocolError, a refused message leaves the cache as it was, and the cache stays self-consistent."""
    cache = SnapshotCache("felix")
    core = SyncClientCore("felix", hostname="n1", replica=cache, checksum_mismatch_limit=1)
    _, good = replica_stream(seed)
    session, position = core.open_session(), 0
    for kind, arg in stream:
        if kind == "new-session":
            core.close_session(session)
            session, position = core.open_session(), 0
            continue
        if kind == "next":
            data = good[position % len(good)]
            position += 1
        elif kind == "structured":
            data = arg.SerializeToString()
        elif kind == "next-deltas":
            data = pb.ServerMessage(deltas=pb.Deltas(kvs=arg, sequence=cache.newest.sequence + 1)).SerializeToString()
        elif kind == "whole-snapshot":
            data = pb.ServerMessage(snapshot=pb.SnapshotChunk(sequence=session.last_sequence + 1, index=0, count=1,
                                                              data=pb.Deltas(kvs=arg).SerializeToString()))
            data = data.SerializeToString()
        elif kind == "mutated":
            data = mutate(good[position % len(good)], random.Random(arg))
        else:
            data = arg  # raw bytes: the core splits and parses them itself
        single = data == b"" or len(split_or_none(data) or [0, 0]) == 1
        before = replica_state(cache)
        try:
            step = core.receive_frames(session, data)
        except ProtocolError:
            if single:
                assert replica_state(cache) == before, "a refused message changed the replica"
            core.close_session(session, resync=True)
            check_replica(cache)
            session, position = core.open_session(), 0
            continue
        check_replica(cache)
        if step.resync is not None:
            core.close_session(session, resync=True)
            session, position = core.open_session(), 0
    event(f"replica holds {min(len(cache), 3)}+ keys, live: {core.live_session is session}")


def split_or_none(data: bytes) -> list[bytes] | None:
    try:
        return split_frames(data)
    except FrameError:
        return None


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_the_unmutated_replica_stream_makes_an_exact_replica(seed):
    """The baseline of the replica fuzzing: the replica ends with the upstream's very crumbs and state."""
    upstream, good = replica_stream(seed)
    cache = SnapshotCache("felix")
    core = SyncClientCore("felix", hostname="n1", replica=cache, checksum_mismatch_limit=1)
    session = core.open_session()
    assert {"exact-crumbs", "crumb-runs"} <= set(session.hello.hello.features)
    for data in good:
        step = core.receive_frames(session, data)
        assert step.resync is None
        assert step.checksum is None or step.checksum.outcome is ChecksumOutcome.MATCH
    assert core.live_session is session
    assert replica_state(cache) == replica_state(upstream)
    assert cache.newest.frame == upstream.newest.frame, "the very bytes of the upstream's crumb"
    # Resuming from it: the hello offers the replica's position, and a resumed hello goes live with its status.
    core.close_session(session)
    again = core.open_session()
    assert (again.hello.hello.resume.epoch, again.hello.hello.resume.sequence) == (upstream.epoch,
                                                                                  upstream.newest.sequence)
    hello = pb.ServerHello(epoch=upstream.epoch, sequence=upstream.newest.sequence, syncer_type="felix", resumed=True)
    core.receive_frames(again, pb.ServerMessage(hello=hello).SerializeToString())
    assert core.live_session is not again, "a replica goes live with the status that follows the hello"
    status = pb.SyncStatus(status=pb.SyncStatus.IN_SYNC, sequence=upstream.newest.sequence)
    assert core.receive_frames(again, pb.ServerMessage(status=status).SerializeToString()).promoted
    assert replica_state(cache) == replica_state(upstream)
