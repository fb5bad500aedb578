"""`typha serve --workers N`: one ingest process and N fan-out worker processes on every core.

The ingest process is an ordinary typha (datastore → syncers → caches) listening only on a Unix
socket. Each worker is an ordinary typha following the ingest over the Sync protocol itself
(`--upstream unix:…`, typha.source.upstream) and serving clients on the public port, which all workers
share with SO_REUSEPORT: the kernel spreads connections across them. Because replicas keep the
ingest's epoch and sequence numbers, the clients of a worker that dies reconnect to the same port,
land on another worker and resume there without a snapshot; the supervisor restarts the dead one.

The supervisor (this module, the parent process) serves the aggregated health and metrics:
ready when every child is ready, metrics merged across processes by prometheus_client's
multiprocess mode. A child that keeps dying before it ever became ready is a configuration problem,
not bad luck: after STARTUP_FAILURES such deaths the supervisor stops everything and exits non-zero
with the child's own one-line reason, so that Kubernetes shows CrashLoopBackOff instead of a pod that
restarts its ingest forever.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from typha.config import ConfigError, TyphaConfig, env_name
from typha.daemon.metrics_http import MetricsServer
from typha.daemon.ports import check_ports, free_port

# Where each worker's connection count goes, read by typha.ops.rebalance.SiblingLoads under the same names.
# Not imported from there: that module brings gRPC and the server, which the supervisor does not run.
LOADS_DIR_ENV = "TYPHA_WORKER_LOADS_DIR"
WORKER_INDEX_ENV = "TYPHA_WORKER_INDEX"

log = logging.getLogger(__name__)

RESTART_BACKOFF_SECS = 1.0
# A child that exits this many times without ever becoming ready makes the supervisor give up.
STARTUP_FAILURES = 3
MAX_UNIX_PATH = 107  # sun_path, less its terminating NUL
# The prefix of a child's fatal one-line error (typha.logs.run_main): kept for the supervisor's own report.
_FATAL_PREFIX = b"typha: "


def _die_with_parent() -> None:
    """In a child: SIGKILL when the supervisor dies (Linux). Unsupervised, a worker would hold the public
    port and an ingest its watches, and a new supervisor could not take over."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _env_value(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass
class Child:
    role: str  # "ingest" or "worker-<i>"
    flags: list[str]
    health_port: int
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    was_ready: bool = False
    startup_failures: int = 0
    last_error: str = ""

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.health_port}/readiness"
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


