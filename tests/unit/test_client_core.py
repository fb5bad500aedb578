"""SyncClientCore driven by hand-built ServerMessages: snapshot, deltas, reconcile, checksum, errors."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from typha.client import (
    ChecksumOutcome,
    ProtocolError,
    ResumePoint,
    SessionState,
    SyncClientCore,
)
from typha.client.session import MIRROR_TRANSITIONS, REPLICA_TRANSITIONS, Event, Session
from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.syncproto.checksum import digest_of, kv_hash

_zstd = zstandard.ZstdCompressor(level=3)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def kv(key: str, value: Any, revision: str = "1") -> pb.KV:
    return pb.KV(key=key, value=b"" if value is None else pack(value), revision=revision)


def server_hello(epoch: str = "e1", sequence: int = 0, *, resumed: bool = False, syncer: str = "felix"):
    return pb.ServerMessage(
        hello=pb.ServerHello(version="t", server_id="s1", epoch=epoch, resumed=resumed, syncer_type=syncer,
                             sequence=sequence)
    )


def snapshot(
    state: dict[str, Any], sequence: int, chunks: int = 1, compression: str = "zstd", revision: str = "1"
) -> list[pb.ServerMessage]:
    keys = sorted(state)
    per = max(1, -(-len(keys) // chunks))
    out = []
    for index in range(chunks):
        part = keys[index * per : (index + 1) * per]
        raw = pb.Deltas(kvs=[kv(k, state[k], revision) for k in part]).SerializeToString()
        data = _zstd.compress(raw) if compression == "zstd" else raw
        out.append(pb.ServerMessage(snapshot=pb.SnapshotChunk(
            sequence=sequence, index=index, count=chunks, compression=compression, data=data,
            total_kvs=len(keys),
        )))
    return out


def deltas(sequence: int, *kvs: pb.KV) -> pb.ServerMessage:
    return pb.ServerMessage(deltas=pb.Deltas(kvs=list(kvs), sequence=sequence))


def status(value: int, sequence: int = 0) -> pb.ServerMessage:
    return pb.ServerMessage(status=pb.SyncStatus(status=value, sequence=sequence))


def checksum(sequence: int, digest: int, count: int) -> pb.ServerMessage:
    return pb.ServerMessage(checksum=pb.Checksum(sequence=sequence, digest=digest, count=count))


def feed(core: SyncClientCore, session, messages) -> list:
    return [core.receive(session, m) for m in messages]


def synced(state: dict[str, Any], *, epoch: str = "e1", sequence: int = 10, chunks: int = 1, **options):
    core = SyncClientCore("felix", hostname="n1", **options)
    session = core.open_session()
    feed(core, session, [server_hello(epoch, sequence), *snapshot(state, sequence, chunks)])
    return core, session


def expected_digest(state: dict[str, Any]) -> int:
    return digest_of((k, pack(v)) for k, v in state.items())


def test_hello_offers_compression_features_and_no_resume_at_first():
    core = SyncClientCore("bgp", hostname="n1", info="confd", client_id="c1")
    hello = core.open_session().hello.hello
    assert hello.hostname == "n1"
    assert hello.syncer_type == "bgp"
    assert hello.client_id == "c1"
    assert list(hello.compressions) == ["zstd"]
    assert set(hello.features) == {"checksum", "reconnect"}
    assert not hello.HasField("resume")


def test_snapshot_in_zstd_chunks_is_applied_only_when_the_last_chunk_arrives():
    state = {f"/calico/v1/k{i:03d}": {"i": i, "name": f"n{i}"} for i in range(50)}
    core = SyncClientCore("felix", hostname="n1")
    session = core.open_session()
    assert core.receive(session, server_hello("e1", 7)).updates == []
    steps = feed(core, session, snapshot(state, 7, chunks=4))
    assert all(s.updates == [] and not s.promoted for s in steps[:-1])
    last = steps[-1]
    assert last.snapshot_complete
    assert last.promoted
    assert not last.resumed
    assert [u.key for u in last.updates] == sorted(state)
    assert core.to_dict() == state
    assert core.resume_point == ResumePoint("e1", 7)
    assert core.digest == expected_digest(state)
    assert session.state is SessionState.LIVE
    assert core.live_session is session


def test_empty_raw_snapshot_of_one_chunk():
    core = SyncClientCore("felix", hostname="n1")
    session = core.open_session()
    steps = feed(core, session, [server_hello("e1", 3), *snapshot({}, 3, compression="")])
    assert steps[-1].snapshot_complete
    assert steps[-1].updates == []
    assert len(core) == 0
    assert core.resume_point == ResumePoint("e1", 3)


def test_deltas_set_change_delete_and_dedupe():
    core, session = synced({"/a": {"v": 1}, "/b": {"v": 2}})
    step = core.receive(session, deltas(
        11,
        kv("/a", {"v": 1}, "2"),  # equal to the mirror: dropped
        kv("/b", {"v": 3}, "3"),
        kv("/c", {"v": 4}, "4"),
        kv("/a", None, "5"),
        kv("/zz", None, "6"),  # delete of an absent key: dropped
    ))
    assert step.updates == [Update("/b", {"v": 3}, "3"), Update("/c", {"v": 4}, "4"), Update("/a", None, "5")]
    assert core.to_dict() == {"/b": {"v": 3}, "/c": {"v": 4}}
    assert core.entry("/b")[2] == "3"
    assert core.resume_point == ResumePoint("e1", 11)
    assert core.digest == expected_digest(core.to_dict())


def test_concatenated_breadcrumbs_parse_as_one_deltas_and_dedupe_within_the_message():
    core, session = synced({"/a": {"v": 1}})
    frames = [
        deltas(11, kv("/a", {"v": 2}, "2")).SerializeToString(),
        deltas(12, kv("/a", {"v": 2}, "3"), kv("/b", {"v": 1}, "3")).SerializeToString(),
        deltas(13, kv("/b", None, "4"), kv("/a", {"v": 1}, "4")).SerializeToString(),
    ]
    merged = pb.ServerMessage.FromString(b"".join(frames))
    assert merged.deltas.sequence == 13
    assert len(merged.deltas.kvs) == 5
    step = core.receive(session, merged)
    assert step.updates == [
        Update("/a", {"v": 2}, "2"), Update("/b", {"v": 1}, "3"), Update("/b", None, "4"), Update("/a", {"v": 1}, "4"),
    ]
    assert core.to_dict() == {"/a": {"v": 1}}
    assert core.resume_point == ResumePoint("e1", 13)
    assert core.digest == expected_digest({"/a": {"v": 1}})


def test_ping_is_answered_with_its_timestamp():
    core, session = synced({})
    step = core.receive(session, pb.ServerMessage(ping=pb.Ping(timestamp_ns=12345)))
    assert [m.pong.ping_timestamp_ns for m in step.send] == [12345]


def test_status_is_held_during_the_snapshot_and_deduplicated():
    core = SyncClientCore("felix", hostname="n1")
    session = core.open_session()
    core.receive(session, server_hello("e1", 5))
    chunks = snapshot({"/a": 1}, 5, chunks=1)
    assert core.receive(session, status(pb.SyncStatus.IN_SYNC, 5)).status is None
    step = core.receive(session, chunks[0])
    assert step.status is SyncStatus.IN_SYNC
    assert step.updates == [Update("/a", 1, "1")]
    assert core.in_sync
    assert core.receive(session, status(pb.SyncStatus.IN_SYNC, 6)).status is None
    assert core.receive(session, status(pb.SyncStatus.RESYNC, 7)).status is SyncStatus.RESYNC
    # Status breadcrumbs advance the position, so a resume starts after them.
    assert core.resume_point == ResumePoint("e1", 7)


def test_resume_after_a_cut_continues_from_the_deltas():
    core, session = synced({"/a": 1}, sequence=10)
    core.receive(session, deltas(12, kv("/b", 2)))
    core.close_session(session)
    assert core.live_session is None
    second = core.open_session()
    assert second.hello.hello.resume == pb.ResumePoint(epoch="e1", sequence=12)
    step = core.receive(second, server_hello("e1", 12, resumed=True))
    assert step.promoted
    assert step.resumed
    assert step.updates == []
    assert core.receive(second, deltas(13, kv("/c", 3))).updates == [Update("/c", 3, "1")]
    assert core.to_dict() == {"/a": 1, "/b": 2, "/c": 3}


def test_snapshot_after_a_non_resumed_reconnect_is_reconciled_against_the_mirror():
    before = {"/keep": {"v": 1}, "/change": {"v": 1}, "/gone": {"v": 1}, "/gone2": {"v": 9}}
    core, session = synced(before, sequence=10)
    core.close_session(session)
    second = core.open_session()
    assert second.hello.hello.HasField("resume")
    after = {"/keep": {"v": 1}, "/change": {"v": 2}, "/new": {"v": 3}}
    # This server is in sync (it says so before its snapshot ends): deletions apply at once.
    steps = feed(core, second, [
        server_hello("e2", 40), status(pb.SyncStatus.IN_SYNC, 40), *snapshot(after, 40, chunks=2, revision="9"),
    ])
    assert steps[-1].updates == [
        Update("/change", {"v": 2}, "9"), Update("/new", {"v": 3}, "9"),
        Update("/gone", None, ""), Update("/gone2", None, ""),
    ]
    assert core.to_dict() == after
    assert core.resume_point == ResumePoint("e2", 40)
    assert core.digest == expected_digest(after)


def test_reconcile_against_a_server_not_yet_in_sync_deletes_only_at_in_sync():
    before = {"/keep": 1, "/late": 1, "/late-deleted": 1, "/gone": 1}
    core, session = synced(before, sequence=10)
    core.receive(session, status(pb.SyncStatus.IN_SYNC, 11))
    core.close_session(session)
    second = core.open_session()
    steps = feed(core, second, [
        server_hello("e2", 40), status(pb.SyncStatus.RESYNC, 40), *snapshot({"/keep": 1, "/new": 2}, 40),
    ])
    # A partial snapshot: new keys are set, but nothing is deleted yet.
    assert steps[-1].updates == [Update("/new", 2, "1")]
    assert steps[-1].status is SyncStatus.RESYNC
    assert core.unconfirmed_keys == {"/late", "/late-deleted", "/gone"}
    # The server's stream settles two of them; IN_SYNC deletes the one it never mentioned.
    step = core.receive(second, deltas(41, kv("/late", 1, "41"), kv("/late-deleted", None, "41")))
    assert step.updates == [Update("/late-deleted", None, "41")]
    assert core.unconfirmed_keys == {"/gone"}
    step = core.receive(second, status(pb.SyncStatus.IN_SYNC, 42))
    assert step.updates == [Update("/gone", None, "")]
    assert step.status is SyncStatus.IN_SYNC
    assert core.to_dict() == {"/keep": 1, "/new": 2, "/late": 1}
    assert not core.unconfirmed_keys
    assert core.digest == expected_digest(core.to_dict())


def test_a_checksum_settles_unconfirmed_keys_either_way():
    core, session = synced({"/a": 1, "/b": 1, "/c": 1}, sequence=10)
    core.close_session(session)
    second = core.open_session()
    feed(core, second, [server_hello("e2", 5), *snapshot({"/a": 1}, 5)])
    assert core.unconfirmed_keys == {"/b", "/c"}
    # The server's set at 5 is exactly {/a}: the held keys are really gone.
    step = core.receive(second, checksum(5, expected_digest({"/a": 1}), 1))
    assert step.checksum.outcome is ChecksumOutcome.MATCH
    assert step.updates == [Update("/b", None, ""), Update("/c", None, "")]
    assert not core.unconfirmed_keys

    core, session = synced({"/a": 1, "/b": 1}, sequence=10)
    core.close_session(session)
    second = core.open_session()
    feed(core, second, [server_hello("e2", 5), *snapshot({"/a": 1}, 5), deltas(6, kv("/n", 1))])
    # A checksum that includes the held key confirms it: nothing is deleted.
    step = core.receive(second, checksum(6, expected_digest({"/a": 1, "/b": 1, "/n": 1}), 3))
    assert step.checksum.outcome is ChecksumOutcome.MATCH
    assert step.updates == []
    assert not core.unconfirmed_keys
    assert core.get("/b") == 1
    # Neither with nor without them: a real mismatch.
    assert core.receive(second, checksum(6, 1, 2)).checksum.outcome is ChecksumOutcome.MISMATCH


def test_unconfirmed_keys_are_deleted_even_when_in_sync_is_not_a_status_change():
    core, session = synced({"/a": 1, "/b": 1}, sequence=10)
    core.receive(session, status(pb.SyncStatus.IN_SYNC, 11))
    core.close_session(session)
    second = core.open_session()
    feed(core, second, [server_hello("e2", 5), *snapshot({"/a": 1}, 5)])
    step = core.receive(second, status(pb.SyncStatus.IN_SYNC, 6))
    assert step.updates == [Update("/b", None, "")]
    assert step.status is None


def test_checksum_match_and_skip():
    state = {"/a": {"v": 1}, "/b": {"v": 2}}
    core, session = synced(state, sequence=10)
    ok = core.receive(session, checksum(10, expected_digest(state), 2)).checksum
    assert ok.outcome is ChecksumOutcome.MATCH
    # A checksum of another sequence cannot be compared with this mirror.
    assert core.receive(session, checksum(9, 1, 2)).checksum.outcome is ChecksumOutcome.SKIPPED
    core.receive(session, deltas(11, kv("/a", None)))
    assert core.receive(session, checksum(11, expected_digest({"/b": {"v": 2}}), 1)).checksum.outcome is (
        ChecksumOutcome.MATCH
    )


def test_checksum_agrees_with_the_server_cache():
    from typha.snapcache.cache import SnapshotCache

    cache = SnapshotCache("felix")
    cache.apply([Update("/k", {"a": 1}, "1")])
    assert kv_hash("/k", pack({"a": 1})) == cache.digest


def test_checksum_mismatch_twice_in_a_row_drops_the_resume_point_and_asks_for_resync():
    state = {"/a": {"v": 1}}
    core, session = synced(state, sequence=10)
    first = core.receive(session, checksum(10, 0xDEAD, 1))
    assert first.checksum.outcome is ChecksumOutcome.MISMATCH
    assert first.resync is None
    assert core.resume_point is not None
    # A match in between resets the count: mismatches must be consecutive.
    assert core.receive(session, checksum(10, expected_digest(state), 1)).checksum.outcome is ChecksumOutcome.MATCH
    assert core.receive(session, checksum(10, 0xDEAD, 1)).resync is None
    second = core.receive(session, checksum(10, 0xDEAD, 1))
    assert second.checksum.consecutive_mismatches == 2
    assert second.resync
    assert core.resume_point is None
    # Deltas still flowing on the old stream must not make the mirror resumable again.
    core.receive(session, deltas(11, kv("/b", 1)))
    assert core.resume_point is None
    core.close_session(session)
    fresh = core.open_session()
    assert not fresh.hello.hello.HasField("resume")
    steps = feed(core, fresh, [
        server_hello("e1", 20), status(pb.SyncStatus.IN_SYNC, 20), *snapshot({"/a": {"v": 1}, "/c": 3}, 20),
    ])
    assert steps[-1].updates == [Update("/c", 3, "1"), Update("/b", None, "")]
    assert core.resume_point == ResumePoint("e1", 20)


def test_checksum_mismatch_limit_is_configurable():
    core, session = synced({"/a": 1}, sequence=10, checksum_mismatch_limit=1)
    assert core.receive(session, checksum(10, 1, 1)).resync


def test_checksums_can_be_turned_off():
    core, session = synced({"/a": 1}, sequence=10, verify_checksums=False)
    assert "checksum" not in core.open_session().hello.hello.features
    assert core.digest == 0
    assert core.receive(session, checksum(10, 1, 1)).checksum.outcome is ChecksumOutcome.SKIPPED


def test_reconnect_hint_is_reported():
    core, session = synced({})
    hint = core.receive(session, pb.ServerMessage(
        reconnect=pb.Reconnect(reason="drain", endpoint="127.0.0.1:2", after_ms=50)
    )).reconnect
    assert (hint.reason, hint.endpoint, hint.after_ms) == ("drain", "127.0.0.1:2", 50)


def test_make_before_break_snapshot_on_a_standby_session_while_the_old_one_keeps_applying():
    core, old = synced({"/a": 1, "/b": 1}, sequence=10)
    standby = core.open_session()
    core.receive(standby, server_hello("e2", 100))
    first, second = snapshot({"/a": 1, "/b": 2, "/c": 5}, 100, chunks=2)
    core.receive(standby, first)
    # The old server still streams; the mirror follows it until the standby is ready.
    assert core.receive(old, deltas(11, kv("/a", 7))).updates == [Update("/a", 7, "1")]
    step = core.receive(standby, second)
    assert step.promoted
    assert step.retired == [old]
    assert old.state is SessionState.CLOSED
    assert step.updates == [Update("/a", 1, "1"), Update("/b", 2, "1"), Update("/c", 5, "1")]
    assert core.live_session is standby
    assert core.resume_point == ResumePoint("e2", 100)
    # Late messages of the retired stream are ignored.
    assert core.receive(old, deltas(12, kv("/a", 99))).updates == []
    assert core.get("/a") == 1


def test_make_before_break_resume_skips_what_the_old_stream_already_applied():
    core, old = synced({"/a": 1}, sequence=10)
    standby = core.open_session()  # offers e1/10
    core.receive(old, deltas(11, kv("/a", 2)))
    core.receive(old, deltas(12, kv("/a", 3)))
    step = core.receive(standby, server_hello("e1", 10, resumed=True))
    assert step.promoted
    assert step.retired == [old]
    assert core.receive(standby, deltas(11, kv("/a", 2))).updates == []
    assert core.receive(standby, deltas(12, kv("/a", 3))).updates == []
    assert core.receive(standby, deltas(13, kv("/a", 4))).updates == [Update("/a", 4, "1")]


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([deltas(1, kv("/a", 1))], "deltas on a session in state awaiting-hello"),
        ([status(pb.SyncStatus.IN_SYNC)], "status before ServerHello"),
        ([server_hello(), deltas(1, kv("/a", 1))], "deltas on a session in state snapshot"),
        ([server_hello(), server_hello()], "second ServerHello"),
        ([server_hello(syncer="bgp")], "syncer 'bgp'"),
        ([server_hello(resumed=True)], "offered no resume point"),
        ([server_hello(), snapshot({"/a": 1, "/b": 2}, 1, chunks=2)[1]], "out of order"),
        ([server_hello(), *snapshot({"/a": 1}, 1, compression="gzip")], "compression 'gzip'"),
        ([server_hello(), pb.ServerMessage(snapshot=pb.SnapshotChunk(
            index=0, count=1, compression="zstd", data=b"not zstd"))], "not valid zstd"),
        ([server_hello(), pb.ServerMessage(snapshot=pb.SnapshotChunk(index=0, count=0))], "zero chunks"),
        ([server_hello(), pb.ServerMessage(snapshot=pb.SnapshotChunk(
            index=0, count=1, data=pb.Deltas(kvs=[kv("/a", None)]).SerializeToString()))], "deletion"),
        ([server_hello(), pb.ServerMessage(snapshot=pb.SnapshotChunk(
            index=0, count=1, total_kvs=3, data=pb.Deltas(kvs=[kv("/a", 1)]).SerializeToString()))],
         "announced 3"),
        ([server_hello(), pb.ServerMessage(snapshot=pb.SnapshotChunk(
            index=0, count=1, data=pb.Deltas(kvs=[kv("/a", 1), kv("/a", 2)]).SerializeToString()))],
         "twice"),
        ([server_hello(), pb.ServerMessage(snapshot=pb.SnapshotChunk(
            index=0, count=1, data=b"\xff\xff\xff"))], "not a Deltas"),
    ],
)
def test_protocol_errors_on_a_fresh_session(messages, match):
    core = SyncClientCore("felix", hostname="n1")
    session = core.open_session()
    with pytest.raises(ProtocolError, match=match):
        feed(core, session, messages)
    assert len(core) == 0
    assert core.resume_point is None


def test_chunk_of_another_snapshot_is_rejected():
    core = SyncClientCore("felix", hostname="n1")
    session = core.open_session()
    a = snapshot({"/a": 1, "/b": 2}, 5, chunks=2)
    b = snapshot({"/a": 1, "/b": 2}, 6, chunks=2)
    feed(core, session, [server_hello("e1", 5), a[0]])
    with pytest.raises(ProtocolError, match="started as 5/2"):
        core.receive(session, b[1])


@pytest.mark.parametrize(("value", "match"), [(b"\xc1", "not valid msgpack"), (b"\xc0", "msgpack nil"),
                                              (pack(1) + b"\x01", "not valid msgpack")])
def test_undecodable_value_in_deltas_leaves_the_mirror_untouched(value, match):
    core, session = synced({"/a": 1, "/b": 2}, sequence=10)
    digest = core.digest
    bad = deltas(11, kv("/a", 5), pb.KV(key="/b", value=value, revision="2"))
    with pytest.raises(ProtocolError, match=match):
        core.receive(session, bad)
    assert core.to_dict() == {"/a": 1, "/b": 2}
    assert core.digest == digest
    assert core.resume_point == ResumePoint("e1", 10)
    core.close_session(session, resync=True)
    assert core.resume_point is None
    assert core.live_session is None


def test_undecodable_value_in_a_snapshot_chunk():
    core = SyncClientCore("felix", hostname="n1")
    session = core.open_session()
    core.receive(session, server_hello())
    data = pb.Deltas(kvs=[pb.KV(key="/a", value=b"\xc1")]).SerializeToString()
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        core.receive(session, pb.ServerMessage(snapshot=pb.SnapshotChunk(index=0, count=1, data=data)))


def test_deltas_going_backwards_are_rejected():
    core, session = synced({}, sequence=10)
    core.receive(session, deltas(12, kv("/a", 1)))
    with pytest.raises(ProtocolError, match="does not follow 12"):
        core.receive(session, deltas(12, kv("/a", 2)))
    assert core.get("/a") == 1


def test_resume_answer_for_another_point_is_rejected():
    core, session = synced({}, sequence=10)
    core.close_session(session)
    second = core.open_session()
    with pytest.raises(ProtocolError, match="client offered e1/10"):
        core.receive(second, server_hello("e1", 9, resumed=True))


def test_unknown_message_kind_is_ignored():
    core, session = synced({"/a": 1})
    assert core.receive(session, pb.ServerMessage()).updates == []


def test_frames_from_the_server_cache_replay_into_an_equal_mirror():
    """Contract test against the committed SnapshotCache: its snapshot and breadcrumb frames."""
    from typha.snapcache.cache import SnapshotCache

    cache = SnapshotCache("felix")
    cache.apply([Update(f"/k{i}", {"i": i}, str(i)) for i in range(20)])
    snap = cache.snapshot()
    core = SyncClientCore("felix", hostname="n1")
    session = core.open_session()
    core.receive(session, server_hello(cache.epoch, snap.sequence))
    for frame in snap.frames:
        core.receive(session, pb.ServerMessage.FromString(frame))
    start = cache.newest
    cache.apply([Update("/k1", None, "30"), Update("/k2", {"i": 200}, "31")])
    cache.apply([Update("/new", {"n": 1}, "32")])
    cache.set_status(SyncStatus.IN_SYNC)
    frames, crumb = [], start
    while crumb.next is not None:
        crumb = crumb.next
        frames.append(crumb.frame)
    # The two deltas crumbs concatenated, then the status crumb on its own.
    core.receive(session, pb.ServerMessage.FromString(frames[0] + frames[1]))
    step = core.receive(session, pb.ServerMessage.FromString(frames[2]))
    assert step.status is SyncStatus.IN_SYNC
    assert core.to_dict() == {key: msgpack.unpackb(value) for key, value, _ in cache.items()}
    verdict = core.receive(session, checksum(cache.newest.sequence, cache.digest, len(cache))).checksum
    assert verdict.outcome is ChecksumOutcome.MATCH


_keys = st.sampled_from([f"/k{i}" for i in range(8)])
_live_values = st.integers(0, 3).map(lambda i: {"v": i})
_values = st.one_of(st.none(), _live_values)


@settings(max_examples=150, deadline=None)
@given(
    before=st.dictionaries(_keys, _live_values),
    batches=st.lists(st.lists(st.tuples(_keys, _values), max_size=6), max_size=6),
    after=st.dictionaries(_keys, _live_values),
    in_sync_first=st.booleans(),
    cuts=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_mirror_and_emitted_updates_track_the_server_state(before, batches, after, in_sync_first, cuts):
    core, session = synced(before, sequence=1)
    applied = dict(before)  # what an agent that applies every emitted update holds
    server = dict(before)
    # Like a server catching a lagging client up, concatenate runs of breadcrumb frames (cut after
    # batch i when cuts[i]) into one message.
    frames: list[bytes] = []
    messages: list[tuple[pb.ServerMessage, dict]] = []
    for index, (sequence, batch) in enumerate(enumerate(batches, start=2)):
        for key, value in batch:
            if value is None:
                server.pop(key, None)
            else:
                server[key] = value
        frames.append(deltas(sequence, *(kv(k, v) for k, v in batch)).SerializeToString())
        if cuts[index] or index == len(batches) - 1:
            messages.append((pb.ServerMessage.FromString(b"".join(frames)), dict(server)))
            frames = []
    for message, server_then in messages:
        step = core.receive(session, message)
        for update in step.updates:
            if update.is_delete:
                applied.pop(update.key)  # raises if the key was absent: such deletes must be dropped
            else:
                assert applied.get(update.key) != update.value  # equal values must be dropped
                applied[update.key] = update.value
        assert core.to_dict() == server_then == applied
        assert core.digest == expected_digest(server_then)
    # A non-resumed reconnect to a server whose state is `after`: reconcile reaches it exactly.
    core.close_session(session)
    second = core.open_session()
    in_sync_status = status(pb.SyncStatus.IN_SYNC, 50)
    if in_sync_first:  # the server was in sync when the snapshot was sent
        steps = feed(core, second, [server_hello("e9", 50), in_sync_status, *snapshot(after, 50, chunks=3)])
    else:  # it says so afterwards: deletions wait for it
        steps = feed(core, second, [server_hello("e9", 50), *snapshot(after, 50, chunks=3), in_sync_status])
    for update in (u for step in steps for u in step.updates):
        if update.is_delete:
            applied.pop(update.key)
        else:
            assert applied.get(update.key) != update.value  # only real changes are emitted
            applied[update.key] = update.value
    assert core.to_dict() == after == applied
    assert core.digest == expected_digest(after)


# -- the session's transition table ------------------------------------------------------------------


@pytest.mark.parametrize("table", [MIRROR_TRANSITIONS, REPLICA_TRANSITIONS], ids=["mirror", "replica"])
def test_every_pair_outside_the_table_is_a_protocol_error_that_leaves_the_state(table):
    for state in SessionState:
        for event in Event:
            session = Session(pb.ClientMessage(), None, table)
            session.state = state
            if (state, event) in table:
                assert session.advance(event) is table[state, event]
            else:
                with pytest.raises(ProtocolError):
                    session.advance(event)
                assert session.state is state


def test_nothing_follows_closed_and_only_a_replica_settles():
    assert not any(state is SessionState.CLOSED for state, _ in MIRROR_TRANSITIONS)
    assert not any(state is SessionState.CLOSED for state, _ in REPLICA_TRANSITIONS)
    assert SessionState.SETTLING not in {*MIRROR_TRANSITIONS.values(), *(s for s, _ in MIRROR_TRANSITIONS)}
    # A replica goes live only on the status that says where its new state stands.
    assert {pair for pair, after in REPLICA_TRANSITIONS.items() if after is SessionState.LIVE} == {
        (SessionState.SETTLING, Event.STATUS), (SessionState.LIVE, Event.DELTAS), (SessionState.LIVE, Event.STATUS),
        (SessionState.LIVE, Event.CHECKSUM)}
