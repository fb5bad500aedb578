"""Clients that abuse the server's limits are cut off with a status and a reason, and nobody else notices:
streams that never send a hello, messages beyond the maximum receive size (gRPC's, or the server's own
lower one; as the hello and later), and a client that floods pongs. A well-behaved client follows a
bounded churn meanwhile and must receive every update (no timing is asserted; waits are bounded only to
fail instead of hanging)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import grpc
import msgpack
from prometheus_client import REGISTRY

from bench import h2sink
from typha.model.kv import SyncStatus, Update
from typha.proto import sync_pb2 as pb
from typha.snapcache.cache import CacheLimits, SnapshotCache
from typha.syncserver.limits import max_incoming_connections, peer_ip
from typha.syncserver.server import (
    MAX_CLIENT_MESSAGE_BYTES,
    MAX_EPOCH_BYTES,
    MAX_HELLO_FIELD_BYTES,
    MAX_INBOUND_MESSAGE_BYTES,
    ServerSettings,
    SyncServer,
)
from typha.testing.wait import wait_until_async

from ..faults.attacks import close_all, open_stalled, silent_sockets, still_open
from ..integration.sync_raw import RawClient

CHURN_UPDATES = 60


async def churn(cache: SnapshotCache) -> int:
    """A bounded stream of updates while the abuse goes on; returns the final sequence."""
    for n in range(CHURN_UPDATES):
        cache.apply([Update(f"/calico/v1/config/K{n % 7}", {"n": n}, str(n))])
        await asyncio.sleep(0.01)
    return cache.newest.sequence


async def follow(client: RawClient, until: asyncio.Future[int]) -> dict[str, bytes]:
    """Apply everything the well-behaved client receives until it reaches the churn's final sequence."""
    _, state = await client.read_snapshot()
    sequence = 0
    while not (until.done() and sequence >= until.result()):
        message = await client.read()  # pings come every interval, so the condition is re-checked
        kind = message.WhichOneof("payload")
        if kind == "ping":
            await client.send(pb.ClientMessage(pong=pb.Pong(ping_timestamp_ns=message.ping.timestamp_ns)))
        elif kind == "deltas":
            for kv in message.deltas.kvs:
                if kv.value:
                    state[kv.key] = kv.value
                else:
                    state.pop(kv.key, None)
            sequence = message.deltas.sequence
    return state


async def no_hello(port: int) -> tuple[grpc.StatusCode, str]:
    client = RawClient(port)
    try:
        return await client.status()
    finally:
        await client.close()


def client_errors(reason: str) -> float:
    return REGISTRY.get_sample_value("typha_client_stream_errors", {"reason": reason}) or 0.0


async def oversized(port: int, after_handshake: bool, size: int = MAX_INBOUND_MESSAGE_BYTES + 10
                    ) -> tuple[grpc.StatusCode, str]:
    client = RawClient(port)
    try:
        if after_handshake:
            await client.hello("felix", features=())
            await client.read_snapshot()
        huge = pb.ClientMessage(hello=pb.ClientHello(hostname="x" * size))
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await client.send(huge)
        return await client.status()
    finally:
        await client.close()


async def pong_flood(port: int) -> int:
    """Sends pongs as fast as flow control lets it, for a bounded time; returns how many went out."""
    client = RawClient(port)
    sent = 0
    try:
        await client.hello("felix", features=())
        await client.read_snapshot()
        pong = pb.ClientMessage(pong=pb.Pong()).SerializeToString()
        with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
            async with asyncio.timeout(1.5):
                while sent < 200_000:
                    await client.send(pong)
                    sent += 1
        return sent
    finally:
        await client.close()


