"""Shared pieces of the fault matrix: a cluster rig, a cutting loopback proxy and a raw recording client.

The rig is the emulator (its own thread), a GuaranteeChecker attached to it, typha either in-process
(a TyphaDaemon on the test's loop) or as a `typha serve` process, and AsyncSyncClients whose
callbacks are the checker's records. Every wait is bounded; every case ends with `judge()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.h2sink import SinkStream, StreamStats
from typha.client import AsyncSyncClient, Backoff
from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.model.kv import SyncStatus
from typha.proto import sync_pb2 as pb
from typha.source.datastore import convert_objects
from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.guarantees import ClientRecord, GuaranteeChecker, pack
from typha.testing.procs import free_port

from ..integration.churn import apply, random_op

SYNCERS = ("felix", "bgp")
CONVERGE_SECS = 60.0  # a bound against hangs on a loaded machine, not a timing claim


def seed(api: KubeAPIEmulator, rng: random.Random, ops: int = 40) -> None:
    for _ in range(ops):
        apply(api, random_op(rng))


async def churn(api: KubeAPIEmulator, rng: random.Random, count: int, *, pause: float = 0.005) -> None:
    for _ in range(count):
        await asyncio.to_thread(apply, api, random_op(rng))
        if rng.random() < 0.3:
            await asyncio.sleep(pause)


def seed_bulk(api: KubeAPIEmulator, rng: random.Random, pods: int = 300, labels: int = 100) -> None:
    """Pods with many incompressible labels in a namespace of their own: a snapshot of some megabytes,
    so that a client which stops reading blocks the server's writes inside its snapshot."""
    api.upsert(objects.namespace("bulk", {}))
    for i in range(pods):
        values = {f"l{n:03d}": rng.randbytes(31).hex() for n in range(labels)}
        api.upsert(objects.pod("bulk", f"bulk-{i}", node="node-1", ip=f"10.66.{i // 250}.{i % 250 + 1}",
                               labels=values))


def expected(api: KubeAPIEmulator) -> dict[str, dict[str, bytes]]:
    objects = api.objects()
    return {t: {k: pack(v) for k, v in convert_objects(t, objects).items()} for t in SYNCERS}  # type: ignore[misc]


@dataclass
class Rig:
    api: KubeAPIEmulator
    kubeconfig: Path
    checker: GuaranteeChecker
    kube: KubeClient | None = None
    daemon: TyphaDaemon | None = None
    clients: list[tuple[AsyncSyncClient, ClientRecord]] = field(default_factory=list)
    records: list[ClientRecord] = field(default_factory=list)  # clients judged, whatever their transport

    async def start_daemon(self, **settings: Any) -> TyphaDaemon:
        config = TyphaConfig(server_host="127.0.0.1", server_port=free_port(), checksum_interval_secs=0.3,
                             **settings)
        if self.kube is None:
            self.kube = KubeClient.from_kubeconfig(str(self.kubeconfig))
        self.daemon = TyphaDaemon(config, kube=self.kube)
        await self.daemon.start()
        self.checker.watch_daemon(self.daemon)
        return self.daemon

    def add_clients(self, endpoint: str, per_syncer: int = 3, prefix: str = "node", **options: Any
                    ) -> list[AsyncSyncClient]:
        added = []
        for syncer_type in SYNCERS:
            for i in range(per_syncer):
                name = f"{prefix}-{i}"
                record = self.checker.client(f"{name}/{syncer_type}", syncer_type)
                options.setdefault("backoff", Backoff(initial=0.05, maximum=0.5))
                client = AsyncSyncClient([endpoint], syncer_type, hostname=name, callbacks=record, **options)
                client.start()
                self.clients.append((client, record))
                self.records.append(record)
                added.append(client)
        return added

    async def wait_in_sync(self, clients: Iterable[AsyncSyncClient] | None = None) -> None:
        group = list(clients) if clients is not None else [c for c, _ in self.clients]
        results = await asyncio.gather(*(c.wait_in_sync(CONVERGE_SECS) for c in group))
        assert all(results), "clients did not get in sync: " + ", ".join(
            f"{c.core.hostname}/{c.core.syncer_type}={c.counters}" for c, ok in zip(group, results, strict=True)
            if not ok)

    async def judge(self, *, server_digests: bool = True) -> None:
        """Wait (bounded) until every client's record holds the API's state, then assert the verdict."""
        want = await asyncio.to_thread(expected, self.api)
        deadline = time.monotonic() + CONVERGE_SECS
        while time.monotonic() < deadline:
            if all(r.mirror == want[r.syncer_type] and r.statuses and r.statuses[-1][1] is SyncStatus.IN_SYNC
                   for r in self.records):
                break
            await asyncio.sleep(0.1)
        for client, record in self.clients:
            record.set_final(digest=client.core.digest, mirror=client.core.to_dict())
        digests = None
        if server_digests and self.daemon is not None:
            digests = {name: cache.digest for name, cache in self.daemon.caches.items()}
        verdict = self.checker.verdict(await asyncio.to_thread(self.api.objects), server_digests=digests)
        assert verdict.ok, str(verdict)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c, _ in self.clients))
        if self.daemon is not None:
            await self.daemon.stop()


