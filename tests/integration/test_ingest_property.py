"""Property: whatever the writes and faults, each syncer ends up holding exactly the conversion of
the API's final object set (docs/architecture.md §5.1 at the ingest boundary)."""

from __future__ import annotations

import contextlib
import difflib
import functools
import pprint
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from typha.backoff import Backoff
from typha.kube.client import KubeClient
from typha.source.datastore import Datastore, Syncer, convert_objects
from typha.testing.mirror import KVMirror

from .churn import NAMESPACES, NODES, apply

label_values = st.sampled_from(["web", "db", "yes", "x.y-z"])
labels = st.dictionaries(st.sampled_from(["app", "tier", "team"]), label_values, max_size=3)
# Keys a valid selector cannot express: a conversion must reject them, not crash.
selector_labels = st.one_of(labels, st.just({"bad key!": "x"}))

pod_op = st.tuples(
    st.just("pod"), st.sampled_from(NAMESPACES), st.integers(0, 4), st.sampled_from(NODES),
    st.one_of(st.none(), st.integers(2, 250)), labels,
)
pod_delete = st.tuples(st.just("pod-delete"), st.sampled_from(NAMESPACES), st.integers(0, 4))
namespace_op = st.tuples(st.just("namespace"), st.sampled_from(NAMESPACES), labels)
namespace_delete = st.tuples(st.just("namespace-delete"), st.sampled_from(NAMESPACES))
node_op = st.tuples(st.just("node"), st.sampled_from(NODES), st.integers(1, 250), st.booleans(), labels)
node_delete = st.tuples(st.just("node-delete"), st.sampled_from(NODES))
policy_op = st.tuples(
    st.just("policy"), st.sampled_from(NAMESPACES), st.integers(0, 2), selector_labels, labels,
    st.one_of(st.none(), st.integers(1, 65535)),
)
policy_delete = st.tuples(st.just("policy-delete"), st.sampled_from(NAMESPACES), st.integers(0, 2))
pool_op = st.tuples(
    st.just("pool"), st.integers(0, 2),
    st.sampled_from(["10.65.0.0/16", "10.66.0.0/16", "10.67.0.0/33", "not-a-cidr"]),
    st.sampled_from(["Never", "Always"]), st.booleans(),
)
pool_delete = st.tuples(st.just("pool-delete"), st.integers(0, 2))
affinity_op = st.tuples(st.just("affinity"), st.sampled_from(NODES), st.integers(0, 3))
affinity_delete = st.tuples(st.just("affinity-delete"), st.sampled_from(NODES), st.integers(0, 3))
fault = st.tuples(st.just("fault"), st.sampled_from(["close_watches", "compact", "expire_watches", "fail"]))

operation = st.one_of(
    pod_op, pod_op, pod_delete, namespace_op, namespace_delete, node_op, node_delete,
    policy_op, policy_delete, pool_op, pool_delete, affinity_op, affinity_delete, fault,
)


def describe_difference(got: dict[str, Any], want: dict[str, Any]) -> str:
    return "\n".join(difflib.unified_diff(
        pprint.pformat(want, width=120).splitlines(), pprint.pformat(got, width=120).splitlines(),
        "expected (conversion of final API objects)", "syncer", lineterm="",
    ))



def _holds(want: dict[str, Any], mirror: KVMirror) -> bool:
    return mirror.kvs == want

@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(before=st.lists(operation, max_size=15), after=st.lists(operation, max_size=25))
def test_syncers_converge_on_the_conversion_of_the_final_objects(tmp_path, before, after):
    from typha.testing.apiserver.server import KubeAPIEmulator

    with contextlib.ExitStack() as stack:
        emulator = stack.enter_context(KubeAPIEmulator(bookmark_interval=0.1).start())
        for op in before:
            apply(emulator, op)
        kubeconfig = tmp_path / "kubeconfig"
        emulator.write_kubeconfig(kubeconfig)
        client = KubeClient.from_kubeconfig(str(kubeconfig))
        stack.callback(client.close)
        mirrors = {"felix": KVMirror(), "bgp": KVMirror()}
        datastore = Datastore(client, [Syncer(kind, mirror) for kind, mirror in mirrors.items()],
                              backoff=Backoff(initial=0.02, maximum=0.2))
        datastore.start()
        stack.callback(datastore.stop)
        for mirror in mirrors.values():
            assert mirror.wait_for(lambda m: m.in_sync, timeout=15), "initial list never completed"
        for op in after:
            apply(emulator, op)

        final_objects = emulator.objects()
        for syncer_type, mirror in mirrors.items():
            want = convert_objects(syncer_type, final_objects)
            converged = mirror.wait_for(functools.partial(_holds, want), timeout=15)
            difference = "" if converged else describe_difference(mirror.snapshot(), want)
            assert converged, f"{syncer_type} syncer diverged:\n{difference}"
        assert datastore.error is None
