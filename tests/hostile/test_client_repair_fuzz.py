"""Fuzzing the client's digest-resync repair (BucketChunk) with hostile answers (issue 8, hostile input).

A client with a mirror big enough to send a bucket summary moves to a server of another epoch; the
old stream keeps applying deltas meanwhile (make-before-break). The new server answers with the
buckets that differ, honestly or with one lie: a wrong checksum, a key in a bucket it does not hash
to, a bucket listed twice, a deletion, a value that is not msgpack, chunks out of order. An honest
answer must leave the mirror equal to the server's set; a lie must raise ProtocolError with the mirror
untouched; either way the reported updates add up to the mirror.
"""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from typha.client import ProtocolError, SyncClientCore
from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import SnapshotCache
from typha.syncproto.checksum import digest_of
from typha.syncproto.digests import bucket_hash

from .test_client_core_fuzz import check_consistent

KEYS = [f"/calico/v1/host/node-{i % 50}/workload/k8s/ns%2fpod-{i}/endpoint/eth0" for i in range(1100)]


def value(n: int) -> bytes:
    return msgpack.packb({"n": n})


def started() -> tuple[SyncClientCore, object, dict[str, object]]:
    """A core in sync with 1,100 keys from server e1, and the shadow of what it reported."""
    core = SyncClientCore("felix", hostname="n1")
    session = core.open_session()
    shadow: dict[str, object] = {}
    state = {key: value(0) for key in KEYS}
    data = pb.Deltas(kvs=[pb.KV(key=k, value=v, revision="1") for k, v in sorted(state.items())]).SerializeToString()
    for message in (
        pb.ServerMessage(hello=pb.ServerHello(epoch="e1", syncer_type="felix", sequence=1)),
        pb.ServerMessage(snapshot=pb.SnapshotChunk(sequence=1, index=0, count=1, data=data, total_kvs=len(state))),
        pb.ServerMessage(status=pb.SyncStatus(status=pb.SyncStatus.IN_SYNC, sequence=1)),
    ):
        apply(shadow, core.receive(session, message).updates)
    return core, session, shadow


def apply(shadow: dict[str, object], updates) -> None:
    for update in updates:
        if update.value is None:
            shadow.pop(update.key, None)
        else:
            shadow[update.key] = update.value


def changed(state: dict[str, bytes], server_changes: dict[int, int | None]) -> dict[str, bytes]:
    """The server's set: `state` with the drawn changes (None deletes)."""
    server = dict(state)
    for i, v in server_changes.items():
        key = KEYS[i] if i < len(KEYS) else f"/calico/v1/extra/{i}"
        if v is None:
            server.pop(key, None)
        else:
            server[key] = value(v)
    return server


def answer(server: dict[str, bytes], summary_state: dict[str, bytes], mask: int, lie: str,
           split: bool) -> list[pb.BucketChunk]:
    """The BucketChunks a server with `server` sends a summary of `summary_state`, honest or with `lie`."""
    differing = sorted({bucket_hash(k) & mask for k in set(server) ^ set(summary_state)}
                       | {bucket_hash(k) & mask for k in server if summary_state.get(k) not in (None, server[k])})
    digest, key_count = digest_of(server.items()), len(server)
    if lie == "checksum":
        digest ^= 1
    groups = [differing[::2], differing[1::2]] if split and len(differing) > 1 else [differing]
    chunks = []
    for index, group in enumerate(groups):
        members = set(group)
        kvs = [pb.KV(key=k, value=v, revision="9") for k, v in sorted(server.items())
               if bucket_hash(k) & mask in members]
        chunks.append(pb.BucketChunk(sequence=10, index=index, count=len(groups), buckets=group,
                                     data=pb.Deltas(kvs=kvs).SerializeToString(), digest=digest, key_count=key_count))
    last = chunks[-1]
    if lie == "wrong-bucket":
        stray = next(k for k in KEYS if bucket_hash(k) & mask not in set(last.buckets))
        extra = pb.Deltas(kvs=[pb.KV(key=stray, value=value(5))]).SerializeToString()
        last.data += extra
    elif lie == "bucket-twice":
        last.buckets.append(chunks[0].buckets[0] if chunks[0].buckets else 0)
        if not chunks[0].buckets:
            last.buckets.append(0)
    elif lie in ("deletion", "not-msgpack"):
        # A key whose bucket no other chunk lists, so only the lie itself can be refused.
        key = next(k for k in KEYS if bucket_hash(k) & mask not in {b for c in chunks[:-1] for b in c.buckets})
        last.data += pb.Deltas(kvs=[pb.KV(key=key, value=b"" if lie == "deletion" else b"\xc1")]).SerializeToString()
        if bucket_hash(key) & mask not in last.buckets:
            last.buckets.append(bucket_hash(key) & mask)
    elif lie == "order":
        chunks = [pb.BucketChunk(sequence=10, index=1, count=2, digest=digest, key_count=key_count), *chunks]
    return chunks


