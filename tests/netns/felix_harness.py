"""A small Calico cluster in network namespaces for felix_client's kernel tests.

The harness plays CNI and kubelet (the pod plumbing is typha.testing.vcluster's): node namespaces
joined by a veth underlay (eth0, 10.201.0.0/24), one namespace per pod with a veth named as Calico
names it (host side MAC ee:ee:ee:ee:ee:ee), the pod's /32 and the 169.254.1.1 gateway answered by proxy
ARP. The Kubernetes API emulator holds the cluster; typha serves it on a Unix socket from this process
(so tests can inject KVs into its cache, which vcluster's `typha serve` child cannot); one
`felix-client` per node runs inside that node's namespace and programs it. The module-level pieces
(network, agents) also serve test_netpol_conformance.py, which keeps its own cluster model.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.model.convert import veth_name
from typha.model.kv import Update
from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.netns import Namespaces
from typha.testing.procs import stop_process
from typha.testing.vcluster import cni_add, route_pod_gateway
from typha.testing.wait import wait_until

__all__ = ["DaemonThread", "FelixCluster", "Listener", "Node", "Pod", "add_ipv6", "exchange_eventually"]

UNDERLAY_PREFIX = "10.201.0"
UNDERLAY6_PREFIX = "fd20::"
# The host side of every workload veth has MAC ee:ee:ee:ee:ee:ee, so this EUI-64 link-local address:
# the IPv6 default gateway Calico's CNI gives pods.
POD_GATEWAY6 = "fe80::ecee:eeff:feee:eeee"


class DaemonThread:
    """typha on its own asyncio loop, serving on a Unix socket."""

    def __init__(self, kube: KubeClient, socket_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="typha-daemon", daemon=True)
        self.daemon = TyphaDaemon(TyphaConfig(server_host=f"unix:{socket_path}", server_port=0), kube=kube)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.daemon.start(), self.loop).result(30)

    def inject(self, kvs: list[tuple[str, Any]]) -> None:
        """Write KVs into the felix cache, on the daemon's loop (the cache is not thread-safe)."""
        updates = [Update(k, v, str(time.time_ns())) for k, v in kvs]

        async def apply() -> None:
            self.daemon.caches["felix"].apply(updates)

        asyncio.run_coroutine_threadsafe(apply(), self.loop).result(30)

    def stop(self) -> None:
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.daemon.stop(), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@dataclass
class Pod:
    ns: str
    name: str
    node: str
    ip: str
    labels: dict[str, str] = field(default_factory=dict)
    netns: str = ""
    ip6: str = ""  # dual stack: the pod's IPv6 address too

    @property
    def iface(self) -> str:
        return veth_name(self.ns, self.name)

    def k8s_object(self) -> dict[str, Any]:
        obj = objects.pod(self.ns, self.name, node=self.node, ip=self.ip, labels=self.labels)
        if self.ip6:
            obj["status"]["podIPs"] = [{"ip": self.ip}, {"ip": self.ip6}]  # IPv4 first, as Kubernetes lists them
        return obj


@dataclass
class Node:
    name: str
    index: int  # 1-based: underlay address 10.201.0.<index>
    vxlan_ip: str | None = None
    vxlan_mac: str | None = None
    netns: str = ""
    ipv6: bool = False  # an IPv6 underlay address too (fd20::<index>/64), announced on the Node
    vxlan_ip6: str | None = None  # IPv6 VXLAN: the node's IPv6VXLANTunnelAddr and VXLANTunnelMACAddrV6
    vxlan_mac6: str | None = None

    @property
    def underlay_ip(self) -> str:
        return f"{UNDERLAY_PREFIX}.{self.index}"

    @property
    def underlay_ip6(self) -> str:
        return f"{UNDERLAY6_PREFIX}{self.index}"

    def k8s_object(self) -> dict[str, Any]:
        obj = objects.node(self.name, ipv4=f"{self.underlay_ip}/24", vxlan_tunnel_addr=self.vxlan_ip,
                           vxlan_mac=self.vxlan_mac)
        if self.ipv6:
            # calico-node's annotation for the node's IPv6 address: the next hop of its IPv6 blocks.
            obj["metadata"]["annotations"]["projectcalico.org/IPv6Address"] = f"{self.underlay_ip6}/64"
        # calico-node's annotations for the IPv6 VTEP (typha's Node conversion reads them).
        for annotation, value in (("IPv6VXLANTunnelAddr", self.vxlan_ip6), ("VXLANTunnelMACAddrV6", self.vxlan_mac6)):
            if value:
                obj["metadata"]["annotations"][f"projectcalico.org/{annotation}"] = value
        return obj


