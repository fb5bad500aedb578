"""One iptables table as felix_client renders it, and the last grammar check before the kernel.

Output is text in `iptables-save` form (`*table`, `:chain` declarations, `-A` rules, `COMMIT`), which
is also valid `iptables-restore` input. The helpers here (comments, marks) are shared by the modules
that fill tables.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from felix_client import metrics, validate
from felix_client.names import (
    DEFAULT_MARKS,
    MARK_ACCEPT,
    MARK_PASS,
    Marks,
    escape_comment,
)

log = logging.getLogger("felix_client.rules")

ACCEPTED = f"-m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x}"
NOT_PASSED = f"-m mark --mark 0x0/{MARK_PASS:#x}"
# A mark value and mask as `xmark` and the mark matches write them.
_MARK = re.compile(r"(--set-xmark|--mark) (0x[0-9a-f]+)/(0x[0-9a-f]+)")
# What a rule that fails the last grammar check becomes: it can only narrow what the chain allows.
GUARD_DROP = '-m comment --comment "felix-client: rule failed validation" -j DROP'


def comment_match(text: str) -> str:
    return f'-m comment --comment "{escape_comment(text)}"'


def xmark(value: int, mask: int) -> str:
    return f"-j MARK --set-xmark {value:#x}/{mask:#x}"


@dataclass
class Table:
    """One table: built-in chains with their hook rules, then Calico's chains, in render order."""

    name: str
    builtins: list[str]
    chains: dict[str, list[str]]

    def add(self, chain: str, rule: str | None = None) -> None:
        rules = self.chains.setdefault(chain, [])
        if rule is not None:
            rules.append(rule)

    def render(self) -> str:
        lines = [f"*{self.name}"]
        lines += [f":{c} ACCEPT [0:0]" for c in self.builtins]
        lines += [f":{c} - [0:0]" for c in self.chains if c not in self.builtins]
        for chain, rules in self.chains.items():
            lines += [f"-A {chain} {rule}".rstrip() for rule in rules]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def remarked(self, marks: Marks) -> Table:
        """This table with its marks moved to the allocation of another IptablesMarkMask.

        The renderers write Felix's default allocation (the `MARK_*` constants); Felix allocates
        every mark as the n-th bit of the mask, so `Marks.translate` moves each value and mask to the
        same role under `marks`. Only `--set-xmark`/`--mark` arguments outside quoted text change (a
        comment may spell anything)."""
        if marks == DEFAULT_MARKS:
            return self

        def move(match: re.Match[str]) -> str:
            value, mask = (marks.translate(int(text, 16)) for text in match.group(2, 3))
            return f"{match.group(1)} {value:#x}/{mask:#x}"

        def rule(text: str) -> str:
            # Comments and log prefixes are the only quoted parts, and `escape_comment` keeps quotes
            # out of them: the even pieces of a split on quotes are the rule's own words.
            pieces = text.split('"')
            pieces[::2] = [_MARK.sub(move, piece) for piece in pieces[::2]]
            return '"'.join(pieces)

        chains = {chain: [rule(r) for r in rules_] for chain, rules_ in self.chains.items()}
        return Table(self.name, self.builtins, chains)

    def guarded(self) -> Table:
        """This table with every rule checked against iptables' line grammar (`validate.check_rule_line`)
        and every chain name against Felix's: a failing rule becomes `GUARD_DROP` and a chain with a
        bad name is left out, each logged and counted. The checks before rendering make this a no-op;
        it is the last line of defence against text that would add or break `iptables-restore` lines."""
        chains: dict[str, list[str]] = {}
        for chain, rules_ in self.chains.items():
            if not validate.chain_name(chain):
                metrics.RENDER_GUARD_TRIPPED.labels("chain").inc()
                log.error("left out chain with an invalid name %r", chain)
                continue
            checked: list[str] = []
            for rule in rules_:
                problem = validate.check_rule_line(chain, rule)
                if problem is not None:
                    metrics.RENDER_GUARD_TRIPPED.labels("rule").inc()
                    log.error("replaced an invalid rule in %s with a DROP (%s): %r", chain, problem, rule)
                    rule = GUARD_DROP
                checked.append(rule)
            chains[chain] = checked
        return Table(self.name, self.builtins, chains)
