"""Issue 15's acceptance: operator mistakes through the real console scripts.

Each fatal mistake must end the process within 15 s (a subprocess timeout, not a timed assertion) with a
non-zero exit code and exactly one line on stderr that is not a log record, naming the setting or the port,
and never a traceback. Log records (Calico's layout: `2026-… [LEVEL][pid] file.py 12: …`) may come before
it: the version line, a warning about an unknown variable.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import free_port, stop_process, wait_ready

from .tls_pki import CA

pytestmark = pytest.mark.slow

FATAL_TIMEOUT = 15.0
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[[A-Z]+\]\[\d+\] \S+ \d+: ")


def script(name: str) -> list[str]:
    """The installed console script; `python -m` of its entry module where it is not on PATH."""
    path = shutil.which(name)
    if path is not None:
        return [path]
    module = {"typha": "typha.cli", "felix-client": "felix_client.agent", "confd-client": "confd_client.agent"}[name]
    return [sys.executable, "-m", module]


@dataclass
class Rig:
    """Files and ports a case refers to as {placeholders}."""

    tmp: Path
    values: dict[str, str] = field(default_factory=dict)
    holders: list[socket.socket] = field(default_factory=list)

    def hold_port(self, name: str, *, reuse_port: bool = False) -> None:
        sock = socket.socket()
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        self.holders.append(sock)
        self.values[name] = str(sock.getsockname()[1])

    def fill(self, text: str) -> str:
        return text.format(**self.values)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    ca = CA(tmp_path, "ca")
    server = ca.issue("server", cn="typha-server", server=True)
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    (tmp_path / "garbage.yaml").write_text(": : not yaml [\n")
    (tmp_path / "empty-kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    closed = free_port()  # nothing listens here: an unreachable API server
    (tmp_path / "kubeconfig").write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'http://127.0.0.1:%d'}\n"
        "contexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n"
        "users:\n- name: u\n  user: {token: t}\n".replace("%d", str(closed)))
    rig.values.update(tmp=str(tmp_path), ca=ca.ca_file, cert=server.cert_file, key=server.key_file,
                      garbage=str(tmp_path / "garbage.pem"), kubeconfig=str(tmp_path / "kubeconfig"))
    yield rig
    for sock in rig.holders:
        sock.close()


def environment(tmp: Path, extra: dict[str, str]) -> dict[str, str]:
    """This machine's environment without any setting of ours, in-cluster hint or kubeconfig; HOME empty."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TYPHA_", "FELIX_", "CONFD_", "CALICO_", "KUBERNETES_")) and k != "KUBECONFIG"}
    env.update(HOME=str(tmp), PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass(frozen=True)
class Mistake:
    name: str
    argv: list[str]
    names: str  # a regex the one error line must match: the setting, and its value or port
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Rig], None] = lambda rig: None
    code: int = 1
    warns: str = ""  # a log record (warning) that must appear once


SERVE = ["typha", "serve", "--workers", "1", "--kubeconfig", "{kubeconfig}"]
SERVE_2 = ["typha", "serve", "--workers", "2", "--kubeconfig", "{kubeconfig}"]
TLS = {"TYPHA_CAFILE": "{ca}", "TYPHA_SERVERCERTFILE": "{cert}", "TYPHA_SERVERKEYFILE": "{key}",
       "TYPHA_CLIENTCN": "typha-client"}
FELIX = ["felix-client", "--typha", "127.0.0.1:1", "--dry-run", "{tmp}/dry", "--max-consecutive-failures", "1"]
FELIX_TLS = {"FELIX_TYPHACAFILE": "{ca}", "FELIX_TYPHACERTFILE": "{cert}", "FELIX_TYPHAKEYFILE": "{key}",
             "FELIX_TYPHACN": "typha-server"}
CONFD = ["confd-client", "--typha", "127.0.0.1:1", "--config-dir", "{tmp}/confd", "--oneshot"]
CONFD_ENV = {"NODENAME": "node-1"}

