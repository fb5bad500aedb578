"""Typha following typha: replicas keep the upstream's bytes, epoch and sequences, so clients
resume on any replica; the Kubernetes API sees only the ingest typha's watches."""

from __future__ import annotations

import asyncio
import random

from typha.client import AsyncSyncClient, Backoff
from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.source.datastore import convert_objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.wait import wait_until_async

from .churn import apply, random_op
from .test_daemon import free_port
from .test_fanout_e2e import Ignore


def crumbs(cache) -> dict[int, bytes]:
    out, crumb = {}, cache.oldest
    while crumb is not None:
        if crumb.segment is not None:
            out[crumb.sequence] = crumb.frame
        crumb = crumb.next
    return out


def test_replicas_are_exact_and_clients_resume_across_them(tmp_path):
    rng = random.Random("upstream")

    async def scenario(api: KubeAPIEmulator, kube: KubeClient) -> None:
        ingest = TyphaDaemon(TyphaConfig(server_host=f"unix:{tmp_path}/ingest.sock"), kube=kube)
        await ingest.start()
        replicas = [TyphaDaemon(TyphaConfig(server_host="127.0.0.1", server_port=free_port(),
                                            upstream=f"unix:{tmp_path}/ingest.sock")) for _ in range(2)]
        for replica in replicas:
            await replica.start()
        client = AsyncSyncClient([f"127.0.0.1:{replicas[0].port}"], "felix", hostname="node-1", callbacks=Ignore(),
                                 backoff=Backoff(initial=0.05, maximum=0.2))
        client.start()
        try:
            assert await client.wait_in_sync(20)
            for _ in range(60):
                await asyncio.to_thread(apply, api, random_op(rng))
            want = {"felix": None, "bgp": None}
            objects_now = await asyncio.to_thread(api.objects)
            for syncer_type in want:
                want[syncer_type] = convert_objects(syncer_type, objects_now)
            await wait_until_async(lambda: client.core.to_dict() == want["felix"], "the felix state", timeout=20)

            # Same epoch, same sequence numbers, same bytes on every replica as on the ingest typha.
            for syncer_type in ("felix", "bgp"):
                source = ingest.caches[syncer_type]
                for replica in replicas:
                    copy = replica.caches[syncer_type]
                    await wait_until_async(
                        lambda copy=copy, source=source: copy.newest.sequence == source.newest.sequence,
                        "the copy at the source's sequence", timeout=20)
                    assert copy.epoch == source.epoch
                    assert copy.digest == source.digest
                    theirs, ours = crumbs(source), crumbs(copy)
                    assert all(ours[seq] == theirs[seq] for seq in ours.keys() & theirs.keys())

            # The client's replica dies: on the other replica it resumes, with no snapshot.
            snapshots = client.counters.snapshots
            client.endpoints.append(f"127.0.0.1:{replicas[1].port}")
            await replicas[0].stop()
            for _ in range(20):
                await asyncio.to_thread(apply, api, random_op(rng))
            final = convert_objects("felix", await asyncio.to_thread(api.objects))
            await wait_until_async(lambda: client.core.to_dict() == final and client.endpoint == client.endpoints[1],
                                   "the final state at the second endpoint", timeout=20)
            assert client.counters.snapshots == snapshots, "moving between replicas must resume"
            assert client.counters.resumes >= 1
        finally:
            await client.close()
            for replica in replicas:
                await replica.stop()
            await ingest.stop()

    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        path = tmp_path / "kubeconfig"
        api.write_kubeconfig(path)
        kube = KubeClient.from_kubeconfig(str(path))
        try:
            asyncio.run(asyncio.wait_for(scenario(api, kube), 90))
        finally:
            kube.close()
