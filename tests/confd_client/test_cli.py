"""The `confd-client` command as a process: Calico's env names, `--oneshot`, clear errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.testing.apiserver import calico_v3
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import free_port

NODES = [
    {"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": name},
     "spec": {"bgp": {"ipv4Address": f"10.0.0.{i}/24"}}}
    for i, name in ((1, "node-a"), (2, "node-b"))
]


def clean_env(**extra: str) -> dict[str, str]:
    """The parent's environment minus anything Calico-ish, so only what the test sets reaches the client."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CALICO_", "FELIX_", "CONFD_", "NODENAME", "KUBECONFIG"))}
    return {**env, **extra}


def test_oneshot_renders_from_felix_typhaaddr(tmp_path):
    out = tmp_path / "config"
    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        calico_v3.apply_documents(api, NODES)
        api.write_kubeconfig(tmp_path / "kubeconfig")
        kube = KubeClient.from_kubeconfig(str(tmp_path / "kubeconfig"))

        async def scenario() -> subprocess.CompletedProcess[str]:
            daemon = TyphaDaemon(TyphaConfig(server_host="127.0.0.1", server_port=free_port()), kube=kube)
            await daemon.start()
            try:
                env = clean_env(NODENAME="node-a", FELIX_TYPHAADDR=f"127.0.0.1:{daemon.port}",
                                CALICO_ROUTER_ID="hash")
                return await asyncio.to_thread(
                    subprocess.run, [sys.executable, "-m", "confd_client.agent", "--oneshot", "--config-dir", str(out)],
                    env=env, capture_output=True, text=True, timeout=60)
            finally:
                await daemon.stop()

        try:
            result = asyncio.run(scenario())
        finally:
            kube.close()
    assert result.returncode == 0, result.stderr
    bird = (out / "bird.cfg").read_text()
    assert "router id 102.87.15.240;" in bird  # CALICO_ROUTER_ID=hash: first 4 bytes of sha256("node-a")
    assert "protocol bgp Mesh_10_0_0_2 from bgp_template" in bird
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["bird.cfg", "bird6.cfg", "bird_ipam.cfg", "bird6_ipam.cfg", "bird_aggr.cfg", "bird6_aggr.cfg"])


def test_missing_settings_fail_clearly():
    no_node = subprocess.run([sys.executable, "-m", "confd_client.agent", "--oneshot", "--typha", "127.0.0.1:1"],
                             env=clean_env(), capture_output=True, text=True, timeout=60)
    assert no_node.returncode == 2
    assert "NODENAME must be set" in no_node.stderr
    no_typha = subprocess.run([sys.executable, "-m", "confd_client.agent", "--oneshot"],
                              env=clean_env(NODENAME="n"), capture_output=True, text=True, timeout=60)
    assert no_typha.returncode == 2
    assert "FELIX_TYPHAADDR" in no_typha.stderr
