"""The unit that flows from the datastore to every client: one key, its value (or none), its revision."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class SyncStatus(enum.Enum):
    """Calico's syncer states, in the order a healthy syncer passes through them."""

    WAIT_FOR_READY = "wait-for-ready"
    RESYNC = "resync"
    IN_SYNC = "in-sync"


@dataclass(frozen=True, slots=True)
class Update:
    """A change to one Calico model key; `value is None` means the key was deleted.

    `revision` is the Kubernetes resourceVersion of the object that produced the change.
    """

    key: str
    value: Any
    revision: str

    @property
    def is_delete(self) -> bool:
        return self.value is None
