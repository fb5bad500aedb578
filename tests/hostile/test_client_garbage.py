"""typha.client (the asyncio transport, which the trio one and `typha dump` run on) against a server that
sends garbage: every kind of garbage becomes a protocol error on that stream, the client reconnects,
and, when told to give up, stops with a ConnectionError that names the protocol error."""

from __future__ import annotations

import asyncio

import pytest

from typha.client import AsyncSyncClient
from typha.client.events import Backoff

from .support import MODES, GarbageServer


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
        assert len(client.core) == 0 and not client.in_sync

    asyncio.run(asyncio.wait_for(scenario(), 30))
