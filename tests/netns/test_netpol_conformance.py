"""NetworkPolicy conformance: every case of a case file, on real kernels in network namespaces.

Runner contract: tests/fixtures/netpol/README.md. The case file is `$NETPOL_CASES` (default the
vendored `tests/fixtures/netpol/cases.yaml`); no case id is known here.

Per case and placement (pods spread over two nodes as the file says, or all on node-1):

- two node namespaces joined by a veth underlay (eth0, 10.201.0.0/24); this harness plays CNI and
  kubelet: one namespace per pod, a veth named as Calico names it (`cali` + sha1 prefix) with the
  host side's MAC ee:ee:ee:ee:ee:ee, the pod's /32 and the 169.254.1.1 gateway answered by proxy ARP;
- the Kubernetes API emulator holds the cluster (nodes, pool, blocks, namespaces, pods, policies);
  typha runs in this process and serves on a Unix socket, which the agents in the node namespaces
  reach without any address in the host's namespace;
- one `felix-client` per node, a subprocess started with `ip netns exec NODE`, programs that node;
- servers and probes are sockets this process creates inside the pod namespaces (setns per thread):
  a TCP connect or a UDP echo within 1 s is "allowed", a timeout "denied", anything else is a
  harness error. Every probe is a new socket, so a new source port.

Dual stack (docs/runner-contracts.md §1.6): every pod has an IPv4 and an IPv6 address, from a
dual-stack pool pair, and servers listen on both. A case is run once per placement with every probe
tried over both families and the same expected verdict ("dual"), unless its manifests hold a pod's
address (`{{ip:…}}`/`{{cidr4:…}}`): then it runs once per family, the placeholders substituted with
that family's address and only that family probed ("ipv4", "ipv6"); a case with a literal IPv4 CIDR
runs over IPv4 only.

Calico-flavor cases need Calico Profiles and WorkloadEndpoints with their own profile lists, which a
KDD datastore cannot express; for those the harness writes the profile and endpoint KVs straight
into typha's felix cache (as an etcd-mode datastore would deliver them), and only the policies go
through the API.
"""

from __future__ import annotations

import copy
import errno
import ipaddress
import os
import re
import selectors
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from felix_harness import (
    DaemonThread,
    add_ipv6,
    agent_log,
    build_two_nodes,
    start_felix,
    stop_process,
    wait_felix_applied,
)

from tests.fixtures import netpol_cases
from typha.kube.client import KubeClient
from typha.model.convert import veth_name
from typha.model.convert.base import rules_v1
from typha.model.convert.k8s import _profile_kvs, pod_to_wep
from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator

CASES_PATH = netpol_cases()

NODES = ("node-1", "node-2")
UNDERLAY = {"node-1": "10.201.0.1", "node-2": "10.201.0.2"}
POOL = "10.65.0.0/16"
BLOCKS = {"node-1": "10.65.0.0/26", "node-2": "10.65.1.0/26"}
POOL6 = "fd65::/48"
BLOCKS6 = {"node-1": "fd65::/122", "node-2": "fd65::1:0/122"}
UNDERLAY6 = {"node-1": "fd20::1", "node-2": "fd20::2"}

PROBE_TIMEOUT = 1.0  # README §5.4
STEP_DEADLINE = 10.0  # README §5.4, suggested
BASELINE_DEADLINE = 30.0  # the first convergence also waits for the agents' first apply

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "iptables-restore", "ipset")),
                       reason="needs iproute2, iptables and ipset"),
]


def _load_cases() -> list[dict[str, Any]]:
    doc = yaml.safe_load(CASES_PATH.read_text())
    assert doc.get("schemaVersion") == 1, f"{CASES_PATH}: unsupported schemaVersion"
    return list(doc["cases"])


CASES = _load_cases()


_PLACEHOLDER = re.compile(r"\{\{(ip|cidr4):([^}]+)\}\}")
_LITERAL_V4_CIDR = re.compile(r"\b\d{1,3}(\.\d{1,3}){3}/\d{1,2}\b")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def families(case: dict[str, Any]) -> tuple[str, ...]:
    """How a case runs (docs/runner-contracts.md §1.6): "dual" (both families probed in one run, the
    same verdicts), or once per family when a manifest holds a pod's address, or IPv4 only when one
    holds a literal IPv4 CIDR."""
    manifests = [m for step in case["steps"] for m in step.get("apply") or []]
    texts = list(_strings(manifests))
    if any(_LITERAL_V4_CIDR.search(_PLACEHOLDER.sub("", text).replace("/32", "")) for text in texts):
        return ("ipv4",)
    if any(_PLACEHOLDER.search(text) for text in texts):
        return ("ipv4", "ipv6")
    return ("dual",)


