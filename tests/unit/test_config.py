"""typha.config: Typha's names and defaults, precedence, validation, and the README table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from typha import config as typha_config
from typha.config import ConfigError, TyphaConfig, load, reference_table

README = Path(__file__).resolve().parents[2] / "README.md"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    typha_config.add_arguments(parser)
    return parser.parse_args(argv)


def test_typha_defaults_and_env_names():
    config = load(environ={})
    assert config.effective_server_port == 5473
    assert (config.health_port, config.prometheus_metrics_port) == (9098, 9093)
    assert config.max_connections_upper_limit == 10000
    assert config.server_ping_interval_secs == 10
    assert config.server_pong_timeout_secs == 60
    table = reference_table()
    for name in ("TYPHA_SERVERPORT", "TYPHA_HEALTHPORT", "TYPHA_PROMETHEUSMETRICSPORT", "TYPHA_SERVERPINGINTERVALSECS",
                 "TYPHA_MAXCONNECTIONSUPPERLIMIT", "TYPHA_CAFILE", "TYPHA_SERVERCERTFILE", "TYPHA_SERVERKEYFILE",
                 "TYPHA_CLIENTCN", "TYPHA_CLIENTURISAN"):
        assert f"`{name}`" in table


def test_flags_beat_environment_beat_defaults():
    environ = {"TYPHA_SERVERPORT": "6000", "TYPHA_HEALTHENABLED": "true", "TYPHA_PINGIGNORED": "1"}
    assert load(parse(), environ).server_port == 6000
    assert load(parse(), environ).health_enabled is True
    assert load(parse("--server-port", "7000"), environ).server_port == 7000


def test_none_means_zero_value_and_empty_is_ignored():
    config = load(environ={"TYPHA_HEALTHPORT": "none", "TYPHA_SERVERPORT": ""})
    assert config.health_port == 0
    assert config.server_port == 0


def test_bad_values_are_clear_errors():
    with pytest.raises(ConfigError, match="ServerPort: cannot parse 'abc' as int"):
        load(environ={"TYPHA_SERVERPORT": "abc"})
    with pytest.raises(ConfigError, match="ConnectionRebalancingMode='sometimes'"):
        load(environ={"TYPHA_CONNECTIONREBALANCINGMODE": "sometimes"})


def test_tls_settings_are_all_or_nothing_as_in_typha():
    with pytest.raises(ConfigError, match="all must be"):
        load(environ={"TYPHA_CAFILE": "/ca.pem"})
    config = load(environ={"TYPHA_CAFILE": "/ca.pem", "TYPHA_SERVERCERTFILE": "/c.pem",
                           "TYPHA_SERVERKEYFILE": "/k.pem", "TYPHA_CLIENTURISAN": "spiffe://x"})
    assert config.requires_tls


def test_readme_configuration_table_is_generated_from_the_code():
    text = README.read_text()
    start = text.index("<!-- config-table:start -->\n") + len("<!-- config-table:start -->\n")
    end = text.index("<!-- config-table:end -->")
    assert text[start:end].strip() == reference_table(), (
        "README's configuration table is stale: regenerate it with python -m typha.config"
    )


def test_every_setting_has_help():
    import dataclasses

    for spec in dataclasses.fields(TyphaConfig):
        assert spec.metadata["help"], spec.name


def test_none_is_a_value_where_it_is_one_of_the_choices():
    assert load(environ={"TYPHA_CONNECTIONREBALANCINGMODE": "none"}).connection_rebalancing_mode == "none"


def test_workers_default_to_the_usable_cpus():
    assert load(environ={}).effective_workers == typha_config.usable_cpus() >= 1
    assert load(environ={"TYPHA_WORKERS": "3"}).effective_workers == 3
    assert load(parse("--workers", "1"), {}).effective_workers == 1


def test_enum_values_are_case_insensitive_as_in_typha():
    """Calico's chart sets TYPHA_LOGSEVERITYSCREEN=info; Typha's oneof() accepts any case."""
    config = load(environ={"TYPHA_LOGSEVERITYSCREEN": "info", "TYPHA_CONNECTIONREBALANCINGMODE": "Kubernetes",
                           "TYPHA_DATASTORETYPE": "KUBERNETES"})
    assert (config.log_severity_screen, config.connection_rebalancing_mode) == ("INFO", "kubernetes")
    assert config.datastore_type == "kubernetes"
    assert load(environ={"TYPHA_LOGSEVERITYSCREEN": "warn"}).log_severity_screen == "WARNING"


@pytest.mark.parametrize("setting", ["SERVERPORT", "HEALTHPORT", "PROMETHEUSMETRICSPORT"])
@pytest.mark.parametrize("value", ["99999", "65536", "-1"])
def test_ports_out_of_range_are_refused_not_wrapped(setting, value):
    with pytest.raises(ConfigError, match=rf"Port={value}: a port is 1-65535"):
        load(environ={f"TYPHA_{setting}": value})


def test_unknown_syncer_and_negative_durations_are_refused():
    with pytest.raises(ConfigError, match="Syncers='felix,bpg'"):
        load(environ={"TYPHA_SYNCERS": "felix,bpg"})
    with pytest.raises(ConfigError, match=r"ServerPingIntervalSecs=-1\.0"):
        load(environ={"TYPHA_SERVERPINGINTERVALSECS": "-1"})


def test_file_settings_must_name_readable_pem_files(tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    config = load(environ={"TYPHA_CAFILE": str(tmp_path / "missing.pem"), "TYPHA_SERVERCERTFILE": str(garbage),
                           "TYPHA_SERVERKEYFILE": str(garbage), "TYPHA_CLIENTCN": "felix"})
    with pytest.raises(ConfigError, match=r"ServerCertFile='.*garbage.pem': not a PEM certificate"):
        config.check_files()
    config.server_cert_file = ""
    with pytest.raises(ConfigError, match=r"CAFile='.*missing.pem': No such file or directory"):
        config.check_files()
    config.ca_file = ""
    with pytest.raises(ConfigError, match=r"ServerKeyFile='.*garbage.pem': not a PEM key"):
        config.check_files()


def test_kubeconfig_must_be_a_kubeconfig(tmp_path):
    not_yaml = tmp_path / "kubeconfig"
    not_yaml.write_text("{{{")
    with pytest.raises(ConfigError, match=r"Kubeconfig=.*not YAML"):
        load(environ={"TYPHA_KUBECONFIG": str(not_yaml)}).check_files()
    not_yaml.write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(ConfigError, match="no clusters"):
        load(environ={"TYPHA_KUBECONFIG": str(not_yaml)}).check_files()


def test_kubeconfig_env_comes_before_in_cluster(tmp_path, monkeypatch):
    """$KUBECONFIG is used even where in-cluster config would load (README and --help say so)."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(ConfigError, match=r"KUBECONFIG='.*absent': cannot load"):
        typha_config.kube_client("")


