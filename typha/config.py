"""typha's settings: Typha's parameter names, `TYPHA_<NAME>` environment variables and defaults.

Precedence is Typha's, plus flags: command-line flag > environment variable > default. A value of
`none` sets a parameter to its zero value, as in Typha. Settings that Typha does not have are
marked `extension` and use the same naming scheme.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from typha import logs

if TYPE_CHECKING:
    from typha.client.tls import ClientTLS
    from typha.kube.client import KubeClient


class ConfigError(ValueError):
    """A setting that cannot work; the message names the setting, the value and why (one line)."""


def _setting(typha_name: str, default: Any, help_text: str, *, extension: bool = False,
             choices: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={
        "typha": typha_name, "help": help_text, "extension": extension, "choices": choices,
    })


@dataclass
class TyphaConfig:
    datastore_type: str = _setting("DatastoreType", "kubernetes", "Only the Kubernetes datastore is supported.",
                                   choices=("kubernetes",))
    log_severity_screen: str = _setting("LogSeverityScreen", "INFO", "Log level on stderr.",
                                        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))

    server_host: str = _setting("ServerHost", "", "Address to listen on for Sync clients (empty: all).")
    server_port: int = _setting("ServerPort", 0, "Port for Sync clients; 0 means 5473, as in Typha.")
    server_ping_interval_secs: float = _setting("ServerPingIntervalSecs", 10.0, "Ping every client this often.")
    server_pong_timeout_secs: float = _setting("ServerPongTimeoutSecs", 60.0,
                                               "Drop a client that has not answered a ping for this long.")
    server_handshake_timeout_secs: float = _setting("ServerHandshakeTimeoutSecs", 10.0,
                                                    "Drop a client that sends no hello for this long.")
    server_max_fall_behind_secs: float = _setting("ServerMaxFallBehindSecs", 300.0,
                                                  "Drop a client whose position is older than this.")
    server_new_client_fall_behind_grace_period: float = _setting(
        "ServerNewClientFallBehindGracePeriod", 300.0,
        "Extra fall-behind allowance right after a client's snapshot.")
    server_write_timeout_secs: float = _setting("ServerWriteTimeoutSecs", 120.0,
                                                "Drop a client when one write blocks this long.")

    max_connections_upper_limit: int = _setting("MaxConnectionsUpperLimit", 10000,
                                                "Refuse connections beyond this many.")
    max_connections_lower_limit: int = _setting("MaxConnectionsLowerLimit", 400,
                                                "Floor of the rebalancing connection limit.")
    connection_rebalancing_mode: str = _setting("ConnectionRebalancingMode", "none",
                                                "kubernetes: derive the limit from Typha endpoints and nodes.",
                                                choices=("none", "kubernetes"))
    connection_drop_interval_secs: float = _setting("ConnectionDropIntervalSecs", 1.0,
                                                    "Move at most one excess connection this often.")
    shutdown_timeout_secs: float = _setting("ShutdownTimeoutSecs", 300.0,
                                            "On SIGTERM, move all clients away within this long.")
    shutdown_connection_drop_interval_max_secs: float = _setting(
        "ShutdownConnectionDropIntervalMaxSecs", 1.0, "Longest pause between two drained connections.")

    health_enabled: bool = _setting("HealthEnabled", False, "Serve /liveness and /readiness.")
    health_host: str = _setting("HealthHost", "localhost", "Address of the health endpoints.")
    health_port: int = _setting("HealthPort", 9098, "Port of the health endpoints.")
    prometheus_metrics_enabled: bool = _setting("PrometheusMetricsEnabled", False, "Serve /metrics.")
    prometheus_metrics_host: str = _setting("PrometheusMetricsHost", "", "Address of /metrics (empty: all).")
    prometheus_metrics_port: int = _setting("PrometheusMetricsPort", 9093, "Port of /metrics.")

    server_key_file: str = _setting("ServerKeyFile", "", "TLS key of the server.")
    server_cert_file: str = _setting("ServerCertFile", "", "TLS certificate of the server.")
    ca_file: str = _setting("CAFile", "", "CA that signs client certificates.")
    client_cn: str = _setting("ClientCN", "", "Required common name of client certificates.")
    client_uri_san: str = _setting("ClientURISAN", "", "Required URI SAN of client certificates.")

    k8s_namespace: str = _setting("K8sNamespace", "kube-system", "Namespace of the Typha service.")
    k8s_service_name: str = _setting("K8sServiceName", "calico-typha", "Name of the Typha service.")
    k8s_port_name: str = _setting("K8sPortName", "calico-typha", "Name of the Typha service's port.")
    k8s_service_poll_interval_secs: float = _setting(
        "K8sServicePollIntervalSecs", 30.0,
        "With ConnectionRebalancingMode=kubernetes, recount Typha endpoints and nodes this often.")

    # Extensions (not Typha parameters).
    kubeconfig: str = _setting("Kubeconfig", "",
                               "kubeconfig to reach the API server; empty: $KUBECONFIG, in-cluster, ~/.kube/config.",
                               extension=True)
    workers: int = _setting("Workers", 0,
                            "Fan-out processes; above 1, one ingest process feeds that many workers sharing the port. "
                            "0: one per CPU this process may use (affinity and cgroup CPU limit). "
                            "With Upstream: one process.",
                            extension=True)
    server_reuse_port: bool = _setting("ServerReusePort", False,
                                       "Share the Sync port with other processes (SO_REUSEPORT), as workers do.",
                                       extension=True)
    upstream: str = _setting("Upstream", "",
                             "Follow this typha (host:port or unix:PATH) instead of the Kubernetes API.",
                             extension=True)
    upstream_ca_file: str = _setting("UpstreamCAFile", "", "CA that signs the upstream typha's certificate.",
                                     extension=True)
    upstream_cert_file: str = _setting("UpstreamCertFile", "", "Our client certificate for the upstream typha.",
                                       extension=True)
    upstream_key_file: str = _setting("UpstreamKeyFile", "", "Key of UpstreamCertFile.", extension=True)
    upstream_cn: str = _setting("UpstreamCN", "", "Required common name of the upstream typha's certificate.",
                                extension=True)
    upstream_uri_san: str = _setting("UpstreamURISAN", "", "Required URI SAN of the upstream typha's certificate.",
                                     extension=True)
    server_max_connections_per_ip: int = _setting(
        "ServerMaxConnectionsPerIP", 0,
        "Refuse Sync streams from one client IP beyond this many (0: no cap). Typha has no such cap.",
        extension=True)
    syncers: str = _setting("Syncers", "felix,bgp", "Comma-separated syncer types to serve.", extension=True)
    checksum_interval_secs: float = _setting("ChecksumIntervalSecs", 30.0,
                                             "Send each client a checksum of its KV set this often.",
                                             extension=True)
    resume_window_secs: float = _setting("ResumeWindowSecs", 300.0,
                                         "Keep breadcrumbs this long for clients that reconnect and resume.",
                                         extension=True)
    resume_window_bytes: int = _setting("ResumeWindowBytes", 256 * 1024 * 1024,
                                        "Bound on the bytes of breadcrumbs kept for resuming.", extension=True)

    @property
    def effective_server_port(self) -> int:
        return self.server_port or 5473

    @property
    def requires_tls(self) -> bool:
        return bool(self.server_key_file or self.server_cert_file or self.ca_file or self.client_cn
                    or self.client_uri_san)

    @property
    def effective_workers(self) -> int:
        return self.workers if self.workers > 0 else usable_cpus()

    def upstream_tls(self) -> ClientTLS:
        """The client side of mTLS towards a network upstream, with the agents' rules (typha.client.tls).
        Never for a Unix socket: that is the ingest process's private one, which stays plaintext, and
        workers inherit every setting of their supervisor."""
        from typha.client.tls import ClientTLS, TLSConfigError

        if self.upstream.startswith("unix:"):
            return ClientTLS()
        tls = ClientTLS(ca_file=self.upstream_ca_file, cert_file=self.upstream_cert_file,
                        key_file=self.upstream_key_file, server_cn=self.upstream_cn,
                        server_uri_san=self.upstream_uri_san)
        try:
            tls.validate()
        except TLSConfigError:
            raise ConfigError(
                "if any upstream TLS parameter is set (UpstreamCAFile, UpstreamCertFile, UpstreamKeyFile, "
                "UpstreamCN, UpstreamURISAN), all must be, except that one of UpstreamCN and UpstreamURISAN "
                "may be left unset") from None
        return tls

    @property
    def syncer_types(self) -> list[str]:
        return [name.strip() for name in self.syncers.split(",") if name.strip()]

    def validate(self) -> None:
        """The settings' own rules (choices, ranges, TLS all-or-nothing); check_files() looks at the disk."""
        for spec in dataclasses.fields(self):
            choices = spec.metadata["choices"]
            value = getattr(self, spec.name)
            if choices and value not in choices:
                raise ConfigError(f"{spec.metadata['typha']}={value!r}: expected one of {', '.join(choices)}")
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            name = spec.metadata["typha"]
            # Typha's ports are int(0,65535); beyond that the kernel would silently bind port % 65536.
            if name.endswith("Port") and not 0 <= value <= MAX_PORT:
                raise ConfigError(f"{name}={value!r}: a port is 1-{MAX_PORT} (0: Typha's default)")
            if isinstance(value, float) and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name}={value!r}: expected a non-negative number of seconds")
        for name, value, floor in (("MaxConnectionsUpperLimit", self.max_connections_upper_limit, 1),
                                   ("MaxConnectionsLowerLimit", self.max_connections_lower_limit, 1),
                                   ("Workers", self.workers, 0), ("ResumeWindowBytes", self.resume_window_bytes, 0)):
            if value < floor:
                raise ConfigError(f"{name}={value!r}: must be at least {floor}")
        from typha.syncproto.names import SYNCER_TYPES

        unknown = sorted(set(self.syncer_types) - set(SYNCER_TYPES))
        if unknown or not self.syncer_types:
            raise ConfigError(f"Syncers={self.syncers!r}: expected a comma-separated list of "
                              f"{', '.join(SYNCER_TYPES)}")
        if self.requires_tls and not (
            self.server_key_file and self.server_cert_file and self.ca_file
            and (self.client_cn or self.client_uri_san)
        ):
            raise ConfigError(
                "if any TLS parameter is set (ServerKeyFile, ServerCertFile, CAFile, ClientCN, ClientURISAN), "
                "all must be, except that one of ClientCN and ClientURISAN may be left unset"
            )
        self.upstream_tls()

    def check_files(self) -> None:
        """Every file setting names a readable file of the right kind (Typha's file(must-exist)), so a typo
        is one line at start rather than a traceback, or a bind failure, later."""
        for name, path, kind in (("ServerCertFile", self.server_cert_file, "certificate"),
                                 ("CAFile", self.ca_file, "certificate"),
                                 ("ServerKeyFile", self.server_key_file, "key"),
                                 ("UpstreamCertFile", self.upstream_cert_file, "certificate"),
                                 ("UpstreamCAFile", self.upstream_ca_file, "certificate"),
                                 ("UpstreamKeyFile", self.upstream_key_file, "key"),
                                 ("Kubeconfig", self.kubeconfig, "kubeconfig")):
            if path:
                check_file(name, path, kind)