def test_abusive_clients_are_cut_off_with_reasons_while_others_receive_everything():
    async def scenario() -> None:
        caches = {"felix": SnapshotCache("felix")}
        caches["felix"].apply([Update("/calico/v1/config/A", {"x": 1}, "1")])
        caches["felix"].set_status(SyncStatus.IN_SYNC)
        server = SyncServer(caches, ServerSettings(handshake_timeout_secs=1.0, ping_interval_secs=0.2,
                                                   pong_timeout_secs=30))
        errors_before = {reason: client_errors(reason) for reason in ("no_hello", "ended_before_hello", "oversized")}
        await server.start("127.0.0.1", 0)
        good = RawClient(server.port)
        try:
            await good.hello("felix", features=())
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            follower = asyncio.create_task(follow(good, done))
            abusers = asyncio.gather(
                *(no_hello(server.port) for _ in range(50)),
                *(oversized(server.port, after_handshake=False) for _ in range(5)),
                *(oversized(server.port, after_handshake=True) for _ in range(5)),
                pong_flood(server.port),
                *(oversized(server.port, after_handshake=after, size=MAX_CLIENT_MESSAGE_BYTES + 10)
                  for after in (False, True, False, True)),
            )
            done.set_result(await churn(caches["felix"]))
            results = await asyncio.wait_for(abusers, 30)
            state = await asyncio.wait_for(follower, 30)
        finally:
            await good.close()
            await server.stop(0)
        silent, first_huge, later_huge, pongs = results[:50], results[50:55], results[55:60], results[60]
        over_ours = results[61:]
        for code, details in silent:
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no ClientHello within" in details
        for code, details in [*first_huge, *later_huge]:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
            assert "larger than max" in details, details
        assert pongs > 0
        # Over the server's own limit (not gRPC's): read, refused with a reason and counted.
        for code, details in over_ours:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
            assert f"over the limit of {MAX_CLIENT_MESSAGE_BYTES} bytes" in details, details
        errors = {reason: client_errors(reason) - before for reason, before in errors_before.items()}
        # gRPC core ends an over-its-limit hello before the server reads it: seen as a stream ended early.
        assert errors == {"no_hello": 50, "ended_before_hello": 5, "oversized": 4}, errors
        assert state == {"/calico/v1/config/A": msgpack.packb({"x": 1}), **{
            f"/calico/v1/config/K{k}": msgpack.packb({"n": max(n for n in range(CHURN_UPDATES) if n % 7 == k)})
            for k in range(7)}}

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_streams_without_a_hello_count_toward_the_connection_limit():
    """A flood of hello-less streams holds at most the limit (plus the one let in to hear its hint): the
    rest are refused at once instead of waiting out the handshake timeout, and a real client is served
    again once the flood has been cut off."""
    limit, flood = 5, 20

    async def scenario() -> None:
        caches = {"felix": SnapshotCache("felix")}
        caches["felix"].apply([Update("/calico/v1/config/A", {"x": 1}, "1")])
        caches["felix"].set_status(SyncStatus.IN_SYNC)
        server = SyncServer(caches, ServerSettings(handshake_timeout_secs=1.5, max_connections=limit))
        await server.start("127.0.0.1", 0)
        try:
            silent = [asyncio.create_task(no_hello(server.port)) for _ in range(flood)]
            await wait_until_async(lambda: sum(task.done() for task in silent) >= flood - limit - 1,
                                   "the silent connections beyond the limit to be dropped", timeout=10, interval=0.01)
            assert server.awaiting_hello == limit + 1
            refused = await hello_while_full(server.port)
            results = await asyncio.wait_for(asyncio.gather(*silent), 20)
            assert server.awaiting_hello == 0
            late = RawClient(server.port)
            try:
                await late.hello("felix", features=())
                _, state = await late.read_snapshot()
            finally:
                await late.close()
        finally:
            await server.stop(0)
        timed_out = [r for r in results if r[0] == grpc.StatusCode.DEADLINE_EXCEEDED]
        turned_away = [r for r in results if r[0] == grpc.StatusCode.UNAVAILABLE]
        assert len(timed_out) == limit + 1 and len(turned_away) == flood - limit - 1, results
        assert all("no ClientHello within" in details for _, details in timed_out)
        assert all("awaiting a hello" in details for _, details in turned_away)
        assert refused[0] == grpc.StatusCode.UNAVAILABLE
        assert "too many connections" in refused[1]
        assert state == {"/calico/v1/config/A": msgpack.packb({"x": 1})}

    asyncio.run(asyncio.wait_for(scenario(), 60))


async def hello_while_full(port: int) -> tuple[grpc.StatusCode, str]:
    """A well-behaved client arriving while hello-less streams fill the server: it is refused too."""
    client = RawClient(port)
    try:
        await client.hello("felix", features=())
        return await client.status()
    finally:
        await client.close()