MISTAKES = [
    # kubeconfig
    Mistake("missing kubeconfig", ["typha", "serve", "--kubeconfig", "{tmp}/nonexistent"],
            r"Kubeconfig='.*nonexistent': No such file"),
    Mistake("kubeconfig is not YAML", ["typha", "serve", "--kubeconfig", "{tmp}/garbage.yaml"],
            r"Kubeconfig='.*garbage.yaml': not YAML"),
    Mistake("kubeconfig without clusters", ["typha", "serve", "--kubeconfig", "{tmp}/empty-kubeconfig"],
            r"Kubeconfig='.*empty-kubeconfig': not a kubeconfig"),
    Mistake("$KUBECONFIG names a missing file", ["typha", "serve"], r"KUBECONFIG='.*absent': cannot load",
            env={"KUBECONFIG": "{tmp}/absent"}),
    Mistake("no kubeconfig and not in a pod", ["typha", "serve"], r"in-cluster config: .*set Kubeconfig"),
    Mistake("autoscale with a missing kubeconfig", ["typha", "autoscale", "--kubeconfig", "{tmp}/nonexistent"],
            r"Kubeconfig='.*nonexistent'"),
    # ports out of range
    Mistake("Sync port out of range (flag)", [*SERVE, "--server-port", "99999"], r"ServerPort=99999: a port is"),
    Mistake("health port out of range (env)", SERVE, r"HealthPort=70000", env={"TYPHA_HEALTHPORT": "70000"}),
    Mistake("metrics port negative", [*SERVE, "--prometheus-metrics-port", "-1"], r"PrometheusMetricsPort=-1"),
    Mistake("sim-apiserver port out of range", ["typha", "sim-apiserver", "--kubeconfig-out", "{tmp}/kc",
                                                "--listen", "127.0.0.1:99999"], r"--listen.*99999", code=2),
    # ports in use
    Mistake("Sync port in use", [*SERVE, "--server-port", "{busy}"], r"ServerPort={busy}: .*in use",
            setup=lambda rig: rig.hold_port("busy")),
    Mistake("health port in use", [*SERVE, "--health-enabled", "true", "--health-port", "{busy}"],
            r"HealthPort={busy}: .*in use", setup=lambda rig: rig.hold_port("busy")),
    Mistake("metrics port in use", [*SERVE, "--prometheus-metrics-enabled", "true",
                                    "--prometheus-metrics-port", "{busy}"],
            r"PrometheusMetricsPort={busy}: .*in use", setup=lambda rig: rig.hold_port("busy")),
    Mistake("workers' Sync port in use", [*SERVE_2, "--server-port", "{busy}"], r"ServerPort={busy}: .*in use",
            setup=lambda rig: rig.hold_port("busy")),
    Mistake("a second supervisor on a port shared with SO_REUSEPORT", [*SERVE_2, "--server-port", "{busy}"],
            r"ServerPort={busy}: .*in use", setup=lambda rig: rig.hold_port("busy", reuse_port=True)),
    Mistake("workers' metrics port in use", [*SERVE_2, "--prometheus-metrics-enabled", "true",
                                             "--prometheus-metrics-port", "{busy}"],
            r"PrometheusMetricsPort={busy}: .*in use", setup=lambda rig: rig.hold_port("busy")),
    # TLS files
    Mistake("missing CA file", SERVE, r"CAFile='.*nonexistent.pem': No such file",
            env={**TLS, "TYPHA_CAFILE": "{tmp}/nonexistent.pem"}),
    Mistake("garbage certificate", SERVE, r"ServerCertFile='.*garbage.pem': not a PEM certificate",
            env={**TLS, "TYPHA_SERVERCERTFILE": "{garbage}"}),
    Mistake("a certificate given as the key", SERVE, r"ServerKeyFile='.*server.crt': not a PEM key",
            env={**TLS, "TYPHA_SERVERKEYFILE": "{cert}"}),
    Mistake("partial TLS settings", SERVE, r"if any TLS parameter is set .*CAFile.* all must be",
            env={"TYPHA_CAFILE": "{ca}"}),
    Mistake("partial upstream TLS settings", [*SERVE, "--upstream", "127.0.0.1:5473"],
            r"UpstreamCAFile.*all must be", env={"TYPHA_UPSTREAMCAFILE": "{ca}"}),
    # enum and typed values
    Mistake("bad LogSeverityScreen", SERVE, r"LogSeverityScreen='loud'", env={"TYPHA_LOGSEVERITYSCREEN": "loud"}),
    Mistake("bad ConnectionRebalancingMode", SERVE, r"ConnectionRebalancingMode='sometimes'",
            env={"TYPHA_CONNECTIONREBALANCINGMODE": "sometimes"}),
    Mistake("etcd datastore", SERVE, r"DatastoreType='etcdv3'", env={"TYPHA_DATASTORETYPE": "etcdv3"}),
    Mistake("bad boolean", SERVE, r"HealthEnabled: cannot parse 'maybe'", env={"TYPHA_HEALTHENABLED": "maybe"}),
    Mistake("unknown syncer", [*SERVE, "--syncers", "felix,bpg"], r"Syncers='felix,bpg'"),
    Mistake("bad --log-level", ["typha", "--log-level", "LOUD", "serve"], r"--log-level='LOUD'"),
    Mistake("bad --log-format", ["typha", "--log-format", "xml", "serve"], r"--log-format.*'xml'", code=2),
    # unknown settings: warned about (with the closest name), then the fatal mistake
    Mistake("typo in a TYPHA_ variable", ["typha", "serve", "--kubeconfig", "{tmp}/nonexistent"],
            r"Kubeconfig=", env={"TYPHA_SERVERPORTT": "6000"},
            warns=r"Ignoring unknown setting TYPHA_SERVERPORTT; did you mean TYPHA_SERVERPORT\?"),
    # the agents
    Mistake("felix-client: missing TLS file", FELIX, r"TyphaCAFile='.*nonexistent.pem': No such file",
            env={**FELIX_TLS, "FELIX_TYPHACAFILE": "{tmp}/nonexistent.pem"}),
    Mistake("felix-client: garbage TLS key", FELIX, r"TyphaKeyFile='.*garbage.pem': not a PEM key",
            env={**FELIX_TLS, "FELIX_TYPHAKEYFILE": "{garbage}"}),
    Mistake("felix-client: bad iptables backend", FELIX, r"FELIX_IPTABLESBACKEND='iptables'",
            env={"FELIX_IPTABLESBACKEND": "iptables"}),
    Mistake("felix-client: bad log level", FELIX, r"FELIX_LOGSEVERITYSCREEN='loud'",
            env={"FELIX_LOGSEVERITYSCREEN": "loud"}),
    Mistake("felix-client: typo in a FELIX_ variable, no typha", FELIX, r"felix-client: .*127\.0\.0\.1:1",
            env={"FELIX_TYPHAADR": "127.0.0.1:5473"},
            warns=r"Ignoring unknown setting FELIX_TYPHAADR; did you mean FELIX_TYPHAADDR\?"),
    Mistake("confd-client: missing TLS file", CONFD, r"TyphaCertFile='.*nonexistent.pem': No such file",
            env={**CONFD_ENV, **FELIX_TLS, "FELIX_TYPHACERTFILE": "{tmp}/nonexistent.pem"}),
    Mistake("confd-client: bad log level", CONFD, r"CONFD_LOGLEVEL='loud'",
            env={**CONFD_ENV, "CONFD_LOGLEVEL": "loud"}),
    # the other commands
    Mistake("dump: missing TLS file", ["typha", "dump", "--server", "127.0.0.1:1", "--ca-file", "{tmp}/none.pem",
                                       "--cert-file", "{cert}", "--key-file", "{key}", "--server-cn", "x"],
            r"TyphaCAFile='.*none.pem': No such file"),
    Mistake("sim-apiserver: port in use", ["typha", "sim-apiserver", "--kubeconfig-out", "{tmp}/kc",
                                           "--listen", "127.0.0.1:{busy}"], r"--listen='127.0.0.1:{busy}': .*in use",
            setup=lambda rig: rig.hold_port("busy")),
    Mistake("sim-apiserver: garbage --load", ["typha", "sim-apiserver", "--kubeconfig-out", "{tmp}/kc",
                                              "--load", "{tmp}/garbage.yaml"], r"--load='.*garbage.yaml'"),
    Mistake("bench report: missing results", [sys.executable, "-m", "bench", "report", "{tmp}/none.json",
                                              "--out", "{tmp}/plots"], r"none.json: No such file"),
]


