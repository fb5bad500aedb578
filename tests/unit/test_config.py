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