def _params() -> list[Any]:
    return [pytest.param(case, placement, family, id=f"{case['id']}-{placement}-{family}")
            for case in CASES for placement in ("spread", "one-node") for family in families(case)]


# --- the cluster as the datastore sees it -----------------------------------------------------------


@dataclass
class Pod:
    ns: str
    name: str
    labels: dict[str, str]
    node: str
    ip: str
    serves: list[dict[str, Any]]
    profiles: list[str] | None
    netns: str = ""
    ip6: str = ""

    def address(self, family: str) -> str:
        return self.ip6 if family == "ipv6" else self.ip

    @property
    def ref(self) -> str:
        return f"{self.ns}/{self.name}"

    @property
    def iface(self) -> str:
        return veth_name(self.ns, self.name)

    def serves_on(self, protocol: str, port: int) -> bool:
        return any(s["protocol"].upper() == protocol and int(s["port"]) == port for s in self.serves)

    def k8s_object(self) -> dict[str, Any]:
        ports = [(s["name"], int(s["port"]), s["protocol"].upper()) for s in self.serves if s.get("name")]
        obj = objects.pod(self.ns, self.name, node=self.node, ip=self.ip, labels=self.labels, ports=ports or None)
        obj["status"]["podIPs"] = [{"ip": self.ip}, {"ip": self.ip6}]  # dual stack, IPv4 first as in Kubernetes
        return obj


def _assign_pods(case: dict[str, Any], placement: str) -> list[Pod]:
    next_host: dict[str, int] = dict.fromkeys(NODES, 2)
    pods = []
    for spec in case["pods"]:
        node = spec["node"] if placement == "spread" else "node-1"
        assert node in NODES, f"unknown node {node}"
        block = ipaddress.ip_network(BLOCKS[node])
        ip = str(block.network_address + next_host[node])
        ip6 = str(ipaddress.ip_network(BLOCKS6[node]).network_address + next_host[node])
        next_host[node] += 1
        pods.append(Pod(spec["namespace"], spec["name"], dict(spec.get("labels") or {}), node, ip,
                        list(spec.get("serves") or []), spec.get("profiles"), ip6=ip6))
    return pods


def _substitute(value: Any, pods: dict[str, Pod], family: str = "ipv4") -> Any:
    """README §5.1: {{ip:NS/POD}} and {{cidr4:NS/POD}} inside any string value; for an IPv6 run the
    pod's IPv6 address, a `/32` right after `{{ip:…}}` as `/128`, and the IPv6 address masked to 4 bits."""
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            ip = pods[m.group(2)].address(family)
            if m.group(1) == "ip":
                return ip + ("/128" if family == "ipv6" and m.group(3) else (m.group(3) or ""))
            return str(ipaddress.ip_network(f"{ip}/4", strict=False)) + (m.group(3) or "")

        return re.sub(r"\{\{(ip|cidr4):([^}]+)\}\}(/32\b)?", repl, value)
    if isinstance(value, list):
        return [_substitute(v, pods, family) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, pods, family) for k, v in value.items()}
    return value


def _stored_api_version(api_version: str) -> str:
    # Calico v3 objects live in a KDD cluster as crd.projectcalico.org/v1 resources (what the
    # Calico API server / calicoctl write); the spec is handed over unchanged.
    return "crd.projectcalico.org/v1" if api_version == "projectcalico.org/v3" else api_version


# --- servers and probes ----------------------------------------------------------------------------


class Servers:
    """TCP listeners that accept and close, UDP sockets that echo; one selector thread for all pods."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.thread = threading.Thread(target=self._serve, name="pod-servers", daemon=True)

    def listen(self, protocol: str, port: int) -> None:
        """Called while inside a pod's namespace."""
        kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
        # One socket for both families: IPv4 clients arrive as v4-mapped addresses.
        sock = socket.socket(socket.AF_INET6, kind)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
        if protocol == "TCP":
            sock.listen(128)
        sock.setblocking(False)
        self.sockets.append(sock)
        self.selector.register(sock, selectors.EVENT_READ, protocol)

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if key.data == "TCP":
                        conn, _ = sock.accept()
                        conn.close()
                    elif key.data == "UDP":
                        data, peer = sock.recvfrom(2048)
                        sock.sendto(data, peer)
                except OSError:
                    continue

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self.thread.join(5)
        for sock in [*self.sockets, self._wake_r, self._wake_w]:
            sock.close()
        self.selector.close()


