"""The guarantee checker catches each kind of violation in fabricated histories, and passes an honest one."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from typha.model.kv import SyncStatus, Update
from typha.source.datastore import convert_objects
from typha.syncproto.checksum import digest_of
from typha.testing import objects
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.guarantees import ClientRecord, GuaranteeChecker, pack

PODS = "pods"


def pod(i: int, ip_octet: int) -> dict[str, Any]:
    obj = objects.pod("ns-a", f"pod-{i}", node="node-1", ip=f"10.65.0.{ip_octet}")
    obj["metadata"]["resourceVersion"] = str(100 + ip_octet)
    return obj


def kv(obj: dict[str, Any]) -> tuple[str, Any]:
    ((key, value),) = convert_objects("felix", [obj]).items()
    return key, value


def history() -> tuple[GuaranteeChecker, list[dict[str, Any]]]:
    """pod-0 goes through IPs .1, .2, .3 and pod-1 is created then deleted."""
    checker = GuaranteeChecker(("felix",))
    states = [pod(0, 1), pod(0, 2), pod(0, 3)]
    for obj in states:
        checker.record_commit(PODS, obj)
    checker.record_commit(PODS, pod(1, 9))
    checker.record_commit(PODS, pod(1, 9), deleted=True)
    checker.record_server_status("felix", SyncStatus.WAIT_FOR_READY, lists_complete=False, at=0.0)
    checker.record_server_status("felix", SyncStatus.IN_SYNC, lists_complete=True, at=1.0)
    return checker, states


def deliver(record: ClientRecord, *updates: tuple[str, Any], in_sync_at: float = 2.0) -> None:
    record.on_status(SyncStatus.WAIT_FOR_READY)
    for key, value in updates:
        record.on_updates([Update(key, value, "1")])
    record.statuses.append((in_sync_at, SyncStatus.IN_SYNC))


def judge(checker: GuaranteeChecker, final: list[dict[str, Any]]) -> str:
    verdict = checker.verdict(final)
    return "" if verdict.ok else str(verdict)


def test_honest_histories_pass_including_skipped_intermediate_values():
    checker, states = history()
    (k0, v1), (_, v2), (_, v3) = (kv(s) for s in states)
    k1, v9 = kv(pod(1, 9))
    everything = checker.client("all", "felix")
    deliver(everything, (k0, v1), (k0, v2), (k0, v3), (k1, v9), (k1, None))
    late = checker.client("late-joiner", "felix")  # a snapshot after .2, then a delta
    deliver(late, (k0, v2), (k0, v3))
    late.set_final(digest=digest_of([(k0, pack(v3))]), mirror={k0: v3})
    verdict = checker.verdict([states[-1]], server_digests={"felix": digest_of([(k0, pack(v3))])})
    assert verdict.ok, verdict
    assert verdict.clients == 2
    assert verdict.keys == {"felix": 1}


def test_lost_update_is_caught():
    checker, states = history()
    (k0, v1), (_, v2), _ = (kv(s) for s in states)
    deliver(checker.client("stale", "felix"), (k0, v1), (k0, v2))
    report = judge(checker, [states[-1]])
    assert "stale (felix) lost" in report
    assert "ends at" in report


def test_lost_delete_is_caught():
    checker, states = history()
    k0, v3 = kv(states[-1])
    k1, v9 = kv(pod(1, 9))
    deliver(checker.client("kept-deleted", "felix"), (k0, v3), (k1, v9))
    assert "lost delete" in judge(checker, [states[-1]])


def test_duplicated_delivery_is_caught():
    checker, states = history()
    (k0, v1), (_, v2), (_, v3) = (kv(s) for s in states)
    deliver(checker.client("twice", "felix"), (k0, v1), (k0, v2), (k0, v2), (k0, v3))
    report = judge(checker, [states[-1]])
    assert "twice (felix) duplicate" in report
    assert "delivered twice in a row" in report


def test_reordering_is_caught_even_when_the_final_value_is_right():
    checker, states = history()
    (k0, v1), (_, v2), (_, v3) = (kv(s) for s in states)
    deliver(checker.client("swapped", "felix"), (k0, v2), (k0, v1), (k0, v3))
    report = judge(checker, [states[-1]])
    assert "swapped (felix) reordered" in report
    assert "out of commit order" in report
    assert "lost" not in report


def test_a_value_never_committed_is_caught():
    checker, states = history()
    k0, v3 = kv(states[-1])
    _, bogus = kv(pod(0, 77))
    deliver(checker.client("invented", "felix"), (k0, bogus), (k0, v3))
    assert "never committed" in judge(checker, [states[-1]])


def test_in_sync_before_the_server_was_in_sync_is_caught():
    checker, states = history()
    k0, v3 = kv(states[-1])
    deliver(checker.client("eager", "felix"), (k0, v3), in_sync_at=0.5)
    assert "eager (felix) early-in-sync" in judge(checker, [states[-1]])


def test_server_in_sync_before_the_initial_lists_is_caught():
    checker, states = history()
    checker.record_server_status("felix", SyncStatus.IN_SYNC, lists_complete=False, server="hasty", at=3.0)
    k0, v3 = kv(states[-1])
    deliver(checker.client("fine", "felix"), (k0, v3))
    assert "hasty announced felix IN_SYNC before every initial list completed" in judge(checker, [states[-1]])


def test_a_client_never_in_sync_is_caught():
    checker, states = history()
    k0, v3 = kv(states[-1])
    record = checker.client("stuck", "felix")
    record.on_updates([Update(k0, v3, "1")])
    assert "not in sync at the end" in judge(checker, [states[-1]])


def test_checksum_disagreements_are_caught():
    checker, states = history()
    k0, v3 = kv(states[-1])
    record = checker.client("bad-digest", "felix")
    deliver(record, (k0, v3))
    record.set_final(digest=12345, mirror={k0: v3, "/calico/v1/extra": {"x": 1}})
    verdict = checker.verdict([states[-1]], server_digests={"felix": 999})
    report = str(verdict)
    assert not verdict.ok
    assert "server checksum" in report
    assert "client digest 0x3039" in report
    assert "own mirror differs" in report
    assert "extra 1" in report


def test_content_keyed_kinds_accept_any_claimants_value_but_not_an_invented_one():
    checker = GuaranteeChecker(("felix",))
    a = objects.ip_pool("pool-a", "10.65.0.0/16", ipip="Never", nat_outgoing=False)
    b = objects.ip_pool("pool-b", "10.65.0.0/16", ipip="Always", nat_outgoing=True)
    checker.record_commit("ippools.crd.projectcalico.org", a)
    checker.record_commit("ippools.crd.projectcalico.org", b)  # shadowed by pool-a: no output
    checker.record_commit("ippools.crd.projectcalico.org", a, deleted=True)
    checker.record_server_status("felix", SyncStatus.IN_SYNC, lists_complete=True, at=1.0)
    (key, value_b), = convert_objects("felix", [b]).items()
    _, value_a = next(iter(convert_objects("felix", [a]).items()))
    # A re-list may show pool-b's value before pool-a's delete is seen: allowed.
    deliver(checker.client("relisted", "felix"), (key, value_b), (key, value_a), (key, value_b))
    assert checker.verdict([b]).ok
    other = objects.ip_pool("pool-c", "10.65.0.0/16", ipip="CrossSubnet", nat_outgoing=False)
    _, invented = next(iter(convert_objects("felix", [other]).items()))
    deliver(checker.client("invented", "felix"), (key, invented), (key, value_b))
    assert "which no object ever produced" in str(checker.verdict([b]))


def test_records_survive_pickling_for_clients_in_other_processes():
    checker, states = history()
    k0, v3 = kv(states[-1])
    record = ClientRecord("remote", "felix")
    deliver(record, (k0, v3))
    checker.add_client(pickle.loads(pickle.dumps(record)))
    assert checker.verdict([states[-1]]).ok


def test_attached_to_the_emulator_it_records_objects_before_and_commits_after():
    with KubeAPIEmulator().start() as api:
        api.create(objects.pod("ns-a", "pod-0", node="node-1", ip="10.65.0.1"))
        checker = GuaranteeChecker(("felix",)).attach(api)
        first = convert_objects("felix", api.objects())
        api.upsert(objects.pod("ns-a", "pod-0", node="node-1", ip="10.65.0.2"))
        api.delete("v1", "Pod", "pod-0", "ns-a")
        api.create(objects.pod("ns-a", "pod-1", node="node-1", ip="10.65.0.3"))
        final = api.objects()
    checker.record_server_status("felix", SyncStatus.IN_SYNC, lists_complete=True, at=0.0)
    record = checker.client("follower", "felix")
    (k0, v0), = first.items()
    (k1, v1), = convert_objects("felix", final).items()
    deliver(record, (k0, v0), (k0, None), (k1, v1))
    verdict = checker.verdict(final)
    assert verdict.ok, verdict
    assert [c.deleted for c in checker.commits] == [False, False, True, False]


@pytest.mark.parametrize("missing", [True, False])
def test_a_commit_the_checker_missed_is_reported(missing):
    checker, states = history()
    k0, v3 = kv(states[-1])
    deliver(checker.client("c", "felix"), (k0, v3))
    extra = [pod(5, 50)] if missing else []
    report = judge(checker, [states[-1], *extra])
    assert ("the checker missed writes" in report) is missing
