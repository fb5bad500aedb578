"""Which iptables backend to program: Felix's `IptablesBackend` (FELIX_IPTABLESBACKEND = Auto, Legacy or
NFT, any case; docs/calico/felix.md §2) with Felix's detection for Auto.

The image's own `iptables` says nothing about the host: rules written with the other backend than
kube-proxy's and the host's tools are invisible to them and may be evaluated in a different order.
Felix's Auto (felix/environment DetectBackend, after kubernetes-sigs/iptables-wrappers) looks at which
backend holds rules:

1. kube-proxy's marker chains (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY) in the nft mangle table → nft;
2. else in the legacy mangle table → legacy;
3. else whichever backend holds more rules, legacy on a tie;
4. one departure: when neither holds any rule at all (a fresh node, or a fresh network namespace), Felix's
   tie-break is arbitrary, and the host's own `iptables` (what kube-proxy and an operator's tools will use)
   is the better hint: `nf_tables` in its `--version` means nft.

The legacy backend is read only when its kernel modules are already loaded (/proc/net/ip_tables_names):
running iptables-legacy-save would load them, putting legacy hooks on a node that runs nftables only.
A specified backend wins over the detected one, with a warning when they differ, as in Felix.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence

from typha.logs import SettingError

log = logging.getLogger(__name__)

SETTING = "FELIX_IPTABLESBACKEND"
KNOWN_ENV = (SETTING,)
LEGACY, NFT, AUTO = "legacy", "nft", "auto"
_KUBE_MARKERS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")
_LEGACY_LOADED = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}

Runner = Callable[[Sequence[str]], str]


def parse_setting(value: str | None) -> str:
    """`auto`, `legacy` or `nft` from Felix's spellings (Auto, Legacy, NFT; case-insensitive; empty: auto)."""
    lowered = (value or AUTO).strip().lower()
    if lowered not in (AUTO, LEGACY, NFT):
        raise SettingError(SETTING, value, "expected Auto, Legacy or NFT")
    return lowered


def best_binary(ip_version: int, mode: str, action: str, which: Callable[[str], str | None] = shutil.which) -> str:
    """`ip[6]tables-<mode>-<action>` if the host has it, else plain `ip[6]tables-<action>` (Felix's
    FindBestBinary)."""
    infix = "6" if ip_version == 6 else ""
    specific = f"ip{infix}tables-{mode}-{action}"
    return specific if which(specific) else f"ip{infix}tables-{action}"


def _run_quietly(argv: Sequence[str]) -> str:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""  # a missing or failing binary holds no rules, as Felix treats it


def _has_kube_chains(output: str) -> bool:
    return any(marker in output for marker in _KUBE_MARKERS)


def _count_rules(output: str) -> int:
    return sum(1 for line in output.splitlines() if line.startswith("-"))


def host_default(run: Runner = _run_quietly) -> str:
    """The backend of the host's plain `iptables` (an alternatives link on most distributions)."""
    return NFT if "nf_tables" in run(["iptables", "--version"]) else LEGACY


def detect(run: Runner = _run_quietly, *, which: Callable[[str], str | None] = shutil.which,
           legacy_loaded: Callable[[int], bool] = lambda version: os.path.exists(_LEGACY_LOADED[version])) -> str:
    """The backend that holds the host's rules, by Felix's rules (module docstring)."""

    def save(mode: str, version: int, *args: str) -> str:
        if mode == LEGACY and not legacy_loaded(version):
            return ""
        return run([best_binary(version, mode, "save", which), *args])

    if _has_kube_chains(save(NFT, 6, "-t", "mangle")) or _has_kube_chains(save(NFT, 4, "-t", "mangle")):
        return NFT
    if _has_kube_chains(save(LEGACY, 6, "-t", "mangle")) or _has_kube_chains(save(LEGACY, 4, "-t", "mangle")):
        return LEGACY
    legacy_rules = _count_rules(save(LEGACY, 6)) + _count_rules(save(LEGACY, 4))
    nft_rules = _count_rules(save(NFT, 6)) + _count_rules(save(NFT, 4))
    if legacy_rules == nft_rules == 0:
        return host_default(run)
    return LEGACY if legacy_rules >= nft_rules else NFT


def select(environ: Mapping[str, str] | None = None, netns: str | None = None, *, run: Runner | None = None) -> str:
    """The backend to program: FELIX_IPTABLESBACKEND, detected when Auto (inside `netns` if given)."""
    specified = parse_setting((os.environ if environ is None else environ).get(SETTING))
    if run is None:
        prefix = ["ip", "netns", "exec", netns] if netns else []

        def run(argv: Sequence[str]) -> str:
            return _run_quietly([*prefix, *argv])

    detected = detect(run)
    if specified == AUTO:
        log.info("Detected iptables backend %s (%s=Auto)", detected, SETTING)
        return detected
    if specified != detected:
        log.warning("%s=%s but the host's rules are in the %s backend; using %s as specified",
                    SETTING, specified, detected, specified)
    return specified