Pair = tuple[str, str]


def probe(ns_tool: Any, pods: dict[str, Pod], protocol: str, port: int, pairs: list[Pair],
          family: str = "ipv4") -> dict[Pair, str]:
    """All pairs at once, each from a new socket in the source pod to the target's address of `family`;
    'allowed', 'denied' or an error."""
    af = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
    sel = selectors.DefaultSelector()
    outcome: dict[Pair, str] = {}
    open_socks: list[socket.socket] = []
    try:
        for pair in pairs:
            src, dst = pods[pair[0]], pods[pair[1]]
            with ns_tool.entered(src.netns):
                sock = socket.socket(af, socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM)
            open_socks.append(sock)
            sock.setblocking(False)
            if protocol == "TCP":
                code = sock.connect_ex((dst.address(family), port))
                if code not in (0, errno.EINPROGRESS):
                    outcome[pair] = f"error:{errno.errorcode.get(code, code)}"
                    continue
                sel.register(sock, selectors.EVENT_WRITE, pair)
            else:
                sock.connect((dst.address(family), port))  # connected: an ICMP error shows up as an error on recv
                try:
                    sock.send(f"{pair[0]}>{pair[1]}".encode())
                except OSError as error:
                    outcome[pair] = f"error:{errno.errorcode.get(error.errno or 0, error.errno)}"
                    continue
                sel.register(sock, selectors.EVENT_READ, pair)
        deadline = time.monotonic() + PROBE_TIMEOUT
        while sel.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                pair = key.data
                sel.unregister(sock)
                if protocol == "TCP":
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    outcome[pair] = "allowed" if code == 0 else f"error:{errno.errorcode.get(code, code)}"
                else:
                    try:
                        data = sock.recv(2048)
                        outcome[pair] = "allowed" if data == f"{pair[0]}>{pair[1]}".encode() else "error:payload"
                    except OSError as error:
                        outcome[pair] = f"error:{errno.errorcode.get(error.errno or 0, error.errno)}"
        for key in list(sel.get_map().values()):
            outcome[key.data] = "denied"
    finally:
        sel.close()
        for sock in open_socks:
            sock.close()
    return outcome


@dataclass
class Check:
    protocol: str
    port: int
    pair: Pair
    allowed: bool


def expectations(expect: list[dict[str, Any]], pods: dict[str, Pod]) -> list[Check]:
    checks: list[Check] = []
    for probe_spec in expect:
        protocol, port = probe_spec["protocol"].upper(), int(probe_spec["port"])
        deny = {tuple(p.split(">")) for p in probe_spec.get("deny") or []}
        if probe_spec["mode"] == "full-matrix":
            assert "allow" not in probe_spec, "full-matrix takes no allow list"
            checks += [Check(protocol, port, (a, b), (a, b) not in deny) for a in pods for b in pods if a != b]
        elif probe_spec["mode"] == "listed-only":
            checks += [Check(protocol, port, tuple(p.split(">")), True) for p in probe_spec.get("allow") or []]
            checks += [Check(protocol, port, pair, False) for pair in sorted(deny)]
        else:
            raise AssertionError(f"unknown mode {probe_spec['mode']}")
    for check in checks:
        assert check.pair[0] in pods and check.pair[1] in pods, f"unknown pod in {check.pair}"
        assert pods[check.pair[1]].serves_on(check.protocol, check.port), f"{check.pair[1]} does not serve {check}"
    return checks


# --- the harness ---------------------------------------------------------------------------------------


