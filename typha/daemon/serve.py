"""`typha serve`: datastore → syncers → caches → Sync server, plus health, metrics and signals."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from typha import config as typha_config
from typha import logs
from typha.config import ConfigError, TyphaConfig
from typha.daemon import ports
from typha.daemon.health import HealthEndpoints
from typha.daemon.metrics_http import MetricsServer, register_log_counts
from typha.daemon.ports import bind_error, ensure_bindable
from typha.model.kv import SyncStatus

if TYPE_CHECKING:
    # At run time these are imported where the daemon starts: the supervisor of `--workers N` imports this
    # module for its command line and never serves, so it need not hold gRPC, the caches, the syncers and
    # their libraries in its RSS (docs/memory.md).
    from typha.kube.client import KubeClient
    from typha.ops.rebalance import KubeLookup, Rebalancer
    from typha.snapcache.cache import SnapshotCache
    from typha.source.datastore import Datastore
    from typha.source.upstream import UpstreamFollower
    from typha.syncserver.server import SyncServer

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
    metrics_server: MetricsServer | None = None
    followers: list[UpstreamFollower] = field(default_factory=list)
    rebalancer: Rebalancer | None = None  # ConnectionRebalancingMode=kubernetes only
    _rebalance_lookup: KubeLookup | None = None
    _frozen: bool = False

    async def start(self) -> None:
        from typha.snapcache.cache import CacheLimits, LoopFeeder, SnapshotCache
        from typha.source.datastore import Datastore, Syncer
        from typha.source.upstream import UpstreamFollower
        from typha.syncserver import tls as typha_tls
        from typha.syncserver.server import ServerSettings, SyncServer

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
            try:
                await self.health.start(config.health_host, config.health_port)
            except OSError as exc:
                raise bind_error("HealthPort", config.health_host, config.health_port, exc) from None
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
        host = config.server_host or "0.0.0.0"
        if not config.server_reuse_port:
            # gRPC's own error names no port ("Failed to bind"); and a port held with SO_REUSEPORT would be shared.
            ensure_bindable("ServerPort", host, config.effective_server_port)
        try:
            port = await self.server.start(host, config.effective_server_port, credentials)
        except (OSError, RuntimeError) as exc:
            if host.startswith("unix:"):
                raise ConfigError(f"ServerHost={host!r}: cannot listen: {exc}") from None
            raise bind_error("ServerPort", host, config.effective_server_port, exc) from None
        log.info("Serving syncers %s on port %d", ", ".join(self.caches), port)
        if not config.upstream:
            if self.kube is None:
                self.kube = typha_config.kube_client(config.kubeconfig)
            syncers = [Syncer(name, LoopFeeder(cache, loop)) for name, cache in self.caches.items()]
            self.datastore = Datastore(self.kube, syncers)
            self.datastore.start()
        if config.connection_rebalancing_mode == "kubernetes":
            await self._start_rebalancing()
        if config.prometheus_metrics_enabled:
            register_log_counts()
            self.metrics_server = MetricsServer()
            await self.metrics_server.start(config.prometheus_metrics_host, config.prometheus_metrics_port)

    async def _start_rebalancing(self) -> None:
        from typha.ops.rebalance import for_daemon

        # Also for a replica that follows an upstream typha: Typha endpoints and nodes come from the API.
        assert self.server is not None
        if self.kube is None:
            self.kube = typha_config.kube_client(self.config.kubeconfig)
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
            # The initial load's parsed pages are garbage now; give their free pages back at once rather
            # than at the server's next periodic trim (typha.syncserver.heap), off the event loop.
            from typha.syncserver import heap

            asyncio.get_running_loop().run_in_executor(None, heap.trim)
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
            await self.metrics_server.stop()


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


def load(args: argparse.Namespace) -> TyphaConfig:
    """Everything `serve` checks before it starts: settings, files, the kubeconfig, unknown variables."""
    config = typha_config.load(args)
    if getattr(args, "log_level", None) is None:  # `typha --log-level` wins over LogSeverityScreen
        logging.getLogger().setLevel(logs.parse_level(config.log_severity_screen))
    typha_config.warn_unknown_environment(os.environ, log)
    config.check_files()
    if not config.upstream:
        typha_config.kube_client(config.kubeconfig).close()
    return config


def run(args: argparse.Namespace) -> int:
    config = load(args)
    ports.check_ports(config)
    workers = config.effective_workers
    if workers > 1 and not config.upstream:
        from typha.daemon.workers import serve_workers

        return serve_workers(config, workers, getattr(args, "log_format", "text"))
    asyncio.run(serve(config))
    return 0