def test_hello_strings_over_their_limits_are_refused_and_logs_stay_bounded(caplog):
    """Each hello string one byte over its limit gets INVALID_ARGUMENT naming the field (and not echoing
    the value); at the limit the hello is served. Log lines about hostile clients stay short."""
    big = MAX_CLIENT_MESSAGE_BYTES - 1024  # under the message limit, so the hello itself is read

    def hello(**fields: str) -> pb.ClientMessage:
        resume = fields.pop("epoch", None)
        message = pb.ClientMessage(hello=pb.ClientHello(**fields))
        if resume is not None:
            message.hello.resume.CopyFrom(pb.ResumePoint(epoch=resume, sequence=1))
        return message

    over = {**{name: limit + 1 for name, limit in MAX_HELLO_FIELD_BYTES.items()}, "epoch": MAX_EPOCH_BYTES + 1}
    # A multi-byte character: the limits are in bytes, as a DNS name's are.
    refused = {name: hello(**{name: "é" * (size // 2 + 1)}) for name, size in over.items()}
    accepted = {name: hello(**{name: "x" * limit}, **({"syncer_type": "x" * limit} if name == "syncer_type" else {}))
                for name, limit in {**MAX_HELLO_FIELD_BYTES, "epoch": MAX_EPOCH_BYTES}.items()
                if name != "syncer_type"}

    async def ask(port: int, message: pb.ClientMessage) -> tuple[grpc.StatusCode, str] | str:
        client = RawClient(port)
        try:
            await client.send(message)
            with contextlib.suppress(grpc.aio.AioRpcError):
                first = await asyncio.wait_for(client.call.read(), 10)
                if first is not grpc.aio.EOF and first.WhichOneof("payload") == "hello":
                    return "served"
            return await client.status()
        finally:
            await client.close()

    async def scenario() -> dict[str, tuple[grpc.StatusCode, str] | str]:
        caches = {"felix": SnapshotCache("felix")}
        caches["felix"].set_status(SyncStatus.IN_SYNC)
        server = SyncServer(caches, ServerSettings(handshake_timeout_secs=2))
        await server.start("127.0.0.1", 0)
        try:
            cases = {**{f"over-{k}": v for k, v in refused.items()}, **{f"at-{k}": v for k, v in accepted.items()},
                     "unknown-syncer": hello(syncer_type="\n" * MAX_HELLO_FIELD_BYTES["syncer_type"]),
                     "huge-syncer": hello(syncer_type="s" * big),
                     "made-up-features": pb.ClientMessage(hello=pb.ClientHello(features=[f"f{n}" for n in range(500)]))}
            answers = dict(zip(cases, await asyncio.gather(*(ask(server.port, m) for m in cases.values())),
                               strict=True))
            # Made-up feature names are not kept: the table of distinct feature sets does not grow.
            assert len(server._feature_sets) <= 1
            return answers
        finally:
            await server.stop(0)

    caplog.set_level("INFO", logger="typha.syncserver.server")
    answers = asyncio.run(asyncio.wait_for(scenario(), 60))
    for name in over:
        code, details = answers[f"over-{name}"]
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
        assert f".{name} is" in details and "over the limit" in details and len(details) < 200, details
    for name in accepted:
        assert answers[f"at-{name}"] == "served", (name, answers[f"at-{name}"])
    code, details = answers["unknown-syncer"]
    # Echoed quoted and clipped: no newlines from the client in the details or the log line.
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown syncer type" in details, (code, details[:200])
    assert "\n" not in details and len(details) < 600, details
    code, details = answers["huge-syncer"]
    assert code == grpc.StatusCode.INVALID_ARGUMENT and ".syncer_type is" in details, (code, details[:200])
    assert answers["made-up-features"] == "served"
    assert caplog.records
    assert max(len(record.getMessage()) for record in caplog.records) < 1000
    assert not any("\n" in record.getMessage() for record in caplog.records)


# -- issue 17: bounded per peer ----------------------------------------------------------------------


def big_cache(keys: int = 400, value_bytes: int = 3000) -> SnapshotCache:
    """A cache whose snapshot (incompressible values, ~1 MB) is far larger than HTTP/2's 64 KiB window."""
    cache = SnapshotCache("felix", limits=CacheLimits(max_window_crumbs=5))
    rng = random.Random("big")
    cache.apply([Update(f"/calico/v1/config/K{n}", {"x": rng.randbytes(value_bytes // 2).hex()}, "1")
                 for n in range(keys)])
    cache.set_status(SyncStatus.IN_SYNC)
    return cache


async def until(predicate, what: str, timeout: float = 30.0) -> None:
    """A bounded wait for an outcome (a hang fails the test; no timing is asserted)."""
    await wait_until_async(predicate, what, timeout=timeout, interval=0.05)


def test_a_client_that_stalls_before_its_snapshot_is_dropped_by_the_write_timeout(caplog):
    """Before issue 17 the write timeout skipped clients without a position: this one was never dropped."""

    async def scenario() -> None:
        caches = {"felix": big_cache()}
        server = SyncServer(caches, ServerSettings(handshake_timeout_secs=5, write_timeout_secs=0.5,
                                                   watchdog_interval_secs=0.1))
        await server.start("127.0.0.1", 0)
        stalled = await open_stalled("127.0.0.1", server.port, 0)
        try:
            await until(lambda: any(c.hostname == "bench-0" for c in server.connections), "the stalled client")
            conn = next(c for c in server.connections if c.hostname == "bench-0")
            assert conn.position is None and conn.start is not None  # blocked inside its snapshot
            await until(lambda: conn not in server.connections, "the stalled client to be dropped")
            assert conn.start is None or conn.drop is not None
        finally:
            stalled.close()
            await server.stop(0)

    caplog.set_level("INFO", logger="typha.syncserver.server")
    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert any("client is not reading" in r.getMessage() for r in caplog.records)


def test_a_client_whose_snapshot_crumb_leaves_the_window_is_dropped_mid_snapshot(caplog):
    """With a long write timeout, the fall-behind limit (the resume window) still bounds what a client
    in the middle of its snapshot pins: the chain from its snapshot's crumb on."""

    async def scenario() -> None:
        cache = big_cache()
        server = SyncServer({"felix": cache}, ServerSettings(handshake_timeout_secs=5, write_timeout_secs=600,
                                                             watchdog_interval_secs=0.1))
        await server.start("127.0.0.1", 0)
        stalled = await open_stalled("127.0.0.1", server.port, 0)
        try:
            await until(lambda: any(c.start is not None for c in server.connections), "a client mid-snapshot")
            for n in range(20):  # the window keeps 5 crumbs
                cache.apply([Update("/calico/v1/config/Churn", {"n": n}, str(n))])
            await until(lambda: not server.connections, "the client to be dropped for falling behind")
        finally:
            stalled.close()
            await server.stop(0)

    caplog.set_level("INFO", logger="typha.syncserver.server")
    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert any("client fell behind" in r.getMessage() for r in caplog.records)


def test_clients_leaving_mid_snapshot_log_no_error_and_are_counted(caplog):
    """Before issue 17 each logged gRPC's ERROR traceback (ExecuteBatchError)."""
    leavers = 10

    async def scenario() -> float:
        caches = {"felix": big_cache()}
        server = SyncServer(caches, ServerSettings(handshake_timeout_secs=5, write_timeout_secs=600))
        before = client_errors("disconnected")
        await server.start("127.0.0.1", 0)
        try:
            for index in range(leavers):
                stalled = await open_stalled("127.0.0.1", server.port, index)
                await until(lambda: any(c.start is not None and c.writing_since for c in server.connections),
                            "a write blocked mid-snapshot")
                assert stalled.transport is not None
                stalled.transport.abort()  # gone, with the server's write in flight
                await until(lambda: not server.connections, "the server to notice")
            # Every leaver's end is noticed, whichever gRPC reports first: its blocked write fails, its task
            # is cancelled as the stream ends, or its final status cannot be sent.
            await until(lambda: client_errors("disconnected") - before >= leavers, "the disconnects to be counted")
        finally:
            await server.stop(0)
        # The leavers' handlers had all ended before the stop: a second count of one of them (gRPC's failure
        # to send its final status, logged from its task once its handler has returned) shows here.
        return client_errors("disconnected") - before

    caplog.set_level("DEBUG")
    counted = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert counted == leavers  # once each, however many of those ways a leaver's end was reported
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [f"{r.name} {r.levelname}: {r.getMessage()}" for r in loud]


def test_clients_that_cancel_their_stream_are_counted_once_but_not_when_the_server_stops(caplog):
    """A client that goes away while its stream waits for updates ends it by cancellation (no write to
    fail): counted as a disconnect all the same, once. Streams the server's own stop cancels are not."""

    async def scenario() -> float:
        caches = {"felix": SnapshotCache("felix")}
        caches["felix"].set_status(SyncStatus.IN_SYNC)
        server = SyncServer(caches, ServerSettings(handshake_timeout_secs=5))
        before = client_errors("disconnected")
        await server.start("127.0.0.1", 0)
        leaving, staying = RawClient(server.port), RawClient(server.port)
        try:
            for client in (leaving, staying):
                await client.hello("felix", features=())
                await client.read_snapshot()
            await until(lambda: len(server.connections) == 2, "both streams to be served")
            await leaving.close()
            await until(lambda: len(server.connections) == 1, "the server to notice")
            await server.stop(0)
            await until(lambda: not server.connections, "the stop to end the other stream")
        finally:
            await server.stop(0)
            await staying.close()
            await leaving.close()
        return client_errors("disconnected") - before

    caplog.set_level("DEBUG")
    counted = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert counted == 1
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [f"{r.name} {r.levelname}: {r.getMessage()}" for r in loud]


def test_per_ip_cap_refuses_streams_beyond_it_and_frees_slots_as_clients_leave():
    async def scenario() -> None:
        caches = {"felix": SnapshotCache("felix")}
        caches["felix"].set_status(SyncStatus.IN_SYNC)
        server = SyncServer(caches, ServerSettings(handshake_timeout_secs=5, max_connections_per_ip=2))
        before = client_errors("per_ip_limit")
        await server.start("127.0.0.1", 0)
        clients = [RawClient(server.port) for _ in range(2)]  # a RawClient's stream starts when it is made
        try:
            for client in clients:
                await client.hello("felix", features=())
                await client.read_snapshot()
            clients.append(RawClient(server.port))
            # Refused before its hello is read (no slot is held meanwhile): the hello may find the call over.
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await clients[2].hello("felix", features=())
            code, details = await clients[2].status()
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
            assert "too many connections from 127.0.0.1 (limit 2 per IP)" in details
            assert client_errors("per_ip_limit") - before == 1
            await clients[0].close()
            await until(lambda: server.per_ip.count("127.0.0.1") == 1, "the slot to be freed")
            late = RawClient(server.port)
            clients.append(late)
            await late.hello("felix", features=())
            _, state = await late.read_snapshot()
            assert state == {}
        finally:
            for client in clients:
                await client.close()
            await server.stop(0)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_peer_ip_of_grpc_peer_strings():
    assert peer_ip("ipv4:10.0.0.1:5473") == "10.0.0.1"
    assert peer_ip("ipv6:[fd00::1]:5473") == "fd00::1"
    assert peer_ip("ipv6:%5B::1%5D:5473") != ""
    assert peer_ip("unix:/run/typha.sock") == "unix"


def test_silent_sockets_beyond_the_tcp_quota_are_closed_at_once():
    """gRPC core's connection quota bounds a flood of sockets that never start HTTP/2 in count (the
    handshake timeout, set long here, bounds it in time)."""
    quota = max_incoming_connections(10)
    extra = 60
    h2sink.raise_fd_limit()

    async def scenario() -> int:
        caches = {"felix": SnapshotCache("felix")}
        caches["felix"].set_status(SyncStatus.IN_SYNC)
        server = SyncServer(caches, ServerSettings(handshake_timeout_secs=120, max_connections=10))
        await server.start("127.0.0.1", 0)
        sockets = await asyncio.to_thread(silent_sockets, "127.0.0.1", server.port, quota + extra)
        try:
            await until(lambda: len(sockets) - still_open(sockets) >= extra, "the sockets beyond the quota to close")
            return len(sockets) - still_open(sockets)
        finally:
            close_all(sockets)
            await server.stop(0)

    closed = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert extra <= closed < extra + 16, closed  # the quota's, not a timeout's (a few may be in flight)
