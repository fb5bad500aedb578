"""`typha autoscale` against the Kubernetes API emulator: replicas follow nodes; the Lease elects one writer.

Lease times are shortened (seconds, not tens of seconds) and every wait is bounded. Expiry itself is
checked deterministically with fake clocks; the threaded tests only check what happens, not how fast.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from typha.kube.client import KubeAPIError, KubeClient
from typha.kube.leases import LEASES, LeaderElector
from typha.kube.objects import KubeObjects
from typha.ops.autoscale import Autoscaler, AutoscaleSettings
from typha.testing import wait

NAMESPACE = "kube-system"
DEPLOYMENT = "calico-typha"
LEASE = "calico-typha-autoscaler"
WAIT = 15.0  # generous bound on any wait: a loaded CI machine is slow, never wrong


wait_until = functools.partial(wait.wait_until, timeout=WAIT)


def node(name: str, *, unschedulable: bool = False, labels: dict[str, str] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}}
    if unschedulable:
        obj["spec"] = {"unschedulable": True}
    return obj


def deployment(replicas: int) -> dict[str, Any]:
    labels = {"k8s-app": "calico-typha"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "calico-typha", "image": "typha"}]}},
        },
    }


def fast_settings(identity: str, **overrides: float) -> AutoscaleSettings:
    values: dict[str, Any] = {"interval": 0.3, "debounce": 0.05, "lease_duration": 2.0,
                              "renew_deadline": 1.5, "retry_period": 0.1}
    values.update(overrides)
    return AutoscaleSettings(namespace=NAMESPACE, deployment=DEPLOYMENT, lease_name=LEASE, identity=identity,
                             **values)


@pytest.fixture
def kube_factory(emulator: Any, tmp_path: Path) -> Iterator[Callable[[], KubeClient]]:
    path = tmp_path / "kubeconfig"
    emulator.write_kubeconfig(path)
    clients: list[KubeClient] = []

    def make() -> KubeClient:
        client = KubeClient.from_kubeconfig(str(path))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def running(kube_factory: Callable[[], KubeClient]) -> Iterator[Callable[..., Autoscaler]]:
    """Starts autoscalers and always stops them, whatever the test did."""
    started: list[Autoscaler] = []

    def start(identity: str, **overrides: float) -> Autoscaler:
        scaler = Autoscaler(kube_factory(), fast_settings(identity, **overrides))
        scaler.start()
        started.append(scaler)
        return scaler

    yield start
    for scaler in started:
        scaler.stop(release=False, timeout=5.0)


def replicas(emulator: Any) -> int:
    return int(emulator.get("apps/v1", "Deployment", DEPLOYMENT, NAMESPACE)["spec"]["replicas"])


def lease_holder(emulator: Any) -> str:
    try:
        return str(emulator.get("coordination.k8s.io/v1", "Lease", LEASE, NAMESPACE)["spec"].get("holderIdentity"))
    except Exception:
        return ""


def test_replicas_follow_schedulable_nodes(emulator: Any, running: Callable[..., Autoscaler]) -> None:
    emulator.create(deployment(5))
    for i in range(2):
        emulator.create(node(f"node-{i}"))
    scaler = running("a")
    wait_until(lambda: replicas(emulator) == 1, "1 replica for 2 nodes")

    for i in range(2, 5):
        emulator.create(node(f"node-{i}"))
    wait_until(lambda: replicas(emulator) == 3, "3 replicas for 5 nodes")

    # 600 schedulable nodes: ⌊600/200⌋+2 = 5.
    for i in range(5, 600):
        emulator.create(node(f"node-{i}"))
    wait_until(lambda: replicas(emulator) == 5, "5 replicas for 600 nodes")

    # Cordoned and virtual-kubelet nodes do not count: 599 schedulable -> 4.
    emulator.patch("v1", "Node", "node-0", {"spec": {"unschedulable": True}})
    emulator.create(node("virtual-node-aci-linux", labels={"type": "virtual-kubelet"}))
    wait_until(lambda: replicas(emulator) == 4, "4 replicas for 599 schedulable nodes")

    # Uncordon: back to 5; then remove nodes down to 3: 2 replicas.
    emulator.patch("v1", "Node", "node-0", {"spec": {"unschedulable": None}})
    wait_until(lambda: replicas(emulator) == 5, "5 replicas after uncordoning")
    for i in range(3, 600):
        emulator.delete("v1", "Node", f"node-{i}")
    wait_until(lambda: replicas(emulator) == 2, "2 replicas for 3 nodes")

    # Someone scales the Deployment by hand: the next periodic pass puts it back.
    emulator.patch("apps/v1", "Deployment", DEPLOYMENT, {"spec": {"replicas": 9}}, NAMESPACE)
    wait_until(lambda: replicas(emulator) == 2, "the periodic pass to undo a manual change")
    # The counter moves after the patch's answer arrives, so it may trail what the API shows.
    wait_until(lambda: scaler.writes >= 7, "the controller to count its 7 writes")
    assert lease_holder(emulator) == "a"


def test_only_the_lease_holder_writes(emulator: Any, running: Callable[..., Autoscaler]) -> None:
    emulator.create(deployment(1))
    # Long lease times: leadership must not move under a loaded machine during this test (a move
    # would be correct behaviour, but the test wants one fixed leader and one fixed follower).
    first = running("a", lease_duration=60.0, renew_deadline=40.0)
    second = running("b", lease_duration=60.0, renew_deadline=40.0)
    wait_until(lambda: first.elector.is_leader() or second.elector.is_leader(), "a leader")
    leader, follower = (first, second) if first.elector.is_leader() else (second, first)
    assert lease_holder(emulator) == leader.identity

    for round_, count in enumerate((5, 450, 3, 1000)):
        existing = {n["metadata"]["name"] for n in emulator.list("v1", "Node")}
        wanted = {f"node-{i}" for i in range(count)}
        for name in sorted(wanted - existing):
            emulator.create(node(name))
        for name in sorted(existing - wanted):
            emulator.delete("v1", "Node", name)
        expected = {5: 3, 450: 4, 3: 2, 1000: 7}[count]
        wait_until(lambda expected=expected: replicas(emulator) == expected, f"round {round_}: {expected} replicas")
        # Both controllers have seen the nodes (their reflectors share nothing); only one acted.
        wait_until(lambda count=count: follower.nodes.count() == count, "the follower to see the nodes")

    wait_until(lambda: leader.writes >= 4, "the leader to count its 4 writes")
    assert follower.writes == 0
    assert not follower.elector.is_leader()
    assert follower.reconcile() is None  # even asked directly, a follower does not write
    assert lease_holder(emulator) == leader.identity


def test_the_other_takes_over_when_the_holder_dies(emulator: Any, running: Callable[..., Autoscaler]) -> None:
    emulator.create(deployment(1))
    for i in range(5):
        emulator.create(node(f"node-{i}"))
    first = running("a", lease_duration=3.0, renew_deadline=2.0)
    wait_until(lambda: replicas(emulator) == 3, "the first controller to scale")
    second = running("b", lease_duration=3.0, renew_deadline=2.0)
    wait_until(lambda: second.nodes.synced, "the second controller's node list")

    first.stop(release=False)  # as if the process died: the Lease stays with "a" until it expires
    # "b" measures expiry from when it saw a's last record, which is after a's last renewal began;
    # both use this process's monotonic clock, so before that bound "b" must not lead. Reading
    # is_leader() before the clock keeps the check exact, however slow the machine.
    earliest_takeover = first.elector.last_renewed + first.elector.lease_duration_seconds
    leading = second.elector.is_leader()
    if time.monotonic() < earliest_takeover:
        assert not leading

    wait_until(lambda: second.elector.is_leader(), "the survivor to take the expired Lease")
    assert lease_holder(emulator) == "b"
    for i in range(5, 400):
        emulator.create(node(f"node-{i}"))
    wait_until(lambda: replicas(emulator) == 4, "the new leader to scale")
    wait_until(lambda: second.writes >= 1, "the new leader to count its write")


def test_a_released_lease_is_taken_over_without_waiting_for_expiry(
    emulator: Any, running: Callable[..., Autoscaler]
) -> None:
    emulator.create(deployment(1))
    # A lease so long that waiting for its expiry would time the test out.
    first = running("a", lease_duration=60.0, renew_deadline=30.0)
    wait_until(lambda: first.elector.is_leader(), "the first leader")
    second = running("b", lease_duration=60.0, renew_deadline=30.0)
    first.stop(release=True)
    wait_until(lambda: second.elector.is_leader(), "the successor after a graceful release")
    assert lease_holder(emulator) == "b"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lease_expiry_and_renew_deadline_with_fake_clocks(kube_factory: Callable[[], KubeClient],
                                                          emulator: Any) -> None:
    objects = KubeObjects(kube_factory())
    clock_a, clock_b = FakeClock(), FakeClock()
    a = LeaderElector(objects, NAMESPACE, LEASE, "a", lease_duration=15, renew_deadline=10, retry_period=2,
                      clock=clock_a)
    b = LeaderElector(objects, NAMESPACE, LEASE, "b", lease_duration=15, renew_deadline=10, retry_period=2,
                      clock=clock_b)
    a.step()
    assert a.is_leader()
    lease = emulator.get("coordination.k8s.io/v1", "Lease", LEASE, NAMESPACE)["spec"]
    assert lease["holderIdentity"] == "a"
    assert lease["leaseDurationSeconds"] == 15
    assert lease["leaseTransitions"] == 0

    b.step()
    assert not b.is_leader()
    clock_b.now += 14.9  # the record has not changed, but it has not been 15 s either
    b.step()
    assert not b.is_leader()

    # "a" renews: "b" sees a new record and starts its 15 s again.
    clock_a.now += 2
    a.step()
    assert a.is_leader()
    clock_b.now += 1
    b.step()
    assert not b.is_leader()
    clock_b.now += 14.9
    b.step()
    assert not b.is_leader()

    # "a" is partitioned (simulated: it stops renewing); its own deadline ends its leadership
    # before "b" can see the Lease as expired (renew_deadline 10 < lease duration 15).
    clock_a.now += 10
    assert not a.is_leader()
    clock_b.now += 0.2
    b.step()
    assert b.is_leader()
    lease = emulator.get("coordination.k8s.io/v1", "Lease", LEASE, NAMESPACE)["spec"]
    assert lease["holderIdentity"] == "b"
    assert lease["leaseTransitions"] == 1

    # "a" comes back: the Lease is "b"'s and fresh from a's point of view, so a stays a follower.
    a.step()
    assert not a.is_leader()
    assert emulator.get("coordination.k8s.io/v1", "Lease", LEASE, NAMESPACE)["spec"]["holderIdentity"] == "b"


def test_conflicting_writes_lose(kube_factory: Callable[[], KubeClient], emulator: Any) -> None:
    """A candidate that judged the Lease expired, but lost a race to a renewal, does not take it."""
    objects = KubeObjects(kube_factory())
    a = LeaderElector(objects, NAMESPACE, LEASE, "a", lease_duration=3, renew_deadline=2, retry_period=1)
    a.step()
    assert a.is_leader()

    class RenewAfterRead(KubeObjects):
        """b's view of the API: "a" renews between b's read and b's write."""

        def get(self, resource: Any, namespace: str | None, name: str) -> dict[str, Any]:
            result = super().get(resource, namespace, name)
            a.step()
            return result

    clock_b = FakeClock()
    b = LeaderElector(RenewAfterRead(kube_factory()), NAMESPACE, LEASE, "b", lease_duration=3,
                      renew_deadline=2, retry_period=1, clock=clock_b)
    assert not b.try_acquire_or_renew()  # first sight of a's record: not expired
    # Tell b nothing changed while its clock ran past the duration (a's renewals went unseen).
    b._observed_spec = objects.get(LEASES, NAMESPACE, LEASE)["spec"]
    clock_b.now += 10
    assert not b.try_acquire_or_renew()  # its update carried a stale resourceVersion: 409
    assert emulator.get("coordination.k8s.io/v1", "Lease", LEASE, NAMESPACE)["spec"]["holderIdentity"] == "a"

    # And the raw API behaves so: a stale resourceVersion is refused.
    stale = objects.get(LEASES, NAMESPACE, LEASE)
    a.step()
    stale["spec"]["holderIdentity"] = "intruder"
    with pytest.raises(KubeAPIError) as info:
        objects.update(LEASES, NAMESPACE, stale)
    assert info.value.status == 409
