"""Rebalancing across three typha replicas, make-before-break, with the limit from the (emulated) API.

The scenario is the "sticky imbalance" after a rollout (typha#384): 30 clients sit on replica 0
while it is the only Typha in the service; then replicas 1 and 2 join the EndpointSlices, the
limit drops to Typha's formula (N=16 nodes, T=3, S=1 ⇒ 1 + ⌊16·120/2/100⌋ = 10) and replica 0 moves
its excess, one caught-up client at a time, to the least-loaded replica. Replicas follow one ingest
typha, so epochs and sequence numbers agree and every move is a resume, never a snapshot.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc
import pytest

from typha.client import AsyncSyncClient, Backoff
from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.model.kv import SyncStatus
from typha.ops.rebalance import ClusterView, KubeLookup, LocalPeers, Rebalancer, RebalanceSettings, TyphaEndpoint
from typha.proto import sync_pb2 as pb
from typha.source.datastore import convert_objects
from typha.syncserver.server import ServerSettings, SyncServer
from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.wait import wait_until_async

from .churn import apply, random_op
from .sync_raw import RawClient
from .test_daemon import free_port
from .test_server import run, serving

CLIENTS = 30
REPLICAS = 3
NAMESPACE = "kube-system"


class StatusLog:
    """Callbacks that remember every status the client reported (the mirror is read from client.core)."""

    def __init__(self) -> None:
        self.statuses: list[SyncStatus] = []

    def on_updates(self, updates: list[Any]) -> None:
        pass

    def on_status(self, status: SyncStatus) -> None:
        self.statuses.append(status)

    def lost_sync_after_first_in_sync(self) -> bool:
        if SyncStatus.IN_SYNC not in self.statuses:
            return True
        first = self.statuses.index(SyncStatus.IN_SYNC)
        return any(s is not SyncStatus.IN_SYNC for s in self.statuses[first:])


def endpoint_slice(name: str, port: int, *, service: str = "calico-typha", ready: bool = True) -> dict[str, Any]:
    # One slice per replica: a slice's ports apply to all its endpoints, and ours differ by port.
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}],
        "ports": [{"name": "calico-typha", "port": port, "protocol": "TCP"}],
    }


def seed_cluster(api: KubeAPIEmulator) -> None:
    api.upsert(objects.namespace(NAMESPACE, {}))
    # 16 nodes; the churn below re-writes node-1..3 but never deletes nodes, so N stays 16.
    for i in range(1, 17):
        api.upsert(objects.node(f"node-{i}", ipv4=f"192.168.56.{i}/24"))


def no_node_deletes(rng: random.Random) -> tuple[Any, ...]:
    while True:
        op = random_op(rng)
        if op[0] != "node-delete":
            return op


def test_kube_lookup_counts_typha_endpoints_and_nodes(kube, emulator):
    seed_cluster(emulator)
    emulator.upsert(endpoint_slice("calico-typha-a", 5473))
    emulator.upsert(endpoint_slice("calico-typha-b", 5474, ready=False))
    emulator.upsert(endpoint_slice("other-service", 5475, service="other"))  # another service's slice
    emulator.upsert({**endpoint_slice("elsewhere", 5476), "metadata": {
        "name": "elsewhere", "namespace": "default", "labels": {"kubernetes.io/service-name": "calico-typha"}}})
    lookup = KubeLookup(kube, namespace=NAMESPACE, service_name="calico-typha", port_name="calico-typha")
    lookup.start()
    try:
        deadline = time.monotonic() + 10
        view = lookup.lookup()
        while view.nodes is None and time.monotonic() < deadline:
            time.sleep(0.05)
            view = lookup.lookup()
        assert view.nodes == 16
        assert view.endpoints is not None
        assert [(e.address, e.ready) for e in view.endpoints] == [("127.0.0.1:5473", True), ("127.0.0.1:5474", False)]
    finally:
        lookup.stop()
    # The node watch is stopped, so the injected fault is certain to hit the EndpointSlice list.
    emulator.fail_next(1, 500)
    assert lookup.lookup().endpoints is None  # API error: unknown, so the limit is Upper


def test_excess_clients_are_hinted_then_closed_only_if_they_stay():
    """On the wire: a client with the "reconnect" feature gets a hint naming the least-loaded other
    Typha and is closed (UNAVAILABLE) only if it is still there after the grace period; a client
    without the feature is closed at once (Typha's behaviour), and only when no movable one is left."""

    async def hello(client: RawClient, name: str, features: tuple[str, ...]) -> None:
        await client.send(pb.ClientMessage(hello=pb.ClientHello(
            hostname=name, syncer_type="felix", compressions=["zstd"], features=list(features))))
        await client.read_snapshot()

    async def scenario() -> None:
        settings = ServerSettings(handshake_timeout_secs=2, drain_reconnect_grace_secs=0.5)
        async with serving(settings) as (server, caches):
            caches["felix"].set_status(SyncStatus.IN_SYNC)
            us, other = f"127.0.0.1:{server.port}", "127.0.0.1:1"
            # T=2, N=1, S=1: limit 1 · (1 + ⌊1·120/1/100⌋) = 2.
            view = ClusterView((TyphaEndpoint(us, True), TyphaEndpoint(other, True)), nodes=1)
            rebalancer = Rebalancer(server, lambda: view, RebalanceSettings(syncers=1, lower=1),
                                    own_endpoints={us}, peers=LocalPeers({other: SyncServer({})}))
            clients = {name: RawClient(server.port) for name in ("legacy-1", "legacy-2", "modern-1", "modern-2")}
            for name, client in clients.items():
                await hello(client, name, () if name.startswith("legacy") else ("reconnect",))
            await wait_until_async(lambda: len(server.connections) == 4, timeout=5, what="four connections")
            assert rebalancer.apply(view) == 2

            # A movable client goes first, with a hint naming the other Typha; it moves (closes its stream).
            first = rebalancer.step()
            assert first is not None
            assert first.hostname.startswith("modern")
            hint = (await clients[first.hostname].read_kind("reconnect")).reconnect
            assert hint.endpoint == other
            assert "rebalancing" in hint.reason
            await clients.pop(first.hostname).close()
            await wait_until_async(lambda: len(server.connections) == 3, timeout=5, what="the moved client to be gone")

            # The other movable client is asked next but stays: closed once the grace period is over.
            second = rebalancer.step()
            assert second is not None
            assert second.hostname.startswith("modern")
            assert second is not first
            assert rebalancer.step() is None  # 3 connections, 1 moving: at the limit, no second victim
            hint = (await clients[second.hostname].read_kind("reconnect")).reconnect
            assert hint.endpoint == other
            code, details = await clients[second.hostname].status()
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "rebalancing" in details
            await wait_until_async(lambda: len(server.connections) == 2, timeout=5,
                                   what="the stubborn client to be closed")
            assert rebalancer.step() is None

            # Only clients without the feature are left; with a limit of 1 one of them is closed at once.
            assert rebalancer.apply(ClusterView(view.endpoints, nodes=0)) == 1
            third = rebalancer.step()
            assert third is not None
            assert third.hostname.startswith("legacy")
            code, details = await clients[third.hostname].status()
            assert code == grpc.StatusCode.UNAVAILABLE
            assert "rebalancing" in details
            for client in clients.values():
                await client.close()

    run(scenario)


@pytest.mark.parametrize("loads_known", [True, False], ids=["least-loaded-hint", "no-load-info"])
def test_three_replicas_converge_without_any_client_losing_sync(tmp_path, loads_known):
    """With loads known, hints name the least-loaded replica. Without (the default across hosts: the
    protocol carries no load yet), hints name no endpoint, clients try their list in order, and the
    full replica's admission limit refuses them on to the next, still make-before-break."""
    rng = random.Random("rebalance")

    async def scenario(api: KubeAPIEmulator, kube: KubeClient) -> None:
        ingest = TyphaDaemon(TyphaConfig(server_host=f"unix:{tmp_path}/ingest.sock", syncers="felix"), kube=kube)
        await ingest.start()
        ports = [free_port() for _ in range(REPLICAS)]
        replicas = [
            TyphaDaemon(TyphaConfig(
                server_host="127.0.0.1", server_port=port, syncers="felix", upstream=f"unix:{tmp_path}/ingest.sock",
                connection_rebalancing_mode="kubernetes", k8s_namespace=NAMESPACE,
                max_connections_lower_limit=1, k8s_service_poll_interval_secs=0.2,
                connection_drop_interval_secs=0.05,
            ), kube=kube)
            for port in ports
        ]
        addresses = [f"127.0.0.1:{port}" for port in ports]
        clients: list[AsyncSyncClient] = []
        logs: list[StatusLog] = []
        churning = True

        async def churn() -> None:
            while churning:
                await asyncio.to_thread(apply, api, no_node_deletes(rng))
                await asyncio.sleep(0.02)

        churn_task: asyncio.Task[None] | None = None
        try:
            for replica in replicas:
                await replica.start()
            servers = [replica.server for replica in replicas]
            assert all(server is not None for server in servers)
            peers = LocalPeers(dict(zip(addresses, servers, strict=True)))
            for replica in replicas:
                assert replica.rebalancer is not None
                replica.rebalancer.peers = peers if loads_known else None

            # Clients come once the replicas follow the ingest: a replica's first sync with its upstream
            # starts its cache over, which would send early clients elsewhere for a new snapshot.
            await wait_until_async(lambda: all(replica.readiness()[0] for replica in replicas), timeout=20,
                                   what="replicas in sync")

            # Only replica 0 is in the service so far: T=1, so its limit is Upper and it takes everyone.
            api.upsert(endpoint_slice("calico-typha-0", ports[0]))
            for i in range(CLIENTS):
                log = StatusLog()
                # Replica 0 first in every list; a client's own subchannel pool gives it its own TCP connection.
                client = AsyncSyncClient(addresses, "felix", hostname=f"node-{i}", callbacks=log,
                                         channel_options=[("grpc.use_local_subchannel_pool", 1)],
                                         backoff=Backoff(initial=0.05, maximum=0.5))
                client.start()
                clients.append(client)
                logs.append(log)
            for client in clients:
                assert await client.wait_in_sync(30)
            assert all(client.endpoint == addresses[0] for client in clients)
            assert len(servers[0].connections) == CLIENTS
            await asyncio.sleep(0.5)  # a few polls at T=1: nothing moves
            assert replicas[0].rebalancer.moves_requested == 0

            # Data keeps changing while clients move: a move that lost or repeated a delta would show.
            churn_task = asyncio.create_task(churn())

            # Replicas 1 and 2 join the service: the limit drops to 10 and replica 0 sheds 20 clients.
            started = time.monotonic()
            api.upsert(endpoint_slice("calico-typha-1", ports[1]))
            api.upsert(endpoint_slice("calico-typha-2", ports[2]))
            await wait_until_async(lambda: all(server.settings.max_connections == 10 for server in servers), timeout=10,
                                   what="every replica to adopt the limit of 10")

            def settled() -> bool:
                # Replica 0 down to its limit, every move finished (no client on two replicas), all in sync.
                counts = [len(server.connections) for server in servers]
                return counts[0] <= 10 and sum(counts) == CLIENTS and all(client.in_sync for client in clients)

            await wait_until_async(settled, timeout=45, what="replica 0 to shed its excess")
            converged = time.monotonic() - started
            counts = [len(server.connections) for server in servers]
            assert all(abs(count - CLIENTS // REPLICAS) <= 2 for count in counts), counts

            churning = False
            await churn_task
            churn_task = None
            want = convert_objects("felix", await asyncio.to_thread(api.objects))
            await wait_until_async(lambda: all(client.core.to_dict() == want for client in clients), timeout=20,
                                   what="every client's mirror to match the API")

            # Counts stay put: nothing oscillates once every replica is at or under its limit.
            await asyncio.sleep(0.5)
            assert [len(server.connections) for server in servers] == counts

            moved = [client for client in clients if client.endpoint != addresses[0]]
            assert len(moved) == sum(counts[1:]) >= CLIENTS - 10
            for client, log in zip(clients, logs, strict=True):
                assert client.counters.snapshots == 1, (client.core.hostname, client.counters)
                assert client.counters.resyncs == 0, client.counters
                assert not log.lost_sync_after_first_in_sync(), log.statuses
            for client in moved:
                assert client.counters.moves >= 1 and client.counters.resumes >= 1, client.counters
            per_endpoint = {address: sum(client.endpoint == address for client in clients) for address in addresses}
            assert list(per_endpoint.values()) == counts
            print(f"converged in {converged:.2f} s to {counts}; "
                  f"moves requested by replica 0: {replicas[0].rebalancer.moves_requested}")
            assert replicas[0].rebalancer.moves_requested <= CLIENTS  # one per excess client, plus rare retries
        finally:
            churning = False
            if churn_task is not None:
                await churn_task
            for client in clients:
                await client.close()
            for replica in replicas:
                await replica.stop()
            await ingest.stop()

    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        seed_cluster(api)
        path = tmp_path / "kubeconfig"
        api.write_kubeconfig(path)
        kube = KubeClient.from_kubeconfig(str(path))
        try:
            asyncio.run(asyncio.wait_for(scenario(api, kube), 150))
        finally:
            kube.close()
