"""FelixConfiguration ProgramClusterRoutes decides whether felix_client or BIRD programs remote blocks."""

from __future__ import annotations

import pytest

from felix_client import rules
from typha.model import keys

from .test_calc import _routing_calc

REMOTE_NOENCAP = "10.65.1.0/26 via 192.168.56.12 dev eth0 proto 80 onlink"
REMOTE_IPIP = "10.65.1.0/26 via 192.168.56.12 dev tunl0 proto 80 onlink"


def _routes(pool: dict, mode: str | None, *, host_mode: str | None = None, **kw) -> list[str]:
    calc = _routing_calc(pool, **kw)
    if mode is not None:
        calc.update(keys.global_config_path("ProgramClusterRoutes"), mode)
    if host_mode is not None:
        calc.update(keys.host_config_path("node-1", "ProgramClusterRoutes"), host_mode)
    calc.take_dirty()
    return rules.render_routes(calc.snapshot()).splitlines()


@pytest.mark.parametrize(("mode", "noencap", "ipip"), [
    (None, True, True), ("Enabled", True, True), ("Disabled", False, False),
    ("EnabledIPIPOnly", False, True), ("EnabledNoEncapOnly", True, False),
])
def test_mode_selects_which_remote_blocks_are_ours(mode, noencap, ipip):
    assert (REMOTE_NOENCAP in _routes({}, mode)) is noencap
    assert (REMOTE_IPIP in _routes({"ipip_mode": "always"}, mode)) is ipip


def test_own_blackhole_and_vxlan_routes_stay_and_host_config_wins():
    vxlan = _routes({"vxlan_mode": "always"}, "Disabled", vxlan=True)
    assert "10.65.1.0/26 via 10.65.1.1 dev vxlan.calico onlink" in vxlan
    assert "blackhole 10.65.0.0/26 proto 80" in vxlan
    assert REMOTE_NOENCAP in _routes({}, "Disabled", host_mode="Enabled")
    assert REMOTE_NOENCAP not in _routes({}, "Enabled", host_mode="Disabled")