def check_file(setting: str, path: str, kind: str) -> None:
    """Raise ConfigError naming `setting` unless `path` is a readable PEM certificate, PEM key or kubeconfig."""
    if kind != "kubeconfig":
        try:
            logs.check_pem(setting, path, kind)
        except logs.SettingError as exc:
            raise ConfigError(str(exc)) from None
        return
    try:
        with open(path, "rb") as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"{setting}={path!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{setting}={path!r}: not YAML: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(document, dict) or not document.get("clusters"):
        raise ConfigError(f"{setting}={path!r}: not a kubeconfig (no clusters in it)")


MAX_PORT = 65535
# Typha parameters this typha does not implement: accepted from Calico's manifests without a warning
# about a typo, but said once to be ignored (typha/pkg/config/config_params.go).
TYPHA_ONLY = ("EtcdAddr", "EtcdScheme", "EtcdKeyFile", "EtcdCertFile", "EtcdCaFile", "EtcdEndpoints",
              "LogFilePath", "LogSeverityFile", "LogSeveritySys", "PrometheusGoMetricsEnabled",
              "PrometheusProcessMetricsEnabled", "PrometheusMetricsCAFile", "PrometheusMetricsCertFile",
              "PrometheusMetricsKeyFile", "PrometheusMetricsClientAuth", "SnapshotCacheMaxBatchSize",
              "ServerMaxMessageSize", "ServerMinBatchingAgeThresholdSecs", "DebugMemoryProfilePath",
              "DebugDisableLogDropping", "DebugHost", "DebugPort", "FIPSModeEnabled")