def assert_one_line(stderr: str, names: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip() and not LOG_RECORD.match(line)]
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n" + "\n".join(lines[-20:])
    assert re.search(names, lines[0]), f"{lines[0]!r} does not match {names!r}"
    return lines[0]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_operator_mistake_is_one_line(mistake: Mistake, rig: Rig) -> None:
    mistake.setup(rig)
    argv = [rig.fill(arg) for arg in mistake.argv]
    command = script(argv[0]) + argv[1:] if argv[0] in ("typha", "felix-client", "confd-client") else argv
    env = environment(rig.tmp, {key: rig.fill(value) for key, value in mistake.env.items()})
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=FATAL_TIMEOUT,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == mistake.code, f"exit {result.returncode}\n{result.stderr[-3000:]}"
    assert_one_line(result.stderr, rig.fill(mistake.names))
    if mistake.warns:
        assert len([line for line in result.stderr.splitlines() if re.search(mistake.warns, line)]) == 1


def test_the_table_covers_at_least_25_mistakes() -> None:
    assert len(MISTAKES) >= 25


def test_workers_supervisor_gives_up_on_a_dying_ingest(rig: Rig) -> None:
    """An ingest that dies at every start (here: killed as soon as it appears, as an OOM kill would) makes
    the supervisor exit non-zero in one line, instead of restarting it forever."""
    command = [*script("typha"), "serve", "--workers", "2", "--kubeconfig", rig.values["kubeconfig"],
               "--server-port", str(free_port())]
    process = subprocess.Popen(command, env=environment(rig.tmp, {}), stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL)
    killed = 0
    try:
        deadline = time.monotonic() + 60  # bounds the loop; the supervisor's own exit is what is judged
        while process.poll() is None and time.monotonic() < deadline:
            try:
                children = psutil.Process(process.pid).children()
            except psutil.NoSuchProcess:
                break
            for child in children:
                try:
                    if "--upstream" not in child.cmdline() and "unix:" in " ".join(child.cmdline()):
                        child.send_signal(signal.SIGKILL)
                        killed += 1
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.05)
        _, stderr = process.communicate(timeout=FATAL_TIMEOUT)
    finally:
        stop_process(process, grace=5)
    assert killed >= 3
    assert process.returncode == 1, stderr[-3000:]
    assert_one_line(stderr, r"ingest exited 3 times during start-up .*giving up")


