"""A deliberately minimal Sync client for tests: raw frames out, ServerMessages in.

It pins the server's wire behaviour independently of typha.client.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import zstandard

from typha.proto import sync_pb2 as pb

TIMEOUT = 10.0


class RawClient:
    def __init__(self, port: int, options: list[tuple[str, int]] | None = None) -> None:
        # A connection of its own, like a real client's: the server allows few streams per connection.
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                                 options=[("grpc.use_local_subchannel_pool", 1), *(options or [])])
        self.call = self.channel.stream_stream(
            "/typha.v1.Sync/Sync", request_serializer=None, response_deserializer=pb.ServerMessage.FromString
        )()

    async def send(self, message: pb.ClientMessage | bytes) -> None:
        await self.call.write(message if isinstance(message, bytes) else message.SerializeToString())

    async def hello(self, syncer_type: str = "felix", *, resume: pb.ResumePoint | None = None,
                    features: tuple[str, ...] = ("checksum", "reconnect")) -> None:
        hello = pb.ClientHello(hostname="node-1", syncer_type=syncer_type, compressions=["zstd"],
                               features=list(features))
        if resume is not None:
            hello.resume.CopyFrom(resume)
        await self.send(pb.ClientMessage(hello=hello))

    async def read(self) -> pb.ServerMessage:
        message = await asyncio.wait_for(self.call.read(), TIMEOUT)
        assert message is not grpc.aio.EOF, "stream ended"
        return message

    async def read_kind(self, kind: str, *, answer_pings: bool = True) -> pb.ServerMessage:
        """The next message of `kind`, skipping pings (answered) and other kinds."""
        while True:
            message = await self.read()
            payload = message.WhichOneof("payload")
            if payload == "ping" and answer_pings:
                await self.send(pb.ClientMessage(pong=pb.Pong(ping_timestamp_ns=message.ping.timestamp_ns)))
            if payload == kind:
                return message

    async def read_snapshot(self) -> tuple[pb.ServerHello, dict[str, bytes]]:
        hello = (await self.read_kind("hello")).hello
        state: dict[str, bytes] = {}
        while True:
            chunk = (await self.read_kind("snapshot")).snapshot
            data = zstandard.ZstdDecompressor().decompress(chunk.data) if chunk.compression else chunk.data
            state.update((kv.key, kv.value) for kv in pb.Deltas.FromString(data).kvs)
            if chunk.index == chunk.count - 1:
                return hello, state

    async def catch_up(self, state: dict[str, bytes], sequence: int, target: int) -> dict[str, bytes]:
        """Apply deltas after a snapshot until the stream reaches `target`."""
        while sequence < target:
            deltas = (await self.read_kind("deltas")).deltas
            for kv in deltas.kvs:
                if kv.value:
                    state[kv.key] = kv.value
                else:
                    state.pop(kv.key, None)
            sequence = deltas.sequence
        return state

    async def status(self) -> tuple[grpc.StatusCode, str]:
        with contextlib.suppress(grpc.aio.AioRpcError):
            while await asyncio.wait_for(self.call.read(), TIMEOUT) is not grpc.aio.EOF:
                pass
        return await self.call.code(), await self.call.details()

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()
