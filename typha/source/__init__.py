"""What feeds a syncer's cache: the datastore today, an upstream Typha later (docs/architecture.md §3)."""

from __future__ import annotations

from typing import Protocol

from typha.model.kv import SyncStatus, Update


class SyncCallbacks(Protocol):
    """Receives a source's output. Called from the source's own thread; must not block for long."""

    def on_updates(self, updates: list[Update]) -> None: ...

    def on_status(self, status: SyncStatus) -> None: ...


class Source(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...
