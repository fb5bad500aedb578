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
    IPSET_V6_CREATE_OPTIONS,
    MASQ_SET,
    MASQ_SET_V6,
    POOLS_SET,
    POOLS_SET_V6,
    VXLAN_HOSTS_SET,
    VXLAN_HOSTS_SET_V6,
    ipset_version,
    temp_ipset_name,
)

log = logging.getLogger("felix_client.rules")


@dataclass(frozen=True, slots=True)
class IPSet:
    name: str
    type: str
    members: frozenset[str]

    @property
    def version(self) -> int:
        """The family, from the name's prefix (`cali4…` inet, `cali6…` inet6), as Felix names them."""
        return ipset_version(self.name) or 4


def _create_options(s: IPSet) -> str:
    return IPSET_V6_CREATE_OPTIONS if s.version == 6 else IPSET_CREATE_OPTIONS


def desired_ipsets(state: DesiredState) -> dict[str, IPSet]:
    """Rule sets plus the pool/host sets the static chains use, each checked by `_guarded_set`.
    IPv6 sets (rule sets of IPv6 rules, and the IPv6 pool sets) only on a node that uses IPv6."""
    out = {name: IPSet(name, s.spec.ipset_type, s.members) for name, s in state.ipsets.items()}
    if state.ipv6:
        out[MASQ_SET_V6] = IPSet(MASQ_SET_V6, "hash:net", frozenset(state.masq_pools6))
        out[POOLS_SET_V6] = IPSet(POOLS_SET_V6, "hash:net", frozenset(state.all_pools6))
    if state.vxlan6:
        out[VXLAN_HOSTS_SET_V6] = IPSet(VXLAN_HOSTS_SET_V6, "hash:net", frozenset(state.vxlan_hosts6))
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
    # A member of the other family would make `ipset restore` refuse the whole batch.
    bad = {m for m in s.members if not validate.ipset_member(s.type, m) or _member_version(m) != s.version}
    if not bad:
        return s
    metrics.RENDER_GUARD_TRIPPED.labels("ipset-member").inc(len(bad))
    log.error("left out %d invalid members of IP set %s: %r", len(bad), s.name, sorted(bad)[:5])
    return IPSet(s.name, s.type, s.members - bad)


def _member_version(member: str) -> int:
    # "ip,proto:port" members carry a colon of their own: only the address part tells the family.
    return 6 if ":" in member.split(",", 1)[0] else 4


def _sorted_members(members: Iterable[str]) -> list[str]:
    return sorted(members)


def render_ipset_save(sets: dict[str, IPSet]) -> str:
    """The sets as `ipset save` prints them (the dry-run output)."""
    lines: list[str] = []
    for s in sets.values():
        lines.append(f"create {s.name} {s.type} {_create_options(s)}")
        lines += [f"add {s.name} {m}" for m in _sorted_members(s.members)]
    return "\n".join(lines) + ("\n" if lines else "")


def render_ipset_restore(sets: dict[str, IPSet], existing: Iterable[str] = ()) -> str:
    """`ipset restore` input writing `sets`: a new set is created and filled in place; an existing one
    is rebuilt in a temporary set and swapped in, so the kernel never sees it half-filled
    (felix/ipsets/ipsets.go does the same with its `cali4t<n>`/`cali6t<n>` temporaries: a swap needs
    both sets of one family)."""
    present = set(existing)
    lines: list[str] = []
    temps = {4: 0, 6: 0}
    for s in sets.values():
        # "-exist" plus flush: a set we believe absent, or a temporary left by a crashed run, may
        # already be there; either way it ends up holding exactly the members below.
        if s.name not in present:
            lines.append(f"create {s.name} {s.type} {_create_options(s)} -exist")
            lines.append(f"flush {s.name}")
            lines += [f"add {s.name} {m}" for m in _sorted_members(s.members)]
            continue
        tmp = temp_ipset_name(temps[s.version], s.version)
        temps[s.version] += 1
        lines.append(f"create {tmp} {s.type} {_create_options(s)} -exist")
        lines.append(f"flush {tmp}")
        lines += [f"add {tmp} {m}" for m in _sorted_members(s.members)]
        lines.append(f"swap {tmp} {s.name}")
        lines.append(f"destroy {tmp}")
    return "\n".join(lines) + ("\n" if lines else "")


def render_ipset_destroy(names: Iterable[str]) -> str:
    """Stale sets; run only after the iptables rules that used them are gone."""
    lines = [f"destroy {name}" for name in sorted(names)]
    return "\n".join(lines) + ("\n" if lines else "")
