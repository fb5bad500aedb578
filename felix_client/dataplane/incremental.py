"""What one apply between resyncs must rewrite: only the chains and IP sets an update touched.

Felix's calculation graph tells its dataplane which policy, profile or IP set changed, and the
dataplane rewrites only those chains and sets (felix/iptables/table.go, felix/ipsets/ipsets.go). Here
the `Calculator` keeps every part of its snapshot that an update did not touch as the same object
(`felix_client.calc.graph`), so comparing two consecutive `DesiredState`s by identity finds the
change in microseconds. This module decides whether a change is one of *contents only* (the rules
of some policies or profiles, the members of some IP sets) and if so renders just those chains and
the `ipset restore` lines of just those members:

- every field of the state other than the policies, profiles, IP sets and endpoints is equal, so
  the static chains, the NAT and raw tables and the pool sets are as last rendered;
- every local endpoint has the same shape (interface, state, tiers, the keys of its policies in
  order, its profiles), so the endpoint and dispatch chains and the set of chains are unchanged;
- each changed policy or profile chain is rendered by the same renderer a full apply uses
  (`rules.render_tables` on the state cut down to the endpoints using it), so the two cannot drift.

Anything else (an endpoint added, a policy starting to match, a setting) returns None and the
dataplane renders the whole state, as before. Pure functions: no processes here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from felix_client import rules
from felix_client.calc.graph import DesiredState, ResolvedEndpoint
from felix_client.names import policy_chain_name, profile_chain_name

# The fields a contents-only change may differ in; every other field must be equal.
_CONTENTS = frozenset({"endpoints", "policies", "profiles", "ipsets"})
# The table the policy and profile chains live in.
_FILTER = "filter"


@dataclass(frozen=True)
class Change:
    """A contents-only change from one state to the next."""

    policies: frozenset = frozenset()  # keys of active policies whose value changed
    profiles: frozenset[str] = frozenset()  # active profiles whose rules changed
    ipsets: frozenset[str] = frozenset()  # sets created or whose members changed
    removed_ipsets: frozenset[str] = frozenset()  # sets no longer wanted
    # Endpoints that are not the previous state's objects (of the same shape): only these can hold a
    # changed policy, since the calculation rebuilds exactly the endpoints a policy update touches.
    rebuilt: frozenset[str] = frozenset()

    @property
    def chains(self) -> bool:
        return bool(self.policies or self.profiles)


def _shape(ep: ResolvedEndpoint) -> tuple:
    """What an endpoint's own chains and the dispatch chains are rendered from (its policies by key)."""
    def tiers(side: tuple) -> tuple:
        return tuple((t.name, t.default_pass, tuple(p.key for p in t.policies)) for t in side)

    return ep.key, ep.iface, ep.active, ep.profile_ids, tiers(ep.ingress), tiers(ep.egress)


def _changed(old: dict, new: dict) -> frozenset | None:
    """Keys whose value changed (None when the key sets differ). Walked in step first: consecutive
    snapshots list the same keys in the same order, and this spares hashing a thousand keys."""
    if len(old) != len(new):
        return None
    changed = []
    for (ka, va), (kb, vb) in zip(old.items(), new.items(), strict=True):
        if ka is not kb and ka != kb:
            break
        if va is not vb and va != vb:
            changed.append(kb)
    else:
        return frozenset(changed)
    if old.keys() != new.keys():
        return None
    return frozenset(k for k, v in new.items() if old[k] is not v and old[k] != v)


def contents_change(old: DesiredState, new: DesiredState) -> Change | None:
    """The change from `old` to `new` if it is one of contents only (module docstring), else None."""
    for f in dataclasses.fields(DesiredState):
        if f.name not in _CONTENTS and getattr(old, f.name) != getattr(new, f.name):
            return None
    if len(old.endpoints) != len(new.endpoints):
        return None
    rebuilt = []
    for a, b in zip(old.endpoints, new.endpoints, strict=True):
        if a is not b:
            if _shape(a) != _shape(b):
                return None
            rebuilt.append(b.key)
    policies = _changed(old.policies, new.policies)
    profiles = _changed(old.profiles, new.profiles)
    if policies is None or profiles is None:
        return None
    sets = frozenset(name for name, s in new.ipsets.items() if old.ipsets.get(name) is not s
                     and old.ipsets.get(name) != s)
    return Change(policies, profiles, sets, frozenset(old.ipsets.keys() - new.ipsets.keys()), frozenset(rebuilt))


def chain_names(change: Change) -> set[str]:
    """Every chain the changed policies and profiles may have, in either direction."""
    names = {policy_chain_name(k, inbound) for k in change.policies for inbound in (True, False)}
    names |= {profile_chain_name(p, inbound) for p in change.profiles for inbound in (True, False)}
    return names


def render_chains(state: DesiredState, change: Change, previous: dict[str, rules.Table],
                  iface_prefix: str, version: int = 4) -> dict[str, rules.Table] | None:
    """`previous` (the last full set of tables of this family) with the changed policy and profile
    chains re-rendered; None when a changed chain is not a filter chain the previous rendering has
    exactly where the new one has it (then only a full render is right)."""
    names = chain_names(change)
    if _FILTER not in previous:
        return None
    for table_name, table in previous.items():
        if table_name != _FILTER and names & table.chains.keys():
            return None
    users = [ep for ep in state.endpoints if ep.active and _uses(ep, change)]
    cut = dataclasses.replace(
        state, endpoints=users,
        policies={k: state.policies[k] for k in change.policies},
        profiles={p: state.profiles[p] for p in change.profiles},
    )
    fresh = rules.render_tables(cut, iface_prefix, version)[_FILTER].chains
    old = previous[_FILTER]
    replaced: dict[str, list[str]] = {}
    for name in names:
        if (name in old.chains) != (name in fresh):
            return None
        if name in fresh:
            replaced[name] = fresh[name]
    return {**previous, _FILTER: rules.Table(old.name, old.builtins, {**old.chains, **replaced})}


def _uses(ep: ResolvedEndpoint, change: Change) -> bool:
    if any(p in change.profiles for p in ep.profile_ids):
        return True
    if ep.key not in change.rebuilt:
        return False
    return any(p.key in change.policies for side in (ep.ingress, ep.egress) for t in side for p in t.policies)


def ipset_delta(old: rules.IPSet, new: rules.IPSet) -> list[str]:
    """`ipset restore` lines taking set `old` to `new` member by member (as Felix's ipsets.go writes
    its pending adds and deletes between resyncs): deletions first, so a set at its size limit has
    room; `-exist` so a member the kernel already has (or lacks) is not an error."""
    lines = [f"del {new.name} {m} -exist" for m in sorted(old.members - new.members)]
    lines += [f"add {new.name} {m} -exist" for m in sorted(new.members - old.members)]
    return lines


def ipset_script(changed: Iterable[rules.IPSet], programmed: dict[str, rules.IPSet]) -> str:
    """One `ipset restore` input for the changed sets: member deltas for a set the kernel holds with the
    same type, the whole set (created in place, or rebuilt and swapped) otherwise."""
    lines: list[str] = []
    whole: dict[str, rules.IPSet] = {}
    for s in changed:
        have = programmed.get(s.name)
        if have is not None and have.type == s.type:
            lines += ipset_delta(have, s)
        else:
            whole[s.name] = s
    text = "\n".join(lines) + ("\n" if lines else "")
    return text + rules.render_ipset_restore(whole, existing=whole.keys() & programmed.keys())
