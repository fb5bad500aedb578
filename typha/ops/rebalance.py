"""Connection rebalancing across Typha replicas, make-before-break (docs/calico/typha.md §1, §4-5).

Typha's part, kept as it is:
- the limit formula (`connection_limit`, from `typha/pkg/k8s/rebalance.go`): with S syncer caches,
  T Typha endpoints and N nodes, limit = clamp[Lower, Upper](S·(1 + ⌊N·120/(T-1)/100⌋)). T-1 and the
  extra 20% leave room for one Typha being down; T ≤ 1 or an API error means Upper;
- T is counted from the EndpointSlices of the Typha service (`kubernetes.io/service-name` label, a
  port named K8sPortName), ready or not, every K8sServicePollIntervalSecs; N from a node watch (Typha's
  NodeCounter is an informer too: listing every node every poll would cost megabytes at scale);
- every ConnectionDropIntervalSecs, while the server holds more connections than the limit, ONE is
  moved.

What differs, because random kills are what users complain about (typha#291, #384, calico#5629):
- the victim is a client that is caught up (nothing pending, in sync, no write blocked), so a
  resume elsewhere sends it nothing it has not already got, and clients that can move without
  losing their stream ("reconnect" feature) are preferred to those that can only be closed;
- it gets a `Reconnect` hint naming the least-loaded other Typha endpoint when loads are known (else
  an empty endpoint: the client picks from its own list); the server closes it with UNAVAILABLE only
  if it has not moved within the drain grace period (`SyncServer._move_client`). A client without
  the feature is closed at once, as Typha does;
- connections already being moved do not count towards the excess, so a slow move does not make
  the governor pick a second victim for the same excess connection.

With `typha serve --workers N` the limit is the pod's, and its connections are spread over N worker
processes: each worker publishes its count (`SiblingLoads`, files in a directory the supervisor gives
them), compares the pod's total with the limit, and only the most loaded worker moves a client.

T counts distinct address:port pairs, where Typha counts distinct IPs: the same in a cluster (one
Typha per pod IP, one port), but it lets several Typhas on one host (tests, a laptop) count apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from typha.client.discovery import list_typha_slices
from typha.config import TyphaConfig
from typha.kube.client import KubeClient
from typha.kube.reflector import Event, Reflector
from typha.model.kv import SyncStatus
from typha.model.resources import Resource, by_key
from typha.syncproto.names import FEATURE_RECONNECT
from typha.syncserver.server import Connection, SyncServer

log = logging.getLogger(__name__)

NODES = by_key("nodes")
REBALANCE_REASON = "rebalancing: this typha has more connections than its share"
# Set by the supervisor of `typha serve --workers N` for each worker (not settings of their own).
LOADS_DIR_ENV = "TYPHA_WORKER_LOADS_DIR"
WORKER_INDEX_ENV = "TYPHA_WORKER_INDEX"


# -- the formula ------------------------------------------------------------------------------------


def connection_limit(*, syncers: int, typhas: int | None, nodes: int | None, lower: int, upper: int) -> int:
    """Typha's per-replica connection limit; `None` for T or N means the lookup failed (→ Upper).

    Integer arithmetic in Typha's order: ⌊⌊N·120/(T-1)⌋/100⌋ equals ⌊N·120/(T-1)/100⌋ for whole numbers.
    """
    if typhas is None or nodes is None or typhas <= 1:
        return upper  # one Typha must take everyone; and an unknown cluster must not shed clients
    per_syncer = 1 + nodes * 120 // (typhas - 1) // 100
    return max(lower, min(upper, syncers * per_syncer))


# -- discovery --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TyphaEndpoint:
    address: str  # host:port as a client dials it ([v6]:port for IPv6)
    ready: bool
    pod: str = ""  # targetRef name, used to recognise ourselves


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What one poll learnt; None where the API did not answer (the limit then falls back to Upper)."""

    endpoints: tuple[TyphaEndpoint, ...] | None
    nodes: int | None

    @property
    def typhas(self) -> int | None:
        return None if self.endpoints is None else len(self.endpoints)


def _dial_address(ip: str, port: int) -> str:
    try:
        if ipaddress.ip_address(ip).version == 6:
            return f"[{ip}]:{port}"
    except ValueError:
        pass  # a hostname (not produced by Kubernetes, but harmless)
    return f"{ip}:{port}"