@dataclass
class Cluster:
    case: dict[str, Any]
    placement: str
    ns_tool: Any
    tmp: Path
    pods: dict[str, Pod] = field(default_factory=dict)
    node_ns: dict[str, str] = field(default_factory=dict)
    agents: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    calico: bool = False
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    probe_families: tuple[str, ...] = ("ipv4", "ipv6")

    def build_network(self) -> None:
        self.node_ns = build_two_nodes(self.ns_tool, UNDERLAY, self.pods.values())
        add_ipv6(self.ns_tool, self.node_ns, UNDERLAY6, self.pods.values())

    def cluster_objects(self) -> list[dict[str, Any]]:
        objs: list[dict[str, Any]] = [
            objects.ip_pool("pool", POOL),
            objects.ip_pool("pool6", POOL6, block_size=122),
            *(_dual_stack_node(n) for n in NODES),
            *(objects.ipam_block(BLOCKS[n], node=n) for n in NODES),
            *(objects.ipam_block(BLOCKS6[n], node=n) for n in NODES),
        ]
        for ns, labels in self.namespaces.items():
            # Exactly the case's labels (README §3.1): no builder defaults.
            objs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": dict(labels)}})
            objs.append(objects.service_account(ns))
        if not self.calico:
            objs += [pod.k8s_object() for pod in self.pods.values()]
        return objs

    def calico_kvs(self) -> list[tuple[str, Any]]:
        kvs: list[tuple[str, Any]] = []
        for name, prof in self.profiles.items():
            rules = {"inbound_rules": rules_v1(prof.get("ingress"), "", f"profile {name} ingress"),
                     "outbound_rules": rules_v1(prof.get("egress"), "", f"profile {name} egress")}
            v3 = {"ingress": prof.get("ingress") or [], "egress": prof.get("egress") or []}
            kvs += _profile_kvs(name, {}, dict(prof.get("labelsToApply") or {}), rules, v3)
        for pod in self.pods.values():
            kvs += self.wep_kvs(pod)
        return kvs

    def wep_kvs(self, pod: Pod) -> list[tuple[str, Any]]:
        out = []
        for key, value in pod_to_wep(pod.k8s_object()):
            if "/workload/" in key:
                value = dict(value)
                value["profile_ids"] = list(pod.profiles or [])  # the complete list (README §3.2)
            out.append((key, value))
        return out

    def start_agents(self, socket_path: Path) -> None:
        for node, ns in self.node_ns.items():
            self.agents[node] = start_felix(ns, node, socket_path, self.tmp)

    def wait_applied(self, timeout: float = 30) -> None:
        want = {n: sum(1 for p in self.pods.values() if p.node == n) for n in NODES}
        wait_felix_applied(self.agents, want, self.tmp, timeout)

    def stop_agents(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.terminate()  # all at once: each then exits while the others do
        for proc in self.agents.values():
            stop_process(proc)

    def converge(self, checks: list[Check], deadline_secs: float, what: str) -> int:
        """Poll the whole expectation until it holds; returns the number of rounds."""
        deadline = time.monotonic() + deadline_secs
        rounds = 0
        while True:
            rounds += 1
            wrong: list[str] = []
            groups: dict[tuple[str, int], list[Check]] = {}
            for check in checks:
                groups.setdefault((check.protocol, check.port), []).append(check)
            for (protocol, port), group in groups.items():
                for family in self.probe_families:
                    got = probe(self.ns_tool, self.pods, protocol, port, [c.pair for c in group], family)
                    for c in group:
                        want = "allowed" if c.allowed else "denied"
                        if got[c.pair] != want:
                            wrong.append(f"{protocol}/{port} {family} {c.pair[0]}>{c.pair[1]}: want {want}, "
                                         f"got {got[c.pair]}")
            if not wrong:
                return rounds
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {len(wrong)} of {len(checks)} probes wrong after {rounds} rounds:\n  "
                                     + "\n  ".join(wrong) + "\n" + self.diagnostics())
            time.sleep(0.1)

    def diagnostics(self) -> str:
        out = []
        for node, ns in self.node_ns.items():
            out.append(f"--- {node}: {agent_log(self.tmp, node)}")
            for family in self.probe_families:
                v6 = family == "ipv6"
                out.append(self.ns_tool.run(ns, "ip6tables-save" if v6 else "iptables-save", "-t", "filter",
                                            check=False)[-6000:])
                out.append(self.ns_tool.run(ns, "ip", "-6" if v6 else "-4", "route", check=False))
        return "\n".join(out)


def _dual_stack_node(name: str) -> dict[str, Any]:
    obj = objects.node(name, ipv4=f"{UNDERLAY[name]}/24")
    # calico-node's annotation for the node's IPv6 address: the next hop of its IPv6 blocks.
    obj["metadata"]["annotations"]["projectcalico.org/IPv6Address"] = f"{UNDERLAY6[name]}/64"
    return obj


