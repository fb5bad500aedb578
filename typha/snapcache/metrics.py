"""The snapshot cache's Prometheus metrics under Typha's exact names, types and labels
(typha/pkg/snapcache/cache.go and snap_precalc.go; docs/calico/typha.md §1), and the two metric
types Typha's exposition needs that prometheus_client does not have:

- `PlainCounter`: a counter whose series carries its declared name. prometheus_client appends `_total` to
  every counter it exports, but Typha's Go counters (`typha_updates_skipped`, `typha_breadcrumb_block`, …)
  have no suffix, and dashboards and alerts grep for Typha's names.
- `QuantileSummary`: a summary with quantiles. prometheus_client's Summary exports only `_count` and
  `_sum`; Typha's summaries (libcalico-go's NewSummary) export the 0.5/0.9/0.99 objectives over a sliding
  window (MaxAge 10 min in 5 age buckets unless set otherwise).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Summary, disable_created_metrics, values
from prometheus_client.metrics_core import Metric, SummaryMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

# Typha exports no `*_created` series; neither do we (49 of them made every scrape noisier than Typha's).
disable_created_metrics()

QUANTILES = (0.5, 0.9, 0.99)  # libcalico-go's DefObjectives
DEFAULT_MAX_AGE_SECS = 600.0  # Go's DefMaxAge
DEFAULT_AGE_BUCKETS = 5  # Go's DefAgeBuckets
# Samples kept per age bucket and label set: a uniform reservoir, so memory is bounded whatever the rate,
# and a quantile is exact below this many observations per bucket.
RESERVOIR = 1024


class PlainCounter(Counter):
    """A Counter exported as `name` (Typha's spelling), not `name_total`; multiprocess files too."""

    def _metric_init(self) -> None:
        # Not Counter's: it would create a `<name>_total` value first, which multiprocess mode persists.
        self._value = values.ValueClass(self._type, self._name, self._name, self._labelnames, self._labelvalues,
                                        self._documentation)
        self._created = time.time()

    def _child_samples(self) -> Iterable[Sample]:
        return (Sample("", {}, self._value.get(), None, self._value.get_exemplar()),)


class _Window:
    """Observations of one label set: count and sum since start, and reservoirs per age bucket."""

    def __init__(self, max_age: float, age_buckets: int) -> None:
        self.count = 0
        self.total = 0.0
        self.slice_secs = max_age / age_buckets
        self.age_buckets = age_buckets
        # (bucket start time, observations seen in it, reservoir)
        self.buckets: list[tuple[float, int, list[float]]] = []

    def observe(self, value: float, now: float) -> None:
        self.count += 1
        self.total += value
        if not self.buckets or now - self.buckets[-1][0] >= self.slice_secs:
            self.buckets.append((now, 0, []))
            del self.buckets[:-self.age_buckets]
        start, seen, reservoir = self.buckets[-1]
        seen += 1
        if len(reservoir) < RESERVOIR:
            reservoir.append(value)
        else:
            slot = random.randrange(seen)
            if slot < RESERVOIR:
                reservoir[slot] = value
        self.buckets[-1] = (start, seen, reservoir)

    def quantiles(self, now: float) -> list[tuple[float, float]]:
        horizon = now - self.slice_secs * self.age_buckets
        live = sorted(value for start, _, reservoir in self.buckets if start >= horizon for value in reservoir)
        if not live:
            return [(q, float("nan")) for q in QUANTILES]  # Go's summary reports NaN when its window is empty
        return [(q, live[min(len(live) - 1, int(q * len(live)))]) for q in QUANTILES]


class SummaryChild:
    def __init__(self, parent: QuantileSummary, window: _Window, backing: Summary | None) -> None:
        self._parent = parent
        self._window = window
        self._backing = backing

    def observe(self, value: float) -> None:
        with self._parent._lock:
            self._window.observe(value, self._parent._clock())
        if self._backing is not None:
            self._backing.observe(value)

    def observe_many(self, values: list[float]) -> None:
        """Several observations at one moment, under one lock (the server batches its per-delivery ones)."""
        with self._parent._lock:
            now = self._parent._clock()
            for value in values:
                self._window.observe(value, now)
        if self._backing is not None:
            for value in values:
                self._backing.observe(value)


class QuantileSummary(Collector):
    """A summary with Typha's quantiles, labelled like a prometheus_client metric (`.labels(...)`).

    Quantiles cannot be merged across processes, so with prometheus_client's multiprocess mode (the
    `--workers` supervisor merges its children's metrics from PROMETHEUS_MULTIPROC_DIR) observations go to
    a plain Summary instead, which exports the mergeable `_count` and `_sum`.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 max_age_secs: float = DEFAULT_MAX_AGE_SECS, age_buckets: int = DEFAULT_AGE_BUCKETS,
                 registry: CollectorRegistry | None = REGISTRY) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.max_age_secs = max_age_secs
        self.age_buckets = age_buckets
        self._lock = threading.Lock()
        self._clock = time.monotonic
        self._windows: dict[tuple[str, ...], _Window] = {}
        self._children: dict[tuple[str, ...], SummaryChild] = {}
        self._backing: Summary | None = None
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._backing = Summary(name, documentation, self.labelnames, registry=registry)
        elif registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> SummaryChild:
        key = tuple(str(value) for value in values)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {key}")
        child = self._children.get(key)
        if child is None:
            with self._lock:
                window = self._windows.setdefault(key, _Window(self.max_age_secs, self.age_buckets))
            backing = self._backing.labels(*key) if self._backing is not None and key else self._backing
            child = self._children.setdefault(key, SummaryChild(self, window, backing))
        return child

    def observe(self, value: float) -> None:
        self.labels().observe(value)

    def describe(self) -> Iterator[Metric]:
        yield SummaryMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = SummaryMetricFamily(self.name, self.documentation, labels=self.labelnames)
        now = self._clock()
        with self._lock:
            for key, window in sorted(self._windows.items()):
                labels = dict(zip(self.labelnames, key, strict=True))
                for quantile, value in window.quantiles(now):
                    family.samples.append(Sample(self.name, {**labels, "quantile": str(quantile)}, value, None, None))
                family.samples.append(Sample(self.name + "_sum", labels, window.total, None, None))
                family.samples.append(Sample(self.name + "_count", labels, float(window.count), None, None))
        yield family


_SYNCER = ["syncer"]
# multiprocess_mode matters only under `--workers`, where the supervisor merges its children's values:
# every replica holds the same cache, so the largest is the cache's; connection gauges add up.
_UPDATES = Counter("typha_updates_total", "Total number of updates received from the Syncer.", _SYNCER)
_SKIPPED = PlainCounter("typha_updates_skipped", "Total number of updates skipped as duplicates.", _SYNCER)
_SEQ = Gauge("typha_breadcrumb_seq_number",
             "Current (server-local) sequence number; number of snapshot deltas processed.", _SYNCER,
             multiprocess_mode="max")
_NON_BLOCK = PlainCounter("typha_breadcrumb_non_block",
                          "Count of the number of times Typha got the next Breadcrumb without blocking.", _SYNCER)
_BLOCK = PlainCounter("typha_breadcrumb_block",
                      "Count of the number of times Typha got the next Breadcrumb after blocking.", _SYNCER)
_SIZE = QuantileSummary("typha_breadcrumb_size", "Number of KVs recorded in each breadcrumb.", _SYNCER)
_CACHE_SIZE = Gauge("typha_cache_size",
                    "Current number of key/value pairs contained in the cache of the datastore.", _SYNCER,
                    multiprocess_mode="max")
_GENERATED = PlainCounter("typha_snapshots_generated", "Number of binary snapshots generated.", _SYNCER)
_REUSED = PlainCounter("typha_snapshots_reused", "Number of binary snapshots that were cached and reused.", _SYNCER)
_RAW = Gauge("typha_snapshot_raw_bytes",
             "Size of the most recently generated binary snapshot (before compression).", _SYNCER,
             multiprocess_mode="max")
_COMPRESSED = Gauge("typha_snapshot_compressed_bytes",
                    "Size of the most recently generated binary snapshot (after compression).", _SYNCER,
                    multiprocess_mode="max")


class CacheMetrics:
    """The metric children for one syncer's cache (created with the cache, so every series exists from
    the start, as Typha's PreCreate…PerSyncer does)."""

    def __init__(self, syncer_type: str) -> None:
        self.updates_total = _UPDATES.labels(syncer_type)
        self.updates_skipped = _SKIPPED.labels(syncer_type)
        self.breadcrumb_seq_number = _SEQ.labels(syncer_type)
        self.breadcrumb_non_block = _NON_BLOCK.labels(syncer_type)
        self.breadcrumb_block = _BLOCK.labels(syncer_type)
        self.breadcrumb_size = _SIZE.labels(syncer_type)
        self.cache_size = _CACHE_SIZE.labels(syncer_type)
        self.snapshots_generated = _GENERATED.labels(syncer_type)
        self.snapshots_reused = _REUSED.labels(syncer_type)
        self.snapshot_raw_bytes = _RAW.labels(syncer_type)
        self.snapshot_compressed_bytes = _COMPRESSED.labels(syncer_type)
