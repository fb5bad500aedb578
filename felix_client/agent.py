"""felix-client: follow the felix syncer, calculate, and (for now) write the would-be dataplane.

Two trio tasks share one `Calculator`:
- the reader applies each `UpdateBatch` to the calculation as it arrives (cheap: incremental) and
  wakes the applier;
- the applier waits for the first in-sync (programming a half-received snapshot would drop traffic
  to endpoints whose policies have not arrived yet, as Felix also avoids), then after each wake-up
  waits `debounce` seconds so a burst of updates becomes one apply, and renders the whole state.

With `--dry-run DIR` an apply writes `iptables.save`, `ipsets.save`, `routes.txt` and `status.json`
into DIR, each atomically and durably (`felix_client.dataplane.files`), so a reader never sees half a
file, nor a crash an empty one. Without it the
agent programs the network namespace it runs in (`felix_client.dataplane`): iptables, IP sets,
routes and sysctls. A full apply compares everything with the kernel, and one runs at least every
`--resync-interval` seconds (also without updates), so drift (a rule deleted behind our back) is
repaired; in between, an apply leaves alone the tables and IP sets it would write unchanged and,
unless the calculation marked routes dirty, the routes, sysctls and VXLAN device; in the tables it
does write, it rewrites only the chains that changed since its last restore, without reading the
tables back (the resync does).

`--apply-log FILE` (off by default; used by `python -m bench converge`) appends one JSON line per
completed apply: `t` (time.monotonic() when the dataplane or the files were done: CLOCK_MONOTONIC is
machine-wide, so another process can subtract its own readings), `apply`, `secs` (the apply alone),
`endpoints`, `policies` (active), `changed`: {policy key: resourceVersion} of the policy updates
taken into this apply, so a writer can tell which apply carried its write, `skipped`: the parts
of the dataplane this apply left alone as unchanged, and `phases`: seconds of its render, ipset,
iptables and links steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from felix_client import metrics, render
from felix_client.calc import Calculator
from felix_client.calc.model import SETTINGS_ENV
from felix_client.dataplane import Dataplane
from felix_client.dataplane import backend as iptables_backend
from felix_client.dataplane.dataplane import OwnVTEP
from felix_client.dataplane.files import write_durably, write_files
from felix_client.dataplane.vxlan import own_vteps
from felix_client.health import DEFAULT_HEALTH_PORT, serve_health
from typha import logs
from typha.client import ClientTLS, StatusChange, TLSConfigError, UpdateBatch, open_trio_sync_client
from typha.client.discovery import TyphaDiscovery, discover_until_found, with_default_port
from typha.model.kv import SyncStatus

log = logging.getLogger("felix_client.agent")


@dataclass
class AgentOptions:
    typha: list[str]
    hostname: str
    dry_run: Path | None = None
    debounce: float = 0.05
    uplink: str = "eth0"
    endpoint_to_host_action: str | None = None  # --endpoint-to-host-action; None: FelixConfiguration/Felix's DROP
    env: dict[str, str] = field(default_factory=dict)  # FELIX_* settings, above FelixConfiguration
    max_consecutive_failures: int | None = None
    health_host: str = "0.0.0.0"
    health_port: int | None = None  # None: no health endpoint
    metrics_host: str = ""  # FELIX_PROMETHEUSMETRICSHOST ("": every address)
    metrics_port: int | None = None  # FELIX_PROMETHEUSMETRICSPORT when PrometheusMetricsEnabled; None: off
    resync_interval: float = 10.0
    status_file: Path | None = None  # kernel mode: status.json written after each successful apply
    netns: str | None = None  # kernel mode: program this named namespace instead of our own (tests)
    tls: ClientTLS = field(default_factory=ClientTLS)  # FELIX_TYPHACAFILE, …: off when all empty
    apply_log: Path | None = None  # one JSON line per completed apply (see the module docstring)
    # FELIX_TYPHAK8SSERVICENAME: `typha` is empty and the endpoints come from the service, looked up
    # at start and again before each reconnect.
    discovery: TyphaDiscovery | None = None


@dataclass
class AgentStats:
    applies: int = 0
    updates: int = 0
    in_sync: bool = False
    status: str = SyncStatus.WAIT_FOR_READY.value
    last_apply_secs: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Agent:
    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.calc = Calculator(
            options.hostname, uplink=options.uplink, endpoint_to_host_action=options.endpoint_to_host_action,
            env=options.env,
        )
        self.stats = AgentStats()
        self._wake = trio.Event()
        self.dataplane: Dataplane | None = None
        self._changed_policies: dict[str, str] = {}  # policy key -> revision, since the last apply
        self._routes_changed = True  # the calculation marked routes dirty since the last kernel apply
        self._last_full = -math.inf  # monotonic start of the last successful full apply
        if options.dry_run is None:
            # Make-before-break: an edited chain takes effect before its old rules are deleted
            # (felix_client.dataplane.dataplane docstring); the tidy-up runs once the apply is logged.
            self.dataplane = Dataplane(options.netns, backend=iptables_backend.select(netns=options.netns),
                                       make_before_break=True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        client_options: dict[str, Any] = {}
        if self.options.max_consecutive_failures is not None:
            client_options["max_consecutive_failures"] = self.options.max_consecutive_failures
        client_options.update(self.options.tls.client_options())
        endpoints = self.options.typha
        discovery = self.options.discovery
        if discovery is not None and discovery.dynamic:
            endpoints = await discover_until_found(discovery, attempts=self.options.max_consecutive_failures)
            client_options["rediscover"] = discovery.addresses
        async with (
            open_trio_sync_client(endpoints, "felix", hostname=self.options.hostname, **client_options)
            as client,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._apply_loop)
            task_status.started()
            async for event in client:
                if isinstance(event, UpdateBatch):
                    for update in event.updates:
                        self.calc.update(update.key, update.value)
                        if self.options.apply_log is not None and update.key.startswith("/calico/v1/policy/"):
                            self._changed_policies[update.key] = update.revision
                    self.stats.updates += len(event.updates)
                elif isinstance(event, StatusChange):
                    self.stats.status = event.status.value
                    metrics.set_resync_state(event.status)
                    if event.status is SyncStatus.IN_SYNC:
                        self.stats.in_sync = True
                self._wake.set()
            # The client only ends when told to stop or after max_consecutive_failures.
            nursery.cancel_scope.cancel()

    async def _apply_loop(self) -> None:
        while True:
            # A timeout without updates is the periodic resync: only useful once something is programmed.
            with trio.move_on_after(self.options.resync_interval):
                await self._wake.wait()
            if not self.stats.in_sync:
                self._wake = trio.Event()
                continue
            if self._wake.is_set():
                await trio.sleep(self.options.debounce)
            # Anything arriving from here on wakes the next round.
            self._wake = trio.Event()
            started = time.perf_counter()
            try:
                if self.dataplane is None:
                    self.apply()
                else:
                    state, vteps = self._take_state()
                    changed = self._take_changed()
                    # Blocking tools (iptables-restore, ipset, netlink) run in a thread so the reader
                    # keeps draining the sync stream; the snapshot is a separate object.
                    skipped = await trio.to_thread.run_sync(self._program, state, vteps)
                    self._log_apply(started, len(state.endpoints), len(state.policies), changed, skipped,
                                    self.dataplane.phases)
                    if any(self.dataplane.untidy.values()):
                        await trio.to_thread.run_sync(self.dataplane.tidy)
            except Exception:
                # The dataplane forgot its memory of the failed apply: the retry programs everything.
                # Keep the agent alive and retry soon: a transient failure (xtables lock, an interface
                # that vanished mid-apply) must not leave the node unprogrammed until the next update.
                log.exception("apply failed; retrying")
                self.stats.extra["failures"] = self.stats.extra.get("failures", 0) + 1
                metrics.DATAPLANE_FAILURES.inc()
                await trio.sleep(min(1.0, self.options.resync_interval))
                self._wake.set()
                continue
            self.stats.last_apply_secs = time.perf_counter() - started
            metrics.DATAPLANE_APPLY_TIME.observe(self.stats.last_apply_secs)

    def _take_changed(self) -> dict[str, str]:
        changed, self._changed_policies = self._changed_policies, {}
        return changed

    def _log_apply(self, started: float, endpoints: int, policies: int, changed: dict[str, str],
                   skipped: list[str] | None = None, phases: dict[str, float] | None = None) -> None:
        if self.options.apply_log is None:
            return
        done = time.monotonic()
        line = {"t": done, "apply": self.stats.applies, "secs": time.perf_counter() - started,
                "endpoints": endpoints, "policies": policies, "changed": changed, "skipped": skipped or [],
                "phases": phases or {}}
        # Appended whole (O_APPEND); a reader still takes only lines that end in a newline, as a long
        # line may reach the file in more than one write.
        with open(self.options.apply_log, "a") as out:
            out.write(json.dumps(line) + "\n")

    def _take_state(self) -> tuple[Any, list[OwnVTEP]]:
        if self.dataplane is not None and self.calc.has_local_host_endpoints():
            # Host endpoints bind to the node's interfaces by name or address (calc/hostendpoints.py).
            self.calc.set_host_interfaces(self.dataplane.host_interfaces())
        self._routes_changed |= self.calc.take_dirty().routes
        state = self.calc.snapshot()
        return state, own_vteps((self.calc.routing, self.calc.routing6), state.settings)

    def _program(self, state: Any, vteps: list[OwnVTEP]) -> list[str]:
        """One kernel apply; the dataplane renders, decides what it may leave alone, and programs."""
        assert self.dataplane is not None
        started = time.monotonic()
        resync = started - self._last_full >= self.options.resync_interval
        skipped = self.dataplane.apply(state, vteps, resync=resync, routes_changed=self._routes_changed)
        self._routes_changed = False
        if resync:
            self._last_full = started
        self.stats.applies += 1
        metrics.ACTIVE_LOCAL_ENDPOINTS.set(len(state.endpoints))
        metrics.ACTIVE_LOCAL_POLICIES.set(len(state.policies))
        if self.options.status_file is not None:
            status = {
                "hostname": self.options.hostname,
                "in_sync": self.stats.in_sync,
                "applies": self.stats.applies,
                "updates": self.stats.updates,
                "endpoints": len(state.endpoints),
                "policies": len(state.policies),
                "backend": self.dataplane.backend,
                "time": time.time(),
            }
            write_durably(self.options.status_file, json.dumps(status, indent=1) + "\n")
        return skipped

    @property
    def ready(self) -> bool:
        # Ready once the dataplane reflects a complete snapshot, as Felix reports readiness.
        return self.stats.in_sync and self.stats.applies > 0

    def apply(self) -> None:
        """One dry-run apply: the files `felix_client.dataplane.files` writes, then status.json."""
        started = time.perf_counter()
        self.calc.take_dirty()
        state = self.calc.snapshot()
        changed = self._take_changed()
        self.stats.applies += 1
        metrics.ACTIVE_LOCAL_ENDPOINTS.set(len(state.endpoints))
        metrics.ACTIVE_LOCAL_POLICIES.set(len(state.policies))
        if self.options.dry_run is None:
            raise RuntimeError("kernel programming is not built yet: run with --dry-run DIR")
        out = self.options.dry_run
        write_files(out, state)
        # Written last: a reader that sees this generation sees the files of it (or a later one).
        status = {
            "hostname": self.options.hostname,
            "in_sync": self.stats.in_sync,
            "status": self.stats.status,
            "applies": self.stats.applies,
            "updates": self.stats.updates,
            "endpoints": len(state.endpoints),
            "policies": len(state.policies),
            "ipsets": len(state.ipsets),
            "time": time.time(),
        }
        write_durably(out / "status.json", json.dumps(status, indent=1) + "\n")
        self._log_apply(started, len(state.endpoints), len(state.policies), changed)


def _default_hostname() -> str:
    # Felix's precedence: FELIX_FELIXHOSTNAME, then NODENAME (set by the calico-node manifest), then
    # the host name.
    return os.environ.get("FELIX_FELIXHOSTNAME") or os.environ.get("NODENAME") or socket.gethostname()


def parse_args(argv: Sequence[str] | None = None) -> AgentOptions:
    parser = argparse.ArgumentParser(prog="felix-client", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--typha", action="append", default=None, metavar="HOST:PORT",
        help="typha address (repeatable; default $FELIX_TYPHAADDR, comma-separated)",
    )
    parser.add_argument("--hostname", default=None, help="this node's name (default $FELIX_FELIXHOSTNAME / $NODENAME)")
    parser.add_argument("--dry-run", type=Path, default=None, metavar="DIR",
                        help="write iptables.save, ipsets.save, routes.txt and status.json to DIR instead of "
                        "programming the kernel")
    parser.add_argument("--resync-interval", type=float, default=10.0,
                        help="seconds between full dataplane resyncs that repair drift")
    parser.add_argument("--status-file", type=Path, default=None,
                        help="write a status.json here after each successful kernel apply")
    parser.add_argument("--apply-log", type=Path, default=None, metavar="FILE",
                        help="append a JSON line per completed apply (monotonic time, policy revisions) to FILE")
    parser.add_argument("--debounce", type=float, default=0.05, help="seconds to coalesce updates before an apply")
    parser.add_argument("--uplink", default="eth0", help="underlay interface for no-encap routes")
    parser.add_argument("--endpoint-to-host-action", default=None, choices=["ACCEPT", "DROP", "RETURN"], type=str.upper,
                        help="DefaultEndpointToHostAction (default: $FELIX_DEFAULTENDPOINTTOHOSTACTION, then "
                        "FelixConfiguration, then Felix's DROP)")
    parser.add_argument("--max-consecutive-failures", type=int, default=None,
                        help="exit after this many failed connection attempts in a row")
    parser.add_argument("--health-port", type=int, default=_env_health_port(),
                        help=f"serve /liveness and /readiness here (default: $FELIX_HEALTHPORT or "
                        f"{DEFAULT_HEALTH_PORT} when $FELIX_HEALTHENABLED is true, else off)")
    parser.add_argument("--health-host", default=os.environ.get("FELIX_HEALTHHOST", "0.0.0.0"))
    parser.add_argument("--metrics-port", type=int, default=_env_metrics_port(),
                        help=f"serve Prometheus /metrics here (default: $FELIX_PROMETHEUSMETRICSPORT or "
                        f"{metrics.DEFAULT_METRICS_PORT} when $FELIX_PROMETHEUSMETRICSENABLED is true, else off)")
    parser.add_argument("--log-level", default=os.environ.get("FELIX_LOGSEVERITYSCREEN", "INFO"))
    parser.add_argument("--log-format", default="text", type=str.lower, choices=logs.FORMATS)
    parser.add_argument("--version", action="version", version=logs.version_line("felix-client"))
    args = parser.parse_args(argv)
    logs.configure(logs.parse_level(args.log_level, "FELIX_LOGSEVERITYSCREEN"), args.log_format)
    log.info("%s", logs.version_line("felix-client"))
    logs.warn_unknown_env(os.environ, "FELIX_", KNOWN_ENV, log)
    iptables_backend.parse_setting(os.environ.get(iptables_backend.SETTING))  # a bad value fails at start
    hostname = args.hostname or _default_hostname()
    discovery = TyphaDiscovery.from_env(os.environ, ("FELIX_",), node=hostname,
                                        override=[with_default_port(a) for a in args.typha or ()])
    if not discovery.configured:
        parser.error("no typha address: give --typha, or set FELIX_TYPHAADDR or FELIX_TYPHAK8SSERVICENAME")
    try:
        # Felix's FELIX_TYPHACAFILE/CERTFILE/KEYFILE/CN/URISAN, verified exactly as Felix's Typha client does.
        tls = ClientTLS.from_env()
    except TLSConfigError as exc:
        parser.error(str(exc))
    logs.check_client_tls(tls.ca_file, tls.cert_file, tls.key_file)
    return AgentOptions(
        typha=list(discovery.static),
        discovery=discovery,
        hostname=hostname,
        dry_run=args.dry_run,
        debounce=args.debounce,
        resync_interval=args.resync_interval,
        status_file=args.status_file,
        apply_log=args.apply_log,
        uplink=args.uplink,
        endpoint_to_host_action=args.endpoint_to_host_action,
        env={name: os.environ[name] for name in SETTINGS_ENV if name in os.environ},
        max_consecutive_failures=args.max_consecutive_failures,
        health_host=args.health_host,
        health_port=args.health_port,
        metrics_host=os.environ.get("FELIX_PROMETHEUSMETRICSHOST", ""),
        metrics_port=args.metrics_port,
        tls=tls,
    )


def _env_metrics_port() -> int | None:
    # Felix's PrometheusMetricsEnabled (a bool, default false) and PrometheusMetricsPort (default 9091).
    if os.environ.get("FELIX_PROMETHEUSMETRICSENABLED", "").lower() not in ("true", "1", "yes"):
        return None
    text = os.environ.get("FELIX_PROMETHEUSMETRICSPORT") or str(metrics.DEFAULT_METRICS_PORT)
    if not text.isdigit() or int(text) > 65535:
        raise logs.SettingError("FELIX_PROMETHEUSMETRICSPORT", text, "expected a port number 0-65535")
    return int(text)


def _env_health_port() -> int | None:
    if os.environ.get("FELIX_HEALTHENABLED", "").lower() not in ("true", "1", "yes"):
        return None
    return int(os.environ.get("FELIX_HEALTHPORT") or DEFAULT_HEALTH_PORT)


async def _main(options: AgentOptions) -> None:
    agent = Agent(options)
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("signal %d: stopping", signum)
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(stop_on_signal)
        if options.health_port is not None:
            port = await nursery.start(serve_health, options.health_host, options.health_port, lambda: agent.ready)
            log.info("health endpoints on port %d", port)
        if options.metrics_port is not None:
            port = await nursery.start(metrics.serve_metrics, options.metrics_host, options.metrics_port)
            log.info("Prometheus metrics on port %d", port)
        await agent.run()
        nursery.cancel_scope.cancel()


def _gave_up(exc: BaseException) -> ConnectionError | None:
    """The sync client's give-up error (max_consecutive_failures), if that alone stopped the agent;
    trio's nurseries deliver it wrapped in exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, ConnectionError) else None