def test_unreachable_api_is_not_fatal_and_its_retries_are_collapsed(rig: Rig) -> None:
    """Not a fatal mistake (the API server may come back): typha keeps running, not ready, and says so in a
    bounded number of lines rather than one urllib3 warning per retry."""
    health = free_port()
    command = [*script("typha"), "serve", "--workers", "1", "--kubeconfig", rig.values["kubeconfig"],
               "--server-port", str(free_port()), "--health-enabled", "true", "--health-host", "127.0.0.1",
               "--health-port", str(health)]
    process = subprocess.Popen(command, env=environment(rig.tmp, {}), stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL)
    try:
        time.sleep(12)  # a load window, bounded; what is judged is the log it leaves
        assert process.poll() is None, "an unreachable API server must not be fatal"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        stop_process(process, grace=5)
    assert "Traceback" not in stderr, stderr[-3000:]
    retries = [line for line in stderr.splitlines() if "Retrying" in line]
    backoffs = [line for line in stderr.splitlines() if "backing off" in line]
    # One of each kind per 30 s window: the first, and none repeated within 12 s.
    assert len(retries) <= 1, retries
    assert len(backoffs) <= 1, backoffs
    assert len(stderr.splitlines()) < 60, stderr[-3000:]


def test_dump_piped_to_head_ends_quietly(rig: Rig) -> None:
    """`typha dump --json | head` ends with head: no BrokenPipeError traceback, exit code 0."""
    with KubeAPIEmulator().start() as api:
        for index in range(400):
            api.create(objects.node(f"node-{index}", ipv4=f"10.0.{index // 250}.{index % 250 + 1}/16"))
        kubeconfig = rig.tmp / "live-kubeconfig"
        api.write_kubeconfig(kubeconfig)
        port, health = free_port(), free_port()
        typha = subprocess.Popen(
            [*script("typha"), "serve", "--workers", "1", "--kubeconfig", str(kubeconfig), "--server-host",
             "127.0.0.1", "--server-port", str(port), "--health-enabled", "true", "--health-host", "127.0.0.1",
             "--health-port", str(health)],
            env=environment(rig.tmp, {}), stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            wait_ready(health, typha)  # type: ignore[arg-type]
            dump = subprocess.Popen([*script("typha"), "dump", "--server", f"127.0.0.1:{port}", "--json"],
                                    env=environment(rig.tmp, {}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL)
            assert dump.stdout is not None
            head = dump.stdout.readline()  # `head -n 1`, then the reader goes away
            dump.stdout.close()
            _, stderr = dump.communicate(timeout=30)
        finally:
            stop_process(typha)
    assert head.startswith(b"{")
    text = stderr.decode()
    assert "Traceback" not in text and "BrokenPipe" not in text, text[-3000:]
    assert dump.returncode == 0, text[-3000:]
