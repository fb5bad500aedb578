"""A virtual Calico cluster in network namespaces: build it, run the real agents in it, probe it, tear it down.

Used by the end-to-end test (tests/netns/test_cluster_e2e.py) and `typha demo --netns`. Needs root,
iproute2, iptables, ipset and (for BGP) BIRD 1.6. The datastore contents are the caller's: this module
builds the network, runs the processes, and answers "which pod reaches which".

Layout:
- one "switch" namespace holding a bridge; every node namespace hangs off it by a veth (`eth0` on the
  node side), so nodes share one L2 underlay as on a real rack;
- one namespace per pod: this module plays CNI (and kubelet) as Calico's plugin does: a veth named
  `cali` + sha1 prefix whose host side has MAC ee:ee:ee:ee:ee:ee, the pod's /32, and a default route via
  169.254.1.1, which the node answers by proxy ARP;
- `typha serve` as a child process on a Unix socket (reachable from every namespace through the
  filesystem, so no address in the host's namespace receives anything);
- per node, inside its namespace: `felix-client` (programs iptables, IP sets, routes, VXLAN),
  `confd-client` (renders BIRD's config and reloads it) and `bird`.

Probes are sockets this process opens inside pod namespaces (setns per thread): a TCP connect that
completes within the timeout is "ok"; a timeout is "timeout"; an immediate error is "error:<errno>".
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from confd_client.agent import FAMILY_FILES
from typha.model.convert import veth_name
from typha.testing.netns import Namespaces
from typha.testing.wait import wait_until

POD_GATEWAY = "169.254.1.1"
Pair = tuple[str, str]  # (source pod ref, destination pod ref)
PROBE_TIMEOUT = 1.0
REQUIRED_TOOLS = ("ip", "iptables-restore", "ipset", "bird", "birdc")


def missing_tools(tools: Iterable[str] = REQUIRED_TOOLS) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def bird_programs_cluster_routes() -> dict[str, Any]:
    """The FelixConfiguration under which BIRD, not felix-client, programs no-encap (and IPIP) remote
    blocks from what it learns over BGP, as in a Calico install with the BIRD backend; VXLAN stays Felix's."""
    return {"apiVersion": "crd.projectcalico.org/v1", "kind": "FelixConfiguration",
            "metadata": {"name": "default"}, "spec": {"programClusterRoutes": "Disabled"}}


@dataclass
class VNode:
    name: str
    ip: str  # underlay address, also the node's BGP address and VXLAN parent
    prefixlen: int = 24
    netns: str = ""


@dataclass
class VPod:
    namespace: str
    name: str
    node: str
    ip: str
    netns: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def iface(self) -> str:
        return veth_name(self.namespace, self.name)


def route_pod_gateway(ns: Namespaces, node_netns: str) -> None:
    """Proxy ARP answers for 169.254.1.1 only if the node routes it out of another interface
    (calico #3270); a host route is enough and sends nothing anywhere."""
    ns.ip(node_netns, "route", "add", f"{POD_GATEWAY}/32", "dev", "eth0")


def cni_add(ns: Namespaces, node_netns: str, pod_netns: str, iface: str, pod_ip: str) -> None:
    """What Calico's CNI plugin does for a pod: a veth `iface` on the node (MAC ee:ee:ee:ee:ee:ee) whose
    peer is the pod's eth0, the pod's /32, and a default route via 169.254.1.1 (answered by proxy ARP);
    the node's /32 route to the pod is felix-client's to program."""
    ns.ip(node_netns, "link", "add", iface, "type", "veth", "peer", "name", "eth0", "netns", pod_netns)
    ns.ip(node_netns, "link", "set", iface, "address", "ee:ee:ee:ee:ee:ee", "up")
    ns.ip(pod_netns, "addr", "add", f"{pod_ip}/32", "dev", "eth0")
    ns.ip(pod_netns, "link", "set", "eth0", "up")
    ns.ip(pod_netns, "route", "add", POD_GATEWAY, "dev", "eth0", "scope", "link")
    ns.ip(pod_netns, "route", "add", "default", "via", POD_GATEWAY, "dev", "eth0")


