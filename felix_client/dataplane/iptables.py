"""What changed in one iptables table: the `iptables-restore --noflush` input that takes the kernel from
the state we believe it holds to the rendered table, touching only what differs (Felix's
`felix/iptables/table.go` idea, at chain granularity).

The state is kept as Felix keeps it: a hash per `cali-` chain (of its rules as `iptables-save`
prints them) and, for the kernel chains we hook into, their rules in order. It comes either from
parsing `iptables-save` (a resync, or after a failed restore, when memory cannot be trusted) or
from the previous delta (what the last successful restore left), so an edit between resyncs needs
no read of the kernel. Pure functions: no processes here.
"""

from __future__ import annotations

import hashlib
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from felix_client import rules

# Hook rules in the kernel chains carry this comment so a later apply can find and replace exactly
# its own rules, leaving everyone else's (kube-proxy, docker, the host's firewall) untouched.
HOOK_COMMENT = "cali:hook"
CHAIN_PREFIX = "cali-"
# Kernel chains whose Calico jump Felix appends rather than inserts (after kube-proxy's rules): nat
# POSTROUTING only (mangle POSTROUTING's is inserted, int_dataplane.go).
APPEND_HOOK_CHAINS = {("nat", "POSTROUTING")}
_JUMP_TO_OURS = re.compile(r" -[jg] cali-")
UNTIDY = "untidy"  # the remembered hash of a chain holding dead rules below a RETURN (insert_delta)
_PROTOCOL = re.compile(r"-p ([A-Za-z][\w-]*)")


def _protocol_number(match: re.Match[str]) -> str:
    try:
        return f"-p {socket.getprotobyname(match[1])}"
    except OSError:
        return match[0]


def canonical(line: str) -> str:
    """A rule line as written or as dumped: `iptables-save` names protocols from /etc/protocols
    (`-p ipencap` for our `-p 4`, as Felix writes it), so both sides compare by number."""
    return _PROTOCOL.sub(_protocol_number, line) if " -p " in line else line