@pytest.mark.parametrize(("case", "placement", "family"), _params())
def test_case(case: dict[str, Any], placement: str, family: str, netns: Any, tmp_path: Path) -> None:
    started = time.monotonic()
    cluster = Cluster(case, placement, netns, tmp_path, calico=case["flavor"] == "calico")
    cluster.probe_families = ("ipv4", "ipv6") if family == "dual" else (family,)
    assert case["flavor"] in ("kubernetes", "calico"), case["flavor"]
    cluster.namespaces = {ns["name"]: dict(ns.get("labels") or {}) for ns in case["namespaces"]}
    cluster.profiles = {p["name"]: p for p in case.get("profiles") or []}
    cluster.pods = {p.ref: p for p in _assign_pods(case, placement)}
    pods = cluster.pods

    cluster.build_network()
    servers = Servers()
    for pod in pods.values():
        with netns.entered(pod.netns):
            for serve in pod.serves:
                servers.listen(serve["protocol"].upper(), int(serve["port"]))
    servers.start()

    socket_path = tmp_path / "typha.sock"
    api = KubeAPIEmulator(bookmark_interval=0.2).start()
    kube: KubeClient | None = None
    daemon: DaemonThread | None = None
    applied: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    try:
        for obj in cluster.cluster_objects():
            api.create(obj)
        api.write_kubeconfig(tmp_path / "kubeconfig")
        kube = KubeClient.from_kubeconfig(str(tmp_path / "kubeconfig"))
        daemon = DaemonThread(kube, socket_path)
        daemon.start()
        if cluster.calico:
            daemon.inject(cluster.calico_kvs())
        cluster.start_agents(socket_path)
        cluster.wait_applied()

        # Baseline (README §6.3): every pair allowed on every probed protocol/port its target serves.
        probed = {(e["protocol"].upper(), int(e["port"])) for step in case["steps"] for e in step["expect"]}
        baseline = [Check(proto, port, (a, b), True) for proto, port in sorted(probed)
                    for a in pods for b in pods if a != b and pods[b].serves_on(proto, port)]
        cluster.converge(baseline, BASELINE_DEADLINE, f"baseline (no policies, {family})")

        for index, step in enumerate(case["steps"], 1):
            for manifest in step.get("apply") or []:
                obj = copy.deepcopy(_substitute(manifest, pods, family))
                obj["apiVersion"] = _stored_api_version(obj["apiVersion"])
                md = obj["metadata"]
                applied[(obj["apiVersion"], obj["kind"], md.get("namespace", ""), md["name"])] = obj
                api.upsert(obj)
            for ref in step.get("delete") or []:
                api.delete(_stored_api_version(ref["apiVersion"]), ref["kind"], ref["name"], ref.get("namespace"))
            for change in step.get("label") or []:
                _relabel(cluster, api, daemon, change)
            checks = expectations(step["expect"], pods)
            cluster.converge(checks, STEP_DEADLINE, f"{case['id']} ({placement}, {family}) step {index}")
    finally:
        cluster.stop_agents()
        servers.stop()
        if daemon is not None:
            daemon.stop()
        if kube is not None:
            kube.close()
        api.stop()
    print(f"{case['id']} {placement} {family}: passed in {time.monotonic() - started:.1f}s")


def _relabel(cluster: Cluster, api: KubeAPIEmulator, daemon: DaemonThread, change: dict[str, Any]) -> None:
    add = {str(k): str(v) for k, v in (change.get("add") or {}).items()}
    remove = list(change.get("remove") or [])

    def edit(labels: dict[str, str]) -> dict[str, str]:
        out = {k: v for k, v in labels.items() if k not in remove}
        out.update(add)
        return out

    if "pod" in change:
        pod = cluster.pods[change["pod"]]
        pod.labels = edit(pod.labels)
        if cluster.calico:
            daemon.inject(cluster.wep_kvs(pod))
        else:
            current = api.get("v1", "Pod", pod.name, pod.ns)
            current["metadata"]["labels"] = dict(pod.labels)
            api.replace(current)
    else:
        # Through the Namespace object, so the agent sees it as kns.<ns> labelsToApply (README §5.3).
        ns = change["namespace"]
        cluster.namespaces[ns] = edit(cluster.namespaces[ns])
        current = api.get("v1", "Namespace", ns)
        current["metadata"]["labels"] = dict(cluster.namespaces[ns])
        api.replace(current)


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    # The probe helpers switch the main thread's namespace; make sure every test ends back home.
    home = os.readlink("/proc/thread-self/ns/net")
    yield
    assert os.readlink("/proc/thread-self/ns/net") == home
