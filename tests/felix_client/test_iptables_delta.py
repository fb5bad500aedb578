"""The incremental iptables restore input (`felix_client.dataplane.iptables`), without a kernel.

`RestoreModel` plays `iptables-restore --noflush` for the commands the delta uses (declare = create
or flush, -A, -I, -D by spec, -X of an empty unreferenced chain), failing as the kernel would, so a
delta that deletes a chain still in use or a rule that is not there fails here too. The netns test
(test_iptables_incremental_netns.py) checks the same against the real kernel.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from felix_client import rules
from felix_client.dataplane.iptables import HOOK_COMMENT, TableState, canonical, parse_save, table_delta

BUILTINS = ["INPUT", "FORWARD", "OUTPUT"]


class RestoreModel:
    """One table as the kernel holds it: chains in creation order, built-ins first."""

    def __init__(self, foreign: dict[str, list[str]] | None = None) -> None:
        self.chains: dict[str, list[str]] = {c: [] for c in BUILTINS}
        for chain, chain_rules in (foreign or {}).items():
            self.chains.setdefault(chain, []).extend(f"-A {chain} {r}" for r in chain_rules)
        self.restores = 0

    def save(self) -> str:
        lines = ["*filter"]
        lines += [f":{c} {'ACCEPT' if c in BUILTINS else '-'} [0:0]" for c in self.chains]
        lines += [line for chain_rules in self.chains.values() for line in chain_rules]
        return "\n".join([*lines, "COMMIT"]) + "\n"

    @staticmethod
    def referenced(chains: dict[str, list[str]], chain: str) -> bool:
        return any(re.search(rf" -[jg] {re.escape(chain)}( |$)", line)
                   for chain_rules in chains.values() for line in chain_rules)

    def restore(self, text: str) -> None:
        """All or nothing, as one iptables-restore transaction."""
        chains = {c: list(r) for c, r in self.chains.items()}
        lines = text.splitlines()
        assert lines[0] == "*filter" and lines[-1] == "COMMIT", text
        for line in lines[1:-1]:
            if line.startswith(":"):
                chains[line[1:].split()[0]] = []
                continue
            op, chain, rest = [*line.split(" ", 2), ""][:3]
            assert chain in chains, f"no chain {chain}: {line}"
            if op == "-A":
                chains[chain].append(line)
            elif op == "-I":
                position, spec = rest.split(" ", 1)
                chains[chain].insert(int(position) - 1, f"-A {chain} {spec}")
            elif op == "-D":
                spec = canonical(f"-A {chain} {rest}")
                match = [i for i, r in enumerate(chains[chain]) if canonical(r) == spec]
                assert match, f"no such rule: {line}"
                del chains[chain][match[0]]
            elif op == "-X":
                assert chain not in BUILTINS and not chains[chain], f"chain not empty: {line}"
                del chains[chain]
                assert not self.referenced(chains, chain), f"chain still referenced: {line}"
            else:
                raise AssertionError(f"unexpected command {line}")
        self.chains = chains
        self.restores += 1


def table(chains: dict[str, list[str]], hooks: dict[str, list[str]] | None = None) -> rules.Table:
    t = rules.Table("filter", list(BUILTINS), {})
    for chain, chain_rules in (hooks or {"FORWARD": ["-j cali-FORWARD"]}).items():
        for rule in chain_rules:
            t.add(chain, rule)
    for chain, chain_rules in chains.items():
        t.add(chain)
        for rule in chain_rules:
            t.add(chain, rule)
    return t


def hook(chain: str, rule: str) -> str:
    return f'-A {chain} -m comment --comment "{HOOK_COMMENT}" {rule}'


def matches(model: RestoreModel, desired: rules.Table, foreign: dict[str, list[str]]) -> bool:
    """The kernel holds exactly the desired chains; our hooks sit where they belong around the
    foreign rules, which are all still there in their order."""
    ours = {c: r for c, r in model.chains.items() if c.startswith("cali-")}
    want = {c: [canonical(f"-A {c} {x}".rstrip()) for x in r]
            for c, r in desired.chains.items() if c not in desired.builtins}
    if {c: [canonical(x) for x in r] for c, r in ours.items()} != want:
        return False
    for chain in BUILTINS:
        hooks = [hook(chain, r) for r in desired.chains.get(chain, [])]
        others = [f"-A {chain} {r}" for r in foreign.get(chain, [])]
        split = 1 if hooks else 0  # the first hook is the jump: inserted; the rest appended
        if model.chains[chain] != [*hooks[:split], *others, *hooks[split:]]:
            return False
    return True


def test_unchanged_table_writes_nothing() -> None:
    desired = table({"cali-FORWARD": ["-j cali-a"], "cali-a": ["-p 4 -j DROP"]})
    model = RestoreModel()
    first = table_delta(desired, parse_save(model.save()))
    model.restore(first.text or "")
    assert set(first.written) == {"cali-FORWARD", "cali-a"}
    assert first.hooks == ("FORWARD",)
    again = table_delta(desired, first.state)
    assert again.text is None
    assert again.state == first.state
    # Read back from the kernel (which names protocol 4 "ipencap") the table needs nothing either.
    dumped = model.save().replace("-p 4 ", "-p ipencap ")
    assert table_delta(desired, parse_save(dumped)).text is None


def test_a_changed_chain_is_the_only_one_rewritten() -> None:
    before = table({"cali-FORWARD": ["-j cali-pi-x", "-j cali-pi-y"], "cali-pi-x": ["-p tcp -j ACCEPT"],
                    "cali-pi-y": ["-p udp -j ACCEPT"]})
    after = table({"cali-FORWARD": ["-j cali-pi-x", "-j cali-pi-y"], "cali-pi-x": ["-p tcp -j ACCEPT"],
                   "cali-pi-y": ["-p udp -m multiport --dports 53 -j ACCEPT"]})
    model = RestoreModel()
    first = table_delta(before, parse_save(model.save()))
    model.restore(first.text or "")
    delta = table_delta(after, first.state)
    assert delta.text == ("*filter\n:cali-pi-y - [0:0]\n-A cali-pi-y -p udp -m multiport --dports 53 -j ACCEPT\n"
                          "COMMIT\n")
    assert delta.written == ("cali-pi-y",)
    assert not delta.deleted
    assert not delta.hooks
    model.restore(delta.text)
    assert matches(model, after, {})


def test_a_chain_no_longer_wanted_is_deleted_after_its_references() -> None:
    before = table({"cali-FORWARD": ["-j cali-pi-x"], "cali-pi-x": ["-g cali-pi-y"], "cali-pi-y": ["-j DROP"]})
    after = table({"cali-FORWARD": ["-j ACCEPT"]})
    model = RestoreModel()
    first = table_delta(before, parse_save(model.save()))
    model.restore(first.text or "")
    delta = table_delta(after, first.state)
    assert delta.deleted == ("cali-pi-x", "cali-pi-y")
    assert delta.written == ("cali-FORWARD",)
    lines = (delta.text or "").splitlines()
    assert lines.index("-X cali-pi-x") > lines.index("-A cali-FORWARD -j ACCEPT")
    model.restore(delta.text or "")
    assert matches(model, after, {})
    assert table_delta(after, parse_save(model.save())).text is None


def test_hooks_are_replaced_only_when_they_change_or_move() -> None:
    desired = table({"cali-FORWARD": [], "cali-INPUT": []},
                    {"FORWARD": ["-j cali-FORWARD", "-j MARK --set-xmark 0x10000/0x10000"]})
    foreign = {"FORWARD": ["-s 192.0.2.1/32 -j DROP"]}
    model = RestoreModel(foreign)
    first = table_delta(desired, parse_save(model.save()))
    model.restore(first.text or "")
    assert matches(model, desired, foreign)
    assert table_delta(desired, parse_save(model.save())).text is None

    # A new hook in another chain: the FORWARD hooks stay as they are.
    more = table({"cali-FORWARD": [], "cali-INPUT": []},
                 {"FORWARD": ["-j cali-FORWARD", "-j MARK --set-xmark 0x10000/0x10000"], "INPUT": ["-j cali-INPUT"]})
    delta = table_delta(more, first.state)
    assert delta.hooks == ("INPUT",)
    assert not delta.written
    assert (delta.text or "").splitlines()[1:-1] == [f'-I INPUT 1 -m comment --comment "{HOOK_COMMENT}" -j cali-INPUT']
    model.restore(delta.text or "")
    assert matches(model, more, foreign)

    # Someone inserts above our jump: only a resync sees it, and it moves our hooks back to the top.
    model.chains["FORWARD"].insert(0, "-A FORWARD -s 192.0.2.2/32 -j ACCEPT")
    foreign = {"FORWARD": ["-s 192.0.2.2/32 -j ACCEPT", "-s 192.0.2.1/32 -j DROP"]}
    assert table_delta(more, delta.state).text is None
    repair = table_delta(more, parse_save(model.save()))
    assert repair.hooks == ("FORWARD",)
    assert not repair.written
    model.restore(repair.text or "")
    assert matches(model, more, foreign)
    assert repair.state == parse_save(model.save())


def test_our_rule_in_a_foreign_chain_is_removed() -> None:
    desired = table({"cali-FORWARD": []})
    model = RestoreModel({"KUBE-X": ["-j cali-old", "-j RETURN"]})
    model.chains["cali-old"] = []
    delta = table_delta(desired, parse_save(model.save()))
    assert delta.deleted == ("cali-old",)
    assert delta.hooks == ("FORWARD", "KUBE-X")
    model.restore(delta.text or "")
    assert model.chains["KUBE-X"] == ["-A KUBE-X -j RETURN"]
    assert "cali-old" not in model.chains


CHAIN_NAMES = [f"cali-pi-{i}" for i in range(6)]
RULES = ["-j ACCEPT", "-p 4 -j DROP", "-p tcp -m multiport --dports 80 -j ACCEPT", '-m comment --comment "x" -j DROP']


@st.composite
def desired_tables(draw: st.DrawFn) -> rules.Table:
    names = draw(st.lists(st.sampled_from(CHAIN_NAMES), unique=True, max_size=5))
    chains: dict[str, list[str]] = {"cali-FORWARD": [f"-j {n}" for n in names]}
    for i, name in enumerate(names):
        # A chain may jump to a later one, so deletions must respect references among our chains.
        targets = [f"-g {n}" for n in names[i + 1:]]
        chains[name] = draw(st.lists(st.sampled_from(RULES + targets), max_size=3))
    hooks = {"FORWARD": ["-j cali-FORWARD", *draw(st.lists(st.just("-j MARK --set-xmark 0x10000/0x10000"),
                                                           max_size=1))]}
    if draw(st.booleans()):
        hooks["INPUT"] = ["-j cali-FORWARD"]
    return table(chains, hooks)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(desired_tables(), st.booleans()), min_size=1, max_size=6))
def test_any_sequence_of_edits_ends_where_a_full_apply_would(steps: list[tuple[rules.Table, bool]]) -> None:
    foreign = {"FORWARD": ["-s 192.0.2.1/32 -j DROP"], "INPUT": ["-p tcp -j ACCEPT"]}
    model = RestoreModel(foreign)
    state: TableState | None = None
    for desired, resync in steps:
        delta = table_delta(desired, parse_save(model.save()) if resync or state is None else state)
        if delta.text is not None:
            model.restore(delta.text)
        state = delta.state
        assert matches(model, desired, foreign)
        # What we remember is what the kernel holds: the next resync finds nothing to do.
        assert state == parse_save(model.save())
        assert table_delta(desired, state).text is None