changes = st.dictionaries(st.integers(0, 1199), st.one_of(st.none(), st.integers(1, 9)), max_size=12)
lies = st.sampled_from(["none", "checksum", "wrong-bucket", "bucket-twice", "deletion", "not-msgpack", "order"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(server_changes=changes, old_stream=changes, lie=lies, split=st.booleans())
def test_repair_is_exact_or_refused(server_changes, old_stream, lie, split):
    core, old, shadow = started()
    summary_state = {key: core.entry(key)[0] for key in core.to_dict()}
    new = core.open_session()
    count = new.hello.hello.digests.count
    assert count >= 1024, "the mirror is big enough for a summary"
    mask = count - 1

    # The old stream keeps going after the summary was taken: the repair must undo this.
    kvs = [pb.KV(key=KEYS[i] if i < len(KEYS) else f"/calico/v1/extra/{i}", value=b"" if v is None else value(v))
           for i, v in old_stream.items()]
    apply(shadow, core.receive(old, pb.ServerMessage(deltas=pb.Deltas(kvs=kvs, sequence=2))).updates)

    server = changed(summary_state, server_changes)
    chunks = answer(server, summary_state, mask, lie, split)
    event(f"lie: {lie}, {len(chunks)} chunk(s)")
    hello = pb.ServerMessage(hello=pb.ServerHello(epoch="e2", syncer_type="felix", sequence=10, bucket_count=count))
    apply(shadow, core.receive(new, hello).updates)
    refused = False
    for chunk in chunks:
        before = ({k: core.entry(k) for k in core.to_dict()}, core.digest)
        try:
            step = core.receive(new, pb.ServerMessage(buckets=chunk))
        except ProtocolError:
            assert ({k: core.entry(k) for k in core.to_dict()}, core.digest) == before
            refused = True
            break
        apply(shadow, step.updates)
        check_consistent(core, shadow)
    check_consistent(core, shadow)
    if lie == "none":
        assert not refused
        assert {k: core.entry(k)[0] for k in core.to_dict()} == server
        assert core.live_session is new
    else:
        assert refused, f"the client accepted a repair with a lie: {lie}"


def test_the_fixture_really_summarises():
    core, _, _ = started()
    assert core.open_session().hello.hello.digests.count == 1024



@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(server_changes=changes, lie=lies, split=st.booleans())
def test_replica_repair_is_exact_or_refused(server_changes, lie, split):
    """The same answers to a replica (typha.source.upstream's protocol): an honest one resets the cache to
    the server's set at its epoch and sequence once the status follows; a lie is refused and the cache is
    untouched. (A replica passes values through undecoded: the value that is not msgpack is refused by the
    checksum it breaks.)"""
    cache = SnapshotCache("felix")
    core = SyncClientCore("felix", hostname="n1", replica=cache, checksum_mismatch_limit=1)
    replicated(core)
    summary_state = {key: value for key, value, _ in cache.items()}
    session = core.open_session()
    count = session.hello.hello.digests.count
    assert count >= 1024 and "digest-resync" in session.hello.hello.features
    server = changed(summary_state, server_changes)
    chunks = answer(server, summary_state, count - 1, lie, split)
    event(f"lie: {lie}, {len(chunks)} chunk(s)")
    before = (cache.epoch, cache.newest.sequence, sorted(cache.items()))
    hello = pb.ServerMessage(hello=pb.ServerHello(epoch="e2", syncer_type="felix", sequence=10, bucket_count=count))
    status = pb.ServerMessage(status=pb.SyncStatus(status=pb.SyncStatus.IN_SYNC, sequence=10))
    refused = False
    try:
        for message in (hello, *(pb.ServerMessage(buckets=chunk) for chunk in chunks), status):
            core.receive_frames(session, message.SerializeToString())
    except ProtocolError:
        refused = True
    if lie == "none":
        assert not refused
        assert {key: value for key, value, _ in cache.items()} == server
        assert (cache.epoch, cache.newest.sequence) == ("e2", 10)
        assert cache.digest == digest_of(server.items())
        assert core.live_session is session
    else:
        assert refused, f"the replica accepted a repair with a lie: {lie}"
        assert (cache.epoch, cache.newest.sequence, sorted(cache.items())) == before


def replicated(core: SyncClientCore) -> None:
    """Make `core`'s cache a replica of an upstream holding KEYS, through the protocol (a snapshot)."""
    upstream = SnapshotCache("felix")
    upstream.apply([Update(key, {"n": 0}, "1") for key in KEYS])
    upstream.set_status(SyncStatus.IN_SYNC)
    snap = upstream.snapshot()
    session = core.open_session()
    hello = pb.ServerHello(epoch=upstream.epoch, syncer_type="felix", sequence=snap.sequence)
    status = pb.SyncStatus(status=pb.SyncStatus.IN_SYNC, sequence=snap.sequence)
    for data in (pb.ServerMessage(hello=hello).SerializeToString(), *snap.frames,
                 pb.ServerMessage(status=status).SerializeToString()):
        core.receive_frames(session, data)
    assert core.live_session is session and core.resume_point is not None
    core.close_session(session)
