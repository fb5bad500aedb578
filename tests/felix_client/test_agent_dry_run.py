"""The whole pipeline: API emulator → in-process typha → `felix-client --dry-run` for one node.

The agent runs as its own process (as it will in the demo), through `python -m felix_client.agent`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import free_port
from typha.testing.wait import wait_until, wait_until_trio

from .test_agent_kernel import stop_agent
from .worked_example import BACKEND_IF, FRONTEND_IF, POLICY_CHAIN, SOURCE_SET, cluster_objects, policy_object


class DaemonThread:
    """A TyphaDaemon on its own asyncio loop in a thread, so the test body can stay synchronous."""

    def __init__(self, kube: KubeClient) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="typha-daemon", daemon=True)
        # Port 0 means Typha's 5473 in TyphaConfig: pick a free one so a running typha cannot collide.
        self.daemon = TyphaDaemon(TyphaConfig(server_host="127.0.0.1", server_port=free_port()), kube=kube)

    def __enter__(self) -> TyphaDaemon:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.daemon.start(), self.loop).result(30)
        return self.daemon

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.daemon.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


@pytest.fixture
def typha(tmp_path: Path) -> Iterator[tuple[KubeAPIEmulator, int]]:
    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        for obj in cluster_objects():
            api.create(obj)
        path = tmp_path / "kubeconfig"
        api.write_kubeconfig(path)
        kube = KubeClient.from_kubeconfig(str(path))
        try:
            with DaemonThread(kube) as daemon:
                yield api, daemon.port
        finally:
            kube.close()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def wait_for(out: Path, check: Callable[[dict[str, str]], bool], what: str, timeout: float = 30) -> dict[str, str]:
    """Poll the dry-run files until `check` holds for one consistent generation."""
    files: dict[str, str] = {}

    def consistent() -> bool:
        nonlocal files
        try:
            files = {name: (out / name).read_text() for name in ("status.json", "iptables.save", "ip6tables.save",
                                                                  "ipsets.save", "routes.txt")}
        except FileNotFoundError:
            files = {}
        return bool(files) and json.loads(files["status.json"])["in_sync"] and check(files)

    wait_until(consistent, lambda: f"{what}; last files: {files}", timeout=timeout, interval=0.05)
    return files


def test_agent_writes_chains_sets_and_routes_and_follows_policy_changes(typha, tmp_path):
    api, port = typha
    out = tmp_path / "node-1"
    health = free_port()
    agent = subprocess.Popen(
        [sys.executable, "-m", "felix_client.agent", "--typha", f"127.0.0.1:{port}", "--hostname", "node-1",
         "--dry-run", str(out), "--debounce", "0.02", "--log-level", "warning",
         "--health-host", "127.0.0.1", "--health-port", str(health)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        files = wait_for(out, lambda f: f"cali-tw-{BACKEND_IF}" in f["iptables.save"], "the endpoints' chains")
        assert f"-A cali-to-wl-dispatch -o {FRONTEND_IF} -g cali-tw-{FRONTEND_IF}" in files["iptables.save"]
        assert POLICY_CHAIN not in files["iptables.save"]
        assert files["routes.txt"].splitlines() == [
            "blackhole 10.65.0.0/26 proto 80",
            f"10.65.0.2 dev {FRONTEND_IF} scope link metric 1024",
            f"10.65.0.3 dev {BACKEND_IF} scope link metric 1024",
            "10.65.1.0/26 via 192.168.56.12 dev tunl0 proto 80 onlink",
        ]
        assert "add cali40masq-ipam-pools 10.65.0.0/16" in files["ipsets.save"]
        assert http_status(f"http://127.0.0.1:{health}/readiness") == 200
        assert http_status(f"http://127.0.0.1:{health}/liveness") == 200

        api.create(policy_object())
        files = wait_for(out, lambda f: POLICY_CHAIN in f["iptables.save"], "the policy chain")
        assert (f"-A {POLICY_CHAIN} -p tcp -m comment --comment \"KubernetesNetworkPolicy demo/allow-frontend "
                f"ingress\" -m set --match-set {SOURCE_SET} src -m multiport --dports 8080 "
                "-j MARK --set-xmark 0x10000/0x10000") in files["iptables.save"]
        assert f"add {SOURCE_SET} 10.65.0.2\n" in files["ipsets.save"]

        # A new frontend pod joins the source set; relabelling it away leaves it again.
        from typha.testing import objects

        api.create(objects.pod("demo", "frontend2", node="node-2", ip="10.65.1.3", labels={"app": "frontend"}))
        wait_for(out, lambda f: f"add {SOURCE_SET} 10.65.1.3\n" in f["ipsets.save"], "the new member")
        api.patch("v1", "Pod", "frontend2", {"metadata": {"labels": {"app": "other"}}}, "demo")
        wait_for(out, lambda f: "10.65.1.3" not in f["ipsets.save"], "the member to leave")

        api.delete("networking.k8s.io/v1", "NetworkPolicy", "allow-frontend", "demo")
        files = wait_for(out, lambda f: POLICY_CHAIN not in f["iptables.save"], "the policy chain to go")
        assert SOURCE_SET not in files["ipsets.save"]
        assert "End of tier" not in files["iptables.save"]
    finally:
        stop_agent(agent)


def test_hostname_and_typha_defaults(monkeypatch):
    from felix_client.agent import parse_args

    monkeypatch.setenv("NODENAME", "from-nodename")
    monkeypatch.setenv("FELIX_TYPHAADDR", "typha-a,typha-b:6000")
    monkeypatch.delenv("FELIX_FELIXHOSTNAME", raising=False)
    monkeypatch.delenv("FELIX_HEALTHENABLED", raising=False)
    options = parse_args(["--dry-run", "out"])
    assert options.hostname == "from-nodename"
    assert options.typha == ["typha-a:5473", "typha-b:6000"]
    assert options.health_port is None
    monkeypatch.setenv("FELIX_FELIXHOSTNAME", "from-felix")
    monkeypatch.setenv("FELIX_HEALTHENABLED", "true")
    options = parse_args(["--typha", "10.0.0.1:5473"])
    assert (options.hostname, options.typha, options.health_port) == ("from-felix", ["10.0.0.1:5473"], 9099)


def test_two_agents_in_one_trio_process(typha, tmp_path):
    """How the demo can run many nodes: `Agent.run` as trio tasks, one sync stream each."""
    import trio

    from felix_client.agent import Agent, AgentOptions

    api, port = typha
    api.create(policy_object())
    agents = {node: Agent(AgentOptions([f"127.0.0.1:{port}"], node, dry_run=tmp_path / node, debounce=0.01))
              for node in ("node-1", "node-2")}

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            for agent in agents.values():
                await nursery.start(agent.run)
            await wait_until_trio(lambda: all(agent.ready for agent in agents.values()), "both agents ready",
                                  timeout=30)
            nursery.cancel_scope.cancel()

    trio.run(scenario)
    node1 = (tmp_path / "node-1" / "iptables.save").read_text()
    node2 = (tmp_path / "node-2" / "iptables.save").read_text()
    assert POLICY_CHAIN in node1
    assert POLICY_CHAIN not in node2
    assert (tmp_path / "node-2" / "routes.txt").read_text().splitlines()[0] == (
        "10.65.0.0/26 via 192.168.56.11 dev tunl0 proto 80 onlink")
    assert json.loads((tmp_path / "node-2" / "status.json").read_text())["endpoints"] == 1


def test_prometheus_metrics_endpoint_off_by_default_and_on_felix_port(monkeypatch):
    from felix_client.agent import parse_args
    from typha.logs import SettingError

    monkeypatch.setenv("FELIX_TYPHAADDR", "10.0.0.1")
    for name in ("FELIX_PROMETHEUSMETRICSENABLED", "FELIX_PROMETHEUSMETRICSPORT", "FELIX_PROMETHEUSMETRICSHOST"):
        monkeypatch.delenv(name, raising=False)
    assert parse_args(["--dry-run", "out"]).metrics_port is None  # Felix: PrometheusMetricsEnabled false
    monkeypatch.setenv("FELIX_PROMETHEUSMETRICSENABLED", "true")
    assert parse_args(["--dry-run", "out"]).metrics_port == 9091
    monkeypatch.setenv("FELIX_PROMETHEUSMETRICSPORT", "9191")
    monkeypatch.setenv("FELIX_PROMETHEUSMETRICSHOST", "127.0.0.1")
    options = parse_args(["--dry-run", "out"])
    assert (options.metrics_host, options.metrics_port) == ("127.0.0.1", 9191)
    monkeypatch.setenv("FELIX_PROMETHEUSMETRICSPORT", "91x")
    with pytest.raises(SettingError, match="FELIX_PROMETHEUSMETRICSPORT"):
        parse_args(["--dry-run", "out"])


def test_agent_serves_felix_metrics(typha, tmp_path):
    _api, port = typha
    metrics_port = free_port()
    env = {**os.environ, "FELIX_PROMETHEUSMETRICSENABLED": "true", "FELIX_PROMETHEUSMETRICSPORT": str(metrics_port),
           "FELIX_PROMETHEUSMETRICSHOST": "127.0.0.1"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "felix_client.agent", "--typha", f"127.0.0.1:{port}", "--hostname", "node-1",
         "--dry-run", str(tmp_path / "node-1"), "--debounce", "0.02", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    url = f"http://127.0.0.1:{metrics_port}/metrics"

    def scrape() -> str:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            return ""

    try:
        # In sync (felix_resync_state 3, as Felix's InSync) with node-1's two endpoints applied.
        wait_until(lambda: "felix_resync_state 3.0" in (text := scrape())
                   and "felix_active_local_endpoints 2.0" in text, lambda: scrape() or "no answer", timeout=30)
        text = scrape()
        assert "felix_int_dataplane_apply_time_seconds_count" in text
        assert "felix_int_dataplane_failures_total 0.0" in text
        assert "# TYPE felix_client_objects_rejected_total counter" in text
        assert "_created" not in text  # Felix exports no creation-time series
        assert http_status(f"http://127.0.0.1:{metrics_port}/other") == 404
    finally:
        stop_agent(agent)