class Child:
    """A child process with its output in a log file; stopped by pid, never by name."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        # Own session: a Ctrl-C reaches only us, and we stop children in order. PDEATHSIG: if we die
        # without cleaning up, they go too (it fires when the creating thread exits, so create them from
        # a thread that lives as long as the cluster).
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                        env=env, start_new_session=True, preexec_fn=_die_with_parent)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _agent_env() -> dict[str, str]:
    # Agents find Typha from their flags only; a KUBECONFIG in our environment would make confd-client
    # read the API directly, which a node namespace cannot reach.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "FELIX_", "CONFD_", "CALICO_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class PodServers:
    """TCP listeners in pod namespaces that accept and close; one selector thread for all of them."""

    def __init__(self, namespaces: Namespaces) -> None:
        self.namespaces = namespaces
        self.selector = selectors.DefaultSelector()
        self.sockets: dict[str, list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="pod-servers", daemon=True)
        self.thread.start()

    def listen(self, pod: VPod, port: int) -> None:
        with self.namespaces.entered(pod.netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(128)
        sock.setblocking(False)
        with self._lock:
            self.sockets.setdefault(pod.ref, []).append(sock)
            self.selector.register(sock, selectors.EVENT_READ)

    def close_pod(self, ref: str) -> None:
        with self._lock:
            for sock in self.sockets.pop(ref, []):
                self.selector.unregister(sock)
                sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ready = self.selector.select(0) if self.selector.get_map() else []
            for key, _ in ready:
                try:
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    conn.close()
                except OSError:
                    continue
            if not ready:
                time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for ref in list(self.sockets):
            self.close_pod(ref)
        self.selector.close()


class VirtualCluster:
    """Node and pod namespaces on a bridged underlay, and the processes that run in them.

    Call `close()` (or use it as a context manager): it stops every process it started, then deletes
    every namespace it created."""

    def __init__(self, workdir: Path, *, prefix: str = "vc", bird: bool = True, debounce: float = 0.05) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ns = Namespaces(prefix)
        self.bird = bird
        self.debounce = debounce
        self.nodes: dict[str, VNode] = {}
        self.pods: dict[str, VPod] = {}
        self.switch = ""
        self.socket_path = workdir / "typha.sock"
        self.typha: Child | None = None
        self.felix: dict[str, Child] = {}
        self.confd: dict[str, Child] = {}
        self.birds: dict[str, Child] = {}
        self.servers: PodServers | None = None
        self.ports: list[int] = []
        self._pod_count = 0  # namespace names are never reused, even after a pod is deleted

    def __enter__(self) -> VirtualCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- network --------------------------------------------------------------------------------

    def add_node(self, node: VNode) -> None:
        ip = self.ns.ip
        if not self.switch:
            self.switch = self.ns.add("sw")
            ip(self.switch, "link", "add", "br0", "type", "bridge")
            ip(self.switch, "link", "set", "br0", "up")
        index = len(self.nodes) + 1
        node.netns = self.ns.add(f"n{index}")
        port = f"port{index}"
        ip(self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
        ip(self.switch, "link", "set", port, "master", "br0", "up")
        ip(node.netns, "addr", "add", f"{node.ip}/{node.prefixlen}", "dev", "eth0")
        ip(node.netns, "link", "set", "eth0", "up")
        route_pod_gateway(self.ns, node.netns)
        self.nodes[node.name] = node

    def add_pod(self, pod: VPod) -> None:
        """Plays CNI ADD: the pod's namespace, veth, address and routes, and a listener per served port."""
        node_ns = self.nodes[pod.node].netns
        self._pod_count += 1
        pod.netns = self.ns.add(f"p{self._pod_count}")
        cni_add(self.ns, node_ns, pod.netns, pod.iface, pod.ip)
        self.pods[pod.ref] = pod
        if self.servers is not None:
            for port in self.ports:
                self.servers.listen(pod, port)

    def remove_pod(self, ref: str) -> None:
        """Plays CNI DEL: deleting the namespace takes the veth (and the node's /32 route) with it."""
        pod = self.pods.pop(ref)
        if self.servers is not None:
            self.servers.close_pod(ref)
        subprocess.run(["ip", "netns", "del", pod.netns], check=False, capture_output=True, timeout=30)
        if pod.netns in self.ns.created:
            self.ns.created.remove(pod.netns)

    def serve(self, ports: list[int]) -> None:
        """Listen on `ports` in every pod, present and future."""
        self.servers = PodServers(self.ns)
        self.ports = list(ports)
        for pod in self.pods.values():
            for port in self.ports:
                self.servers.listen(pod, port)

    # --- typha ----------------------------------------------------------------------------------

    def start_typha(self, kubeconfig: Path) -> None:
        self.socket_path.unlink(missing_ok=True)
        self.typha = Child([sys.executable, "-m", "typha.cli", "serve", "--workers", "1",
                            "--kubeconfig", str(kubeconfig), "--server-host", f"unix:{self.socket_path}",
                            "--server-port", "0", "--shutdown-timeout-secs", "2",
                            "--log-severity-screen", "WARNING"], self.workdir / "typha.log")
        wait_until(lambda: self.socket_path.exists() or not self.typha_alive(), timeout=30, what="typha's socket")
        if not self.typha_alive():
            raise RuntimeError(f"typha serve exited: {self.typha.tail()}")

    def typha_alive(self) -> bool:
        return self.typha is not None and self.typha.alive()

    def stop_typha(self) -> None:
        if self.typha is not None:
            # SIGINT: stop at once, without draining clients first (they are about to lose it anyway).
            self.typha.stop(signal.SIGINT)
            self.typha = None

    # --- agents ---------------------------------------------------------------------------------

    def node_dir(self, node: str) -> Path:
        path = self.workdir / node
        path.mkdir(exist_ok=True)
        return path

    def start_agents(self) -> None:
        """felix-client and confd-client in every node; BIRD once confd-client has rendered its config."""
        env = _agent_env()
        for name, node in self.nodes.items():
            d = self.node_dir(name)
            self.felix[name] = Child(
                ["ip", "netns", "exec", node.netns, sys.executable, "-m", "felix_client.agent",
                 "--typha", f"unix:{self.socket_path}", "--hostname", name, "--uplink", "eth0",
                 "--debounce", str(self.debounce), "--resync-interval", "5", "--status-file", str(d / "felix.json"),
                 "--log-level", "warning"], d / "felix.log", env)
            if self.bird:
                self.confd[name] = Child(
                    ["ip", "netns", "exec", node.netns, sys.executable, "-m", "confd_client.agent",
                     "--typha", f"unix:{self.socket_path}", "--config-dir", str(d / "bird"),
                     "--debounce", str(self.debounce), "--bird-socket", str(d / "bird.ctl")],
                    d / "confd.log", {**env, "NODENAME": name})
        for name, node in self.nodes.items() if self.bird else ():
            d = self.node_dir(name)
            config = d / "bird" / "bird.cfg"
            # bird.cfg includes the other two, and confd-client writes the three one by one.
            files = [d / "bird" / f for f in FAMILY_FILES[4]]

            def written(fs: list[Path] = files, n: str = name) -> bool:
                return all(f.exists() for f in fs) or not self.confd[n].alive()

            def describe(n: str = name) -> str:
                return f"{n}'s first BIRD config: {self.confd[n].tail()}"

            wait_until(written, timeout=30, what=describe)
            self.birds[name] = Child(["ip", "netns", "exec", node.netns, "bird", "-f", "-c", str(config),
                                      "-s", str(d / "bird.ctl"), "-P", str(d / "bird.pid")], d / "bird.log")

    def check_agents(self) -> None:
        for kind, children in (("felix-client", self.felix), ("confd-client", self.confd), ("bird", self.birds)):
            for node, child in children.items():
                if not child.alive():
                    raise RuntimeError(f"{kind} on {node} exited: {child.tail()}")

    def felix_status(self, node: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.node_dir(node) / "felix.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait_felix(self, endpoints: dict[str, int], timeout: float = 30) -> None:
        """Until every felix-client reports an apply in sync with `endpoints[node]` local endpoints."""

        def done() -> bool:
            self.check_agents()
            for node in self.nodes:
                status = self.felix_status(node)
                if status is None or not status["in_sync"] or status["endpoints"] != endpoints.get(node, 0):
                    return False
            return True

        wait_until(done, timeout=timeout, what=lambda: "felix-clients not applied: "
                   + json.dumps({n: self.felix_status(n) for n in self.nodes}))

    def local_endpoints(self) -> dict[str, int]:
        counts = dict.fromkeys(self.nodes, 0)
        for pod in self.pods.values():
            counts[pod.node] += 1
        return counts

    # --- observing ------------------------------------------------------------------------------

    def routes(self, node: str) -> list[str]:
        return self.ns.ip(self.nodes[node].netns, "-4", "route", "show").splitlines()

    def route_to(self, node: str, cidr: str) -> str:
        return self.ns.ip(self.nodes[node].netns, "-4", "route", "show", "exact", cidr).strip()

    def probe(self, pairs: list[Pair], port: int, timeout: float = PROBE_TIMEOUT) -> dict[Pair, str]:
        """All pairs (source ref, destination ref) at once, each from a new socket in the source pod."""
        sel = selectors.DefaultSelector()
        outcome: dict[Pair, str] = {}
        socks: list[socket.socket] = []
        try:
            for pair in pairs:
                src, dst = self.pods[pair[0]], self.pods[pair[1]]
                with self.ns.entered(src.netns):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.setblocking(False)
                code = sock.connect_ex((dst.ip, port))
                if code not in (0, errno.EINPROGRESS):
                    outcome[pair] = f"error:{errno.errorcode.get(code, code)}"
                    continue
                sel.register(sock, selectors.EVENT_WRITE, pair)
            deadline = time.monotonic() + timeout
            while sel.get_map() and (left := deadline - time.monotonic()) > 0:
                for key, _ in sel.select(left):
                    sel.unregister(key.fileobj)
                    code = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
                    outcome[key.data] = "ok" if code == 0 else f"error:{errno.errorcode.get(code, code)}"
            for key in list(sel.get_map().values()):
                outcome[key.data] = "timeout"
        finally:
            sel.close()
            for sock in socks:
                sock.close()
        return outcome

    def all_pairs(self) -> list[Pair]:
        return [(a, b) for a in self.pods for b in self.pods if a != b]

    def converge(self, expected: dict[Pair, bool], port: int, timeout: float, what: str) -> dict[Pair, str]:
        """Probe until every pair's outcome is as expected (True: "ok", False: "timeout"); the last
        outcomes. Raises AssertionError listing the wrong pairs after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.probe(list(expected), port)
            wrong = [f"{a} > {b}: want {'ok' if want else 'timeout'}, got {got[(a, b)]}"
                     for (a, b), want in expected.items() if (got[(a, b)] == "ok") != want
                     or (not want and got[(a, b)] != "timeout")]
            if not wrong:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {len(wrong)} of {len(expected)} pairs wrong:\n  "
                                     + "\n  ".join(wrong) + "\n" + self.diagnostics())
            time.sleep(0.2)

    def diagnostics(self) -> str:
        out = []
        for name, node in self.nodes.items():
            out.append(f"--- {name} routes:\n" + self.ns.run(node.netns, "ip", "route", check=False))
            for kind, children in (("felix", self.felix), ("confd", self.confd), ("bird", self.birds)):
                if name in children:
                    out.append(f"--- {name} {kind} log:\n{children[name].tail(1500)}")
        if self.typha is not None:
            out.append(f"--- typha log:\n{self.typha.tail(1500)}")
        return "\n".join(out)

    # --- teardown -------------------------------------------------------------------------------

    def stop_agents(self) -> None:
        for children in (self.felix, self.confd, self.birds):
            for child in children.values():
                if child.alive():
                    child.process.terminate()
            for child in children.values():
                child.stop()
            children.clear()

    def close(self) -> None:
        try:
            self.stop_agents()
            self.stop_typha()
            if self.servers is not None:
                self.servers.stop()
                self.servers = None
        finally:
            self.ns.cleanup()


