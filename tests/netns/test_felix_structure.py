"""Structure of what felix-client programs, read back from the kernel of a node namespace
(issue #5 "Structural tests"; docs/calico/felix.md §2 and §4.6).

The cluster is the worked example of docs/calico/felix.md §2.4 (demo/frontend and demo/backend on node-1,
demo/other on node-2, the K8s policy demo/allow-frontend) plus an egress-only policy. From
`iptables-save` and `ipset save` of each node it checks: every cali- chain is reachable from a
kernel hook, no jump dangles, chain and set names follow Felix's rules (computed here from the
reference's formulas, not from felix_client), every referenced set exists and every set is
referenced; deleting all policies removes their chains and sets; restarting the agent leaves the
normalized kernel state unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from felix_harness import FelixCluster, Node, Pod, running_cluster

from felix_client.names import MASQ_SET, POOLS_SET
from typha.model import selector
from typha.testing import objects
from typha.testing.wait import wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not all(shutil.which(b) for b in ("ip", "iptables-save", "iptables-restore", "ipset")),
                       reason="needs iproute2, iptables and ipset"),
]

POOL = "10.65.0.0/16"
BLOCKS = {"10.65.0.0/26": "node-1", "10.65.1.0/26": "node-2"}
PODS = [
    Pod("demo", "frontend", "node-1", "10.65.0.2", {"app": "frontend"}),
    Pod("demo", "backend", "node-1", "10.65.0.3", {"app": "backend"}),
    Pod("demo", "other", "node-2", "10.65.1.2", {"app": "other"}),
]
TABLES = ("raw", "nat", "filter")
# Chains Felix programs whatever the endpoints and policies (felix/rules/static.go, nat.go).
STATIC_CHAINS = {
    "cali-INPUT", "cali-FORWARD", "cali-OUTPUT", "cali-PREROUTING", "cali-POSTROUTING",
    "cali-from-wl-dispatch", "cali-to-wl-dispatch", "cali-wl-to-host", "cali-from-hep-forward",
    "cali-to-hep-forward", "cali-cidr-block", "cali-from-host-endpoint", "cali-to-host-endpoint",
    "cali-nat-outgoing", "cali-fip-dnat", "cali-fip-snat", "cali-rpf-skip",
}
TARGET_EXTENSIONS = {"ACCEPT", "DROP", "RETURN", "REJECT", "MARK", "MASQUERADE", "LOG", "NFLOG", "SNAT", "DNAT"}
MAX_CHAIN = 28  # Felix's chain-name limit (docs/calico/felix.md §2.1)


def felix_id(prefix: str, ident: str) -> str:
    """GetLengthLimitedID (docs/calico/felix.md §2.1)."""
    if len(prefix) + len(ident) <= MAX_CHAIN:
        return prefix + ident
    digest = base64.urlsafe_b64encode(hashlib.sha256(ident.encode()).digest()).decode().rstrip("=")
    return prefix + "_" + digest[: MAX_CHAIN - len(prefix) - 1]


def test_felix_id_matches_the_references_vectors() -> None:
    assert felix_id("cali-pi-", "knp/demo/allow-frontend") == "cali-pi-_wy0fJonwc5GCXzWY0p9"
    assert felix_id("cali-po-", "knp/demo/e") == "cali-po-knp/demo/e"


ALLOW_FRONTEND = objects.network_policy("demo", "allow-frontend", pod_selector={"app": "backend"},
                                        from_labels={"app": "frontend"}, port=8080)
EGRESS_ONLY = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "dns-only", "namespace": "demo"},
    "spec": {"podSelector": {"matchLabels": {"app": "frontend"}}, "policyTypes": ["Egress"],
             "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "UDP", "port": 53}]}]},
}
# What node-1 must hold for them (docs/calico/felix.md §2.4 gives the first pair verbatim).
WANT_POLICY_CHAINS = {"cali-pi-_wy0fJonwc5GCXzWY0p9", felix_id("cali-po-", "knp/demo/dns-only")}
FRONTEND_SET = "cali40s:WW1cS4JdpQmN8rHkfbF1kmF"
ALL_NS_SET = ("cali40" + selector.parse(
    "(has(projectcalico.org/namespace)) && (projectcalico.org/orchestrator == 'k8s')").unique_id)[:31]


@pytest.fixture
def cluster(netns: Any, tmp_path: Path) -> Iterator[FelixCluster]:
    pods = [Pod(p.ns, p.name, p.node, p.ip, dict(p.labels)) for p in PODS]
    with running_cluster(netns, tmp_path, [Node("node-1", 1), Node("node-2", 2)], pods,
                     [objects.ip_pool("pool", POOL)], BLOCKS) as c:
        yield c


# --- reading the kernel back ---------------------------------------------------------------------

Tables = dict[str, dict[str, list[str]]]  # table -> chain -> rules (in order), builtins included


def read_iptables(c: FelixCluster, node: str) -> tuple[Tables, dict[str, set[str]]]:
    """Rules per chain, and the built-in chains per table (they have a policy, not "-")."""
    tables: Tables = {}
    builtins: dict[str, set[str]] = {}
    for table in TABLES:
        chains: dict[str, list[str]] = {}
        builtins[table] = set()
        for line in c.run(node, "iptables-save", "-t", table).splitlines():
            if line.startswith(":"):
                name, policy = line[1:].split()[:2]
                chains.setdefault(name, [])
                if policy != "-":
                    builtins[table].add(name)
            elif line.startswith("-A "):
                _, chain, rest = line.split(" ", 2)
                chains[chain].append(rest)
        tables[table] = chains
    return tables, builtins


def jump_targets(rule: str) -> list[str]:
    return re.findall(r"(?:^| )-[jg] (\S+)", rule)


def read_ipsets(c: FelixCluster, node: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Our sets: name -> (type and options minus kernel-chosen ones, members)."""
    sets: dict[str, tuple[str, set[str]]] = {}
    for line in c.run(node, "ipset", "save").splitlines():
        words = line.split()
        if words[0] == "create" and words[1].startswith("cali"):
            # bucketsize and initval are chosen by the kernel (initval randomly) at create time.
            options = re.sub(r" (bucketsize \d+|initval 0x[0-9a-f]+)", "", " ".join(words[2:]))
            sets[words[1]] = (options, set())
        elif words[0] == "add" and words[1] in sets:
            sets[words[1]][1].add(" ".join(words[2:]))
    return {name: (options, frozenset(members)) for name, (options, members) in sets.items()}


