"""The demo's node agents: the real felix-client and confd-client agents, instrumented.

They run as trio tasks in worker processes (`typha.demo.workers`), some nodes' agents per process,
each with its own Sync stream and output directory. The subclasses only observe (receipt latency,
update counts, when each first reached in-sync and first wrote its files); the calculation and
rendering are the agents' own.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from confd_client.agent import ConfdAgent, Settings
from felix_client.agent import Agent, AgentOptions
from typha.client import StatusChange, UpdateBatch
from typha.demo.cluster import WRITTEN_AT_LABEL
from typha.model.kv import SyncStatus


class LatencyLog:
    """(receipt time, latency seconds) of stamped writes, shared by all agents of a process.

    In a worker, `unsent` holds the samples not yet reported to the demo (which adds them to its
    own log with their receipt times: monotonic times are comparable across processes)."""

    def __init__(self, keep_unsent: bool = False) -> None:
        self.samples: list[float] = []
        self.recent: deque[tuple[float, float]] = deque(maxlen=20_000)
        self.unsent: list[tuple[float, float]] | None = [] if keep_unsent else None

    def add(self, latency: float, at: float | None = None) -> None:
        at = time.monotonic() if at is None else at
        self.samples.append(latency)
        self.recent.append((at, latency))
        if self.unsent is not None:
            self.unsent.append((at, latency))

    def take_unsent(self) -> list[tuple[float, float]]:
        unsent, self.unsent = self.unsent or [], [] if self.unsent is not None else None
        return unsent

    def window(self, seconds: float) -> list[float]:
        cutoff = time.monotonic() - seconds
        return [lat for at, lat in self.recent if at >= cutoff]


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class DemoFelixAgent(Agent):
    """felix-client --dry-run, recording latency of stamped pods and skipping applies that change nothing."""

    def __init__(self, node: str, typha: str, out: Path, latency: LatencyLog, debounce: float) -> None:
        # A long resync interval: dry-run files cannot drift, so periodic re-renders would only cost CPU.
        super().__init__(AgentOptions([typha], node, dry_run=out, debounce=debounce, resync_interval=3600.0))
        self.node = node
        self.out = out
        self.latency = latency
        self.started_at = time.monotonic()
        self.in_sync_at: float | None = None
        self.first_apply_at: float | None = None
        self.last_apply_at: float | None = None
        self.skipped_applies = 0
        self.received: dict[str, float] = {}  # WRITTEN_AT stamp -> when this agent received it
        self._stamps: dict[str, str] = {}
        self._calc_update = self.calc.update
        self.calc.update = self._observe  # type: ignore[method-assign]

    def _observe(self, path: str, value: Any) -> None:
        if value is not None and "/workload/" in path:
            stamp = (value.get("labels") or {}).get(WRITTEN_AT_LABEL)
            if stamp and self._stamps.get(path) != stamp:
                self._stamps[path] = stamp
                self.latency.add(max(0.0, (time.time_ns() - int(stamp)) / 1e9))
                self.received[stamp] = time.monotonic()
        elif value is None:
            self._stamps.pop(path, None)
        self._calc_update(path, value)

    def apply(self) -> None:
        if self.in_sync_at is None:
            self.in_sync_at = time.monotonic()
        # An update that changes nothing on this node (a pod elsewhere whose labels no policy here
        # selects) leaves the calculation clean: keep the files as they are.
        if self.stats.applies and not self.calc.dirty.any():
            self.skipped_applies += 1
            self.last_apply_at = time.monotonic()
            return
        super().apply()
        now = time.monotonic()
        if self.first_apply_at is None:
            self.first_apply_at = now
        self.last_apply_at = now

    def settled(self, stamp: str) -> bool:
        """Received the write stamped `stamp`, and applied (or found nothing to change) since."""
        at = self.received.get(stamp)
        return at is not None and self.last_apply_at is not None and self.last_apply_at >= at


class DemoConfdAgent(ConfdAgent):
    """confd-client in daemon mode without BIRD: renders the six files into `out` on every change."""

    def __init__(self, node: str, typha: str, out: Path, debounce: float) -> None:
        super().__init__(Settings(nodename=node, endpoints=[typha], config_dir=out, debounce=debounce))
        self.node = node
        self.out = out
        self.updates = 0
        self.started_at = time.monotonic()
        self.in_sync_at: float | None = None
        self.first_render_at: float | None = None

    def handle(self, event: Any) -> None:
        if isinstance(event, UpdateBatch):
            self.updates += len(event.updates)
        elif (isinstance(event, StatusChange) and event.status is SyncStatus.IN_SYNC
              and self.in_sync_at is None):
            self.in_sync_at = time.monotonic()
        super().handle(event)

    def apply(self, files: Any) -> list[str]:
        changed = super().apply(files)
        if self.first_render_at is None:
            self.first_render_at = time.monotonic()
        return changed
