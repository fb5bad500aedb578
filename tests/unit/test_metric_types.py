"""typha.snapcache.metrics' PlainCounter and QuantileSummary, rendered by typha.daemon.metrics_http."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from typha.daemon.metrics_http import render
from typha.snapcache.metrics import PlainCounter, QuantileSummary


def test_plain_counter_keeps_typhas_name():
    registry = CollectorRegistry()
    counter = PlainCounter("typha_example_block", "Blocks.", ["syncer"], registry=registry)
    counter.labels("felix").inc(3)
    text = render(registry).decode()
    assert "# TYPE typha_example_block counter\n" in text
    assert 'typha_example_block{syncer="felix"} 3\n' in text
    assert "_total" not in text and "_created" not in text
    assert registry.get_sample_value("typha_example_block", {"syncer": "felix"}) == 3


def test_summary_exports_typhas_quantiles_over_its_window():
    registry = CollectorRegistry()
    summary = QuantileSummary("typha_example_secs", "Seconds.", ["syncer"], max_age_secs=60, age_buckets=2,
                              registry=registry)
    now = [0.0]
    summary._clock = lambda: now[0]
    child = summary.labels("felix")
    for value in range(1, 101):
        child.observe(float(value))
    text = render(registry).decode()
    assert "# TYPE typha_example_secs summary\n" in text
    assert 'typha_example_secs{quantile="0.5",syncer="felix"} 51\n' in text
    assert 'typha_example_secs{quantile="0.9",syncer="felix"} 91\n' in text
    assert 'typha_example_secs{quantile="0.99",syncer="felix"} 100\n' in text
    assert 'typha_example_secs_count{syncer="felix"} 100\n' in text
    assert 'typha_example_secs_sum{syncer="felix"} 5050\n' in text
    # After the window has passed, old observations no longer shape the quantiles (count and sum stay).
    now[0] = 61.0
    child.observe(7.0)
    text = render(registry).decode()
    assert 'typha_example_secs{quantile="0.99",syncer="felix"} 7\n' in text
    assert 'typha_example_secs_count{syncer="felix"} 101\n' in text


def test_summary_memory_is_bounded():
    registry = CollectorRegistry()
    summary = QuantileSummary("typha_bounded", "x", registry=registry)
    for value in range(100_000):
        summary.observe(float(value))
    window = summary._windows[()]
    assert sum(len(reservoir) for _, _, reservoir in window.buckets) <= 1024 * window.age_buckets
    assert window.count == 100_000
