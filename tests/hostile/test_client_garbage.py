"""typha.client (the asyncio transport, which the trio one and `typha dump` run on) against a server that
sends garbage: every kind of garbage becomes a protocol error on that stream, the client reconnects,
and, when told to give up, stops with a ConnectionError that names the protocol error."""

from __future__ import annotations

import asyncio
import random

import msgpack
import pytest

from typha.backoff import Backoff
from typha.client import AsyncSyncClient
from typha.proto import sync_pb2 as pb

from .support import MODES, GarbageServer, frame, in_sync, snapshot_of, valid_hello


@pytest.mark.parametrize("mode", sorted(set(MODES) - {"wrong-shapes"}))  # that one is valid protocol
def test_garbage_is_a_protocol_error_then_reconnect_then_a_clear_give_up(mode):
    async def scenario() -> None:
        server = GarbageServer(mode, seed=7, hold_secs=2.0)
        port = await server.start()
        client = AsyncSyncClient([f"127.0.0.1:{port}"], "felix", hostname="n1", max_consecutive_failures=2,
                                 backoff=Backoff(initial=0.02, maximum=0.05), connect_timeout=5, read_timeout=5)
        try:
            with pytest.raises(ConnectionError) as failure:
                await client.wait()
        finally:
            await client.close()
            await server.stop()
        assert "protocol error" in str(failure.value)
        assert server.streams == 3  # the first stream, then a reconnect per allowed failure
        assert client.counters.protocol_errors == 3
        assert len(client.core) == 0
        assert not client.in_sync

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_reconnect_hint_cannot_park_the_client():
    """A refusing server's hint says how long to spread reconnects over; 2**32-1 ms (49 days) must not
    make the client wait longer than its own backoff maximum."""
    streams = iter(range(1_000_000))

    def refuse_then_serve(rng, syncer):
        if next(streams) == 0:
            return [frame(reconnect=pb.Reconnect(reason="go away", after_ms=2**32 - 1))]
        return [valid_hello(syncer), snapshot_of({"/calico/v1/config/A": msgpack.packb("x")}), in_sync()]

    async def scenario() -> None:
        server = GarbageServer(refuse_then_serve, hold_secs=0.0)
        port = await server.start()
        client = AsyncSyncClient([f"127.0.0.1:{port}"], "felix", hostname="n1",
                                 backoff=Backoff(initial=0.02, maximum=0.5), rng=random.Random(1))
        try:
            client.start()
            assert await client.wait_in_sync(10), "parked by the hint"
        finally:
            await client.close()
            await server.stop()
        assert client.counters.reconnect_hints == 1
        assert client.core.get("/calico/v1/config/A") == "x"

    asyncio.run(asyncio.wait_for(scenario(), 30))