@dataclass
class Supervisor:
    config: TyphaConfig
    workers: int
    log_format: str = "text"
    children: list[Child] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.runtime_dir = tempfile.mkdtemp(prefix="typha-")
        self.ingest_socket = f"unix:{self.runtime_dir}/ingest.sock"
        if len(self.ingest_socket.removeprefix("unix:").encode()) > MAX_UNIX_PATH:
            os.rmdir(self.runtime_dir)
            raise ConfigError(f"TMPDIR={tempfile.gettempdir()!r}: too long for the ingest's Unix socket "
                              f"(a socket path has at most {MAX_UNIX_PATH} bytes)")
        self.metrics_dir = os.path.join(self.runtime_dir, "metrics")
        os.makedirs(self.metrics_dir)
        # Each worker's connection count, so rebalancing weighs the pod's total (typha.ops.rebalance.SiblingLoads).
        self.loads_dir = os.path.join(self.runtime_dir, "loads")
        os.makedirs(self.loads_dir)
        self.children.append(Child("ingest", ["--server-host", self.ingest_socket], free_port()))
        public = ["--server-host", self.config.server_host or "0.0.0.0",
                  "--server-port", str(self.config.effective_server_port), "--server-reuse-port", "true",
                  "--upstream", self.ingest_socket]
        for index in range(self.workers):
            self.children.append(Child(f"worker-{index}", list(public), free_port()))
        self.failure: str | None = None  # why the supervisor gave up, once it has

    def _environment(self, child: Child) -> dict[str, str]:
        env = dict(os.environ)
        # Every setting the supervisor was given reaches the children; role-specific ones follow as flags.
        for spec in dataclasses.fields(TyphaConfig):
            env[env_name(spec)] = _env_value(getattr(self.config, spec.name))
        env.update({
            "TYPHA_WORKERS": "1",
            "TYPHA_HEALTHENABLED": "true",
            "TYPHA_HEALTHHOST": "127.0.0.1",
            "TYPHA_HEALTHPORT": str(child.health_port),
            "TYPHA_PROMETHEUSMETRICSENABLED": "false",
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
        })
        if child.role.startswith("worker-"):
            env[LOADS_DIR_ENV] = self.loads_dir
            env[WORKER_INDEX_ENV] = child.role.removeprefix("worker-")
        return env

    def _spawn(self, child: Child) -> None:
        command = [sys.executable, "-m", "typha.cli", "--log-format", self.log_format, "serve", *child.flags]
        child.process = subprocess.Popen(command, env=self._environment(child), preexec_fn=_die_with_parent,
                                         stderr=subprocess.PIPE)
        child.started_at = time.monotonic()
        threading.Thread(target=self._relay, args=(child, child.process), name=f"{child.role}-stderr",
                         daemon=True).start()
        log.info("started %s (pid %d)", child.role, child.process.pid)

    @staticmethod
    def _relay(child: Child, process: subprocess.Popen[bytes]) -> None:
        """Pass the child's log lines on; keep its fatal one-liner for the supervisor's report instead."""
        assert process.stderr is not None
        out = sys.stderr.buffer
        for line in process.stderr:
            if line.startswith(_FATAL_PREFIX):
                child.last_error = line[len(_FATAL_PREFIX):].decode(errors="replace").strip()
                continue
            with contextlib.suppress(OSError, ValueError):
                out.write(line)
                out.flush()

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def watch(self) -> None:
        """Restart children that exit until stop() is called or one keeps failing to start (runs on its own
        thread; sets `failure` when it gives up)."""
        while not self._stopping.wait(0.2):
            for child in self.children:
                process = child.process
                if process is None:
                    continue
                if process.poll() is None:
                    if not child.was_ready and child.ready():
                        child.was_ready = True
                        child.startup_failures = 0
                    continue
                if time.monotonic() - child.started_at < RESTART_BACKOFF_SECS:
                    continue
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(1.0)  # lets the relay read the child's last line
                reason = f": {child.last_error}" if child.last_error else ""
                if not child.was_ready:
                    child.startup_failures += 1
                    if child.startup_failures >= STARTUP_FAILURES:
                        self.failure = (f"{child.role} exited {child.startup_failures} times during start-up "
                                        f"(last exit code {process.returncode}){reason}; giving up")
                        self._stopping.set()
                        return
                log.warning("%s (pid %d) exited with %s%s; restarting", child.role, process.pid,
                            process.returncode, reason)
                child.restarts += 1
                child.was_ready = False
                child.last_error = ""
                self._spawn(child)

    def ready(self) -> tuple[bool, str]:
        not_ready = [child.role for child in self.children if not child.ready()]
        return (not not_ready, "ready" if not not_ready else f"not ready: {', '.join(not_ready)}")

    def live(self) -> tuple[bool, str]:
        dead = [child.role for child in self.children if child.process is None or child.process.poll() is not None]
        return (not dead, "live" if not dead else f"restarting: {', '.join(dead)}")

    def abandon(self) -> None:
        """Giving up during start-up: SIGKILL every child. The pod is about to restart anyway, nothing is
        drained to, and a child still importing would turn SIGINT into a KeyboardInterrupt traceback."""
        self._stopping.set()
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.kill()

    def stop(self, graceful: bool) -> None:
        """Workers first (they drain their clients to each other and to other replicas), then ingest."""
        self._stopping.set()
        sig = signal.SIGTERM if graceful else signal.SIGINT
        timeout = self.config.shutdown_timeout_secs + 10 if graceful else 10
        for group in (self.children[1:], self.children[:1]):
            for child in group:
                if child.process is not None and child.process.poll() is None:
                    child.process.send_signal(sig)
            for child in group:
                if child.process is None:
                    continue
                try:
                    child.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    child.process.kill()


def serve_workers(config: TyphaConfig, workers: int, log_format: str = "text") -> int:
    """Run the supervisor until SIGTERM (drain) or SIGINT (stop now)."""
    import asyncio

    # Before any child starts: a busy port is one line here, not N children failing. Binding without
    # SO_REUSEPORT also fails where another supervisor's workers share the port, which ours would join.
    check_ports(dataclasses.replace(config, server_reuse_port=False))
    supervisor = Supervisor(config, workers, log_format)
    supervisor.start()
    watcher = threading.Thread(target=supervisor.watch, name="typha-supervisor", daemon=True)
    watcher.start()

    async def run() -> bool:
        from typha.daemon.health import HealthEndpoints

        health = None
        if config.health_enabled:
            health = HealthEndpoints(
                ready=supervisor.ready, live=supervisor.live)
            await health.start(config.health_host, config.health_port)
        metrics_server = None
        if config.prometheus_metrics_enabled:
            metrics_server = MetricsServer(_multiprocess_registry(supervisor.metrics_dir))
            await metrics_server.start(config.prometheus_metrics_host, config.prometheus_metrics_port)
        stopping = asyncio.Event()
        graceful = [True]

        def on_signal(is_graceful: bool) -> None:
            graceful[0] = is_graceful
            stopping.set()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, on_signal, True)
        loop.add_signal_handler(signal.SIGINT, on_signal, False)
        while not stopping.is_set() and supervisor.failure is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.5)
        if health is not None:
            await health.stop()
        if metrics_server is not None:
            await metrics_server.stop()
        return graceful[0]

    graceful = False  # a failure on the way stops the children at once
    try:
        graceful = asyncio.run(run())
    finally:
        if supervisor.failure is not None:
            supervisor.abandon()
        supervisor.stop(graceful and supervisor.failure is None)
    if supervisor.failure is not None:
        raise ConfigError(supervisor.failure)
    return 0


def _multiprocess_registry(metrics_dir: str) -> CollectorRegistry:
    from prometheus_client.multiprocess import MultiProcessCollector

    from typha.daemon.metrics_http import register_log_counts

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    register_log_counts(registry)
    return registry