class FelixCluster:
    """Two nodes, their pods and one agent per node; `close()` stops everything it started (the
    namespaces themselves belong to the `netns` fixture, which deletes them)."""

    def __init__(self, ns_tool: Any, tmp: Path, nodes: list[Node], pods: list[Pod],
                 pools: list[dict[str, Any]], blocks: dict[str, str]) -> None:
        assert len(nodes) == 2, "the underlay is one veth pair"
        self.ns_tool = ns_tool
        self.tmp = tmp
        self.nodes = {n.name: n for n in nodes}
        self.pods = {f"{p.ns}/{p.name}": p for p in pods}
        self.pools = pools
        self.blocks = blocks  # block CIDR -> node
        self.agents: dict[str, subprocess.Popen[str]] = {}
        self.api: KubeAPIEmulator | None = None
        self.kube: KubeClient | None = None
        self.daemon: DaemonThread | None = None
        self.socket_path = tmp / "typha.sock"

    # --- network ------------------------------------------------------------------------------

    def build_network(self) -> None:
        names = build_two_nodes(self.ns_tool, {n.name: n.underlay_ip for n in self.nodes.values()},
                                self.pods.values())
        for node in self.nodes.values():
            node.netns = names[node.name]
        if any(n.ipv6 for n in self.nodes.values()):
            add_ipv6(self.ns_tool, {n.name: n.netns for n in self.nodes.values()},
                     {n.name: n.underlay_ip6 for n in self.nodes.values()}, [p for p in self.pods.values() if p.ip6])

    # --- datastore and agents -----------------------------------------------------------------

    def cluster_objects(self) -> list[dict[str, Any]]:
        objs: list[dict[str, Any]] = [*self.pools, *(n.k8s_object() for n in self.nodes.values())]
        objs += [objects.ipam_block(cidr, node=node) for cidr, node in self.blocks.items()]
        for ns in sorted({p.ns for p in self.pods.values()}):
            objs += [objects.namespace(ns), objects.service_account(ns)]
        objs += [p.k8s_object() for p in self.pods.values()]
        return objs

    def start(self) -> None:
        """Datastore, typha and one agent per node; returns once every agent has programmed its node."""
        self.api = KubeAPIEmulator(bookmark_interval=0.2).start()
        for obj in self.cluster_objects():
            self.api.create(obj)
        self.api.write_kubeconfig(self.tmp / "kubeconfig")
        self.kube = KubeClient.from_kubeconfig(str(self.tmp / "kubeconfig"))
        self.daemon = DaemonThread(self.kube, self.socket_path)
        self.daemon.start()
        for node in self.nodes:
            self.start_agent(node)
        self.wait_applied()

    def start_agent(self, node: str) -> None:
        self.agents[node] = start_felix(self.nodes[node].netns, node, self.socket_path, self.tmp)

    def stop_agent(self, node: str) -> None:
        proc = self.agents.pop(node, None)
        if proc is not None:
            stop_process(proc)

    def status(self, node: str) -> dict[str, Any] | None:
        return felix_status(self.tmp, node)

    def wait_applied(self, timeout: float = 30) -> None:
        """Until every agent reports an apply covering all its pods."""
        want = {n: sum(1 for p in self.pods.values() if p.node == n) for n in self.nodes}
        wait_felix_applied(self.agents, want, self.tmp, timeout)

    def agent_log(self, node: str) -> str:
        return agent_log(self.tmp, node)

    def run(self, node: str, *argv: str) -> str:
        return self.ns_tool.run(self.nodes[node].netns, *argv)

    def ip_json(self, node: str, *argv: str) -> list[dict[str, Any]]:
        """An `ip -j …` command run in `node`'s namespace, parsed (empty output: [])."""
        return json.loads(self.run(node, *argv) or "[]")

    def close(self) -> None:
        for node in list(self.agents):
            self.stop_agent(node)
        if self.daemon is not None:
            self.daemon.stop()
        if self.kube is not None:
            self.kube.close()
        if self.api is not None:
            self.api.stop()


@contextmanager
def running_cluster(ns_tool: Any, tmp: Path, nodes: list[Node], pods: list[Pod], pools: list[dict[str, Any]],
                    blocks: dict[str, str]) -> Iterator[FelixCluster]:
    """A FelixCluster with its network built and every agent applied; closed on the way out."""
    c = FelixCluster(ns_tool, tmp, nodes, pods, pools, blocks)
    try:
        c.build_network()
        c.start()
        yield c
    finally:
        c.close()


class NetnsPod(Protocol):
    node: str
    ip: str
    netns: str

    @property
    def iface(self) -> str: ...