# What felix-client reads (Felix's names); any other FELIX_* is warned about once.
KNOWN_ENV = ("FELIX_TYPHAADDR", "FELIX_TYPHAK8SSERVICENAME", "FELIX_TYPHAK8SNAMESPACE", "FELIX_TYPHACAFILE",
             "FELIX_TYPHACERTFILE", "FELIX_TYPHAKEYFILE", "FELIX_TYPHACN", "FELIX_TYPHAURISAN", "FELIX_FELIXHOSTNAME",
             "FELIX_HEALTHENABLED", "FELIX_HEALTHHOST", "FELIX_HEALTHPORT", "FELIX_LOGSEVERITYSCREEN",
             "FELIX_PROMETHEUSMETRICSENABLED", "FELIX_PROMETHEUSMETRICSHOST", "FELIX_PROMETHEUSMETRICSPORT",
             *SETTINGS_ENV, *iptables_backend.KNOWN_ENV)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["render"]:  # `felix-client render`: the files for one node from a KV snapshot, offline
        return logs.run_main("felix-client render", lambda: render.main(args[1:]))
    return logs.run_main("felix-client", lambda: _run(argv), expected=(TLSConfigError,))


def _run(argv: Sequence[str] | None) -> int:
    options = parse_args(argv)
    following = options.discovery.describe() if options.discovery is not None else ",".join(options.typha)
    log.info("felix-client for node %s following %s, %s", options.hostname, following,
             f"dry run into {options.dry_run}" if options.dry_run else "programming this network namespace")
    try:
        trio.run(_main, options)
    except (ConnectionError, BaseExceptionGroup) as exc:
        gave_up = _gave_up(exc)
        if gave_up is None:
            raise
        # Expected (no usable typha): say why in one line and exit non-zero for the supervisor.
        print(f"felix-client: {gave_up}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
