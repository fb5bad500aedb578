"""Coverage-guided fuzzing with atheris (optional, run by hand; the hypothesis suites are what CI runs).

    pip install atheris        # a manylinux wheel for CPython 3.11: no compiler needed
    python -m tests.hostile.fuzz_atheris client-core [-runs=100000] [-max_total_time=600] [CORPUS_DIR]
    python -m tests.hostile.fuzz_atheris replica-core [-runs=100000]
    python -m tests.hostile.fuzz_atheris server [-runs=2000]

client-core: the input drives typha.client's sans-IO core through a stream that interleaves the messages
of a valid stream with messages parsed from the input's bytes; the invariants are those of
test_client_core_fuzz (only ProtocolError, mirror untouched on error, updates add up to the mirror,
digest consistent).
replica-core: the same for the core in replica mode: the input's bytes are raw messages (frames, runs of
frames, garbage) between those of a valid replica stream, passed through to a SnapshotCache; the invariants
are those of test_replica_mode_survives_hostile_streams_with_a_consistent_cache.
server: the input is the first message of a real gRPC stream to an in-process SyncServer; the status
must be what an independent parse predicts (test_server_fuzz), and a valid hello is answered with a
ServerHello.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["typha"]):
    from google.protobuf.message import DecodeError

    import typha.syncserver.server  # noqa: F401 (instrumented here, used through the test harness)
    from typha.client import SyncClientCore
    from typha.proto import sync_pb2 as pb

from tests.hostile.test_client_core_fuzz import (
    check_replica,
    feed,
    good_stream,
    replica_state,
    replica_stream,
    split_or_none,
)


def client_core(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    core = SyncClientCore("felix", hostname="n1")
    good = good_stream(fdp.ConsumeIntInRange(0, 3))
    session, position, shadow = core.open_session(), 0, {}
    while fdp.remaining_bytes():
        if fdp.ConsumeBool():
            message = good[position % len(good)]
            position += 1
        else:
            try:
                message = pb.ServerMessage.FromString(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256)))
            except DecodeError:
                continue
        fed = feed(core, session, message, shadow)
        if fed is not session:
            session, position = fed, 0


def replica_core(data: bytes) -> None:
    from typha.client import ProtocolError
    from typha.snapcache.cache import SnapshotCache

    fdp = atheris.FuzzedDataProvider(data)
    cache = SnapshotCache("felix")
    core = SyncClientCore("felix", hostname="n1", replica=cache, checksum_mismatch_limit=1)
    _, good = replica_stream(fdp.ConsumeIntInRange(0, 3))
    session, position = core.open_session(), 0
    while fdp.remaining_bytes():
        if fdp.ConsumeBool():
            raw = good[position % len(good)]
            position += 1
        else:
            raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
        single = len(split_or_none(raw) or [0, 0]) == 1
        before = replica_state(cache)
        try:
            step = core.receive_frames(session, raw)
        except ProtocolError:
            if single:
                assert replica_state(cache) == before, "a refused message changed the replica"
            core.close_session(session, resync=True)
            session, position = core.open_session(), 0
            check_replica(cache)
            continue
        check_replica(cache)
        if step.resync is not None:
            core.close_session(session, resync=True)
            session, position = core.open_session(), 0


def server_target() -> tuple[object, object]:
    """A started server on a loop thread, and the per-input function that sends one first message."""
    from tests.hostile.test_server_fuzz import Harness, expected_for_hello
    from tests.integration.sync_raw import RawClient

    harness = Harness()

    def one(data: bytes) -> None:
        expected = expected_for_hello(data, set(harness.caches))

        async def scenario() -> None:
            client = RawClient(harness.server.port)
            try:
                await client.send(data)
                if expected is None:
                    assert (await client.read()).WhichOneof("payload") == "hello"
                else:
                    code, details = await client.status()
                    assert code == expected[0] and expected[1] in details, (code, details)
            finally:
                await client.close()

        harness.loop.run(scenario())

    return harness, one


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in ("client-core", "replica-core", "server"):
        sys.exit(f"usage: {argv[0]} client-core|replica-core|server [libFuzzer options]")
    target = argv[1]
    args = [argv[0], *argv[2:]]
    if target == "client-core":
        atheris.Setup(args, client_core)
    elif target == "replica-core":
        atheris.Setup(args, replica_core)
    else:
        _, one = server_target()
        atheris.Setup(args, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
