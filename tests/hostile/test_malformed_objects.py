"""Malformed Kubernetes and Calico objects in the API (issue 8, hostile input), through the whole path:
emulator over HTTP → reflectors → syncers → caches → gRPC → typha.client.

Every object the syncers refuse is skipped with a warning naming it and a count in
`typha_conversion_errors_total{syncer,resource}`; typha keeps going, and each client's mirror is the
conversion of the valid objects around them, both from the initial list and from later watch events.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import msgpack
import pytest
from prometheus_client import REGISTRY

from typha.client import AsyncSyncClient
from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.model.resources import for_object
from typha.source.datastore import convert_objects, converters_for
from typha.testing import objects
from typha.testing.procs import free_port

from .malformed import rejected, tolerated, valid


def errors(syncer: str, resource: str) -> float:
    return REGISTRY.get_sample_value("typha_conversion_errors_total", {"syncer": syncer, "resource": resource}) or 0


def as_received(kvs: dict[str, Any]) -> dict[str, Any]:
    """Values as a client decodes them (msgpack turns tuples into lists)."""
    return {key: msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False) for key, value in kvs.items()}


def expected_errors(objs: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for obj in objs:
        resource = for_object(obj["apiVersion"], obj["kind"]).key
        for syncer in ("felix", "bgp"):
            if resource in converters_for(syncer):
                counts[syncer, resource] += 1
    return counts


def mirror_of(client: AsyncSyncClient) -> dict[str, Any]:
    return dict(client.core.items())


async def converged(api: Any, clients: dict[str, AsyncSyncClient], timeout: float = 20) -> None:
    """Each client's mirror equals the conversion of the API's objects (bounded wait, then compare)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        objs = await asyncio.to_thread(api.objects)
        wanted = {name: as_received(convert_objects(name, objs)) for name in clients}
        if all(mirror_of(client) == wanted[name] for name, client in clients.items()):
            return
        if asyncio.get_running_loop().time() > deadline:
            for name, client in clients.items():
                got = mirror_of(client)
                differ = sorted(k for k in set(got) | set(wanted[name]) if got.get(k) != wanted[name].get(k))
                assert not differ, f"{name}: {len(differ)} keys differ, e.g. {differ[:5]}"
        await asyncio.sleep(0.05)


def test_malformed_objects_are_skipped_counted_and_logged_while_valid_ones_reach_clients(tmp_path, caplog):
    from typha.testing.apiserver.server import KubeAPIEmulator

    caplog.set_level(logging.WARNING, logger="typha.source.datastore")
    bad, odd, good = rejected(), tolerated(), valid()
    watched_bad = [objects.calico_global_policy("gnp-late-bad", selector="has(")]
    wanted_errors = expected_errors(bad + watched_bad)
    wanted_errors["felix", "globalnetworkpolicies.crd.projectcalico.org"] += 1  # gnp-good, broken later
    before = {key: errors(*key) for key in wanted_errors}

    async def scenario(api: KubeAPIEmulator, kube: KubeClient) -> None:
        config = TyphaConfig(server_host="127.0.0.1", server_port=free_port())
        daemon = TyphaDaemon(config, kube=kube)
        await daemon.start()
        clients = {name: AsyncSyncClient([f"127.0.0.1:{daemon.port}"], name, hostname="node-1")
                   for name in ("felix", "bgp")}
        try:
            for client in clients.values():
                client.start()
            for client in clients.values():
                assert await client.wait_in_sync(20)
            await converged(api, clients)
            felix = mirror_of(clients["felix"])
            assert "/calico/v1/host/node-1/workload/k8s/demo%2fgood/endpoint/eth0" in felix
            assert "/calico/v1/policy/GlobalNetworkPolicy//gnp-good" in felix
            assert "/calico/v1/policy/profile/kns.huge/rules" in felix  # 1 MB annotation, 200 labels: fine
            for obj in bad:
                name = obj["metadata"]["name"]
                assert not any(name in key.replace("%2f", "/").split("/")
                               for client in clients.values() for key in mirror_of(client)), name

            # The same through the watch: a valid policy turns invalid (its key is withdrawn), an
            # invalid one arrives, and a valid one after them still gets through.
            broken = objects.calico_global_policy("gnp-good", selector="app == 'web' ||")
            await asyncio.to_thread(api.upsert, broken)
            for obj in watched_bad:
                await asyncio.to_thread(api.create, obj)
            await asyncio.to_thread(api.create, objects.pod("demo", "late", node="node-1", ip="10.65.0.11"))
            await converged(api, clients)
            felix = mirror_of(clients["felix"])
            assert "/calico/v1/policy/GlobalNetworkPolicy//gnp-good" not in felix
            assert "/calico/v1/host/node-1/workload/k8s/demo%2flate/endpoint/eth0" in felix
            assert daemon.datastore is not None
            assert daemon.datastore.error is None
        finally:
            for client in clients.values():
                await client.close()
            await daemon.stop()

    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        for obj in good + bad + odd:
            api.create(obj)
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        kube = KubeClient.from_kubeconfig(str(kubeconfig))
        try:
            asyncio.run(asyncio.wait_for(scenario(api, kube), 90))
        finally:
            kube.close()

    for key, count in wanted_errors.items():
        # At least: a reflector that re-lists after a dropped watch converts (and counts) again.
        assert errors(*key) - before[key] >= count, (key, errors(*key) - before[key], count)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for obj in [*bad, *watched_bad]:
        md = obj["metadata"]
        assert f"skipping invalid {obj['kind']} {md.get('namespace', '')}/{md['name']}" in logged, md["name"]
    longest = max(len(record.getMessage()) for record in caplog.records)
    assert longest < 2000, "a log line carries a whole hostile field (1 MB annotation)"


@pytest.mark.parametrize("syncer", ["felix", "bgp"])
def test_every_kind_a_syncer_converts_has_a_malformed_example(syncer):
    """Keeps the catalogue honest: a new kind in a syncer needs a malformed example too."""
    covered = {for_object(o["apiVersion"], o["kind"]).key for o in rejected() + tolerated()}
    uncovered = set(converters_for(syncer)) - covered
    # The staged policy kinds share their converters with the policy kinds above.
    passthrough = {"stagedglobalnetworkpolicies.crd.projectcalico.org",
                   "stagednetworkpolicies.crd.projectcalico.org",
                   "stagedkubernetesnetworkpolicies.crd.projectcalico.org"}
    assert uncovered <= passthrough, sorted(uncovered - passthrough)
