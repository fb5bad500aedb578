"""`typha serve` wiring end to end: API emulator → reflectors → syncers → caches → gRPC, health."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request

import grpc
import msgpack
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import free_port

from .sync_raw import RawClient


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_dump_of_an_unreachable_server_fails_clearly():
    result = subprocess.run(
        [sys.executable, "-m", "typha.cli", "dump", "--server", f"127.0.0.1:{free_port()}", "--timeout", "5"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("typha dump:"), result.stderr


def test_pod_in_the_api_reaches_a_client_as_a_workload_endpoint(tmp_path):
    async def scenario(api: KubeAPIEmulator, kube: KubeClient) -> None:
        health_port, metrics_port = free_port(), free_port()
        config = TyphaConfig(server_host="127.0.0.1", server_port=free_port(), health_enabled=True,
                             health_host="127.0.0.1", health_port=health_port, prometheus_metrics_enabled=True,
                             prometheus_metrics_host="127.0.0.1", prometheus_metrics_port=metrics_port)
        daemon = TyphaDaemon(config, kube=kube)
        await daemon.start()
        try:
            readiness = f"http://127.0.0.1:{health_port}/readiness"
            for _ in range(200):
                if await asyncio.to_thread(http_status, readiness) == 200:
                    break
                await asyncio.sleep(0.05)
            assert await asyncio.to_thread(http_status, readiness) == 200
            assert await asyncio.to_thread(http_status, f"http://127.0.0.1:{health_port}/liveness") == 200

            client = RawClient(daemon.port)
            await client.hello("felix", features=())
            _, state = await client.read_snapshot()
            wep = "/calico/v1/host/node-1/workload/k8s/demo%2ffrontend/endpoint/eth0"
            assert msgpack.unpackb(state[wep])["name"] == "cali76e3fb891b9"
            assert "/calico/v1/policy/profile/kns.demo/rules" in state

            await asyncio.to_thread(
                api.patch, "v1", "Pod", "frontend", {"metadata": {"labels": {"app": "web2"}}}, "demo")
            while True:
                deltas = (await client.read_kind("deltas")).deltas
                changed = {kv.key: kv.value for kv in deltas.kvs}
                if wep in changed:
                    break
            assert msgpack.unpackb(changed[wep])["labels"]["app"] == "web2"
            await client.close()

            bgp = RawClient(daemon.port)
            await bgp.hello("bgp", features=())
            _, bgp_state = await bgp.read_snapshot()
            assert "/calico/resources/v3/projectcalico.org/nodes/node-1" in bgp_state
            assert not any(key.startswith("/calico/v1/host/") for key in bgp_state)
            await bgp.close()

            # Standard gRPC health (per syncer and overall) and reflection, as grpcurl and probes use them.
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{daemon.port}")
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "typha.v1.Sync", "typha.v1.Sync/felix", "typha.v1.Sync/bgp"):
                answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for answer in reflect.ServerReflectionInfo(iter([request]), timeout=5):
                listed = {service.name for service in answer.list_services_response.service}
                break
            assert "typha.v1.Sync" in listed
            await channel.close()

            # Prometheus metrics under Typha's names.
            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode())
            for name in ("typha_connections_active", "typha_updates_total", "typha_updates_skipped",
                         "typha_breadcrumb_seq_number", "typha_snapshots_generated", "typha_client_latency_secs"):
                assert f"\n{name}" in metrics, name

            # The operator's view: `typha dump` prints what a bgp client receives.
            dump = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "typha.cli", "dump", "--server", f"127.0.0.1:{daemon.port}",
                "--syncer", "bgp", "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(dump.communicate(), 30)
            assert dump.returncode == 0, err.decode()
            dumped = json.loads(out)
            assert set(dumped) == set(bgp_state)
            assert dumped["/calico/resources/v3/projectcalico.org/nodes/node-1"]["spec"]["bgp"]["ipv4Address"] == (
                "192.168.56.11/24")
        finally:
            await daemon.stop()

    with KubeAPIEmulator().start() as api:
        api.create(objects.namespace("demo"))
        api.create(objects.node("node-1", ipv4="192.168.56.11/24"))
        api.create(objects.pod("demo", "frontend", node="node-1", ip="10.65.0.2", labels={"app": "web"}))
        path = tmp_path / "kubeconfig"
        api.write_kubeconfig(path)
        kube = KubeClient.from_kubeconfig(str(path))
        asyncio.run(asyncio.wait_for(scenario(api, kube), 60))
        kube.close()
