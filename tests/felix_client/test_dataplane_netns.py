"""`felix_client.dataplane` against the real kernel, inside a network namespace this test creates.

Everything (iptables, IP sets, routes, sysctls) is programmed in a throwaway namespace, deleted
afterwards even on failure; the host's own tables are never touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from felix_client.calc import Calculator
from felix_client.dataplane import Dataplane, detect_backend
from felix_client.dataplane.dataplane import HOOK_COMMENT

from .worked_example import BACKEND_IF, FRONTEND_IF, POLICY_CHAIN, POLICY_KEY, SOURCE_SET, kvs

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("ip", "iptables-restore", "ipset")), reason="needs ip, iptables, ipset"
    ),
]


def run(ns: str, *argv: str, check: bool = True) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30,
                          check=check).stdout


@pytest.fixture
def node() -> Iterator[str]:
    """A node namespace with the worked example's two local workload interfaces and an uplink."""
    name = f"fxdp-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        for iface in (FRONTEND_IF, BACKEND_IF):
            run(name, "ip", "link", "add", iface, "type", "veth", "peer", "name", f"p{iface[-6:]}")
            run(name, "ip", "link", "set", iface, "up")
        run(name, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "uplink-peer")
        run(name, "ip", "addr", "add", "192.168.56.11/24", "dev", "eth0")
        run(name, "ip", "link", "set", "eth0", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def calc_noencap() -> Calculator:
    calc = Calculator("node-1")
    calc.apply(sorted(kvs().items()))
    # The example pool is IPIP; make it unencapsulated so the remote route goes via eth0.
    pool = "/calico/v1/ipam/v4/pool/10.65.0.0-16"
    value = calc_pool_value(calc, pool)
    calc.update(pool, value)
    return calc


def calc_pool_value(calc: Calculator, key: str) -> dict:
    value = dict(kvs()[key])
    value["ipip_mode"] = "never"
    value["ipip"] = ""
    return value


def normalized(save: str) -> list[str]:
    # Counters and the generated-on comments differ between dumps; the rules must not.
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in save.splitlines() if not line.startswith("#")]