def typha_endpoints(slices: Iterable[Mapping[str, Any]], port_name: str) -> tuple[TyphaEndpoint, ...]:
    """Every address:port of the Typha service's port in these EndpointSlices, ready or not (as Typha).

    A slice's `ports` apply to all its endpoints; a slice without the named port does not serve Sync.
    The same address:port in two slices (an EndpointSlice controller mid-update) counts once.
    """
    found: dict[str, TyphaEndpoint] = {}
    for item in slices:
        ports = [p.get("port") for p in item.get("ports") or [] if p.get("name") == port_name and p.get("port")]
        for endpoint in item.get("endpoints") or []:
            # An unset `ready` means ready (the API's documented default).
            ready = (endpoint.get("conditions") or {}).get("ready") is not False
            pod = ((endpoint.get("targetRef") or {}).get("name")) or ""
            for ip in endpoint.get("addresses") or []:
                for port in ports:
                    address = _dial_address(str(ip), int(port))
                    previous = found.get(address)
                    found[address] = TyphaEndpoint(address, ready or (previous is not None and previous.ready), pod)
    return tuple(sorted(found.values(), key=lambda e: e.address))


class _NodeCount:
    """Reflector sink: the reflector itself keeps the set of node ids; only readiness is tracked here."""

    def __init__(self) -> None:
        self.synced = False

    def on_events(self, resource: Resource, events: list[Event]) -> None:
        pass

    def on_synced(self, resource: Resource) -> None:
        self.synced = True


class KubeLookup:
    """Typha endpoints (listed each poll: a few small objects) and the node count (watched)."""

    def __init__(self, kube: KubeClient, *, namespace: str, service_name: str, port_name: str) -> None:
        self.kube = kube
        # Listing the Typha service's slices in its own namespace is what Typha does (and needs less RBAC).
        self.namespace = namespace
        self.service_name = service_name
        self.port_name = port_name
        self._nodes = _NodeCount()
        self.node_reflector = Reflector(kube, NODES, self._nodes)

    def start(self) -> None:
        self.node_reflector.start()

    def stop(self) -> None:
        self.node_reflector.stop()

    def lookup(self) -> ClusterView:
        """Blocking (run it in a thread). A failed list yields endpoints=None rather than raising."""
        endpoints: tuple[TyphaEndpoint, ...] | None
        try:
            items = list_typha_slices(self.kube, self.namespace, self.service_name)
            endpoints = typha_endpoints(items, self.port_name)
        except Exception as exc:  # any failure means "unknown": Upper, as Typha on an API error
            log.warning("Cannot list the Typha service's EndpointSlices: %s", exc)
            endpoints = None
        # Until the node watch has listed once the count is unknown, not zero (zero would shed clients).
        nodes = len(self.node_reflector.known) if self._nodes.synced else None
        return ClusterView(endpoints, nodes)


# -- peer loads -------------------------------------------------------------------------------------


class PeerLoads(Protocol):
    """How many connections another Typha holds, when that is known (None: unknown)."""

    def load(self, endpoint: str) -> int | None: ...


class LocalPeers:
    """Loads of Typhas running in this process, by the endpoint clients dial them at.

    The Sync protocol has no load report yet, so only co-located servers (tests, several servers in
    one process) can be compared; elsewhere hints name no endpoint and clients choose.
    """

    def __init__(self, servers: Mapping[str, SyncServer] | None = None) -> None:
        self.servers: dict[str, SyncServer] = dict(servers or {})

    def load(self, endpoint: str) -> int | None:
        server = self.servers.get(endpoint)
        return None if server is None else len(server.connections)


# -- victim and target ------------------------------------------------------------------------------


class SiblingLoads:
    """Connection counts of the other fan-out workers of this typha, through one small file per worker
    in a shared directory. A file not rewritten for `stale_secs` is a dead worker's and is ignored."""

    def __init__(self, directory: str, index: int, stale_secs: float = 5.0) -> None:
        self.directory = directory
        self.index = index
        self.stale_secs = stale_secs

    def publish(self, count: int) -> None:
        path = os.path.join(self.directory, str(self.index))
        tmp = f"{path}.tmp"
        with open(tmp, "w") as out:
            out.write(str(count))
        os.replace(tmp, path)  # readers never see half a number

    def others(self) -> dict[int, int]:
        now = time.time()
        counts: dict[int, int] = {}
        for name in os.listdir(self.directory):
            if not name.isdigit() or int(name) == self.index:
                continue
            path = os.path.join(self.directory, name)
            try:
                if now - os.stat(path).st_mtime > self.stale_secs:
                    continue
                with open(path) as source:
                    counts[int(name)] = int(source.read())
            except (OSError, ValueError):
                continue  # replaced or removed under us: next step reads it again
        return counts

    @classmethod
    def from_environment(cls, stale_secs: float) -> SiblingLoads | None:
        """Set up by typha.daemon.workers for each worker; None for a typha that is a single process."""
        directory, index = os.environ.get(LOADS_DIR_ENV, ""), os.environ.get(WORKER_INDEX_ENV, "")
        return cls(directory, int(index), stale_secs) if directory and index.isdigit() else None


