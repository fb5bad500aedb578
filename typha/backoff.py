"""Jittered exponential backoff between attempts: one policy for every retry loop in the project.

The delay after `failures` consecutive failures is initial * multiplier**(failures-1), capped at
`maximum`, minus a random fraction up to `jitter` of it: thousands of agents (or reflectors of many
replicas) that lost the same server must not come back in lock-step (docs/performance.md).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.1
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """How long to wait before the next attempt; 0 when nothing has failed."""
        if failures <= 0:
            return 0.0
        base = min(self.maximum, self.initial * self.multiplier ** min(failures - 1, 64))
        return base * (1.0 - self.jitter * (rng or random).random())

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The delays after the first, second, … consecutive failure (for loops that count by iterating)."""
        failures = 0
        while True:
            failures += 1
            yield self.delay(failures, rng)