def kernel_state(c: FelixCluster, node: str) -> dict[str, Any]:
    """Everything the agent owns in `node`, normalized: no counters, no kernel-chosen set options,
    set members unordered (their order is the hash's), routes and neighbours sorted."""
    tables, _ = read_iptables(c, node)
    return {
        "iptables": tables,
        "ipsets": read_ipsets(c, node),
        "routes": sorted(c.run(node, "ip", "-4", "route", "show").splitlines()),
        "sysctls": {p: c.run(node, "cat", f"/proc/sys/net/ipv4/{p}").strip()
                    for p in ["ip_forward", *(f"conf/{pod.iface}/proxy_arp" for pod in c.pods.values()
                                              if pod.node == node)]},
    }


# --- the checks ------------------------------------------------------------------------------------


def check_structure(c: FelixCluster, node: str) -> tuple[set[str], set[str]]:
    """The invariants that hold in every state; returns (all cali- chains, all cali sets)."""
    tables, builtins = read_iptables(c, node)
    local_ifaces = {p.iface for p in c.pods.values() if p.node == node}
    all_chains: set[str] = set()
    referenced_sets: set[str] = set()
    for table, chains in tables.items():
        ours = {name for name in chains if name.startswith("cali-")}
        all_chains |= ours
        # No dangling jumps: a target is a chain of this table or a target extension.
        for chain, rules in chains.items():
            for rule in rules:
                for target in jump_targets(rule):
                    assert target in chains or target in TARGET_EXTENSIONS, f"{table} {chain}: dangling {rule}"
                referenced_sets |= set(re.findall(r"--match-set (\S+)", rule))
        # Every cali- chain is reachable from a kernel hook.
        seen: set[str] = set()
        todo = deque(builtins[table])
        while todo:
            chain = todo.popleft()
            if chain in seen:
                continue
            seen.add(chain)
            todo.extend(t for rule in chains.get(chain, ()) for t in jump_targets(rule) if t in chains)
        assert ours <= seen, f"{table}: unreachable chains {sorted(ours - seen)}"
        # Hooks: one tagged jump per kernel chain into its cali- chain.
        for hook in builtins[table]:
            jumps = [r for r in chains[hook] if any(t.startswith("cali-") for t in jump_targets(r))]
            assert len(jumps) <= 1, f"{table} {hook}: {jumps}"
            if jumps:
                assert jump_targets(jumps[0]) == [f"cali-{hook}"]
    filt = tables["filter"]
    # Names (docs/calico/felix.md §2.1): static, per local endpoint, per policy/profile, each within 28 chars.
    for name in all_chains:
        assert len(name) <= MAX_CHAIN, name
        m = re.fullmatch(r"cali-([tf]w)-(.+)", name)
        if m:
            assert m.group(2) in local_ifaces, name
        elif not name.startswith(("cali-pi-", "cali-po-", "cali-pri-", "cali-pro-")):
            assert name in STATIC_CHAINS, f"unexpected chain {name}"
    for iface in local_ifaces:
        assert re.fullmatch(r"cali[0-9a-f]{11}", iface)
        assert f"-i {iface} -g cali-fw-{iface}" in filt["cali-from-wl-dispatch"]
        assert f"-o {iface} -g cali-tw-{iface}" in filt["cali-to-wl-dispatch"]
    for dispatch in ("cali-from-wl-dispatch", "cali-to-wl-dispatch"):
        assert filt[dispatch][-1] == '-m comment --comment "Unknown interface" -j DROP'
    assert {n for n in all_chains if n.startswith(("cali-tw-", "cali-fw-"))} == (
        {f"cali-tw-{i}" for i in local_ifaces} | {f"cali-fw-{i}" for i in local_ifaces})
    for profile in ("kns.demo", "ksa.demo.default"):
        assert {felix_id("cali-pri-", profile), felix_id("cali-pro-", profile)} <= all_chains
    # Sets: each referenced one exists and each of ours is referenced, except the two pool sets that
    # Felix's masquerade manager keeps whether or not some pool has natOutgoing; names ≤ 31 characters.
    sets = set(read_ipsets(c, node))
    assert referenced_sets <= sets, f"missing sets {sorted(referenced_sets - sets)}"
    assert sets - referenced_sets <= {MASQ_SET, POOLS_SET}, f"unreferenced {sorted(sets - referenced_sets)}"
    assert all(s.startswith("cali40") and len(s) <= 31 for s in sets), sets
    return all_chains, sets


