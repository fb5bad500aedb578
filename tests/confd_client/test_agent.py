"""confd_client's agent without a server: writes only on change, debounced renders, check + reload, bad input.

BIRD is replaced by a recording command runner, so these run anywhere and count exactly what the
agent asked BIRD to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from confd_client.agent import ConfdAgent, Settings
from confd_client.render import FILES
from typha.client import StatusChange, UpdateBatch
from typha.model.kv import SyncStatus, Update

NODE = "/calico/resources/v3/projectcalico.org/nodes/"
PEER = "/calico/resources/v3/projectcalico.org/bgppeers/"


def node(name: str, ipv4: str, labels: dict[str, str] | None = None) -> Update:
    value = {"kind": "Node", "metadata": {"name": name, "labels": labels or {}}, "spec": {"bgp": {"ipv4Address": ipv4}}}
    return Update(NODE + name, value, "1")


def peer(name: str, **spec: Any) -> Update:
    return Update(PEER + name, {"kind": "BGPPeer", "metadata": {"name": name}, "spec": spec}, "1")


def block(host: str, cidr: str, state: str = "") -> Update:
    return Update(f"/calico/ipam/v2/host/{host}/ipv4/block/{cidr.replace('/', '-')}", {"state": state}, "1")


class FakeBird:
    """Records commands; `bird -p` fails while `reject` is set."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.reject = False

    def __call__(self, cmd: list[str]) -> tuple[bool, str]:
        self.commands.append(cmd)
        if "-p" in cmd and self.reject:
            return False, "bird: syntax error"
        return True, "Reconfigured"

    def reloads(self) -> list[str]:
        return [cmd[2] for cmd in self.commands if cmd[-1] == "configure"]

    def checks(self) -> list[str]:
        return [cmd[0] for cmd in self.commands if "-p" in cmd]


def make_agent(tmp_path: Path, bird: FakeBird, check: bool = True) -> ConfdAgent:
    settings = Settings(nodename="node-a", endpoints=["127.0.0.1:1"], config_dir=tmp_path / "cfg", debounce=0.05,
                        bird_socket="/run/bird.ctl", bird6_socket="/run/bird6.ctl", check=check)
    agent = ConfdAgent(settings, runner=bird)
    agent.in_sync = True
    return agent


def test_writes_and_reloads_only_what_changed(tmp_path):
    bird = FakeBird()
    agent = make_agent(tmp_path, bird)
    agent.handle(UpdateBatch([node("node-a", "10.0.0.1/24"), node("node-b", "10.0.0.2/24")]))
    assert sorted(agent.apply(agent.render())) == sorted(FILES)
    assert sorted(bird.reloads()) == ["/run/bird.ctl", "/run/bird6.ctl"]
    assert sorted(bird.checks()) == ["bird", "bird6"]
    assert "protocol bgp Mesh_10_0_0_2 from bgp_template" in (tmp_path / "cfg" / "bird.cfg").read_text()

    bird.commands.clear()
    assert agent.apply(agent.render()) == []  # same input: no write, no check, no reload
    assert bird.commands == []

    agent.handle(UpdateBatch([block("node-a", "10.65.0.0/26")]))  # an IPv4 block: only the v4 files change
    assert agent.apply(agent.render()) == ["bird_aggr.cfg"]
    assert bird.reloads() == ["/run/bird.ctl"]
    assert "route 10.65.0.0/26 blackhole;" in (tmp_path / "cfg" / "bird_aggr.cfg").read_text()


def test_config_bird_rejects_is_kept_aside_and_not_installed(tmp_path):
    bird = FakeBird()
    agent = make_agent(tmp_path, bird)
    agent.handle(UpdateBatch([node("node-a", "10.0.0.1/24")]))
    agent.apply(agent.render())
    before = (tmp_path / "cfg" / "bird.cfg").read_text()
    bird.commands.clear()

    bird.reject = True
    agent.handle(UpdateBatch([node("node-b", "10.0.0.2/24")]))
    assert agent.apply(agent.render()) == []
    assert (tmp_path / "cfg" / "bird.cfg").read_text() == before  # the running config stays
    assert "Mesh_10_0_0_2" in (tmp_path / "cfg" / "rejected" / "bird.cfg").read_text()
    assert agent.counters.rejected == 1
    assert bird.reloads() == []


def test_bad_peers_are_skipped_and_the_rest_renders(tmp_path):
    bird = FakeBird()
    agent = make_agent(tmp_path, bird, check=False)
    agent.handle(UpdateBatch([
        node("node-a", "10.0.0.1/24"),
        peer("bad-ip", peerIP="10.0.0.300", asNumber=64512),
        peer("bad-selector", peerSelector="has(", asNumber=64512),
        peer("bad-node-selector", nodeSelector="a == ", peerIP="10.0.9.9", asNumber=64512),
        peer("good", peerIP="10.0.0.9", asNumber=65000),
    ]))
    agent.apply(agent.render())
    text = (tmp_path / "cfg" / "bird.cfg").read_text()
    assert "protocol bgp Global_10_0_0_9 from bgp_template" in text
    assert "10.0.0.300" not in text
    assert "10_0_9_9" not in text


def test_daemon_debounces_a_burst_and_skips_unchanged_input(tmp_path):
    bird = FakeBird()
    agent = make_agent(tmp_path, bird, check=False)
    agent.in_sync = False

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent._apply_loop)
            agent.handle(UpdateBatch([node("node-a", "10.0.0.1/24")]))
            agent.handle(StatusChange(SyncStatus.IN_SYNC))
            for i in range(2, 12):  # a burst, well inside one debounce interval
                agent.handle(UpdateBatch([node(f"node-{i}", f"10.0.0.{i}/24")]))
            await trio.sleep(0.5)
            assert agent.counters.renders == 1
            assert sorted(bird.reloads()) == ["/run/bird.ctl", "/run/bird6.ctl"]

            agent.handle(UpdateBatch([node("node-2", "10.0.0.2/24")]))  # same value again
            await trio.sleep(0.5)
            assert agent.counters.renders == 1  # nothing changed: no render, no write, no reload
            assert len(bird.reloads()) == 2

            agent.handle(UpdateBatch([node("node-2", "10.0.0.22/24")]))
            await trio.sleep(0.5)
            assert bird.reloads()[2:] == ["/run/bird.ctl"]
            nursery.cancel_scope.cancel()

    trio.run(scenario)
