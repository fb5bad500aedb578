"""The reflectors' Prometheus metrics (Typha has no per-resource datastore metrics: our own typha_datastore_ prefix)."""

from __future__ import annotations

from prometheus_client import Counter

DATASTORE_EVENTS = Counter(
    "typha_datastore_events", "Objects received from the Kubernetes API (list items and watch events).",
    ["resource"],
)
DATASTORE_LISTS = Counter(
    "typha_datastore_lists", "Full lists of a resource (initial list and re-lists after 410 Gone).",
    ["resource"],
)
DATASTORE_ERRORS = Counter(
    "typha_datastore_errors", "Failed list or watch requests, each followed by a backoff.", ["resource"],
)
