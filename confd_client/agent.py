"""confd-client: follow typha's `bgp` syncer and keep BIRD's six config files up to date.

Settings use Calico's names: `NODENAME`, `CALICO_ROUTER_ID`, `CALICO_ADVERTISE_CLUSTER_IPS`, and the
Typha client settings confd reads (`syncclientutils.ReadTyphaConfig(["CONFD_", "FELIX_", "CALICO_"])`:
the first prefix that sets a name wins), e.g. `FELIX_TYPHAADDR`, `FELIX_TYPHACAFILE`,
`FELIX_TYPHACERTFILE`, `FELIX_TYPHAKEYFILE`, `FELIX_TYPHACN`, `FELIX_TYPHAURISAN`. `--typha ADDR`
overrides the address. TLS follows Typha's clients exactly (typha.client.tls): all-or-nothing settings,
the server's CN or URI SAN verified, TLS ≥ 1.2.

Modes:
- `--oneshot`: wait until the stream is in sync, render once, write, exit (no check, no reload), as
  upstream's tests run confd (`Onetime`, `SyncOnly`).
- daemon (default): after in-sync, re-render when updates arrive, debounced; write only files whose
  content changed (atomically), then parse-check (`--check`) and reload BIRD (`birdc -s SOCK configure`)
  once per changed family. A config BIRD rejects is kept aside under `<dir>/rejected/`, logged and
  counted, and the files BIRD runs with stay as they were.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from confd_client.bgp.store import BGPStore
from confd_client.bgp.validate import Invalid, check_env
from confd_client.render import FILES, Renderer, write_if_changed
from typha import logs
from typha.client import ClientTLS, StatusChange, TLSConfigError, UpdateBatch, open_trio_sync_client
from typha.client.discovery import TyphaDiscovery, discover_until_found
from typha.model.kv import SyncStatus

if TYPE_CHECKING:
    from confd_client.sources import KubeSources

log = logging.getLogger("confd_client")

TYPHA_PREFIXES = ("CONFD_", "FELIX_", "CALICO_")
DEFAULT_CONFIG_DIR = "/etc/calico/confd/config"
FAMILY_FILES = {4: ("bird.cfg", "bird_ipam.cfg", "bird_aggr.cfg"), 6: ("bird6.cfg", "bird6_ipam.cfg", "bird6_aggr.cfg")}
# The env names that change rendering; nothing else from the environment reaches the model.
RENDER_ENV = ("CALICO_ROUTER_ID", "CALICO_ADVERTISE_CLUSTER_IPS", "CALICO_ENDPOINT_STATUS_PATH_PREFIX")


@dataclass
class Settings:
    nodename: str
    endpoints: list[str]  # empty when `discovery` finds them (<prefix>TYPHAK8SSERVICENAME)
    config_dir: Path = Path(DEFAULT_CONFIG_DIR)
    oneshot: bool = False
    debounce: float = 0.2
    bird_socket: str = ""  # birdc -s for bird.cfg; "" = no reload
    bird6_socket: str = ""
    check: bool = False  # parse-check with `bird -p -c` / `bird6 -p -c` before installing
    bird_binary: str = "bird"
    bird6_binary: str = "bird6"
    birdc_binary: str = "birdc"
    birdc6_binary: str = "birdc6"  # BIRD 1.6 ships one client per daemon
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_cn: str = ""  # <prefix>TYPHACN: the name Typha's certificate must carry
    server_uri_san: str = ""  # <prefix>TYPHAURISAN: or a URI SAN Typha's certificate must carry
    in_sync_timeout: float = 60.0
    render_env: dict[str, str] = field(default_factory=dict)
    # Kubernetes side channels (Secrets for passwords, Services for advertisement), as upstream:
    # KUBECONFIG, else in-cluster; Secrets from namespace NAMESPACE.
    kube: bool = False
    kubeconfig: str = ""
    namespace: str = "kube-system"
    discovery: TyphaDiscovery | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], argv: Sequence[str] | None = None) -> Settings:
        parser = argparse.ArgumentParser(prog="confd-client", description=__doc__.splitlines()[0])
        parser.add_argument("--typha", help="typha address host:port (comma-separated for several)")
        parser.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR, help="where the six BIRD files go")
        parser.add_argument("--oneshot", action="store_true", help="render once after in-sync and exit")
        parser.add_argument("--debounce", type=float, default=0.2, help="seconds to gather updates before rendering")
        parser.add_argument("--bird-socket", default="", help="birdc control socket for IPv4 BIRD (enables reload)")
        parser.add_argument("--bird6-socket", default="", help="birdc control socket for IPv6 BIRD")
        parser.add_argument("--check", action="store_true", help="bird -p -c the new config before installing it")
        parser.add_argument("--in-sync-timeout", type=float, default=60.0)
        parser.add_argument("--version", action="version", version=logs.version_line("confd-client"))
        args = parser.parse_args(argv)
        nodename = env.get("NODENAME", "")
        if not nodename:
            parser.error("NODENAME must be set")
        override = [a for a in (args.typha or "").split(",") if a.strip()]
        discovery = TyphaDiscovery.from_env(env, TYPHA_PREFIXES, node=nodename, override=override)
        if not discovery.configured:
            parser.error("no typha address: set --typha, FELIX_TYPHAADDR or FELIX_TYPHAK8SSERVICENAME "
                         "(or the CONFD_/CALICO_ forms)")
        try:
            tls = ClientTLS.from_env(env, prefixes=TYPHA_PREFIXES)
        except TLSConfigError as exc:
            parser.error(str(exc))
        render_env = {name: env[name] for name in RENDER_ENV if env.get(name)}
        try:
            check_env(render_env)  # these reach BIRD as they are: refuse them here, in one line
        except Invalid as exc:
            parser.error(str(exc))
        logs.check_client_tls(tls.ca_file, tls.cert_file, tls.key_file)
        return cls(
            nodename=nodename,
            endpoints=list(discovery.static),
            discovery=discovery,
            config_dir=Path(args.config_dir),
            oneshot=args.oneshot,
            debounce=args.debounce,
            bird_socket=args.bird_socket,
            bird6_socket=args.bird6_socket,
            check=args.check,
            ca_file=tls.ca_file,
            cert_file=tls.cert_file,
            key_file=tls.key_file,
            server_cn=tls.server_cn,
            server_uri_san=tls.server_uri_san,
            in_sync_timeout=args.in_sync_timeout,
            render_env=render_env,
            kube=bool(env.get("KUBECONFIG") or env.get("KUBERNETES_SERVICE_HOST")),
            kubeconfig=env.get("KUBECONFIG", ""),
            namespace=env.get("NAMESPACE") or "kube-system",
        )


@dataclass
class AgentCounters:
    renders: int = 0
    files_rendered: int = 0  # templates rendered: a render redoes only the files its changes reach
    writes: int = 0  # files written
    reloads: int = 0
    rejected: int = 0  # configs the parse check refused
    reload_failures: int = 0


def _run(cmd: list[str]) -> tuple[bool, str]:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return result.returncode == 0, (result.stdout + result.stderr).strip()


class RenderFailed(Exception):
    """A oneshot run could not render its config."""


class ConfdAgent:
    """Mirror of the bgp syncer → BGP model → six files; I/O to BIRD through injectable commands."""

    def __init__(self, settings: Settings, runner: Callable[[list[str]], tuple[bool, str]] = _run) -> None:
        self.settings = settings
        self.store = BGPStore()
        self.renderer = Renderer(settings.nodename, settings.render_env)
        self.counters = AgentCounters()
        # What each file held when this agent last wrote or read it: unchanged text is not re-read.
        self._on_disk: dict[str, str] = {}
        self.in_sync = False
        self._runner = runner
        self._dirty = trio.Event()
        self._cancel: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.rendered = trio.Event()  # set after the first write after in-sync (tests wait on it)
        self.kube: KubeSources | None = None
        if settings.kube:
            # Imported here: it pulls in the kubernetes client (about half an agent's start-up CPU),
            # which an agent without side channels (no KUBECONFIG, not in a cluster) never uses.
            from confd_client.sources import KubeSources

            self.kube = KubeSources(settings.kubeconfig or None, settings.namespace, self._kube_changed)
            self.store.secret_source = self.kube.secret
            self.store.services_source = self.kube.service_endpoints

        self.status_dir: Path | None = None
        prefix = settings.render_env.get("CALICO_ENDPOINT_STATUS_PATH_PREFIX")
        if prefix:
            self.status_dir = Path(prefix) / "endpoint-status"
            self.store.local_workloads_source = self._read_endpoint_status

    def _read_endpoint_status(self) -> list[dict[str, Any]]:
        """Felix's per-workload status files; unreadable or half-written ones are skipped this round."""
        out: list[dict[str, Any]] = []
        if self.status_dir is None or not self.status_dir.is_dir():
            return out
        for path in sorted(self.status_dir.iterdir()):
            try:
                status = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(status, dict):
                out.append(status)
        return out

    def _status_fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        if self.status_dir is None or not self.status_dir.is_dir():
            return ()
        entries = []
        for path in sorted(self.status_dir.iterdir()):
            try:
                stat = path.stat()
            except OSError:
                continue
            entries.append((path.name, stat.st_mtime_ns, stat.st_size))
        return tuple(entries)

    async def _watch_endpoint_status(self) -> None:
        """Poll the status directory (upstream uses inotify); any change re-renders, debounced."""
        seen = self._status_fingerprint()
        while True:
            await trio.sleep(0.5)
            current = await trio.to_thread.run_sync(self._status_fingerprint)
            if current != seen:
                seen = current
                self._mark_dirty("status")

    def _kube_changed(self, what: str) -> None:
        """From the watcher's thread: re-render on the trio loop (passwords are read at render time)."""
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(self._mark_dirty, what)
        except trio.RunFinishedError:
            pass

    def _mark_dirty(self, what: str) -> None:
        self.store.note((what,))
        if self.in_sync:
            self._dirty.set()

    # -- model ----------------------------------------------------------------------------------------

    def handle(self, event: Any) -> None:
        if isinstance(event, UpdateBatch):
            for update in event.updates:
                try:
                    self.store.apply(update.key, update.value)
                except Exception:  # one bad value must not stop the agent; the rest still renders
                    log.exception("skipping update of %s", update.key)
            # Only a change to something this node renders wakes the renderer (store.changes).
            if self.store.changes and self.in_sync:
                self._dirty.set()
        elif isinstance(event, StatusChange):
            self.in_sync = event.status == SyncStatus.IN_SYNC
            if self.in_sync:
                self._dirty.set()
        self._maybe_start_route_generator()

    def _maybe_start_route_generator(self) -> None:
        """Watch Services once service advertisement is configured (upstream's NewRouteGenerator)."""
        if self.kube is None or self.kube.services_started or not self.in_sync:
            return
        glob = self.store.global_config
        if self.settings.render_env.get("CALICO_ADVERTISE_CLUSTER_IPS") or any(
            glob.get(name) for name in ("serviceClusterIPs", "serviceExternalIPs", "serviceLoadBalancerIPs")
        ):
            log.info("service advertisement configured: watching Services and EndpointSlices")
            self.kube.start_services()

    def render(self) -> dict[str, str]:
        """All six files' text; only those the store's changes since the last render reach are rendered."""
        self.counters.renders += 1
        files = self.renderer.render(self.store, self.store.take_changes())
        self.counters.files_rendered += len(self.renderer.rendered)
        return files

    # -- writing and reloading ------------------------------------------------------------------------

    def _check(self, staged: Path, families: set[int]) -> bool:
        binaries = {4: (self.settings.bird_binary, "bird.cfg"), 6: (self.settings.bird6_binary, "bird6.cfg")}
        for family in sorted(families):
            binary, name = binaries[family]
            ok, output = self._runner([binary, "-p", "-c", str(staged / name)])
            if not ok:
                self.counters.rejected += 1
                aside = self.settings.config_dir / "rejected"
                shutil.rmtree(aside, ignore_errors=True)
                shutil.copytree(staged, aside)
                log.error("BIRD rejected the new %s (kept in %s); running config unchanged: %s", name, aside, output)
                return False
        return True

    def apply(self, files: Mapping[str, str]) -> list[str]:
        """Install changed files (checked first if configured) and reload the BIRDs whose files changed."""
        directory = self.settings.config_dir
        changed = []
        for name, content in files.items():
            if self._on_disk.get(name) == content:
                continue  # what this agent wrote (or found) there: the same text, not read again
            try:
                same = (directory / name).read_text() == content
            except FileNotFoundError:
                same = False
            if same:
                self._on_disk[name] = content
            else:
                changed.append(name)
        if not changed:
            return []
        families = {family for family, names in FAMILY_FILES.items() if set(names) & set(changed)}
        if self.settings.check and not self.settings.oneshot:
            # Stage all six: a file includes its siblings, and BIRD resolves includes beside it.
            with tempfile.TemporaryDirectory(prefix=".staged-", dir=_existing(directory)) as tmp:
                staged = Path(tmp)
                for name in FILES:
                    (staged / name).write_text(files[name])
                if not self._check(staged, families):
                    return []
        for name in changed:
            if write_if_changed(directory / name, files[name]):
                self.counters.writes += 1
            self._on_disk[name] = files[name]
        if not self.settings.oneshot:
            self._reload(families)
        return changed

    def _reload(self, families: set[int]) -> None:
        sockets = {4: self.settings.bird_socket, 6: self.settings.bird6_socket}
        for family in sorted(families):
            if not sockets[family]:
                continue
            birdc = self.settings.birdc_binary if family == 4 else self.settings.birdc6_binary
            ok, output = self._runner([birdc, "-s", sockets[family], "configure"])
            if ok:
                self.counters.reloads += 1
                log.info("reloaded BIRD (IPv%d): %s", family, output)
            else:
                self.counters.reload_failures += 1
                log.error("birdc configure failed (IPv%d): %s", family, output)

    # -- the trio agent -------------------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        s = self.settings
        tls = ClientTLS(ca_file=s.ca_file, cert_file=s.cert_file, key_file=s.key_file, server_cn=s.server_cn,
                        server_uri_san=s.server_uri_san)
        tls.validate()  # Settings may be built without from_env (tests, the demo)
        return tls.client_options()

    async def run(self) -> None:
        """Oneshot: until the first render; daemon: until cancelled (or `stop()`)."""
        self._token = trio.lowlevel.current_trio_token()
        if self.kube is not None:
            self.kube.start()
        try:
            await self._run()
        finally:
            if self.kube is not None:
                await trio.to_thread.run_sync(self.kube.stop)

    async def _run(self) -> None:
        with trio.CancelScope() as scope:
            self._cancel = scope
            endpoints, options = self.settings.endpoints, self._client_options()
            discovery = self.settings.discovery
            if discovery is not None and discovery.dynamic:
                endpoints = await discover_until_found(discovery)
                options["rediscover"] = discovery.addresses
            async with open_trio_sync_client(
                endpoints, "bgp", hostname=self.settings.nodename, info="confd-client", **options,
            ) as client:
                if self.settings.oneshot:
                    with trio.fail_after(self.settings.in_sync_timeout):
                        async for event in client:
                            self.handle(event)
                            if self.in_sync:
                                break
                        if self.kube is not None:
                            # Passwords and Services must be there for the one render we do.
                            await trio.to_thread.run_sync(
                                self.kube.wait_synced, self.settings.in_sync_timeout, abandon_on_cancel=True
                            )
                    try:
                        files = self.render()
                    except Exception as exc:
                        # What typha sent cannot be rendered (e.g. a value of the wrong shape): the
                        # one render of a oneshot run failed, so the run did.
                        log.exception("render failed")
                        raise RenderFailed(f"cannot render the BIRD config from the datastore: {exc!r}") from exc
                    self.apply(files)
                    self.rendered.set()
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._apply_loop)
                    if self.status_dir is not None:
                        nursery.start_soon(self._watch_endpoint_status)
                    async for event in client:
                        self.handle(event)
                    nursery.cancel_scope.cancel()

    async def _apply_loop(self) -> None:
        while True:
            await self._dirty.wait()
            # Debounce: a burst of updates (a snapshot, a kubectl apply of many objects) → one render.
            await trio.sleep(self.settings.debounce)
            self._dirty = trio.Event()
            if not self.in_sync:
                continue  # never write config from a partial snapshot
            if not self.store.changes and self.rendered.is_set():
                continue  # the updates moved nothing this node renders
            try:
                changed = self.apply(self.render())
            except Exception:
                log.exception("render failed; keeping the current config")
                continue
            if changed:
                log.info("wrote %s", ", ".join(changed))
            self.rendered.set()

    def stop(self) -> None:
        """Thread-safe: cancel `run()`."""
        token, scope = self._token, self._cancel
        if token is not None and scope is not None:
            try:
                token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass


def _existing(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    return logs.run_main("confd-client", lambda: _main(argv), expected=(TLSConfigError,))


def _main(argv: Sequence[str] | None) -> int:
    logs.configure(logs.parse_level(os.environ.get("CONFD_LOGLEVEL", "INFO"), "CONFD_LOGLEVEL"),
                   os.environ.get("CONFD_LOGFORMAT", "text"))
    settings = Settings.from_env(os.environ, argv)
    log.info("%s", logs.version_line("confd-client"))
    agent = ConfdAgent(settings)
    try:
        trio.run(agent.run)
    except KeyboardInterrupt:
        return 0
    except trio.TooSlowError:
        print("confd-client: not in sync before the timeout", file=sys.stderr)
        return 1
    except RenderFailed as exc:
        print(f"confd-client: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