# Environment variables with the TYPHA_ prefix that are not settings: the workers supervisor's to its children.
INTERNAL_ENV = ("TYPHA_WORKER_LOADS_DIR", "TYPHA_WORKER_INDEX")


def warn_unknown_environment(environ: Mapping[str, str], log: logging.Logger) -> None:
    """Once per start: TYPHA_* names that are no setting (with the closest one), and Typha's own settings
    that this typha ignores."""
    known = [env_name(spec) for spec in dataclasses.fields(TyphaConfig)] + list(INTERNAL_ENV)
    ignored = {"TYPHA_" + name.upper(): name for name in TYPHA_ONLY}
    for name in sorted(set(environ) & set(ignored)):
        if environ[name].strip().lower() not in ("", "none", "false"):
            log.info("Typha setting %s is not implemented here; ignoring %s=%r", ignored[name], name, environ[name])
    logs.warn_unknown_env({k: v for k, v in environ.items() if k not in ignored}, "TYPHA_", known, log)


def kube_client(kubeconfig: str = "") -> KubeClient:
    """The API client from `kubeconfig`, else $KUBECONFIG, else in-cluster, else ~/.kube/config (the order
    `--help` and the README give, and kubectl's); ConfigError naming the setting that could not be used."""
    import kubernetes

    from typha.kube.client import KubeClient

    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    setting = "Kubeconfig" if kubeconfig else "KUBECONFIG" if path else "in-cluster config"
    try:
        return KubeClient.from_environment(path)
    except (kubernetes.config.ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if path is None:
            raise ConfigError(f"{setting}: not in a pod and no kubeconfig ({reason[:200]}); "
                              "set Kubeconfig or $KUBECONFIG") from None
        raise ConfigError(f"{setting}={path!r}: cannot load: {reason[:300]}") from None


def usable_cpus(proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity mask, capped by the CPU quota of its cgroup and every
    ancestor (a container's CPU limit, which os.cpu_count() ignores), rounded up. cgroup v2 `cpu.max`;
    v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` where the host still mounts v1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for quota in _cgroup_quotas(proc_cgroup, cgroup_root):
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(cpus, 1)


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _cgroup_quotas(proc_cgroup: str, cgroup_root: str) -> list[float]:
    """CPU quotas (in CPUs) on the path from this process's cgroup up to the root."""
    quotas: list[float] = []
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0" and controllers == "":  # v2; inside a cgroup namespace the path is "/"
            base, parts = cgroup_root, path.strip("/").split("/") if path.strip("/") else []
            for depth in range(len(parts), -1, -1):
                limit = _read(os.path.join(base, *parts[:depth], "cpu.max"))
                if limit:
                    quota, _, period = limit.partition(" ")
                    with contextlib.suppress(ValueError, ZeroDivisionError):
                        if quota != "max":
                            quotas.append(int(quota) / int(period or "100000"))
        elif "cpu" in controllers.split(","):  # v1
            directory = next((os.path.join(cgroup_root, name) for name in (controllers, "cpu,cpuacct", "cpu")
                              if os.path.isdir(os.path.join(cgroup_root, name))), None)
            if directory is None:
                continue
            for candidate in (os.path.join(directory, path.strip("/")), directory):
                quota_text = _read(os.path.join(candidate, "cpu.cfs_quota_us"))
                period_text = _read(os.path.join(candidate, "cpu.cfs_period_us"))
                with contextlib.suppress(TypeError, ValueError, ZeroDivisionError):
                    if quota_text is not None and int(quota_text) > 0:
                        quotas.append(int(quota_text) / int(period_text or "100000"))
                        break
    return quotas


def env_name(spec: dataclasses.Field[Any]) -> str:
    return "TYPHA_" + spec.metadata["typha"].upper()


def flag_name(spec: dataclasses.Field[Any]) -> str:
    return "--" + spec.name.replace("_", "-")


def _parse(spec: dataclasses.Field[Any], raw: str) -> Any:
    kind: type[Any] = type(spec.default)
    # Typha's oneof() values are case-insensitive and stored in their canonical spelling (Calico's chart
    # sets TYPHA_LOGSEVERITYSCREEN=info); the Go level names WARN and FATAL mean WARNING and CRITICAL.
    canonical = {choice.lower(): choice for choice in spec.metadata["choices"]}
    if spec.name == "log_severity_screen":
        canonical |= {"warn": "WARNING", "fatal": "CRITICAL", "panic": "CRITICAL"}
    if raw.strip().lower() in canonical:
        return canonical[raw.strip().lower()]  # "none" is a real value of ConnectionRebalancingMode
    if raw.strip().lower() == "none":
        return kind()
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("true", "1", "yes", "y", "t"):
                return True
            if lowered in ("false", "0", "no", "n", "f"):
                return False
            raise ValueError("not a boolean")
        return kind(raw.strip()) if kind is not str else raw
    except ValueError as exc:
        raise ConfigError(f"{spec.metadata['typha']}: cannot parse {raw!r} as {kind.__name__}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; unset flags fall back to the environment, then the default."""
    group = parser.add_argument_group("settings (each also read from its TYPHA_* environment variable)")
    for spec in dataclasses.fields(TyphaConfig):
        group.add_argument(flag_name(spec), dest=f"cfg_{spec.name}", default=None, metavar="VALUE",
                           help=f"{spec.metadata['help']} [{env_name(spec)}, default {spec.default!r}]")


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> TyphaConfig:
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(TyphaConfig):
        raw = getattr(args, f"cfg_{spec.name}", None) if args is not None else None
        if raw is None:
            raw = environ.get(env_name(spec)) or None  # Typha ignores empty values
        if raw is not None:
            values[spec.name] = _parse(spec, str(raw))
    config = TyphaConfig(**values)
    config.validate()
    return config


def reference_table() -> str:
    """Markdown table of every setting, for the README (generated so it cannot drift)."""
    rows = ["| Parameter | Environment | Flag | Default | Meaning |", "|---|---|---|---|---|"]
    for spec in dataclasses.fields(TyphaConfig):
        name = spec.metadata["typha"] + (" (extension)" if spec.metadata["extension"] else "")
        rows.append(f"| {name} | `{env_name(spec)}` | `{flag_name(spec)}` | `{spec.default!r}` | "
                    f"{spec.metadata['help']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(reference_table())  # paste between the config-table markers of README.md
