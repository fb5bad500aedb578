"""The rendered text is accepted by the real tools, inside a network namespace this test creates.

Only `iptables-restore --test` (parse and validate, commit nothing) runs against iptables; the IP
sets are restored for real because the set matches need them, but only inside the throwaway
namespace, which is deleted afterwards with everything in it. Never the host's own tables.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from felix_client import names, rules
from felix_client.calc import Calculator
from typha.model import keys

from .worked_example import POLICY_KEY, kvs

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("ip", "iptables-restore", "ipset")), reason="needs ip, iptables, ipset"
    ),
]


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"felixtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def run_in(ns: str, *argv: str, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], input=text, capture_output=True, text=True, timeout=30)


def test_worked_example_restores(netns: str) -> None:
    calc = Calculator("node-1")
    calc.apply(sorted(kvs().items()))
    # A second policy exercising the other rule shapes: nets and notNets, named ports, ICMP, deny, ranges.
    calc.update(
        "/calico/v1/policy/NetworkPolicy/demo/shapes",
        {
            "namespace": "demo",
            "tier": "default",
            "order": 10,
            "selector": "app == 'backend'",
            "types": ["ingress", "egress"],
            "inbound_rules": [
                {"action": "allow", "protocol": "tcp", "src_nets": ["10.0.0.0/8", "172.16.0.0/12"],
                 "!src_nets": ["10.1.0.0/16"], "dst_ports": ["http", 80, "1000:2000"]},
                {"action": "deny", "protocol": "icmp", "icmp_type": 8, "icmp_code": 0},
                {"action": "allow", "protocol": "udp", "!src_selector": "app == 'x'", "!dst_ports": [53]},
                {"action": "log", "!protocol": "sctp", "dst_nets": ["192.168.0.0/16"]},
            ],
            "outbound_rules": [
                {"action": "next-tier", "protocol": "tcp", "dst_selector": "has(app)", "dst_ports": list(range(1, 20))},
                {"action": "allow"},
            ],
        },
    )
    state = calc.snapshot()
    sets = rules.desired_ipsets(state)
    restored = run_in(netns, "ipset", "restore", text=rules.render_ipset_restore(sets))
    assert restored.returncode == 0, restored.stderr
    # Rewriting existing sets goes through temporary sets and swap; a leftover temporary is reused.
    # (One with other options must be destroyed first, by listing cali4t* at start-up, as Felix does.)
    leftover = run_in(netns, "ipset", "create", "cali4t0", "hash:net", *names.IPSET_CREATE_OPTIONS.split(), text="")
    assert leftover.returncode == 0, leftover.stderr
    again = run_in(netns, "ipset", "restore", text=rules.render_ipset_restore(sets, existing=sets))
    assert again.returncode == 0, again.stderr
    saved = run_in(netns, "ipset", "save", text="").stdout
    assert "cali4t" not in saved
    for name, ipset in sets.items():
        assert {line.split()[2] for line in saved.splitlines() if line.startswith(f"add {name} ")} == ipset.members
    checked = run_in(netns, "iptables-restore", "--test", text=rules.render_iptables(state))
    assert checked.returncode == 0, checked.stderr

    # And after the policy goes, the stale set can be destroyed.
    calc.update(POLICY_KEY, None)
    gone = set(sets) - set(rules.desired_ipsets(calc.snapshot()))
    assert gone
    destroyed = run_in(netns, "ipset", "restore", text=rules.render_ipset_destroy(gone))
    assert destroyed.returncode == 0, destroyed.stderr


def test_vxlan_and_nat_tables_restore(netns: str) -> None:
    from .test_calc import _routing_calc

    calc = _routing_calc({"vxlan_mode": "always", "masquerade": True}, vxlan=True)
    calc.update("/calico/v1/config/DefaultEndpointToHostAction", "Drop")
    state = calc.snapshot()
    text = rules.render_iptables(state)
    assert "cali40all-vxlan-net" in text
    assert '-m comment --comment "Configured DefaultEndpointToHostAction" -j DROP' in text
    restored = run_in(netns, "ipset", "restore", text=rules.render_ipset_restore(rules.desired_ipsets(state)))
    assert restored.returncode == 0, restored.stderr
    checked = run_in(netns, "iptables-restore", "--test", text=text)
    assert checked.returncode == 0, checked.stderr


def test_moved_marks_and_ipv6_vxlan_restore(netns: str) -> None:
    """A non-default IptablesMarkMask and an IPv6 VXLAN pool: both families' tables pass the real tools."""
    from .test_mark_mask import _rich_calc

    calc = _rich_calc("0x0000fff0")
    calc.apply([(keys.ip_pool_path("fd65::/48"), {"cidr": "fd65::/48", "ipip_mode": "never", "vxlan_mode": "always",
                                                  "masquerade": True}),
                (keys.host_config_path("node-1", "IPv6VXLANTunnelAddr"), "fd65::1"),
                (keys.host_config_path("node-2", "IPv6VXLANTunnelAddr"), "fd65::1:1")])
    calc.apply([(keys.resource_path("Node", n),
                 {"spec": {"bgp": {"ipv4Address": f"192.168.56.1{i}/24", "ipv6Address": f"fd20::{i}/64"}}})
                for i, n in ((1, "node-1"), (2, "node-2"))])
    state = calc.snapshot()
    assert state.vxlan6 and state.settings.marks.accept == 0x10
    v4, v6 = rules.render_iptables(state), rules.render_ip6tables(state)
    assert "--set-xmark 0x10/0x10" in v4 and "0x10000/" not in v4 and "0x10000/" not in v6
    assert "cali60all-vxlan-net" in v6
    restored = run_in(netns, "ipset", "restore", text=rules.render_ipset_restore(rules.desired_ipsets(state)))
    assert restored.returncode == 0, restored.stderr
    for tool, text in (("iptables-restore", v4), ("ip6tables-restore", v6)):
        checked = run_in(netns, tool, "--test", text=text)
        assert checked.returncode == 0, f"{tool}: {checked.stderr}"