def test_apply_programs_rules_sets_routes_and_sysctls(node: str) -> None:
    calc = calc_noencap()
    dp = Dataplane(node)
    assert dp.backend == detect_backend()
    dp.apply(calc.snapshot())

    save = run(node, dp.save)
    assert f'-A FORWARD -m comment --comment "{HOOK_COMMENT}" -j cali-FORWARD' in save
    assert f"-A cali-to-wl-dispatch -o {BACKEND_IF} -g cali-tw-{BACKEND_IF}" in save
    assert f":{POLICY_CHAIN} - [0:0]" in save
    assert f"--match-set {SOURCE_SET} src" in save
    assert f"add {SOURCE_SET} 10.65.0.2" in run(node, "ipset", "save")

    routes = run(node, "ip", "route", "show")
    assert "blackhole 10.65.0.0/26 proto 80" in routes
    assert f"10.65.0.2 dev {FRONTEND_IF} scope link metric 1024" in routes
    assert f"10.65.0.3 dev {BACKEND_IF} scope link metric 1024" in routes
    assert "10.65.1.0/26 via 192.168.56.12 dev eth0 proto 80 onlink" in routes
    assert run(node, "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"
    for key in ("conf/{}/proxy_arp", "conf/{}/forwarding", "conf/{}/route_localnet"):
        assert run(node, "cat", f"/proc/sys/net/ipv4/{key.format(FRONTEND_IF)}").strip() == "1"
    assert run(node, "cat", f"/proc/sys/net/ipv4/neigh/{FRONTEND_IF}/proxy_delay").strip() == "0"

    # Idempotent: a second apply (what every resync does) leaves the same dump, hooks not duplicated.
    before = normalized(run(node, dp.save))
    dp.apply(calc.snapshot())
    assert normalized(run(node, dp.save)) == before
    assert sum(1 for line in before if line.startswith("-A FORWARD ") and "-j cali-FORWARD" in line) == 1


def test_resync_repairs_drift_and_leaves_foreign_rules(node: str) -> None:
    calc = calc_noencap()
    dp = Dataplane(node)
    dp.apply(calc.snapshot())
    # Someone else's rule in a kernel chain, and someone else's set.
    run(node, "iptables", "-A", "FORWARD", "-s", "192.0.2.1/32", "-j", "DROP")
    run(node, "ipset", "create", "foreign", "hash:ip")
    good = normalized(run(node, dp.save))

    # Drift behind the agent's back: a dispatch rule, the FORWARD hook, a set member and a route.
    run(node, "iptables", "-D", "cali-to-wl-dispatch", "-o", BACKEND_IF, "-g", f"cali-tw-{BACKEND_IF}")
    run(node, "iptables", "-D", "FORWARD", "-m", "comment", "--comment", HOOK_COMMENT, "-j", "cali-FORWARD")
    run(node, "ipset", "del", SOURCE_SET, "10.65.0.2")
    run(node, "ip", "route", "del", "10.65.0.3/32", "dev", BACKEND_IF)
    run(node, "ip", "route", "add", "10.65.0.9/32", "dev", BACKEND_IF)  # a stray route on a cali interface
    dp.apply(calc.snapshot())

    # The same rules again (our appended FORWARD rules now follow the foreign one: they are appended).
    repaired = normalized(run(node, dp.save))
    assert sorted(repaired) == sorted(good)
    forward = [line for line in repaired if line.startswith("-A FORWARD ")]
    assert forward[0].endswith("-j cali-FORWARD")
    assert f"add {SOURCE_SET} 10.65.0.2" in run(node, "ipset", "save")
    assert "foreign" in run(node, "ipset", "list", "-n")
    routes = run(node, "ip", "route", "show")
    assert f"10.65.0.3 dev {BACKEND_IF} scope link metric 1024" in routes
    assert "10.65.0.9" not in routes


def routes_to(ns: str, dst: str) -> list[str]:
    # The fixture leaves the veth peers down, so the kernel adds "linkdown"; the route itself is what counts.
    shown = run(ns, "ip", "route", "show", "exact", dst).splitlines()
    return [line.strip().removesuffix("linkdown").strip() for line in shown]


def test_a_workload_route_with_another_metric_is_replaced_and_the_old_one_removed(node: str) -> None:
    calc = calc_noencap()
    dp = Dataplane(node)
    # What an agent from before workload routes had Felix's priority left (metric 0, which BIRD would
    # export as an elevated /32), beside a correct route: both must end as the one correct route.
    run(node, "ip", "route", "add", "10.65.0.2/32", "dev", FRONTEND_IF, "scope", "link", "proto", "boot")
    run(node, "ip", "route", "add", "10.65.0.3/32", "dev", BACKEND_IF, "scope", "link", "proto", "boot")
    run(node, "ip", "route", "add", "10.65.0.3/32", "dev", BACKEND_IF, "scope", "link", "proto", "boot",
        "metric", "1024")
    dp.apply(calc.snapshot())
    assert routes_to(node, "10.65.0.2/32") == [
        f"10.65.0.2 dev {FRONTEND_IF} scope link metric 1024"]
    assert routes_to(node, "10.65.0.3/32") == [
        f"10.65.0.3 dev {BACKEND_IF} scope link metric 1024"]

    # Drift to another metric after the fact is repaired at the next apply, without a duplicate.
    run(node, "ip", "route", "del", "10.65.0.2/32", "dev", FRONTEND_IF, "metric", "1024")
    run(node, "ip", "route", "add", "10.65.0.2/32", "dev", FRONTEND_IF, "scope", "link", "proto", "boot",
        "metric", "512")
    before = dp.stats.routes_deleted, dp.stats.routes_added
    dp.apply(calc.snapshot())
    assert routes_to(node, "10.65.0.2/32") == [
        f"10.65.0.2 dev {FRONTEND_IF} scope link metric 1024"]
    assert (dp.stats.routes_deleted, dp.stats.routes_added) == (before[0] + 1, before[1] + 1)
    # The dry-run rendering is what the kernel shows for our workload routes.
    shown = [line.strip().removesuffix("linkdown").strip() for line in run(node, "ip", "route", "show").splitlines()]
    for route in calc.snapshot().routes:
        if route.kind == "local":
            assert route.render() in shown


def test_deleting_the_policy_removes_its_chain_and_set(node: str) -> None:
    calc = calc_noencap()
    dp = Dataplane(node)
    dp.apply(calc.snapshot())
    calc.update(POLICY_KEY, None)
    dp.apply(calc.snapshot())
    save = run(node, dp.save)
    assert POLICY_CHAIN not in save
    assert SOURCE_SET not in run(node, "ipset", "list", "-n")
    assert "End of tier" not in save
    # An empty datastore leaves only the static chains; no workload interfaces known means no routes.
    dp.apply(Calculator("node-1").snapshot())
    assert f"cali-tw-{BACKEND_IF}" not in run(node, dp.save)
    assert "proto 80" not in run(node, "ip", "route", "show")
    assert "10.65.0.2" not in run(node, "ip", "route", "show")