def is_moving(conn: Connection) -> bool:
    return conn.reconnect is not None or conn.drop is not None or conn.client_closed


def is_caught_up(conn: Connection) -> bool:
    """Has everything the server has, in sync, and no write stuck: it can resume anywhere for free."""
    position = conn.position
    return (position is not None and position.next is None and position.status is SyncStatus.IN_SYNC
            and not conn.writing_since and not is_moving(conn))


def pick_victim(connections: Iterable[Connection], rng: random.Random) -> Connection | None:
    """A caught-up client, preferring those that can move make-before-break; None if none is caught up.

    Random among equals: it spreads moves over syncer types and hosts instead of always taking the
    oldest. A client that is behind is left alone this round (moving it would add to its lag).
    """
    caught_up = [conn for conn in connections if is_caught_up(conn)]
    movable = [conn for conn in caught_up if conn.supports(FEATURE_RECONNECT)]
    pool = movable or caught_up
    return rng.choice(pool) if pool else None


def pick_target(candidates: Iterable[str], loads: Mapping[str, int | None], in_flight: Mapping[str, int],
                rng: random.Random) -> str:
    """The least-loaded candidate whose load is known, counting moves we already sent its way; "" if none."""
    known = [(load + in_flight.get(endpoint, 0), endpoint)
             for endpoint in candidates if (load := loads.get(endpoint)) is not None]
    if not known:
        return ""
    least = min(load for load, _ in known)
    return rng.choice(sorted(endpoint for load, endpoint in known if load == least))


# -- the governor -----------------------------------------------------------------------------------


@dataclass
class RebalanceSettings:
    syncers: int
    lower: int = 400
    upper: int = 10000
    poll_interval_secs: float = 30.0
    drop_interval_secs: float = 1.0


