"""Measure what `typha serve --workers N` holds in memory, to size the Deployment's requests and limits.

Runs the Kubernetes API emulator with a generated cluster, starts `typha serve --workers N` against it for
each N, waits until it is ready (every cache in sync) and connects clients, then reads the RSS of the
supervisor, the ingest and each worker. Prints one JSON object; deploy/README.md records the result.

    python deploy/tools/measure_memory.py --nodes 200 --pods-per-node 20 --workers 1,2 --clients 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from typha.client import AsyncSyncClient
from typha.demo.cluster import Cluster, ClusterSpec
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import free_port, stop_process, wait_ready


async def connect(port: int, clients: int) -> list[AsyncSyncClient]:
    started = []
    for index in range(clients):
        for syncer in ("felix", "bgp"):
            client = AsyncSyncClient([f"127.0.0.1:{port}"], syncer, hostname=f"node-{index}")
            client.start()
            started.append(client)
    await asyncio.gather(*(client.wait_in_sync(120) for client in started))
    return started


def measure(kubeconfig: Path, workers: int, clients: int) -> dict[str, object]:
    port, health_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "typha.cli", "serve", "--workers", str(workers), "--kubeconfig", str(kubeconfig),
         "--server-host", "127.0.0.1", "--server-port", str(port), "--health-enabled", "true",
         "--health-host", "127.0.0.1", "--health-port", str(health_port), "--shutdown-timeout-secs", "0"],
        stderr=subprocess.DEVNULL)
    try:
        wait_ready(health_port, process, timeout=300)

        async def with_clients() -> dict[str, int]:
            started = await connect(port, clients)
            await asyncio.sleep(5)  # snapshots sent, queues drained
            rss = {}
            for proc in [psutil.Process(process.pid), *psutil.Process(process.pid).children()]:
                cmdline = " ".join(proc.cmdline())
                role = ("supervisor" if proc.pid == process.pid else
                        "ingest" if "unix:" in cmdline and "--upstream" not in cmdline else f"worker-{proc.pid}")
                rss[role] = proc.memory_info().rss
            for client in started:
                await client.close()
            return rss

        rss = asyncio.run(with_clients())
    finally:
        stop_process(process)
    return {"workers": workers, "rss_mib": {role: round(value / 2**20, 1) for role, value in rss.items()},
            "total_mib": round(sum(rss.values()) / 2**20, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--pods-per-node", type=int, default=20)
    parser.add_argument("--policies", type=int, default=50)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--clients", type=int, default=20, help="clients per syncer")
    args = parser.parse_args()
    cluster = Cluster(ClusterSpec(nodes=args.nodes, pods_per_node=args.pods_per_node, policies=args.policies))
    api = KubeAPIEmulator()
    for obj in cluster.initial_objects():
        api.create(obj)
    results: list[dict[str, object]] = []
    with api.start(), tempfile.TemporaryDirectory() as workdir:
        kubeconfig = Path(workdir) / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        results.extend(measure(kubeconfig, int(n), args.clients) for n in args.workers.split(","))
    print(json.dumps({"cluster": vars(args), "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