def build_two_nodes(ns_tool: Namespaces, underlay: dict[str, str], pods: Iterable[NetnsPod]) -> dict[str, str]:
    """Two node namespaces joined by one veth pair (eth0, `underlay`: node -> its /24 address), and every
    pod in a namespace of its own plugged into its node as Calico's CNI does; sets each pod's `netns`
    and returns node -> namespace."""
    assert len(underlay) == 2, "the underlay is one veth pair"
    names = {node: ns_tool.add(f"n{i}") for i, node in enumerate(underlay, 1)}
    n1, n2 = names.values()
    ns_tool.ip(n1, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", n2)
    for node, netns in names.items():
        ns_tool.ip(netns, "addr", "add", f"{underlay[node]}/24", "dev", "eth0")
        ns_tool.ip(netns, "link", "set", "eth0", "up")
        route_pod_gateway(ns_tool, netns)
    for i, pod in enumerate(pods):
        pod.netns = ns_tool.add(f"p{i}")
        cni_add(ns_tool, names[pod.node], pod.netns, pod.iface, pod.ip)
    return names


class NetnsPod6(Protocol):
    netns: str
    ip6: str


def add_ipv6(ns_tool: Namespaces, node_ns: dict[str, str], underlay6: dict[str, str],
             pods: Iterable[NetnsPod6]) -> None:
    """The IPv6 half of the CNI's work, after `build_two_nodes`: each node's underlay IPv6 address
    (`underlay6`: node -> address, /64), each pod's /128 and its default route via the host side's
    link-local address. No DAD on these addresses, so nothing waits for it; the node's /128 route
    to the pod is felix-client's to program."""
    for node, netns in node_ns.items():
        ns_tool.ip(netns, "-6", "addr", "add", f"{underlay6[node]}/64", "dev", "eth0", "nodad")
    for pod in pods:
        ns_tool.ip(pod.netns, "-6", "addr", "add", f"{pod.ip6}/128", "dev", "eth0", "nodad")
        ns_tool.ip(pod.netns, "-6", "route", "add", "default", "via", POD_GATEWAY6, "dev", "eth0")


def start_felix(netns: str, node: str, socket_path: Path, tmp: Path) -> subprocess.Popen[str]:
    """felix-client for `node` inside `netns`, reporting to tmp/<node>.json and logging to tmp/<node>.log."""
    status = tmp / f"{node}.json"
    status.unlink(missing_ok=True)
    with open(tmp / f"{node}.log", "a") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "felix_client.agent", "--typha",
             f"unix:{socket_path}", "--hostname", node, "--uplink", "eth0", "--debounce", "0.02",
             "--resync-interval", "5", "--status-file", str(status), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=log, text=True,
        )


def felix_status(tmp: Path, node: str) -> dict[str, Any] | None:
    try:
        return json.loads((tmp / f"{node}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def agent_log(tmp: Path, node: str) -> str:
    path = tmp / f"{node}.log"
    return f"{node}: {path.read_text()[-2000:] if path.exists() else ''}"


def wait_felix_applied(agents: dict[str, subprocess.Popen[str]], want: dict[str, int], tmp: Path,
                       timeout: float = 30) -> None:
    """Until every agent reports an apply covering its `want[node]` local endpoints."""

    def done() -> bool:
        for node, proc in agents.items():
            assert proc.poll() is None, f"agent {node} exited: {agent_log(tmp, node)}"
            status = felix_status(tmp, node)
            if status is None or status["applies"] == 0 or status["endpoints"] != want[node]:
                return False
        return True

    wait_until(done, timeout=timeout,
               what=lambda: "agents not applied: " + "; ".join(agent_log(tmp, n) for n in agents))


class Listener:
    """A TCP listener inside a namespace that accepts, records the peer's address, sends one line
    back and closes; a background thread serves it until `close()`."""

    def __init__(self, ns_tool: Any, netns: str, port: int, *, ipv6: bool = False) -> None:
        with ns_tool.entered(netns):
            self.sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if ipv6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.sock.bind(("::" if ipv6 else "0.0.0.0", port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.peers: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=f"listener-{netns}", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.peers.append(peer[0])
            try:
                conn.sendall(f"{peer[0]}\n".encode())
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


def tcp_exchange(ns_tool: Any, netns: str, ip: str, port: int, timeout: float = 1.0) -> str | None:
    """Connect from `netns` (a new socket, so a new source port) and return the line the listener
    sent back (the source address it saw), or None on timeout or error."""
    with ns_tool.entered(netns):
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((ip, port))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(64)
            if not chunk:
                break
            data += chunk
        return data.decode().strip() or None
    except OSError:
        return None
    finally:
        sock.close()


def exchange_eventually(ns_tool: Any, netns: str, ip: str, port: int, timeout: float = 10.0) -> str:
    """`tcp_exchange` retried until it succeeds (routes and rules converge after an apply)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = tcp_exchange(ns_tool, netns, ip, port)
        if seen is not None:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"no TCP exchange with {ip}:{port} from {netns} in {timeout}s")
        time.sleep(0.1)
