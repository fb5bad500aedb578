"""Felix's static chains around the endpoint chains (felix_client.rules.static): the mangle table, the
failsafe chains and the FelixConfiguration fields behind them, the host-endpoint hook each table
gets in one place, and OpenStack's special cases. Felix's own expectations for each chain are the
"Static chains" rows of tests/felix_client/felix_tables/."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from felix_client import rules, validate
from felix_client.calc import Calculator
from felix_client.calc.model import FelixSettings, ProtoPort
from felix_client.dataplane import iptables
from felix_client.rules import static
from typha.model import keys
from typha.model.convert.calico import felix_configuration

from .test_calc import NODE, _routing_calc


def _rejected() -> float:
    return REGISTRY.get_sample_value("felix_client_objects_rejected_total", {"kind": "FelixConfiguration"}) or 0


# --- FailsafeInboundHostPorts / FailsafeOutboundHostPorts -----------------------------------------


def test_failsafe_defaults_are_felixs() -> None:
    settings = FelixSettings()
    assert [f"{p.protocol}:{p.port}" for p in settings.failsafe_inbound_host_ports] == [
        "tcp:22", "udp:68", "tcp:179", "tcp:2379", "tcp:2380", "tcp:5473", "tcp:6443", "tcp:6666", "tcp:6667"]
    assert [f"{p.protocol}:{p.port}" for p in settings.failsafe_outbound_host_ports] == [
        "udp:53", "udp:67", "tcp:179", "tcp:2379", "tcp:2380", "tcp:5473", "tcp:6443", "tcp:6666", "tcp:6667"]
    assert all(p.net == "" for p in settings.failsafe_inbound_host_ports + settings.failsafe_outbound_host_ports)


def test_failsafe_port_lists_parse_as_felix_does() -> None:
    settings = FelixSettings.from_sources(
        {"FailsafeInboundHostPorts": "22, UDP:68,tcp:10.0.0.1:1022,tcp:[fd00::/64]:2022",
         "FailsafeOutboundHostPorts": "none"}.get)
    assert settings.failsafe_inbound_host_ports == (
        ProtoPort("tcp", 22), ProtoPort("udp", 68), ProtoPort("tcp", 1022, "10.0.0.1/32"),
        ProtoPort("tcp", 2022, "fd00::/64"))
    assert settings.failsafe_outbound_host_ports == ()  # "none": the empty list


@pytest.mark.parametrize("bad", ["icmp:22", "tcp:70000", "tcp:x", "tcp:1.2.3.4:5:6", "tcp:not-a-net:22"])
def test_a_bad_failsafe_list_is_rejected_and_felixs_default_kept(bad: str) -> None:
    before = _rejected()
    settings = FelixSettings.from_sources({"FailsafeInboundHostPorts": bad}.get)
    assert settings.failsafe_inbound_host_ports == FelixSettings().failsafe_inbound_host_ports
    assert _rejected() == before + 1


def test_failsafe_ports_come_from_felixconfiguration_through_the_datastore() -> None:
    # FelixConfiguration's list of {protocol, port, net} reaches Felix (and us) as Felix's string form.
    spec = {"failsafeInboundHostPorts": [{"protocol": "TCP", "port": 2222},
                                         {"protocol": "UDP", "port": 68, "net": "10.0.0.0/8"}],
            "failsafeOutboundHostPorts": []}
    calc = Calculator(NODE)
    obj = {"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration", "metadata": {"name": "default"},
           "spec": spec}
    calc.apply(sorted(felix_configuration(obj)))
    settings = calc.snapshot().settings
    assert settings.failsafe_inbound_host_ports == (ProtoPort("tcp", 2222), ProtoPort("udp", 68, "10.0.0.0/8"))
    assert settings.failsafe_outbound_host_ports == ()
    calc.update(keys.host_config_path(NODE, "FailsafeOutboundHostPorts"), "udp:53")
    assert calc.snapshot().settings.failsafe_outbound_host_ports == (ProtoPort("udp", 53),)


def test_failsafe_chains_per_table_and_family() -> None:
    settings = FelixSettings.from_sources(
        {"FailsafeInboundHostPorts": "tcp:22,tcp:[fd00::/64]:2022",
         "FailsafeOutboundHostPorts": "udp:10.0.0.0/8:53"}.get)
    assert static.failsafe_chains(settings, "filter", 4) == {
        "cali-failsafe-in": ["-p tcp -m multiport --dports 22 -j ACCEPT"],
        "cali-failsafe-out": ["-d 10.0.0.0/8 -p udp -m multiport --dports 53 -j ACCEPT"],
    }
    assert static.failsafe_chains(settings, "mangle", 4) == static.failsafe_chains(settings, "filter", 4)
    # raw, before conntrack: the replies of the other direction's failsafe connections too.
    assert static.failsafe_chains(settings, "raw", 4) == {
        "cali-failsafe-in": ["-p tcp -m multiport --dports 22 -j ACCEPT",
                             "-s 10.0.0.0/8 -p udp -m multiport --sports 53 -j ACCEPT"],
        "cali-failsafe-out": ["-d 10.0.0.0/8 -p udp -m multiport --dports 53 -j ACCEPT",
                              "-p tcp -m multiport --sports 22 -j ACCEPT"],
    }
    # A port with a net of the other family is left out of that family's chain.
    assert static.failsafe_chains(settings, "raw", 6) == {
        "cali-failsafe-in": ["-p tcp -m multiport --dports 22 -j ACCEPT",
                             "-s fd00::/64 -p tcp -m multiport --dports 2022 -j ACCEPT"],
        "cali-failsafe-out": ["-p tcp -m multiport --sports 22 -j ACCEPT",
                              "-d fd00::/64 -p tcp -m multiport --sports 2022 -j ACCEPT"],
    }


# --- the tables ---------------------------------------------------------------------------------


def _state() -> Any:
    return _routing_calc({"ipip_mode": "always", "masquerade": True}).snapshot()


def test_every_family_has_felixs_four_tables_with_their_hooks() -> None:
    state = _state()
    for version in (4, 6):
        tables = rules.render_tables(state, version=version)
        assert set(tables) == {"filter", "nat", "raw", "mangle"}
        mangle = tables["mangle"]
        assert mangle.builtins == ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]
        assert mangle.chains["PREROUTING"] == ["-j cali-PREROUTING"]
        assert mangle.chains["POSTROUTING"] == ["-j cali-POSTROUTING"]
        assert tables["raw"].chains["OUTPUT"] == ["-j cali-OUTPUT"]
        for table in tables.values():
            for chain, chain_rules in table.chains.items():
                for rule in chain_rules:
                    assert validate.check_rule_line(chain, rule) is None, (chain, rule)
    text = rules.render_iptables(state)
    assert "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n" in text
    assert text.count("COMMIT\n") == 4


def test_host_endpoint_chains_come_from_one_place_per_table(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    original = static._host_endpoint_chains

    def spy(state: Any, table_name: str, version: int, iface_prefix: str = "cali") -> dict[str, list[str]]:
        calls.append((table_name, version))
        return original(state, table_name, version, iface_prefix)

    monkeypatch.setattr(static, "_host_endpoint_chains", spy)
    tables = rules.render_tables(_state(), version=6)
    assert sorted(calls) == [("filter", 6), ("mangle", 6), ("nat", 6), ("raw", 6)]
    # Today every dispatch chain is empty; each one a static chain jumps to exists.
    assert {c: r for c, r in tables["filter"].chains.items() if "host-endpoint" in c or "hep" in c} == {
        "cali-from-host-endpoint": [], "cali-to-host-endpoint": [],
        "cali-from-hep-forward": [], "cali-to-hep-forward": []}
    for name in ("raw", "mangle"):
        assert tables[name].chains["cali-from-host-endpoint"] == tables[name].chains["cali-to-host-endpoint"] == []


def test_failsafe_chains_are_programmed_only_while_a_host_endpoint_chain_uses_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state()
    for table in rules.render_tables(state).values():
        assert "cali-failsafe-in" not in table.chains and "cali-failsafe-out" not in table.chains

    def with_a_host_endpoint(state: Any, table_name: str, version: int, iface_prefix: str = "cali"
                             ) -> dict[str, list[str]]:
        if table_name == "nat":
            return {}
        return {"cali-from-host-endpoint": ["-i eth0 -g cali-fh-eth0"], "cali-to-host-endpoint": [],
                "cali-fh-eth0": ["-j cali-failsafe-in", "-j DROP"]}

    monkeypatch.setattr(static, "_host_endpoint_chains", with_a_host_endpoint)
    tables = rules.render_tables(state)
    for name in ("filter", "raw", "mangle"):
        assert tables[name].chains["cali-failsafe-in"][0] == "-p tcp -m multiport --dports 22 -j ACCEPT"
        assert "cali-failsafe-out" not in tables[name].chains  # nothing jumps to it
    assert len(tables["raw"].chains["cali-failsafe-in"]) == 18  # inbound ports, then outbound replies


def test_allow_actions_return_when_configured() -> None:
    state = _state()
    assert "-A cali-INPUT -m mark --mark 0x10000/0x10000 -j ACCEPT" in rules.render_iptables(state)
    calc = _routing_calc({"ipip_mode": "always"})
    calc.update(keys.global_config_path("IptablesFilterAllowAction"), "return")
    calc.update(keys.global_config_path("IptablesMangleAllowAction"), "RETURN")
    tables = rules.render_tables(calc.snapshot())
    assert tables["filter"].chains["FORWARD"][1].endswith("-m mark --mark 0x10000/0x10000 -j RETURN")
    assert tables["filter"].chains["cali-INPUT"][0].endswith("-j RETURN")  # the IPIP allow
    assert tables["mangle"].chains["cali-PREROUTING"][0] == "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    # Failsafe rules are always ACCEPT (Felix's Allow()), whatever the allow action.
    assert static.failsafe_chains(calc.snapshot().settings, "filter", 4)["cali-failsafe-in"][0].endswith("-j ACCEPT")


# --- OpenStack ------------------------------------------------------------------------------------


def test_openstack_special_cases_only_when_openstack_is_active() -> None:
    state = _state()
    assert "169.254.169.254" not in rules.render_iptables(state)
    assert "--dports 53" not in rules.render_iptables(state)
    calc = _routing_calc({})
    calc.update(keys.global_config_path("MetadataAddr"), "10.0.0.1")
    calc.update(keys.global_config_path("MetadataPort"), "1234")
    tables = rules.render_tables(calc.snapshot())
    assert tables["nat"].chains["cali-PREROUTING"][1] == (
        "-d 169.254.169.254/32 -p tcp -m multiport --dports 80 -j DNAT --to-destination 10.0.0.1:1234")
    assert tables["filter"].chains["cali-wl-to-host"][0] == "-d 10.0.0.1/32 -p tcp -m multiport --dports 1234 -j ACCEPT"
    assert "-s 0.0.0.0/32 -p udp -m multiport --sports 68 -m multiport --dports 67 -j ACCEPT" in (
        tables["raw"].chains["cali-PREROUTING"])
    # A metadata server given by name: the special cases, but no metadata rules (Felix's ParseIP is nil).
    calc.update(keys.global_config_path("MetadataAddr"), "metadata.example")
    tables = rules.render_tables(calc.snapshot(), iface_prefix="tap")
    assert len(tables["nat"].chains["cali-PREROUTING"]) == 1
    assert tables["filter"].chains["cali-wl-to-host"][:2] == [
        "-p udp -m multiport --sports 68 -m multiport --dports 67 -j ACCEPT",
        "-p udp -m multiport --dports 53 -j ACCEPT"]
    # The tap interface prefix alone turns them on, as Felix's OpenstackActive does.
    assert FelixSettings().openstack_active("tap") and not FelixSettings().openstack_active("cali")
    assert FelixSettings(cluster_type="k8s,OpenStack").openstack_active("cali")


# --- the kernel's reading -----------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.skipif(not all(shutil.which(t) for t in ("ip", "iptables-restore", "ip6tables-restore", "ipset")),
                    reason="needs ip, iptables, ip6tables and ipset")
def test_the_kernel_reads_back_every_static_chain_as_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    """All four tables of both families, with failsafe chains in use, OpenStack's cases and VXLAN, restored
    into a namespace this test creates: iptables-save gives back every cali- chain exactly as rendered
    (a chain the kernel prints differently would be rewritten at every resync). The kernel chains'
    hook rules are the dataplane's: it tags them when it programs them."""

    original = static._host_endpoint_chains

    def with_a_host_endpoint(state: Any, table_name: str, version: int, iface_prefix: str = "cali"
                             ) -> dict[str, list[str]]:
        chains = original(state, table_name, version)
        if table_name != "nat":
            chains.update({"cali-from-host-endpoint": ["-j cali-failsafe-in"],
                           "cali-to-host-endpoint": ["-j cali-failsafe-out"]})
        return chains

    monkeypatch.setattr(static, "_host_endpoint_chains", with_a_host_endpoint)
    calc = _routing_calc({"vxlan_mode": "always", "masquerade": True}, vxlan=True)
    for name, value in (("MetadataAddr", "10.0.0.1"),
                        ("FailsafeInboundHostPorts", "tcp:22,udp:10.0.0.0/8:68,tcp:[fd00::/64]:179"),
                        ("FailsafeOutboundHostPorts", "udp:0.0.0.0/0:53,tcp:[::/0]:443")):
        calc.update(keys.global_config_path(name), value)
    state = calc.snapshot()
    ns = f"felixstatic-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        def run(*argv: str, text: str = "") -> str:
            done = subprocess.run(["ip", "netns", "exec", ns, *argv], input=text, capture_output=True, text=True,
                                  timeout=30)
            assert done.returncode == 0, done.stderr
            return done.stdout

        run("ipset", "restore", text=rules.render_ipset_restore(rules.desired_ipsets(state)))
        for version, (restore, save) in ((4, ("iptables-restore", "iptables-save")),
                                         (6, ("ip6tables-restore", "ip6tables-save"))):
            tables = rules.render_tables(state, version=version)
            assert "cali-failsafe-in" in tables["raw"].chains
            for name, table in tables.items():
                run(restore, text=table.render())
                kernel = iptables.parse_save(run(save, "-t", name))
                assert iptables.table_delta(table, kernel).written == (), (version, name)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
