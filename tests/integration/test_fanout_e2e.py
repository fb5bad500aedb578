"""End to end: API emulator → `typha serve` → 50 clients of both syncers over real gRPC, under churn.

At the end every client's mirror must equal the syncer's conversion of the emulator's objects, and
its checksum must equal the server cache's. Repeated with faults on each side of typha.
"""

from __future__ import annotations

import asyncio
import difflib
import pprint
import random
from typing import Any

import msgpack
import pytest

from typha.client import AsyncSyncClient, Backoff
from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.source.datastore import convert_objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import free_port

from .churn import apply, random_op

CLIENTS_PER_SYNCER = 25
OPS = 150


class Ignore:
    """Callbacks that drop events: the test reads each client's mirror (client.core) instead.

    Without callbacks the client is an async iterator whose bounded buffer, unread, would stop it
    reading its stream (back-pressure working as designed)."""

    def on_updates(self, updates: list[Any]) -> None:
        pass

    def on_status(self, status: Any) -> None:
        pass


def diff(got: dict[str, Any], want: dict[str, Any]) -> str:
    return "\n".join(difflib.unified_diff(pprint.pformat(want, width=120).splitlines(),
                                          pprint.pformat(got, width=120).splitlines(), "api", "client",
                                          lineterm="", n=1))


async def converge(clients: dict[str, list[AsyncSyncClient]], api: KubeAPIEmulator, daemon: TyphaDaemon) -> None:
    """Wait (bounded) until every client holds the conversion of the API's objects, then check digests."""
    final = await asyncio.to_thread(api.objects)
    for syncer_type, group in clients.items():
        want = convert_objects(syncer_type, final)
        cache = daemon.caches[syncer_type]
        for _ in range(300):
            if all(client.core.to_dict() == want for client in group) and all(
                client.core.digest == cache.digest for client in group
            ):
                break
            await asyncio.sleep(0.1)
        cached = {key: msgpack.unpackb(value) for key, value, _ in cache.items()}
        assert cached == want, f"{syncer_type} cache diverged from the API:\n{diff(cached, want)}"
        for client in group:
            got = client.core.to_dict()
            assert got == want, (f"{syncer_type} client {client.core.hostname} diverged ({client.counters}, "
                                 f"{client.core.position}, {cache.newest.sequence}):\n{diff(got, want)}")
            assert client.core.digest == cache.digest, "checksum of the client's mirror differs from the server's"


async def churn(api: KubeAPIEmulator, rng: random.Random, count: int, faults: bool) -> None:
    for _ in range(count):
        await asyncio.to_thread(apply, api, random_op(rng, faults=faults))
        if rng.random() < 0.2:
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("fault", ["none", "api-faults", "client-cut", "server-restart"])
def test_fifty_clients_converge_under_churn(tmp_path, fault):
    rng = random.Random(f"fanout-{fault}")

    async def scenario(api: KubeAPIEmulator, kube: KubeClient) -> None:
        config = TyphaConfig(server_host="127.0.0.1", server_port=free_port(), checksum_interval_secs=0.2)
        daemon = TyphaDaemon(config, kube=kube)
        await daemon.start()
        clients: dict[str, list[AsyncSyncClient]] = {"felix": [], "bgp": []}
        try:
            for syncer_type, group in clients.items():
                for i in range(CLIENTS_PER_SYNCER):
                    client = AsyncSyncClient([f"127.0.0.1:{daemon.port}"], syncer_type, hostname=f"node-{i}",
                                             callbacks=Ignore(), backoff=Backoff(initial=0.05, maximum=0.5))
                    client.start()
                    group.append(client)
            everyone = [c for group in clients.values() for c in group]
            assert all(await asyncio.gather(*(c.wait_in_sync(60) for c in everyone)))
            await churn(api, rng, OPS // 2, faults=fault == "api-faults")

            if fault == "client-cut":
                snapshots = {id(c): c.counters.snapshots for c in everyone}
                resumes = {id(c): c.counters.resumes for c in everyone}
                victims = rng.sample(everyone, 10)
                hostnames = {(c.core.syncer_type, c.core.hostname) for c in victims}
                assert daemon.server is not None
                for conn in list(daemon.server.connections):
                    if (conn.syncer_type, conn.hostname) in hostnames and conn.task is not None:
                        conn.task.cancel()  # the connection drops under the client
                await churn(api, rng, OPS // 2, faults=False)
                await converge(clients, api, daemon)
                for client in victims:
                    assert client.counters.resumes > resumes[id(client)], "a cut client must resume"
                for client in everyone:
                    assert client.counters.snapshots == snapshots[id(client)], "a resume must not send a snapshot"
            elif fault == "server-restart":
                snapshots = {id(c): c.counters.snapshots for c in everyone}
                await daemon.stop()
                await churn(api, rng, OPS // 4, faults=False)  # changes while no typha runs
                daemon = TyphaDaemon(config, kube=kube)
                await daemon.start()
                await churn(api, rng, OPS // 4, faults=False)
                await converge(clients, api, daemon)
                for client in everyone:
                    assert client.counters.snapshots > snapshots[id(client)], "a new server means a new snapshot"
            else:
                await churn(api, rng, OPS // 2, faults=fault == "api-faults")
            await converge(clients, api, daemon)
        finally:
            await asyncio.gather(*(c.close() for group in clients.values() for c in group))
            await daemon.stop()

    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        path = tmp_path / "kubeconfig"
        api.write_kubeconfig(path)
        kube = KubeClient.from_kubeconfig(str(path))
        try:
            asyncio.run(asyncio.wait_for(scenario(api, kube), 180))
        finally:
            kube.close()
