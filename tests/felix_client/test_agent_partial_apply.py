"""Between full applies the agent rewrites only what changed; the periodic full apply still repairs
drift in what it skipped, even while updates keep arriving more often than the resync interval.

Same set-up as test_agent_kernel: typha in this process on a Unix socket, the agent in a namespace
this test creates (deleted afterwards with everything in it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from typha.testing.apiserver.server import KubeAPIEmulator

from .test_agent_kernel import node, pytestmark, run, stop_agent, typha_unix, wait_for  # noqa: F401 (fixtures, marks)
from .worked_example import FRONTEND_IF, POLICY_CHAIN, policy_object

ROUTE = f"10.65.0.2 dev {FRONTEND_IF} scope link metric 1024"


def applies(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]


def start_agent(netns: str, address: str, log: Path, resync: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "felix_client.agent", "--typha", address,
         "--hostname", "node-1", "--debounce", "0.02", "--resync-interval", str(resync), "--apply-log", str(log),
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def edit_policy(api: KubeAPIEmulator, port: int) -> None:
    rule = {"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}],
            "ports": [{"protocol": "TCP", "port": port}]}
    api.upsert(policy_object() | {"spec": {**policy_object()["spec"], "ingress": [rule]}})


def test_policy_edits_skip_routes_and_full_apply_repairs_them(typha_unix, node, tmp_path):  # noqa: F811
    api, address = typha_unix
    log = tmp_path / "applies.jsonl"
    agent = start_agent(node, address, log, 1.5)
    try:
        wait_for(lambda: len(applies(log)) > 0, "the first apply")
        assert applies(log)[0]["skipped"] == []  # the first apply programs everything
        assert ROUTE in run(node, "ip", "route", "show")
        nat_before = run(node, "iptables-save", "-t", "nat")

        # Drift behind the agent's back in a part that policy edits do not touch.
        run(node, "ip", "route", "del", "10.65.0.2", "dev", FRONTEND_IF)
        seen = len(applies(log))
        # Edits more often than the resync interval: a timer that restarts at each wake-up would never fire.
        deadline = time.monotonic() + 30
        port = 9000
        while ROUTE not in run(node, "ip", "route", "show"):
            assert time.monotonic() < deadline, "the route was not restored by a full apply"
            port += 1
            edit_policy(api, port)
            time.sleep(0.2)
        wait_for(lambda: f"--dport {port}" in run(node, "iptables-save", "-t", "filter")
                 or f"--dports {port}" in run(node, "iptables-save", "-t", "filter"), "the last edit's rule")
        later = applies(log)[seen:]
        # Policy edits alone left routes, IP sets and the NAT table alone; then a full apply covered them.
        assert any({"links", "ipsets", "nat", "raw"} <= set(a["skipped"]) and a["changed"] for a in later), later
        assert any(a["skipped"] == [] for a in later), later
        assert POLICY_CHAIN in run(node, "iptables-save", "-t", "filter")
        assert run(node, "iptables-save", "-t", "nat").count("-A cali-") == nat_before.count("-A cali-")
    finally:
        stop_agent(agent)


def test_interface_created_after_its_endpoint_gets_its_route_at_the_next_apply(typha_unix, node, tmp_path):  # noqa: F811
    api, address = typha_unix
    log = tmp_path / "applies.jsonl"
    run(node, "ip", "link", "del", FRONTEND_IF)  # the CNI has not created it yet
    agent = start_agent(node, address, log, 3600)  # no resync within the test: only applies can help
    try:
        wait_for(lambda: len(applies(log)) > 0, "the first apply")
        assert ROUTE not in run(node, "ip", "route", "show")
        run(node, "ip", "link", "add", FRONTEND_IF, "type", "veth", "peer", "name", f"p{FRONTEND_IF[-6:]}")
        run(node, "ip", "link", "set", FRONTEND_IF, "up")
        # An update that dirties no route: the apply still retries the route that lacked its device.
        edit_policy(api, 9100)
        wait_for(lambda: ROUTE in run(node, "ip", "route", "show"), "the late interface's route", timeout=15)
    finally:
        stop_agent(agent)
