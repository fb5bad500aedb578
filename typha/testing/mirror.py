"""A syncer's consumer for tests and benchmarks: applies updates to a dict and records statuses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from typha.model.kv import SyncStatus, Update


class KVMirror:
    """Thread-safe: the syncer calls in from the ingest thread while a test waits on another."""

    def __init__(self) -> None:
        self.kvs: dict[str, Any] = {}
        self.revisions: dict[str, str] = {}
        self.statuses: list[SyncStatus] = []
        self.updates_seen = 0
        self.batches_seen = 0
        self._cond = threading.Condition()

    def on_updates(self, updates: list[Update]) -> None:
        with self._cond:
            for update in updates:
                if update.value is None:
                    self.kvs.pop(update.key, None)
                    self.revisions.pop(update.key, None)
                else:
                    self.kvs[update.key] = update.value
                    self.revisions[update.key] = update.revision
            self.updates_seen += len(updates)
            self.batches_seen += 1
            self._cond.notify_all()

    def on_status(self, status: SyncStatus) -> None:
        with self._cond:
            self.statuses.append(status)
            self._cond.notify_all()

    @property
    def in_sync(self) -> bool:
        return bool(self.statuses) and self.statuses[-1] is SyncStatus.IN_SYNC

    def wait_for(self, predicate: Callable[[KVMirror], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return dict(self.kvs)
