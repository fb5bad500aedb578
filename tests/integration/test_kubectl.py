"""The unmodified kubectl against `typha sim-apiserver` run as a process: discovery, apply, get, watch, delete."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH")
DEADLINE = 15.0

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  nodeName: node-1
  containers:
  - name: nginx
    image: nginx:IMAGE
"""

IPPOOL = """\
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 10.244.0.0/16
  blockSize: BLOCK
  ipipMode: Always
  natOutgoing: true
"""

NODE = """\
apiVersion: v1
kind: Node
metadata:
  name: loaded-node
  labels: {kubernetes.io/hostname: loaded-node}
"""


class Server:
    """The CLI with TLS and a token: kubectl only sends a kubeconfig's token over TLS."""

    def __init__(self, tmp: Path, *extra: str):
        self.kubeconfig = tmp / "kubeconfig"
        self.env = dict(os.environ, HOME=str(tmp), KUBECACHEDIR=str(tmp / "kube-cache"))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "typha.cli", "sim-apiserver", "--listen", "127.0.0.1:0",
             "--kubeconfig-out", str(self.kubeconfig), "--tls", "--token", "kubectl-token", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + DEADLINE
        # The kubeconfig is written once the server listens and --load files are in.
        while not self.kubeconfig.exists():
            assert self.process.poll() is None, self.process.stdout.read() if self.process.stdout else ""
            assert time.monotonic() < deadline, "sim-apiserver did not come up"
            time.sleep(0.05)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert KUBECTL is not None
        done = subprocess.run([KUBECTL, "--kubeconfig", str(self.kubeconfig), *args], env=self.env,
                              capture_output=True, text=True, timeout=DEADLINE)
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    try:
        yield srv
    finally:
        if srv.process.poll() is None:
            assert srv.stop() == 0, "SIGTERM stops the server cleanly"


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_apply_get_patch_and_delete(server: Server, tmp_path: Path) -> None:
    nodes = server.kubectl("get", "nodes")
    assert "No resources found" in nodes.stderr

    pod = write(tmp_path / "pod.yaml", POD.replace("IMAGE", "1.27"))
    pool = write(tmp_path / "pool.yaml", IPPOOL.replace("BLOCK", "26"))
    # Default validation (no --validate=false): kubectl checks /openapi/v3 for server-side validation.
    out = server.kubectl("apply", "-f", pod, "-f", pool).stdout
    assert "pod/web created" in out
    assert "ippool.crd.projectcalico.org/default-ipv4-ippool created" in out

    got = json.loads(server.kubectl("get", "pod", "web", "-o", "json").stdout)
    assert (got["metadata"]["namespace"], got["spec"]["containers"][0]["image"]) == ("default", "nginx:1.27")
    assert "kubectl.kubernetes.io/last-applied-configuration" in got["metadata"]["annotations"]
    listed = server.kubectl("get", "ippools.crd.projectcalico.org", "-o", "name").stdout.split()
    assert listed == ["ippool.crd.projectcalico.org/default-ipv4-ippool"]

    # A second apply computes a patch: strategic merge for the pod, JSON merge for the custom resource.
    write(tmp_path / "pod.yaml", POD.replace("IMAGE", "1.28"))
    write(tmp_path / "pool.yaml", IPPOOL.replace("BLOCK", "27"))
    out = server.kubectl("apply", "-f", pod, "-f", pool).stdout
    assert "pod/web configured" in out
    assert "default-ipv4-ippool configured" in out
    image = server.kubectl("get", "pod", "web", "-o", "jsonpath={.spec.containers[0].image}").stdout
    assert image == "nginx:1.28"
    pool_obj = json.loads(server.kubectl("get", "ippool", "default-ipv4-ippool", "-o", "json").stdout)
    assert (pool_obj["spec"]["blockSize"], pool_obj["metadata"]["generation"]) == (27, 2)

    assert "labeled" in server.kubectl("label", "pod", "web", "tier=front").stdout
    assert server.kubectl("get", "pods", "-l", "tier=front", "-o", "name").stdout.split() == ["pod/web"]

    assert 'pod "web" deleted' in server.kubectl("delete", "-f", pod).stdout
    assert "deleted" in server.kubectl("delete", "ippool", "default-ipv4-ippool").stdout
    missing = server.kubectl("get", "pod", "web", check=False)
    assert missing.returncode == 1
    assert "NotFound" in missing.stderr


class Watching:
    """`kubectl get pods --watch ...` running in the background, its output lines in a queue."""

    def __init__(self, server: Server, *args: str):
        assert KUBECTL is not None
        self.process = subprocess.Popen(
            [KUBECTL, "--kubeconfig", str(server.kubeconfig), "get", "pods", "--watch", *args],
            env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout or []:
            self.lines.put(line.strip())

    def next_line(self) -> list[str]:
        try:
            return self.lines.get(timeout=DEADLINE).split()
        except queue.Empty:
            pytest.fail("kubectl get --watch printed nothing")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=DEADLINE)


def test_get_watch_shows_a_change_made_while_watching(server: Server, tmp_path: Path) -> None:
    server.kubectl("apply", "-f", write(tmp_path / "pod.yaml", POD.replace("IMAGE", "1.27")))
    # Default output asks the server for Tables (list and watch events); custom columns ask for objects.
    table = Watching(server, "--show-labels")
    columns = Watching(server, "-o", "custom-columns=NAME:.metadata.name,TIER:.metadata.labels.tier")
    try:
        assert table.next_line() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "LABELS"]
        name, ready, status, restarts, _age, labels = table.next_line()
        assert (name, ready, status, restarts, labels) == ("web", "0/1", "Pending", "0", "app=web")
        assert columns.next_line() == ["NAME", "TIER"]
        assert columns.next_line() == ["web", "<none>"]
        server.kubectl("label", "pod", "web", "tier=front")
        assert table.next_line()[-1] == "app=web,tier=front"
        assert columns.next_line() == ["web", "front"]
    finally:
        table.stop()
        columns.stop()


def test_get_prints_server_side_tables(server: Server, tmp_path: Path) -> None:
    server.kubectl("apply", "-f", write(tmp_path / "pod.yaml", POD.replace("IMAGE", "1.27")),
                   "-f", write(tmp_path / "pool.yaml", IPPOOL.replace("BLOCK", "26")))
    wide = [line.split() for line in server.kubectl("get", "pods", "-o", "wide").stdout.splitlines()]
    assert wide[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert wide[1][:4] == ["web", "0/1", "Pending", "0"]
    assert wide[1][-2:] == ["<none>", "node-1"]
    everywhere = server.kubectl("get", "pods", "-A").stdout.splitlines()
    assert everywhere[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert everywhere[1].split()[:2] == ["default", "web"]
    pools = [line.split() for line in server.kubectl("get", "ippools").stdout.splitlines()]
    assert pools[0] == ["NAME", "CREATED", "AT"]
    assert pools[1][0] == "default-ipv4-ippool"


def test_load_files_at_start(tmp_path: Path) -> None:
    srv = Server(tmp_path, "--load", write(tmp_path / "node.yaml", NODE))
    try:
        assert srv.kubectl("get", "nodes", "-o", "name").stdout.split() == ["node/loaded-node"]
    finally:
        assert srv.stop() == 0
