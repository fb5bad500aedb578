"""`typha serve --workers 2`: one ingest process, two fan-out workers sharing the port.

Kill a worker while the API is being written to: its clients come back through the same port to the
other worker and resume there (no snapshot), the supervisor restarts the dead one, and every mirror
ends equal to the conversion of the API's objects, with the servers' checksums (sent every 0.3 s)
matching every client's mirror after the kill. How fast they resume is `python -m bench workerkill`'s job.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys

import psutil

from typha.client import AsyncSyncClient, Backoff
from typha.source.datastore import convert_objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import wait_ready
from typha.testing.wait import wait_until_async

from .churn import apply, random_op
from .test_daemon import free_port
from .test_fanout_e2e import Ignore

CLIENTS = 12


def worker_pids(supervisor: subprocess.Popen[bytes]) -> list[int]:
    """Live worker processes (a killed one is a zombie until the supervisor reaps it)."""
    pids = []
    for child in psutil.Process(supervisor.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "--upstream" in child.cmdline():
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def test_killed_worker_clients_resume_on_another_and_it_is_restarted(tmp_path):
    rng = random.Random("workers")
    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        port, health_port = free_port(), free_port()
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "typha.cli", "serve", "--workers", "2", "--kubeconfig", str(kubeconfig),
             "--server-host", "127.0.0.1", "--server-port", str(port), "--health-enabled", "true",
             "--health-host", "127.0.0.1", "--health-port", str(health_port), "--shutdown-timeout-secs", "1",
             "--checksum-interval-secs", "0.3"])
        try:
            wait_ready(health_port, supervisor, timeout=60)
            assert len(worker_pids(supervisor)) == 2

            async def scenario() -> None:
                # A local subchannel pool gives each client its own TCP connection, as separate node
                # processes have; otherwise gRPC would multiplex all of them over one connection.
                clients = [AsyncSyncClient([f"127.0.0.1:{port}"], "felix", hostname=f"node-{i}", callbacks=Ignore(),
                                           channel_options=[("grpc.use_local_subchannel_pool", 1)],
                                           backoff=Backoff(initial=0.05, maximum=0.3)) for i in range(CLIENTS)]
                for client in clients:
                    client.start()
                try:
                    assert all(await asyncio.gather(*(c.wait_in_sync(30) for c in clients)))
                    for _ in range(40):
                        await asyncio.to_thread(apply, api, random_op(rng))
                    snapshots = [c.counters.snapshots for c in clients]
                    resumes = [c.counters.resumes for c in clients]

                    # Writes keep coming (bounded: 80 ops) while the worker dies and its clients move.
                    async def churn() -> None:
                        for _ in range(80):
                            await asyncio.to_thread(apply, api, random_op(rng))
                            await asyncio.sleep(0.01)

                    writer = asyncio.create_task(churn())
                    await asyncio.sleep(0.2)
                    victim = worker_pids(supervisor)[0]
                    psutil.Process(victim).send_signal(signal.SIGKILL)
                    await writer
                    matches = [c.counters.checksum_matches for c in clients]
                    want = convert_objects("felix", await asyncio.to_thread(api.objects))
                    await wait_until_async(lambda: all(c.core.to_dict() == want for c in clients),
                                           "every mirror to equal the datastore", timeout=30, interval=0.1)
                    assert all(c.core.to_dict() == want for c in clients)
                    digests = {c.core.digest for c in clients}
                    assert len(digests) == 1
                    moved = [c for c, before in zip(clients, snapshots, strict=True) if c.counters.connections > 1]
                    assert moved, "with 12 clients on 2 workers, some were on the killed one"
                    for client, before in zip(clients, snapshots, strict=True):
                        assert client.counters.snapshots == before, "clients of a dead worker must resume"
                    assert all(c.counters.resumes > before for c, before in zip(clients, resumes, strict=True)
                               if c in moved)
                    # The servers' checksums of the final state agree with every mirror.
                    await wait_until_async(lambda: all(c.counters.checksum_matches >= before + 2
                                                       for c, before in zip(clients, matches, strict=True)),
                                           "two more checksum matches at every client", timeout=30, interval=0.1)
                    assert all(c.counters.checksum_matches >= before + 2
                               for c, before in zip(clients, matches, strict=True))
                    assert all(c.counters.checksum_mismatches == 0 for c in clients)
                    await wait_until_async(lambda: len(worker_pids(supervisor)) >= 2
                                           and victim not in worker_pids(supervisor),
                                           "the killed worker to be replaced", timeout=30, interval=0.1)
                    assert len(worker_pids(supervisor)) == 2
                    assert victim not in worker_pids(supervisor)
                finally:
                    await asyncio.gather(*(c.close() for c in clients))

            asyncio.run(asyncio.wait_for(scenario(), 120))
            wait_ready(health_port, supervisor, timeout=60)
            supervisor.send_signal(signal.SIGTERM)
            assert supervisor.wait(timeout=60) == 0
        finally:
            if supervisor.poll() is None:
                supervisor.kill()
                for child in psutil.Process(supervisor.pid).children(recursive=True):
                    child.kill()