def chain_hash(lines: Iterable[str]) -> str:
    """Hash of a chain's rules, each as the full `-A chain …` line (written or dumped)."""
    digest = hashlib.blake2b(digest_size=16)
    for line in lines:
        digest.update(canonical(line).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def chain_lines(chain: str, chain_rules: Iterable[str]) -> list[str]:
    return [f"-A {chain} {rule}".rstrip() for rule in chain_rules]


def is_ours(line: str) -> bool:
    """One of our hook rules (an `-A` line of a chain that is not ours)."""
    return HOOK_COMMENT in line or _JUMP_TO_OURS.search(line) is not None


@dataclass(frozen=True)
class TableState:
    """One table as we believe the kernel holds it."""

    chains: dict[str, str] = field(default_factory=dict)  # every cali- chain -> chain_hash of its rules
    # Kernel chains (built-in, or anyone's with one of our rules in it) -> all their rules, ours and
    # others', in order: where ours sit among the others decides whether the hooks need rewriting.
    hooks: dict[str, tuple[str, ...]] = field(default_factory=dict)


def parse_save(text: str) -> TableState:
    """The state of the one table in `iptables-save -t TABLE` output."""
    declared: dict[str, bool] = {}  # chain -> built-in (it has a policy, not "-")
    lines: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(":"):
            name, policy = [*line[1:].split(), "-"][:2]
            declared[name] = policy != "-"
        elif line.startswith("-A "):
            lines.setdefault(line.split(maxsplit=2)[1], []).append(line.rstrip())
    chains = {c: chain_hash(lines.get(c, ())) for c in declared if c.startswith(CHAIN_PREFIX)}
    hooks = {
        c: tuple(lines.get(c, ())) for c, builtin in declared.items()
        if not c.startswith(CHAIN_PREFIX) and (builtin or any(is_ours(line) for line in lines.get(c, ())))
    }
    return TableState(chains, hooks)


def _tagged_hooks(desired: rules.Table, chain: str) -> tuple[list[str], list[str]]:
    """Our rules for kernel chain `chain` as `-A` lines: those that go to the top, in order, and those
    appended at the end."""
    tagged = [f'-A {chain} -m comment --comment "{HOOK_COMMENT}" {rule}'.rstrip()
              for rule in desired.chains.get(chain, [])]
    if (desired.name, chain) in APPEND_HOOK_CHAINS:
        return [], tagged
    # The jump(s) up to the first one into a cali- chain go to the top; the rest (FORWARD's
    # accept-mark rules) are appended, as Felix does.
    split = next((i + 1 for i, line in enumerate(tagged) if _JUMP_TO_OURS.search(line)), 0)
    return tagged[:split], tagged[split:]


def _hooks_in_place(have: tuple[str, ...], head: list[str], tail: list[str]) -> bool:
    ours = sum(1 for line in have if is_ours(line))
    if ours != len(head) + len(tail):
        return False
    same = [canonical(line) for line in have[:len(head)]] == [canonical(line) for line in head]
    return same and [canonical(line) for line in have[len(have) - len(tail):]] == [canonical(line) for line in tail]


@dataclass(frozen=True)
class Delta:
    text: str | None  # iptables-restore --noflush input; None when the kernel already matches
    state: TableState  # what the kernel holds once `text` is restored
    written: tuple[str, ...] = ()  # chains created or rewritten
    deleted: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()  # kernel chains whose hook rules are replaced


def table_delta(desired: rules.Table, old: TableState) -> Delta:
    """The one-transaction restore input from `old` to `desired`: rewrite the chains whose hash
    differs, create new ones, delete chains no longer wanted once nothing of ours references them,
    and replace our hook rules in a kernel chain only where they are not exactly in place."""
    wanted = {c: chain_lines(c, r) for c, r in desired.chains.items() if c not in desired.builtins}
    hashes = {c: chain_hash(lines) for c, lines in wanted.items()}
    written = [c for c, h in hashes.items() if old.chains.get(c) != h]
    stale = sorted(c for c in old.chains if c not in wanted)

    deletes: list[str] = []
    adds: list[str] = []
    new_hooks: dict[str, tuple[str, ...]] = {}
    replaced: list[str] = []
    for chain in [*desired.builtins, *sorted(c for c in old.hooks if c not in desired.builtins)]:
        have = old.hooks.get(chain, ())
        head, tail = _tagged_hooks(desired, chain) if chain in desired.builtins else ([], [])
        if _hooks_in_place(have, head, tail):
            new_hooks[chain] = have
            continue
        replaced.append(chain)
        # Deleted by their full spec as the kernel printed it (or as we wrote it).
        deletes += ["-D" + line[2:] for line in have if is_ours(line)]
        adds += [f"-I {chain} {i + 1}{line[len('-A ' + chain):]}" for i, line in enumerate(head)]
        adds += tail
        new_hooks[chain] = (*head, *(line for line in have if not is_ours(line)), *tail)

    kept = {c: h for c, h in new_hooks.items() if c in desired.builtins or any(is_ours(line) for line in h)}
    state = TableState(hashes, kept)
    if not (written or stale or replaced):
        return Delta(None, state)
    lines = [f"*{desired.name}"]
    # Declaring a chain with --noflush creates it or flushes it: a changed chain is rewritten whole,
    # and a stale one is emptied first so chains referencing each other can all be deleted.
    lines += [f":{c} - [0:0]" for c in [*written, *stale]]
    lines += deletes  # the old hooks go before the chains they jump to
    for chain in written:
        lines += wanted[chain]
    lines += adds
    lines += [f"-X {c}" for c in stale]
    lines.append("COMMIT")
    return Delta("\n".join(lines) + "\n", state, tuple(written), tuple(stale), tuple(replaced))


def chains_delta(desired: rules.Table, chains: Iterable[str], old: TableState) -> Delta:
    """`table_delta` for a change known to touch only `chains` (existing chains of ours, in `desired`)
    and no hook rule: hashes just those chains, so a one-policy edit costs one chain, not the table's
    7,000 rules (felix_client.dataplane.incremental decides when this holds)."""
    written = []
    hashes = dict(old.chains)
    for chain in chains:
        digest = chain_hash(chain_lines(chain, desired.chains[chain]))
        if hashes.get(chain) != digest:
            hashes[chain] = digest
            written.append(chain)
    state = TableState(hashes, old.hooks)
    if not written:
        return Delta(None, state)
    lines = [f"*{desired.name}", *(f":{c} - [0:0]" for c in written)]
    for chain in written:
        lines += chain_lines(chain, desired.chains[chain])
    lines.append("COMMIT")
    return Delta("\n".join(lines) + "\n", state, tuple(written))


def insert_delta(desired: rules.Table, chains: Iterable[str], delta: Delta) -> Delta:
    """`delta` (from `chains_delta`) with `chains` not flushed and refilled but given their new rules at
    the top, closed by `-j RETURN`: the old rules below are never reached, so each chain means its new
    rules from this commit on, and the transaction deletes nothing (the dataplane's make-before-break;
    the chains are rewritten clean later). The other written chains are rewritten as in `delta`."""
    inserted = set(chains)
    rewritten = [c for c in delta.written if c not in inserted]
    lines = [f"*{desired.name}", *(f":{c} - [0:0]" for c in rewritten)]
    for chain in rewritten:
        lines += chain_lines(chain, desired.chains[chain])
    for chain in sorted(inserted):
        new = [*desired.chains[chain], "-j RETURN"]
        lines += [f"-I {chain} {i} {rule}".rstrip() for i, rule in enumerate(new, 1)]
    lines.append("COMMIT")
    return Delta("\n".join(lines) + "\n", delta.state, delta.written, delta.deleted, delta.hooks)