def test_unknown_variables_are_warned_once_with_the_closest_name(caplog):
    import logging

    environ = {"TYPHA_SERVERPORTT": "1", "TYPHA_LOGFILEPATH": "/var/log/x", "TYPHA_SERVERPORT": "5473",
               "TYPHA_WORKER_INDEX": "0"}
    with caplog.at_level(logging.INFO):
        typha_config.warn_unknown_environment(environ, logging.getLogger("test"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["Ignoring unknown setting TYPHA_SERVERPORTT; did you mean TYPHA_SERVERPORT?"]
    assert any("LogFilePath is not implemented here" in r.getMessage() for r in caplog.records)


def test_workers_default_follows_the_cgroup_cpu_quota(tmp_path):
    """cgroup v2: the tightest cpu.max on the path from the pod's cgroup to the root, rounded up; v1: cfs quota."""
    import os

    affinity = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    (v2 / "kubepods" / "pod1" / "c1").mkdir(parents=True)
    (v2 / "kubepods" / "pod1" / "cpu.max").write_text("150000 100000\n")  # the pod's limit: 1.5 CPUs
    (v2 / "kubepods" / "pod1" / "c1" / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/c1\n")
    assert typha_config.usable_cpus(str(proc), str(v2)) == min(affinity, 2)
    (v2 / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    assert typha_config.usable_cpus(str(proc), str(v2)) == affinity  # no quota: the affinity mask

    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "pod2").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "pod2" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu,cpuacct" / "pod2" / "cpu.cfs_period_us").write_text("100000\n")
    proc.write_text("4:cpu,cpuacct:/pod2\n0::/\n")
    assert typha_config.usable_cpus(str(proc), str(v1)) == 1