@contextlib.contextmanager
def emulator(tmp_path: Path, rng: random.Random, seed_ops: int = 40):
    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        seed(api, rng, seed_ops)
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        rig = Rig(api, kubeconfig, GuaranteeChecker(SYNCERS).attach(api))
        try:
            yield rig
        finally:
            if rig.kube is not None:
                rig.kube.close()


def run(coro: Any, timeout: float = 150.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- typha serve as a process ----------------------------------------------------------------------


class ServeProcess:
    """`typha serve` (one process, no workers) on fixed ports, so a restart listens where it was."""

    def __init__(self, kubeconfig: Path, log: Path, *extra: str) -> None:
        self.port, self.health_port = free_port(), free_port()
        self.args = [sys.executable, "-m", "typha.cli", "serve", "--kubeconfig", str(kubeconfig),
                     "--workers", "1", "--server-host", "127.0.0.1", "--server-port", str(self.port),
                     "--health-enabled", "true", "--health-host", "127.0.0.1", "--health-port",
                     str(self.health_port), *extra]
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=out)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.tail()
            if readiness(self.health_port)[0] == 200:
                return
            time.sleep(0.1)
        raise AssertionError("typha serve never became ready\n" + self.tail())

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def readiness(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readiness", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


# -- a loopback proxy that cuts connections at a chosen byte ----------------------------------------


class CuttingProxy:
    """Relays loopback TCP to `target_port`; cuts a connection (RST both ways) once it has relayed a
    given number of server→client bytes, so the cut lands inside a message, not between them."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.next_budgets: list[int] = []  # for the next accepted connections, in order
        self.links: set[_Link] = set()
        self.cuts = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def cut_live(self, after_bytes: int) -> int:
        """Cut every open connection after `after_bytes` more bytes reach its client."""
        for link in self.links:
            link.budget = link.downstream + after_bytes
        return len(self.links)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer, self.next_budgets.pop(0) if self.next_budgets else None)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        link.upstream = up_writer
        self.links.add(link)
        try:
            await asyncio.gather(self._pump(reader, up_writer, link, downstream=False),
                                 self._pump(up_reader, writer, link, downstream=True))
        finally:
            self.links.discard(link)
            link.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link,
                    *, downstream: bool) -> None:
        try:
            while not link.cut:
                data = await reader.read(65536)
                if not data:
                    break
                if downstream and link.budget is not None and link.downstream + len(data) >= link.budget:
                    writer.write(data[: max(0, link.budget - link.downstream)])
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    self.cuts += 1
                    link.abort()
                    return
                if downstream:
                    link.downstream += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            link.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.abort()


class _Link:
    def __init__(self, client: asyncio.StreamWriter, budget: int | None) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.budget = budget
        self.downstream = 0
        self.cut = False

    def abort(self) -> None:
        self.cut = True
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


# -- a raw HTTP/2 client that records for the checker (cheap enough for thousands) ----------------

_STATUS = {pb.SyncStatus.WAIT_FOR_READY: SyncStatus.WAIT_FOR_READY, pb.SyncStatus.RESYNC: SyncStatus.RESYNC,
           pb.SyncStatus.IN_SYNC: SyncStatus.IN_SYNC}


class RecordingStream(SinkStream):
    """bench.h2sink's stream, additionally recording every KV and status into a ClientRecord."""

    def __init__(self, authority: str, syncer_type: str, index: int, record: ClientRecord,
                 ready: asyncio.Event) -> None:
        super().__init__(authority, syncer_type, index, False, StreamStats(), ready)
        self.record = record

    def on_message(self, compressed: bool, data: memoryview | bytearray) -> None:
        if not compressed:
            message = pb.ServerMessage.FromString(data)
            kind = message.WhichOneof("payload")
            if kind == "deltas":
                for kv in message.deltas.kvs:
                    self.record.record_value(kv.key, bytes(kv.value) or None)
            elif kind == "snapshot":
                chunk = message.snapshot
                raw = self._decompressor.decompress(chunk.data) if chunk.compression else chunk.data
                for kv in pb.Deltas.FromString(raw).kvs:
                    self.record.record_value(kv.key, bytes(kv.value))
            elif kind == "status" and message.status.status in _STATUS:
                self.record.statuses.append((time.monotonic(), _STATUS[message.status.status]))
        super().on_message(compressed, data)
