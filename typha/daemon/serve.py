"""`typha serve`: datastore → syncers → caches → Sync server, plus health, metrics and signals."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import prometheus_client

from typha import config as typha_config
from typha.config import TyphaConfig
from typha.daemon.health import HealthEndpoints
from typha.kube.client import KubeClient
from typha.model.kv import SyncStatus
from typha.ops.rebalance import KubeLookup, Rebalancer, for_daemon
from typha.snapcache.cache import CacheLimits, LoopFeeder, SnapshotCache
from typha.source.datastore import Datastore, Syncer
from typha.source.upstream import UpstreamFollower
from typha.syncserver import tls as typha_tls
from typha.syncserver.server import ServerSettings, SyncServer

log = logging.getLogger(__name__)


@dataclass
class TyphaDaemon:
    """One running typha. Start and stop it from inside an event loop (tests run it in-process)."""

    config: TyphaConfig
    kube: KubeClient | None = None
    caches: dict[str, SnapshotCache] = field(default_factory=dict)
    server: SyncServer | None = None
    datastore: Datastore | None = None
    health: HealthEndpoints | None = None
    metrics_server: Any = None
    followers: list[UpstreamFollower] = field(default_factory=list)
    rebalancer: Rebalancer | None = None  # ConnectionRebalancingMode=kubernetes only
    _rebalance_lookup: KubeLookup | None = None
    _frozen: bool = False

    async def start(self) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        limits = CacheLimits(max_window_age_secs=config.resume_window_secs,
                             max_window_bytes=config.resume_window_bytes)
        self.caches = {name: SnapshotCache(name, limits=limits) for name in config.syncer_types}
        self.server = SyncServer(self.caches, ServerSettings.from_config(config))
        for cache in self.caches.values():
            cache.status_listeners.append(self._on_status)
        # With TLS settings the port serves TLS only (typha.syncserver.tls). Except the ingest's Unix socket under
        # `--workers`: it sits in a private 0700 directory and only our own workers follow it, plaintext.
        if not config.server_host.startswith("unix:"):
            credentials, self.server.authorizer = typha_tls.server_security(config)
        else:
            credentials = None
        if config.health_enabled:
            # Before a replica waits for its upstream: probes get "live, not ready" meanwhile.
            self.health = HealthEndpoints(ready=self.readiness, live=self.liveness)
            await self.health.start(config.health_host, config.health_port)
        if config.upstream:
            tls = config.upstream_tls()
            self.followers = [UpstreamFollower(config.upstream, name, cache, tls=tls)
                              for name, cache in self.caches.items()]
            for follower in self.followers:
                follower.start()
            # Listen only once every cache is a replica. Workers share the port, so the kernel hands new
            # connections to any listener on it: a restarted worker listening with empty caches would
            # answer the clients of a dead worker, resuming, with (empty) snapshots.
            await asyncio.gather(*(follower.first_replica.wait() for follower in self.followers))
        port = await self.server.start(config.server_host or "0.0.0.0", config.effective_server_port, credentials)
        log.info("Serving syncers %s on port %d", ", ".join(self.caches), port)
        if not config.upstream:
            if self.kube is None:
                self.kube = KubeClient.from_environment(config.kubeconfig or None)
            syncers = [Syncer(name, LoopFeeder(cache, loop)) for name, cache in self.caches.items()]
            self.datastore = Datastore(self.kube, syncers)
            self.datastore.start()
        if config.connection_rebalancing_mode == "kubernetes":
            await self._start_rebalancing()
        if config.prometheus_metrics_enabled:
            self.metrics_server, _ = prometheus_client.start_http_server(
                config.prometheus_metrics_port, config.prometheus_metrics_host or "0.0.0.0")

    async def _start_rebalancing(self) -> None:
        # Also for a replica that follows an upstream typha: Typha endpoints and nodes come from the API.
        assert self.server is not None
        if self.kube is None:
            self.kube = KubeClient.from_environment(self.config.kubeconfig or None)
        self.rebalancer, self._rebalance_lookup = for_daemon(
            self.server, self.kube, self.config, host=self.config.server_host)
        self._rebalance_lookup.start()
        self.rebalancer.start()

    def _on_status(self, status: SyncStatus) -> None:
        if self.server is not None:
            asyncio.get_running_loop().create_task(self.server.update_health())
        if not self._frozen and all(c.status is SyncStatus.IN_SYNC for c in self.caches.values()):
            # The initial snapshot's objects live long: move them out of the collector's sight so
            # that later collections do not rescan them (docs/architecture.md §8).
            gc.collect()
            gc.freeze()
            self._frozen = True
        log.info("Syncer status: %s", ", ".join(f"{n}={c.status.value}" for n, c in self.caches.items()))

    def readiness(self) -> tuple[bool, str]:
        not_ready = [name for name, cache in self.caches.items() if cache.status is not SyncStatus.IN_SYNC]
        # A replica keeps serving what it has while its upstream is away, but is not ready (as Typha).
        not_ready += [f"{f.syncer_type} (upstream)" for f in self.followers if not f.connected]
        # Likewise while the API server is unreachable: the caches are in sync with a past state only.
        if self.datastore is not None and (failing := self.datastore.failing()):
            not_ready.append(f"API server unreachable for {', '.join(failing)}")
        if self.server is not None and self.server.draining:
            return False, "draining"
        return (not not_ready, "ready" if not not_ready else f"not in sync: {', '.join(not_ready)}")

    def liveness(self) -> tuple[bool, str]:
        if self.datastore is not None and self.datastore.error is not None:
            return False, f"ingest failed: {self.datastore.error}"
        return True, "live"

    @property
    def port(self) -> int:
        return self.server.port if self.server is not None else 0

    async def stop(self, drain_secs: float = 0.0) -> None:
        if self.rebalancer is not None:
            await self.rebalancer.stop()  # no rebalancing moves while draining or after
        if self._rebalance_lookup is not None:
            await asyncio.to_thread(self._rebalance_lookup.stop)
        if self.server is not None and drain_secs > 0:
            await self.server.drain(drain_secs, self.config.shutdown_connection_drop_interval_max_secs)
        for follower in self.followers:
            await follower.stop()
        if self.datastore is not None:
            await asyncio.to_thread(self.datastore.stop)
        if self.server is not None:
            await self.server.stop(0.5)
        if self.health is not None:
            await self.health.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()


async def serve(config: TyphaConfig) -> None:
    daemon = TyphaDaemon(config)
    await daemon.start()
    stopping = asyncio.Event()
    graceful = True

    def on_signal(is_graceful: bool) -> None:
        nonlocal graceful
        graceful = is_graceful
        stopping.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, on_signal, True)
    loop.add_signal_handler(signal.SIGINT, on_signal, False)
    await stopping.wait()
    log.info("Shutting down (%s)", "draining connections" if graceful else "immediately")
    await daemon.stop(config.shutdown_timeout_secs if graceful else 0.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    typha_config.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = typha_config.load(args)
    logging.getLogger().setLevel(getattr(logging, config.log_severity_screen, logging.INFO))
    workers = config.effective_workers
    if workers > 1 and not config.upstream:
        from typha.daemon.workers import serve_workers

        return serve_workers(config, workers, getattr(args, "log_format", "text"))
    asyncio.run(serve(config))
    return 0