class Rebalancer:
    """Keeps `server`'s connection limit in step with the cluster and moves the excess, one at a time."""

    def __init__(
        self,
        server: SyncServer,
        lookup: Callable[[], ClusterView],
        settings: RebalanceSettings,
        *,
        own_endpoints: Iterable[str] = (),
        own_pod: str = "",
        peers: PeerLoads | None = None,
        siblings: SiblingLoads | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.server = server
        self._lookup = lookup
        self.settings = settings
        self.own_endpoints = set(own_endpoints)
        self.own_pod = own_pod
        self.peers = peers
        self.siblings = siblings
        self.rng = rng or random.Random()
        self.view = ClusterView(None, None)
        self.limit = settings.upper
        self.moves_requested = 0
        self._hinted: dict[Connection, str] = {}  # moves under way → the endpoint we named
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="typha-rebalance-poll"),
            asyncio.create_task(self._govern_loop(), name="typha-rebalance-govern"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _poll_loop(self) -> None:
        while True:
            try:
                view = await asyncio.to_thread(self._lookup)
            except Exception as exc:  # the lookup should not raise, but a bug there must not stop rebalancing
                log.warning("Typha/node lookup failed: %s", exc)
                view = ClusterView(None, None)
            self.apply(view)
            await asyncio.sleep(self.settings.poll_interval_secs)

    async def _govern_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.drop_interval_secs)
            self.step()

    # -- one poll, one step (synchronous: unit tests drive them) -----------------------------------

    def apply(self, view: ClusterView) -> int:
        """Adopt a poll's result: recompute the limit and give it to the server's admission check."""
        self.view = view
        settings = self.settings
        limit = connection_limit(syncers=settings.syncers, typhas=view.typhas, nodes=view.nodes,
                                 lower=settings.lower, upper=settings.upper)
        if limit != self.limit or self.server.settings.max_connections != limit:
            log.info("Connection limit %d -> %d (typhas=%s, nodes=%s, syncers=%d)",
                     self.server.settings.max_connections, limit, view.typhas, view.nodes, settings.syncers)
            self.limit = limit
            # ServerSettings is frozen (streams read it without locks): swap in a copy.
            self.server.settings = dataclasses.replace(self.server.settings, max_connections=limit)
        return limit

    def is_self(self, endpoint: TyphaEndpoint) -> bool:
        return endpoint.address in self.own_endpoints or bool(self.own_pod and endpoint.pod == self.own_pod)

    def other_endpoints(self) -> list[str]:
        """Ready Typha endpoints other than this one: where a moved client may go."""
        return [e.address for e in self.view.endpoints or () if e.ready and not self.is_self(e)]

    def step(self) -> Connection | None:
        """If over the limit, ask one caught-up client to move; returns it (None: nothing to do)."""
        server = self.server
        if server.draining:
            return None  # the drain moves everyone anyway
        connections = list(server.connections)
        self._hinted = {conn: target for conn, target in self._hinted.items() if conn in server.connections}
        settled = sum(1 for conn in connections if not is_moving(conn))
        total = settled
        if self.siblings is not None:
            self.siblings.publish(settled)
            others = self.siblings.others()
            total += sum(others.values())
            mine = (settled, -self.siblings.index)
            if total > self.limit and any((count, -index) > mine for index, count in others.items()):
                return None  # a more loaded worker of this typha moves one (ties: the lowest index)
        if total <= self.limit:
            return None
        victim = pick_victim(connections, self.rng)
        if victim is None:
            log.info("%d connections over the limit of %d, but no client is caught up; waiting",
                     total - self.limit, self.limit)
            return None
        candidates = self.other_endpoints()
        peers = self.peers
        loads = {endpoint: peers.load(endpoint) for endpoint in candidates} if peers is not None else {}
        in_flight: dict[str, int] = {}
        for target in self._hinted.values():
            in_flight[target] = in_flight.get(target, 0) + 1
        target = pick_target(candidates, loads, in_flight, self.rng)
        log.info("%d connections, limit %d: moving %s (%s %s) to %s", total, self.limit, victim.peer,
                 victim.hostname, victim.syncer_type, target or "any other typha")
        server.ask_to_reconnect(victim, REBALANCE_REASON, target)
        self._hinted[victim] = target
        self.moves_requested += 1
        return victim


def for_daemon(
    server: SyncServer, kube: KubeClient, config: TyphaConfig, *, host: str
) -> tuple[Rebalancer, KubeLookup]:
    """The daemon's rebalancer: settings from TyphaConfig, ourselves recognised by pod name or address."""
    lookup = KubeLookup(kube, namespace=config.k8s_namespace, service_name=config.k8s_service_name,
                        port_name=config.k8s_port_name)
    settings = RebalanceSettings(
        syncers=len(server.caches),
        lower=config.max_connections_lower_limit,
        upper=config.max_connections_upper_limit,
        poll_interval_secs=config.k8s_service_poll_interval_secs,
        drop_interval_secs=config.connection_drop_interval_secs,
    )
    siblings = SiblingLoads.from_environment(stale_secs=3 * config.connection_drop_interval_secs + 2)
    rebalancer = Rebalancer(server, lookup.lookup, settings, own_endpoints=own_endpoints(host, server.port),
                            own_pod=os.environ.get("POD_NAME") or socket.gethostname(), siblings=siblings)
    return rebalancer, lookup


def own_endpoints(host: str, port: int) -> set[str]:
    """The addresses under which the EndpointSlices may list this server, so hints never name ourselves.

    With a wildcard listen address (the usual case, and hostNetwork Typhas whose pod name is not the
    hostname) that is every local interface address at our port.
    """
    if host and host not in ("0.0.0.0", "::"):
        return {_dial_address(host, port)}
    import psutil  # only here: the daemon's dependency, not needed by the formula or the tests of it

    return {_dial_address(addr.address.split("%")[0], port)
            for addrs in psutil.net_if_addrs().values() for addr in addrs
            if addr.family in (socket.AF_INET, socket.AF_INET6)}


__all__ = [
    "ClusterView",
    "KubeLookup",
    "LocalPeers",
    "PeerLoads",
    "RebalanceSettings",
    "Rebalancer",
    "SiblingLoads",
    "TyphaEndpoint",
    "connection_limit",
    "for_daemon",
    "own_endpoints",
    "pick_target",
    "pick_victim",
    "typha_endpoints",
]
