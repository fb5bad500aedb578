"""The agent without `--dry-run`: it programs the namespace it runs in, and its resync repairs drift.

typha runs in this process and serves on a Unix socket (filesystem, not network-namespaced), so the
agent, started with `ip netns exec` inside a namespace this test creates, reaches it without any
address in the host's namespace. The namespace is deleted afterwards, even on failure.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.netns import Namespaces
from typha.testing.wait import wait_until

from .worked_example import BACKEND_IF, FRONTEND_IF, POLICY_CHAIN, cluster_objects, policy_object

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("ip", "iptables-restore", "ipset")), reason="needs ip, iptables, ipset"
    ),
]

run = Namespaces.run


# The agent's first apply inside a fresh namespace may be slow on a loaded machine.
wait_for = functools.partial(wait_until, timeout=30, interval=0.05)


@pytest.fixture
def typha_unix(tmp_path: Path) -> Iterator[tuple[KubeAPIEmulator, str]]:
    socket_path = tmp_path / "typha.sock"
    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        for obj in cluster_objects():
            api.create(obj)
        api.write_kubeconfig(tmp_path / "kubeconfig")
        kube = KubeClient.from_kubeconfig(str(tmp_path / "kubeconfig"))
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="typha-daemon", daemon=True)
        daemon = TyphaDaemon(TyphaConfig(server_host=f"unix:{socket_path}", server_port=0), kube=kube)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(daemon.start(), loop).result(30)
            yield api, f"unix:{socket_path}"
        finally:
            asyncio.run_coroutine_threadsafe(daemon.stop(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            kube.close()


@pytest.fixture
def node() -> Iterator[str]:
    name = f"fxag-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        for iface in (FRONTEND_IF, BACKEND_IF):
            run(name, "ip", "link", "add", iface, "type", "veth", "peer", "name", f"p{iface[-6:]}")
            run(name, "ip", "link", "set", iface, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_agent_programs_its_namespace_and_resync_repairs_drift(typha_unix, node, tmp_path):
    api, address = typha_unix
    status = tmp_path / "status.json"
    agent = subprocess.Popen(
        ["ip", "netns", "exec", node, sys.executable, "-m", "felix_client.agent", "--typha", address,
         "--hostname", "node-1", "--debounce", "0.02", "--resync-interval", "0.5", "--status-file", str(status),
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: status.exists() and json.loads(status.read_text())["applies"] > 0, "the first apply")
        save = run(node, "iptables-save")
        assert f"-A cali-to-wl-dispatch -o {BACKEND_IF} -g cali-tw-{BACKEND_IF}" in save
        assert f"10.65.0.2 dev {FRONTEND_IF} scope link metric 1024" in run(node, "ip", "route", "show")

        api.create(policy_object())
        wait_for(lambda: POLICY_CHAIN in run(node, "iptables-save"), "the policy chain")

        # Drift: delete a dispatch rule behind the agent's back; the periodic resync restores it.
        run(node, "iptables", "-D", "cali-to-wl-dispatch", "-o", BACKEND_IF, "-g", f"cali-tw-{BACKEND_IF}")
        wait_for(lambda: f"-o {BACKEND_IF} -g cali-tw-{BACKEND_IF}" in run(node, "iptables-save"), "the resync")

        api.delete("networking.k8s.io/v1", "NetworkPolicy", "allow-frontend", "demo")
        wait_for(lambda: POLICY_CHAIN not in run(node, "iptables-save"), "the policy chain to go")
    finally:
        stop_agent(agent)


def stop_agent(agent: subprocess.Popen[str]) -> None:
    """SIGTERM, then the agent must exit cleanly: status 0 and no traceback."""
    agent.terminate()
    try:
        _, err = agent.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        agent.kill()
        _, err = agent.communicate()
    assert agent.returncode == 0, err
    assert "Traceback" not in err, err
