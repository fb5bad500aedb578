"""IP sets: the desired sets of a state, checked, and as `ipset save` / `ipset restore` text."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from felix_client import metrics, validate
from felix_client.calc.graph import DesiredState
from felix_client.names import (
    HOSTS_SET,
    IPSET_CREATE_OPTIONS,
    MASQ_SET,
    POOLS_SET,
    VXLAN_HOSTS_SET,
    temp_ipset_name,
)

log = logging.getLogger("felix_client.rules")


@dataclass(frozen=True, slots=True)
class IPSet:
    name: str
    type: str
    members: frozenset[str]


def desired_ipsets(state: DesiredState) -> dict[str, IPSet]:
    """Rule sets plus the pool/host sets the static chains use, each checked by `_guarded_set`."""
    out = {name: IPSet(name, s.spec.ipset_type, s.members) for name, s in state.ipsets.items()}
    out[MASQ_SET] = IPSet(MASQ_SET, "hash:net", frozenset(state.masq_pools))
    out[POOLS_SET] = IPSet(POOLS_SET, "hash:net", frozenset(state.all_pools))
    if state.ipip:
        out[HOSTS_SET] = IPSet(HOSTS_SET, "hash:net", frozenset(state.all_hosts))
    if state.vxlan:
        out[VXLAN_HOSTS_SET] = IPSet(VXLAN_HOSTS_SET, "hash:net", frozenset(state.vxlan_hosts))
    return {name: _guarded_set(out[name]) for name in sorted(out)}


def _guarded_set(s: IPSet) -> IPSet:
    """The last check before `ipset restore`: names, types and members against their grammar. The
    calculation only produces valid ones; a member that is not is left out (a rule matching a set
    matches less), logged and counted. A set with a bad name or type is a bug and stops the apply."""
    problem = validate.check_ipset(s.name, s.type)
    if problem is not None:
        metrics.RENDER_GUARD_TRIPPED.labels("ipset").inc()
        raise ValueError(f"refusing to program IP set {s.name!r}: {problem}")
    bad = {m for m in s.members if not validate.ipset_member(s.type, m)}
    if not bad:
        return s
    metrics.RENDER_GUARD_TRIPPED.labels("ipset-member").inc(len(bad))
    log.error("left out %d invalid members of IP set %s: %r", len(bad), s.name, sorted(bad)[:5])
    return IPSet(s.name, s.type, s.members - bad)


def _sorted_members(members: Iterable[str]) -> list[str]:
    return sorted(members)


def render_ipset_save(sets: dict[str, IPSet]) -> str:
    """The sets as `ipset save` prints them (the dry-run output)."""
    lines: list[str] = []
    for s in sets.values():
        lines.append(f"create {s.name} {s.type} {IPSET_CREATE_OPTIONS}")
        lines += [f"add {s.name} {m}" for m in _sorted_members(s.members)]
    return "\n".join(lines) + ("\n" if lines else "")


def render_ipset_restore(sets: dict[str, IPSet], existing: Iterable[str] = ()) -> str:
    """`ipset restore` input writing `sets`: a new set is created and filled in place; an existing one
    is rebuilt in a temporary set and swapped in, so the kernel never sees it half-filled
    (felix/ipsets/ipsets.go does the same with its `cali4t<n>` temporaries)."""
    present = set(existing)
    lines: list[str] = []
    temp = 0
    for s in sets.values():
        # "-exist" plus flush: a set we believe absent, or a temporary left by a crashed run, may
        # already be there; either way it ends up holding exactly the members below.
        if s.name not in present:
            lines.append(f"create {s.name} {s.type} {IPSET_CREATE_OPTIONS} -exist")
            lines.append(f"flush {s.name}")
            lines += [f"add {s.name} {m}" for m in _sorted_members(s.members)]
            continue
        tmp = temp_ipset_name(temp)
        temp += 1
        lines.append(f"create {tmp} {s.type} {IPSET_CREATE_OPTIONS} -exist")
        lines.append(f"flush {tmp}")
        lines += [f"add {tmp} {m}" for m in _sorted_members(s.members)]
        lines.append(f"swap {tmp} {s.name}")
        lines.append(f"destroy {tmp}")
    return "\n".join(lines) + ("\n" if lines else "")


def render_ipset_destroy(names: Iterable[str]) -> str:
    """Stale sets; run only after the iptables rules that used them are gone."""
    lines = [f"destroy {name}" for name in sorted(names)]
    return "\n".join(lines) + ("\n" if lines else "")