def structure_when_settled(c: FelixCluster, node: str) -> tuple[set[str], set[str]] | None:
    """`check_structure`, or None while an apply is half way: sets are created before the rules that
    use them and destroyed after, as Felix orders it, so for a moment a set may be unreferenced. A
    state that stays inconsistent fails where the wait times out and runs the check itself."""
    try:
        return check_structure(c, node)
    except AssertionError:
        return None


def policy_chains(chains: set[str]) -> set[str]:
    return {c for c in chains if c.startswith(("cali-pi-", "cali-po-"))}


def apply_policies(c: FelixCluster) -> None:
    for policy in (ALLOW_FRONTEND, EGRESS_ONLY):
        c.api.create(policy)  # type: ignore[union-attr]
    def applied() -> bool:
        settled = structure_when_settled(c, "node-1")
        return settled is not None and policy_chains(settled[0]) == WANT_POLICY_CHAINS

    wait_until(applied, timeout=15, what=lambda: f"{check_structure(c, 'node-1')}")


def test_chain_graph_names_and_sets(cluster: FelixCluster) -> None:
    c = cluster
    for node in c.nodes:  # no policies yet: profiles only
        chains, sets = check_structure(c, node)
        assert not policy_chains(chains)
        assert not {s for s in sets if s.startswith("cali40s:")}
    apply_policies(c)
    chains, sets = check_structure(c, "node-1")
    # An ingress-only policy has no cali-po- chain, an egress-only one no cali-pi- chain.
    assert policy_chains(chains) == WANT_POLICY_CHAINS
    assert {FRONTEND_SET, ALL_NS_SET} <= sets
    ipsets = read_ipsets(c, "node-1")
    assert ipsets[FRONTEND_SET] == ("hash:net family inet hashsize 1024 maxelem 1048576", frozenset({"10.65.0.2"}))
    assert ipsets[ALL_NS_SET][1] == frozenset(p.ip for p in c.pods.values())  # all nodes' pods
    # node-2's endpoint is selected by neither policy: nothing of them there (docs/calico/felix.md §2.4).
    chains2, sets2 = check_structure(c, "node-2")
    assert not policy_chains(chains2)
    assert not {s for s in sets2 if s.startswith("cali40s:")}

    # Deleting every policy removes their chains and their sets, and leaves a consistent graph.
    for policy in (ALLOW_FRONTEND, EGRESS_ONLY):
        c.api.delete("networking.k8s.io/v1", "NetworkPolicy", policy["metadata"]["name"], "demo")  # type: ignore[union-attr]

    def cleaned() -> bool:
        settled = structure_when_settled(c, "node-1")
        if settled is None:
            return False
        chains, sets = settled
        return not policy_chains(chains) and not {s for s in sets if s.startswith("cali40s:")}

    wait_until(cleaned, timeout=15, what=lambda: f"{check_structure(c, 'node-1')}")
    filt = read_iptables(c, "node-1")[0]["filter"]
    assert not any("End of tier" in rule for rules in filt.values() for rule in rules)


def test_agent_restart_leaves_the_kernel_unchanged(cluster: FelixCluster) -> None:
    c = cluster
    apply_policies(c)
    before = kernel_state(c, "node-1")
    applies_before = c.status("node-1")["applies"]  # type: ignore[index]
    c.stop_agent("node-1")
    # The agent leaves its dataplane in place when it stops (traffic keeps flowing meanwhile).
    assert kernel_state(c, "node-1") == before
    c.start_agent("node-1")
    wait_until(lambda: (c.status("node-1") or {}).get("applies", 0) >= 1, timeout=30,
               what=lambda: c.agent_log("node-1"))
    after = kernel_state(c, "node-1")
    assert after == before
    print(f"restart: {applies_before} applies before, state of {sum(map(len, after['iptables'].values()))} "
          f"chains and {len(after['ipsets'])} sets unchanged")
