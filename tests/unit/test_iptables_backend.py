"""felix_client.dataplane.backend: FELIX_IPTABLESBACKEND and Felix's Auto detection, with a fake host."""

from __future__ import annotations

import pytest

from felix_client.dataplane import backend
from typha.logs import SettingError

KUBE_MANGLE = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"


def host(outputs: dict[str, str], calls: list[list[str]] | None = None):
    def run(argv):
        if calls is not None:
            calls.append(list(argv))
        return outputs.get(" ".join(argv), "")
    return run


def which(binary: str) -> str:
    return f"/usr/sbin/{binary}"


def test_kube_proxy_markers_in_nft_pick_nft():
    run = host({"iptables-nft-save -t mangle": KUBE_MANGLE})
    assert backend.detect(run, which=which, legacy_loaded=lambda _: True) == "nft"


def test_kube_proxy_markers_in_legacy_pick_legacy():
    run = host({"ip6tables-legacy-save -t mangle": KUBE_MANGLE})
    assert backend.detect(run, which=which, legacy_loaded=lambda _: True) == "legacy"


def test_otherwise_the_backend_with_more_rules_and_legacy_on_a_tie():
    run = host({"iptables-nft-save": "-A INPUT -j ACCEPT\n-A FORWARD -j ACCEPT\n", "iptables-legacy-save": "-A X\n"})
    assert backend.detect(run, which=which, legacy_loaded=lambda _: True) == "nft"
    tie = host({"iptables-nft-save": "-A X\n", "iptables-legacy-save": "-A Y\n",
                "iptables --version": "iptables v1.8.9 (nf_tables)"})
    assert backend.detect(tie, which=which, legacy_loaded=lambda _: True) == "legacy"


def test_no_rules_anywhere_follows_the_hosts_iptables():
    for version, expected in (("iptables v1.8.9 (nf_tables)", "nft"), ("iptables v1.8.9 (legacy)", "legacy")):
        run = host({"iptables --version": version})
        assert backend.detect(run, which=which, legacy_loaded=lambda _: True) == expected


def test_legacy_is_not_read_when_its_modules_are_not_loaded():
    calls: list[list[str]] = []
    run = host({"iptables-legacy-save": "-A X\n-A Y\n", "iptables-nft-save": "-A Z\n"}, calls)
    assert backend.detect(run, which=which, legacy_loaded=lambda _: False) == "nft"
    assert not [argv for argv in calls if "legacy" in argv[0]]


def test_the_setting_takes_felixs_spellings_and_wins_over_detection():
    assert [backend.parse_setting(v) for v in ("Auto", "Legacy", "NFT", "", None)] == \
        ["auto", "legacy", "nft", "auto", "auto"]
    with pytest.raises(SettingError, match="FELIX_IPTABLESBACKEND='iptables': expected Auto, Legacy or NFT"):
        backend.parse_setting("iptables")
    kube_in_nft = host({"iptables-nft-save -t mangle": KUBE_MANGLE, "iptables-save -t mangle": KUBE_MANGLE})
    assert backend.select({"FELIX_IPTABLESBACKEND": "Legacy"}, run=kube_in_nft) == "legacy"
    assert backend.select({"FELIX_IPTABLESBACKEND": "auto"}, run=kube_in_nft) == "nft"
