"""Two nodes, real BIRD, real BGP: confd_client's config makes each kernel learn the other's IPAM block.

Each node is a network namespace on a veth underlay (10.199.0.0/24, fd99::/64) running stock BIRD 1.6
(`bird` for IPv4, `bird6` for IPv6: one test per family) with the
files its own confd_client renders from typha's `bgp` syncer (API emulator → typha serve in this
process). The mesh session comes up, node B's kernel gets node A's block `via` A, and when A's block
affinity is deleted A's agent re-renders, reloads BIRD (`birdc configure`), and B loses the route.

Needs root, `ip` and `bird`; skipped otherwise. Everything created here is removed by name/pid.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading

import pytest
import trio

from confd_client.agent import ConfdAgent, Settings
from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.testing.apiserver import calico_v3
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import free_port
from typha.testing.wait import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "bird", "birdc", "bird6", "birdc6")),
                       reason="needs iproute2 and BIRD 1.6 (bird, bird6)"),
]

POLL = 0.25  # each poll runs `ip route` in a namespace: no need to spawn it faster than BGP converges
UNDERLAY = {"a": "10.199.0.1", "b": "10.199.0.2"}
UNDERLAY6 = {"a": "fd99::1", "b": "fd99::2"}
FAMILIES = {
    # family: (blocks per node, pool, BIRD binary, its config file, its socket flag)
    4: ({"a": "10.244.1.0/26", "b": "10.244.2.0/26"}, "10.244.0.0/16", "bird", "bird.cfg", "--bird-socket"),
    6: ({"a": "fd10:1::/122", "b": "fd10:2::/122"}, "fd10::/48", "bird6", "bird6.cfg", "--bird6-socket"),
}


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


def route(ns: str, cidr: str) -> str:
    family = "-6" if ":" in cidr else "-4"
    return subprocess.run(["ip", family, "-n", ns, "route", "show", cidr], capture_output=True, text=True,
                          timeout=10, check=False).stdout.strip()


def calico_docs(pool: str) -> list[dict]:
    # Both addresses on every node: bird6 takes its router id from the IPv4 address, as upstream's does.
    nodes = [{"apiVersion": "projectcalico.org/v3", "kind": "Node", "metadata": {"name": f"node-{n}"},
              "spec": {"bgp": {"ipv4Address": f"{UNDERLAY[n]}/24", "ipv6Address": f"{UNDERLAY6[n]}/64"}}}
             for n in UNDERLAY]
    # Unencapsulated, so BIRD programs the learned block routes into the kernel itself.
    ippool = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pool"},
              "spec": {"cidr": pool, "ipipMode": "Never", "vxlanMode": "Never"}}
    return [*nodes, ippool]


class AgentThread:
    def __init__(self, agent: ConfdAgent) -> None:
        self.agent = agent
        self.thread = threading.Thread(target=lambda: trio.run(agent.run), daemon=True)

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(15)


@pytest.fixture
def namespaces():
    tag = f"cb{os.getpid() % 100000}"
    names = {n: f"{tag}{n}" for n in UNDERLAY}
    veth = {n: f"{tag}v{n}" for n in UNDERLAY}
    try:
        for ns in names.values():
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth["a"], "type", "veth", "peer", "name", veth["b"])
        for n, ns in names.items():
            sh("ip", "link", "set", veth[n], "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{UNDERLAY[n]}/24", "dev", veth[n])
            sh("ip", "-n", ns, "addr", "add", f"{UNDERLAY6[n]}/64", "dev", veth[n], "nodad")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", veth[n], "up")
        yield names
    finally:
        for ns in names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)  # takes the veths along


@pytest.mark.parametrize("family", sorted(FAMILIES), ids=lambda f: f"ipv{f}")
def test_nodes_learn_each_others_blocks_and_lose_them_on_delete(namespaces, tmp_path, family):
    blocks, pool, binary, config_file, socket_flag = FAMILIES[family]
    underlay = UNDERLAY if family == 4 else UNDERLAY6
    with KubeAPIEmulator(bookmark_interval=0.2).start() as api:
        calico_v3.apply_documents(api, calico_docs(pool))
        for n, cidr in blocks.items():
            api.upsert(calico_v3.block_affinity(f"node-{n}", cidr, "confirmed"))
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        kube = KubeClient.from_kubeconfig(str(kubeconfig))
        port = free_port()
        ready = threading.Event()
        done = threading.Event()

        async def serve() -> None:
            daemon = TyphaDaemon(TyphaConfig(server_host="127.0.0.1", server_port=port), kube=kube)
            await daemon.start()
            ready.set()
            try:
                await asyncio.to_thread(done.wait)
            finally:
                await daemon.stop()

        server = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
        server.start()
        assert ready.wait(30)
        agents: dict[str, AgentThread] = {}
        birds: dict[str, subprocess.Popen] = {}
        try:
            for n, ns in namespaces.items():
                directory = tmp_path / n
                directory.mkdir()
                sock = str(directory / "bird.ctl")
                settings = Settings.from_env({"NODENAME": f"node-{n}"}, [
                    "--typha", f"127.0.0.1:{port}", "--config-dir", str(directory), "--debounce", "0.1",
                    socket_flag, sock, "--check"])
                agents[n] = AgentThread(ConfdAgent(settings))
                agents[n].thread.start()
                wait_until(lambda d=directory: (d / config_file).exists(), timeout=30, interval=POLL,
                           what=f"node-{n}'s first render")
                birds[n] = subprocess.Popen(
                    ["ip", "netns", "exec", ns, binary, "-f", "-c", str(directory / config_file), "-s", sock,
                     "-P", str(directory / "bird.pid")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

            peer_a = blocks["a"]
            wait_until(lambda: f"via {underlay['a']}" in route(namespaces["b"], peer_a), timeout=60, interval=POLL,
                       what=f"node-b's kernel to learn {peer_a} over BGP")
            wait_until(lambda: f"via {underlay['b']}" in route(namespaces["a"], blocks["b"]), timeout=60, interval=POLL,
                       what=f"node-a's kernel to learn {blocks['b']} over BGP")
            assert "proto bird" in route(namespaces["b"], peer_a)

            reloads = agents["a"].agent.counters.reloads
            api.delete(calico_v3.CRD_V1, "BlockAffinity", calico_v3.block_affinity_name("node-a", peer_a))
            wait_until(lambda: route(namespaces["b"], peer_a) == "", timeout=60, interval=POLL,
                       what=f"node-b to lose {peer_a}")
            assert agents["a"].agent.counters.reloads > reloads
            assert blocks["b"] in route(namespaces["a"], blocks["b"])  # the other direction is untouched
        finally:
            for agent in agents.values():
                agent.stop()
            for proc in birds.values():
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            done.set()
            server.join(30)
            kube.close()
