"""`typha autoscale`: keep the Typha Deployment's replicas in step with the number of schedulable nodes.

The ladder is the Tigera operator's (docs/calico/typha.md §1, `pkg/common/autoscale.go`): one Typha per
200 nodes plus one spare, but 1 for up to 2 nodes, 2 for 3-4 nodes and at least 3 beyond, so that a
small cluster always has a node free to reschedule a Typha onto. Like the operator it counts nodes
that accept pods (not `spec.unschedulable`) and skips virtual-kubelet nodes (label
`type=virtual-kubelet`, AKS virtual nodes), which run no Felix and so never connect to Typha.

Nodes come from one reflector (list + watch, resume, re-list on 410). The controller reconciles every
`interval` seconds and soon after node events, debounced so that a burst of joins costs one write.
Several replicas may run: a coordination.k8s.io/v1 Lease elects the one that acts, and it checks its
leadership right before each write.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Any

from typha.config import kube_client
from typha.kube.client import KubeAPIError, KubeClient
from typha.kube.leases import LeaderElector
from typha.kube.objects import KubeObjects
from typha.kube.reflector import Event, EventType, Reflector, object_id
from typha.model.resources import Resource, by_key

log = logging.getLogger(__name__)

DEPLOYMENTS = by_key("deployments.apps")
NODES = by_key("nodes")
NODES_PER_TYPHA = 200
VIRTUAL_KUBELET_LABEL = ("type", "virtual-kubelet")


def replicas_for(nodes: int) -> int:
    """The operator's ladder: ⌊nodes/200⌋ + 2, except 1 for ≤ 2 nodes, 2 for 3-4, and at least 3 after."""
    if nodes <= 2:
        return 1
    if nodes <= 4:
        return 2
    return max(3, nodes // NODES_PER_TYPHA + 2)


def counts_as_schedulable(node: dict[str, Any]) -> bool:
    """Whether the operator would count this node: schedulable, and not a virtual kubelet."""
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    labels = (node.get("metadata") or {}).get("labels") or {}
    key, value = VIRTUAL_KUBELET_LABEL
    return labels.get(key) != value


@dataclass
class AutoscaleSettings:
    namespace: str = "kube-system"
    deployment: str = "calico-typha"
    lease_name: str = "calico-typha-autoscaler"
    identity: str = ""  # empty: the pod name ($POD_NAME) or the hostname
    interval: float = 10.0  # the operator reconciles every 10 s
    debounce: float = 1.0  # after a node event, wait this long for more before acting
    lease_duration: float = 15.0  # client-go's defaults
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def resolved_identity(self) -> str:
        return self.identity or os.environ.get("POD_NAME") or socket.gethostname()


class _NodeCounter:
    """Reflector sink: which nodes count, by name; wakes the controller on every change."""

    def __init__(self, wake: threading.Event) -> None:
        self._lock = threading.Lock()
        self._counted: dict[tuple[str, str], bool] = {}
        self._wake = wake
        self.synced = False

    def on_events(self, resource: Resource, events: list[Event]) -> None:
        changed = False
        with self._lock:
            for event in events:
                oid = object_id(event.obj)
                if event.type is EventType.DELETE:
                    changed |= self._counted.pop(oid, False)
                else:
                    counted = counts_as_schedulable(event.obj)
                    changed |= self._counted.get(oid) != counted
                    self._counted[oid] = counted
        if changed:
            self._wake.set()

    def on_synced(self, resource: Resource) -> None:
        self.synced = True
        self._wake.set()

    def count(self) -> int:
        with self._lock:
            return sum(self._counted.values())


class Autoscaler:
    """The controller. start()/stop() run it on threads; reconcile() is one pass, for tests and logs."""

    def __init__(self, kube: KubeClient, settings: AutoscaleSettings | None = None) -> None:
        self.kube = kube
        self.settings = settings or AutoscaleSettings()
        self.objects = KubeObjects(kube)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.nodes = _NodeCounter(self._wake)
        self.reflector = Reflector(kube, NODES, self.nodes)
        self.elector = LeaderElector(
            self.objects,
            self.settings.namespace,
            self.settings.lease_name,
            self.settings.resolved_identity(),
            lease_duration=self.settings.lease_duration,
            renew_deadline=self.settings.renew_deadline,
            retry_period=self.settings.retry_period,
            on_started_leading=self._wake.set,  # a new leader reconciles at once
        )
        self._thread: threading.Thread | None = None
        self.writes = 0  # patches this controller made (tests check that only the leader writes)
        self.last_desired: int | None = None

    @property
    def identity(self) -> str:
        return self.elector.identity

    def start(self) -> None:
        self.reflector.start()
        self.elector.start()
        self._thread = threading.Thread(target=self._run, name="autoscaler", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True, timeout: float = 5.0) -> None:
        """Stop; `release=False` leaves the Lease to expire, as if the process had died."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.elector.stop(release=release, timeout=timeout)
        self.reflector.stop(timeout)

    def _run(self) -> None:
        settings = self.settings
        while not self._stop.is_set():
            if self._wake.wait(settings.interval) and settings.debounce > 0:
                self._stop.wait(settings.debounce)  # let a burst of node events settle
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.reconcile()
            except Exception as exc:  # the next tick retries; the controller must outlive API errors
                log.warning("Autoscale pass failed: %s: %s", type(exc).__name__, exc)

    def reconcile(self) -> int | None:
        """Set the Deployment's replicas if we lead and know every node; returns what was written."""
        if not self.nodes.synced or not self.elector.is_leader():
            return None
        nodes = self.nodes.count()
        desired = replicas_for(nodes)
        self.last_desired = desired
        name, namespace = self.settings.deployment, self.settings.namespace
        try:
            deployment = self.objects.get(DEPLOYMENTS, namespace, name)
        except KubeAPIError as exc:
            if exc.status == 404:
                log.warning("Deployment %s/%s not found; nothing to scale", namespace, name)
                return None
            raise
        current = (deployment.get("spec") or {}).get("replicas")
        if current == desired:
            return None
        if not self.elector.is_leader():  # leadership may have lapsed during the read
            return None
        # The resourceVersion makes the patch conditional: a write based on a stale read gets 409
        # and is retried on the next pass instead of undoing someone else's change blindly.
        rv = (deployment.get("metadata") or {}).get("resourceVersion")
        patch: dict[str, Any] = {"spec": {"replicas": desired}}
        if rv:
            patch["metadata"] = {"resourceVersion": rv}
        self.objects.merge_patch(DEPLOYMENTS, namespace, name, patch)
        self.writes += 1
        log.info("Scaled %s/%s from %s to %d replicas for %d schedulable nodes",
                 namespace, name, current, desired, nodes)
        return desired


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = AutoscaleSettings()
    env = os.environ.get
    parser.add_argument("--namespace", default=env("TYPHA_K8SNAMESPACE") or defaults.namespace,
                        help="namespace of the Deployment and the Lease [TYPHA_K8SNAMESPACE]")
    parser.add_argument("--deployment", default=defaults.deployment, help="the Typha Deployment to scale")
    parser.add_argument("--lease-name", default=defaults.lease_name, help="the Lease that elects the active replica")
    parser.add_argument("--identity", default="", help="holderIdentity; default $POD_NAME or the hostname")
    parser.add_argument("--interval", type=float, default=defaults.interval, help="seconds between passes")
    parser.add_argument("--debounce", type=float, default=defaults.debounce,
                        help="seconds to wait after a node event before acting")
    parser.add_argument("--lease-duration", type=float, default=defaults.lease_duration)
    parser.add_argument("--renew-deadline", type=float, default=defaults.renew_deadline)
    parser.add_argument("--retry-period", type=float, default=defaults.retry_period)
    parser.add_argument("--kubeconfig", default=env("TYPHA_KUBECONFIG") or "",
                        help="kubeconfig; empty: $KUBECONFIG, then in-cluster, then ~/.kube/config")


def run(args: argparse.Namespace) -> int:
    settings = AutoscaleSettings(
        namespace=args.namespace, deployment=args.deployment, lease_name=args.lease_name, identity=args.identity,
        interval=args.interval, debounce=args.debounce, lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline, retry_period=args.retry_period,
    )
    kube = kube_client(args.kubeconfig)
    autoscaler = Autoscaler(kube, settings)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    autoscaler.start()
    log.info("Autoscaling %s/%s as %s", settings.namespace, settings.deployment, autoscaler.identity)
    while not stopping.wait(1.0):
        pass
    autoscaler.stop(release=True)  # hand the Lease over now rather than after it expires
    kube.close()
    return 0
