"""The Kubernetes API emulator in a child process, populated with a synthetic cluster and driven
by commands (churn at a rate, stop). A separate process keeps its serving cost off our GIL."""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from typing import Any

from typha.testing import objects

TIMESTAMP_LABEL = "bench-ts"  # pods written during churn carry their write time (ns since the epoch)


def pod_name(i: int) -> tuple[str, str]:
    return f"ns{i % 50}", f"pod-{i}"


def make_pod(i: int, nodes: int, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    namespace, name = pod_name(i)
    ip = f"10.{64 + (i >> 16) % 64}.{(i >> 8) & 255}.{i & 255}"
    labels = {"app": f"app-{i % 200}", "tier": ("web", "db", "cache")[i % 3], "pod-template-hash": "5d9c"}
    labels.update(extra_labels or {})
    return objects.pod(namespace, name, node=f"node-{i % nodes}", ip=ip, labels=labels,
                       ports=[("http", 8080, "TCP")])


def _child(pods: int, nodes: int, cpus: set[int] | None, conn: Any) -> None:
    from typha.testing.apiserver.server import KubeAPIEmulator

    if cpus:
        os.sched_setaffinity(0, cpus)
    api = KubeAPIEmulator(history_limit=max(200_000, 2 * pods))
    started = time.perf_counter()
    for ns in range(min(pods, 50) or 1):
        api.create(objects.namespace(f"ns{ns}"))
    for n in range(nodes):
        api.create(objects.node(f"node-{n}", ipv4=f"192.168.{n >> 8}.{n & 255}/16"))
    for i in range(pods):
        api.create(make_pod(i, nodes))
    populate_secs = time.perf_counter() - started
    api.start()
    path = os.path.join(tempfile.mkdtemp(prefix="bench-api-"), "kubeconfig")
    api.write_kubeconfig(path)
    conn.send({"kubeconfig": path, "populate_secs": populate_secs})
    while True:
        command, args = conn.recv()
        if command == "churn":
            conn.send(_churn(api, pods, **args))
        elif command == "stats":
            conn.send(api.stats())
        elif command == "stop":
            api.stop()
            conn.send({})
            return


def _churn(api: Any, pods: int, *, count: int, rate: float | None, stamp: bool) -> dict[str, Any]:
    """Relabel `count` pods round-robin, paced at `rate` writes/s (None: as fast as possible)."""
    started = time.perf_counter()
    for i in range(count):
        if rate:
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        namespace, name = pod_name(i % pods)
        labels = {"rev": str(i)}
        if stamp:
            labels[TIMESTAMP_LABEL] = str(time.time_ns())
        api.patch("v1", "Pod", name, {"metadata": {"labels": labels}}, namespace)
    return {"writes": count, "secs": time.perf_counter() - started}


class EmulatorProcess:
    def __init__(self, pods: int, nodes: int, cpus: set[int] | None = None) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_child, args=(pods, nodes, cpus, child), daemon=True)
        self.pods = pods

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self, timeout: float = 600) -> dict[str, Any]:
        self._process.start()
        if not self._conn.poll(timeout):
            raise TimeoutError("the API emulator did not come up")
        return self._conn.recv()

    def start_churn(self, count: int, rate: float | None = None, stamp: bool = True) -> None:
        self._conn.send(("churn", {"count": count, "rate": rate, "stamp": stamp}))

    def wait_churn(self, timeout: float = 600) -> dict[str, Any]:
        if not self._conn.poll(timeout):
            raise TimeoutError("churn did not finish")
        return self._conn.recv()

    def stats(self, timeout: float = 60) -> dict[str, Any]:
        """The emulator's request counters and open watches (not while a churn is running)."""
        self._conn.send(("stats", {}))
        if not self._conn.poll(timeout):
            raise TimeoutError("the API emulator did not answer")
        stats: dict[str, Any] = self._conn.recv()
        return stats

    def stop(self) -> None:
        try:
            self._conn.send(("stop", {}))
            self._conn.poll(10)
        finally:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
