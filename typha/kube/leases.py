"""Lease-based leader election (coordination.k8s.io/v1), over `typha.kube.objects`.

`LeaderElector` follows client-go's leaderelection package with a coordination.k8s.io/v1 Lease:
- a candidate tries to acquire or renew every `retry_period`;
- a Lease held by someone else counts as expired only when its record has not changed for
  `leaseDurationSeconds` *as measured on our own monotonic clock* (client-go's observedTime), so no
  two clocks are ever compared;
- the holder stops leading once it has failed to renew for `renew_deadline` (< lease duration), so
  it has stepped down before any other candidate can consider the Lease expired;
- every write carries the resourceVersion it read, so two candidates racing for an expired Lease
  cannot both win: the loser gets 409 Conflict;
- `release()` empties holderIdentity on a graceful stop so that a successor need not wait.
"""

from __future__ import annotations

import datetime
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from typha.kube.client import KubeAPIError
from typha.kube.objects import KubeObjects
from typha.model.resources import by_key

log = logging.getLogger(__name__)

LEASES = by_key("leases.coordination.k8s.io")
def micro_time(now: datetime.datetime | None = None) -> str:
    """Kubernetes MicroTime: RFC 3339 with microseconds, UTC."""
    now = now or datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for one Lease on a thread; `is_leader()` says whether this process may act now."""

    def __init__(
        self,
        objects: KubeObjects,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # client-go's own validation: without these margins two holders could overlap.
        if not lease_duration > renew_deadline > retry_period > 0:
            raise ValueError("need lease_duration > renew_deadline > retry_period > 0")
        self.objects = objects
        self.namespace = namespace
        self.name = name
        self.identity = identity
        # The Lease field is whole seconds; round up so that a short test lease never becomes 0.
        self.lease_duration_seconds = max(1, math.ceil(lease_duration))
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self._clock = clock
        self._lock = threading.Lock()
        self._leading = False
        self._renewed_at = float("-inf")  # clock() at the start of the last successful acquire/renew
        self._observed_spec: dict[str, Any] | None = None
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.transitions = 0  # times this elector became leader (tests, logs)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True, timeout: float = 5.0) -> None:
        """End the campaign; `release=False` leaves the Lease to expire, as a crash would."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        was_leading = self._set_leading(False)
        if release and was_leading:
            self.release()

    def run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.retry_period)

    def step(self) -> None:
        """One acquire-or-renew attempt and the leadership change it implies."""
        started = self._clock()
        try:
            ok = self.try_acquire_or_renew()
        except (KubeAPIError, OSError, ValueError) as exc:
            log.warning("Lease %s/%s: %s", self.namespace, self.name, exc)
            ok = False
        except Exception as exc:  # urllib3 errors and the like: never let the campaign thread die
            log.warning("Lease %s/%s: %s: %s", self.namespace, self.name, type(exc).__name__, exc)
            ok = False
        if ok:
            with self._lock:
                self._renewed_at = started
            self._set_leading(True)
        elif self._clock() - self._renewed_at >= self.renew_deadline:
            self._set_leading(False)

    def _set_leading(self, leading: bool) -> bool:
        """Sets the state, runs the callback on a change; returns the previous state."""
        with self._lock:
            previous, self._leading = self._leading, leading
        if leading and not previous:
            self.transitions += 1
            log.info("Lease %s/%s: %s is now the leader", self.namespace, self.name, self.identity)
            if self.on_started_leading:
                self.on_started_leading()
        elif previous and not leading:
            log.info("Lease %s/%s: %s stopped leading", self.namespace, self.name, self.identity)
            if self.on_stopped_leading:
                self.on_stopped_leading()
        return previous

    @property
    def last_renewed(self) -> float:
        """clock() at the start of the last successful acquire or renew (-inf if none).

        No other candidate can take the Lease before `last_renewed + lease_duration_seconds` on the
        same clock: it measures expiry from when it saw the record change, which is later.
        """
        with self._lock:
            return self._renewed_at

    def is_leader(self) -> bool:
        """True while we hold the Lease and renewed it within the renew deadline.

        Checked right before every write, so a holder that is cut off from the API server stops
        acting after `renew_deadline` even if its campaign thread has not noticed yet.
        """
        with self._lock:
            return self._leading and self._clock() - self._renewed_at < self.renew_deadline

    # -- the Lease record --------------------------------------------------------------------------

    def _spec(self, acquire_time: str, transitions: int, now: str) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "acquireTime": acquire_time,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def try_acquire_or_renew(self) -> bool:
        now = micro_time()
        try:
            lease = self.objects.get(LEASES, self.namespace, self.name)
        except KubeAPIError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, 0, now),
            }
            try:
                created = self.objects.create(LEASES, self.namespace, body)
            except KubeAPIError as create_exc:
                if create_exc.status == 409:  # another candidate created it first
                    return False
                raise
            self._observe(created.get("spec") or {})
            return True

        spec = lease.get("spec") or {}
        self._observe(spec)
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_seconds)
            if self._clock() < self._observed_at + duration:
                return False  # held by someone else and not expired
        if holder == self.identity:
            new_spec = self._spec(spec.get("acquireTime") or now, int(spec.get("leaseTransitions") or 0), now)
        else:
            new_spec = self._spec(now, int(spec.get("leaseTransitions") or 0) + 1, now)
        # resourceVersion is kept from the read: the update fails with 409 if anyone wrote since.
        lease["spec"] = new_spec
        try:
            updated = self.objects.update(LEASES, self.namespace, lease)
        except KubeAPIError as exc:
            if exc.status == 409:
                return False
            raise
        self._observe(updated.get("spec") or {})
        return True

    def _observe(self, spec: dict[str, Any]) -> None:
        # client-go's observedTime: the local time at which the record last changed.
        if spec != self._observed_spec:
            self._observed_spec = spec
            self._observed_at = self._clock()

    def release(self) -> bool:
        """Give the Lease up (holderIdentity emptied) so a successor takes over at its next retry."""
        try:
            lease = self.objects.get(LEASES, self.namespace, self.name)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return False
            now = micro_time()
            lease["spec"] = {
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": int(spec.get("leaseTransitions") or 0),
            }
            self.objects.update(LEASES, self.namespace, lease)
            return True
        except Exception as exc:  # best effort: the Lease expires anyway
            log.warning("Lease %s/%s: release failed: %s", self.namespace, self.name, exc)
            return False
