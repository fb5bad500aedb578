"""Program one network namespace from a `DesiredState`.

The dataplane owns the rendering (`felix_client.rules`, once per apply) and the memory of what it
last programmed, so data flows one way: calculation → rendering → kernel. A full apply
(`resync=True`) compares with what the kernel holds (iptables-save, ipset list, a netlink route
dump), repairing drift. In between (`resync=False`) it leaves alone the parts it would write
unchanged, and diffs each table it does write against what the last successful restore left (chain
hashes and hook rules, `felix_client.dataplane.iptables`), as Felix does between its refreshes, so
a policy edit neither dumps the table nor restores unchanged chains. A failed or unfinished apply
forgets that memory and the next one programs (and reads) everything.

Between resyncs a change of contents only (the rules of some policies or profiles, the members of
some IP sets, with every endpoint's chains and the static parts unchanged) is not rendered whole:
`felix_client.dataplane.incremental` finds it by identity against the last apply's state, renders
just the changed chains, and the apply restores just those (one iptables-restore) and writes just
the changed set members (one ipset restore), as Felix's table and IP set managers do.

With `make_before_break` (the agent's choice on the nft backend) such a chain is not flushed and
refilled but gets its new rules inserted at the top, closed by a `-j RETURN` (so what follows, the
old rules, is never reached: the chain means exactly its new rules from that commit on), and
`tidy()` rewrites it clean afterwards. On nft, a transaction that deletes rules makes
iptables-restore wait for the kernel to free them (about 14 ms here on nft, whatever the table's size),
while one that only adds rules does not; so the edit takes effect without that wait, and the
deletion is paid once the apply is done. Legacy rewrites the whole table blob either way.

Both families: the IPv4 tables with iptables-restore, and on a node that uses IPv6 (`state.ipv6`)
the IPv6 tables with ip6tables-restore, each diffed against its own memory; the `cali40`/`cali60` sets
in one `ipset restore`; the routes of both families over netlink.

`netns=None` programs the namespace this process runs in (the agent is started with
`ip netns exec NODE` in tests, or on the host in production); a name runs every command through
`ip netns exec` and opens netlink in that namespace, which the tests use to inspect and disturb it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from felix_client import rules, validate
from felix_client.calc.graph import DesiredState
from felix_client.calc.routes import Route
from felix_client.dataplane import incremental, iptables, vxlan
from felix_client.dataplane.iptables import HOOK_COMMENT  # noqa: F401  (the tests' import)
from felix_client.dataplane.vxlan import OwnVTEP
from felix_client.names import (
    FELIX_ROUTE_PROTO,
    IPSET_OWNED_PREFIX,
    IPSET_TEMP_PREFIX,
    IPSET_V6_OWNED_PREFIX,
    IPSET_V6_TEMP_PREFIX,
    RTPROT_BOOT,
    VXLAN_DEVICE,
    VXLAN_V6_DEVICE,
    WORKLOAD_IFACE_PREFIX,
)

log = logging.getLogger("felix_client.dataplane")

TABLES = ("raw", "mangle", "nat", "filter")
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


class DataplaneError(RuntimeError):
    pass


def detect_backend(iptables: str = "iptables") -> str:
    """'nft' or 'legacy', from `iptables --version` of the binary the host uses."""
    try:
        out = subprocess.run([iptables, "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "legacy"
    return "nft" if "nf_tables" in out else "legacy"


def _tool(backend: str, name: str) -> str:
    # Use the variant matching the host's `iptables` so our rules land where the host's tools look.
    base, action = name.split("-", 1)  # "iptables" or "ip6tables", "restore" or "save"
    specific = f"{base}-{backend}-{action}"
    return specific if shutil.which(specific) else name


@dataclass
class ApplyStats:
    iptables_tables: int = 0  # tables restored
    iptables_reads: int = 0  # iptables-save runs
    ip6tables_tables: int = 0  # the same for IPv6 (ip6tables-restore, ip6tables-save)
    ip6tables_reads: int = 0
    chains_written: int = 0  # chains created or rewritten (both families)
    chains_deleted: int = 0
    ipsets_written: int = 0
    ipsets_destroyed: int = 0
    routes_added: int = 0
    routes_deleted: int = 0
    contents_applies: int = 0  # applies that rendered and wrote only changed chains and sets


@dataclass
class _Rendered:
    """What the last successful apply rendered (and so the kernel holds, until a resync says otherwise)."""

    state: DesiredState
    # "raw", "nat", "filter" (and "ip6-<table>" on a node using IPv6) -> Table; "ipsets" -> name -> IPSet.
    parts: dict[str, object] = field(default_factory=dict)

    def tables(self, version: int) -> dict[str, rules.Table]:
        prefix = "ip6-" if version == 6 else ""
        return {name: table for name in TABLES
                if isinstance(table := self.parts.get(prefix + name), rules.Table)}

    def sets(self) -> dict[str, rules.IPSet]:
        sets = self.parts.get("ipsets")
        return sets if isinstance(sets, dict) else {}


class Dataplane:
    def __init__(
        self, netns: str | None = None, *, iface_prefix: str = WORKLOAD_IFACE_PREFIX, backend: str | None = None,
        make_before_break: bool = False,
    ) -> None:
        self.netns = netns
        self.iface_prefix = iface_prefix
        self.backend = backend or detect_backend()
        self.restore = _tool(self.backend, "iptables-restore")
        self.save = _tool(self.backend, "iptables-save")
        self.restore6 = _tool(self.backend, "ip6tables-restore")
        self.save6 = _tool(self.backend, "ip6tables-save")
        self.stats = ApplyStats()
        self.missing_devices: set[str] = set()  # route devices absent at the last apply_routes
        # Per table, what the last successful restore left in the kernel; absent: read it first.
        self.programmed: dict[str, iptables.TableState] = {}
        self.programmed6: dict[str, iptables.TableState] = {}  # the same for the IPv6 tables
        # What the last successful apply rendered, for `apply`'s skip and its contents-only path.
        self._rendered: _Rendered | None = None
        self._links_dirty = True  # routes, sysctls or VXLAN changed since they were last programmed
        self.phases: dict[str, float] = {}  # the last apply's seconds: render, ipsets, iptables, links
        # Insert-then-tidy for contents-only chain rewrites (module docstring); nft only.
        self.make_before_break = make_before_break and self.backend == "nft"
        # (IP version, table) -> chains holding dead rules below a RETURN, until `tidy`.
        self.untidy: dict[tuple[int, str], set[str]] = {}

    # --- helpers ------------------------------------------------------------------------------

    def _run(self, argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
        full = [*(["ip", "netns", "exec", self.netns] if self.netns else []), *argv]
        proc = subprocess.run(full, input=stdin, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise DataplaneError(f"{shlex.join(full)} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                                 f"input:\n{stdin or ''}")
        return proc.stdout

    def _ipr(self) -> Any:  # pyroute2 has no type hints
        from pyroute2 import IPRoute, NetNS

        return NetNS(self.netns) if self.netns else IPRoute()

    # --- whole apply --------------------------------------------------------------------------

    def apply(self, state: DesiredState, own_vteps: Sequence[OwnVTEP] = (), *, resync: bool = True,
              routes_changed: bool = True) -> list[str]:
        """Bring the namespace to `state`; returns the parts left alone as unchanged (sorted).

        The dataplane renders `state` (once: tables and IP sets) and remembers what its last
        successful apply programmed, so data flows one way (calculation → rendering → kernel). With
        `resync=False` it leaves alone the parts ("ipsets", "raw", "nat", "filter", and "links":
        sysctls, VXLAN device and routes) that are unchanged since then (links: while no route
        changed, `routes_changed`), and diffs the tables it does write against its memory instead of
        reading them (`apply_table`). Re-reading and rewriting all of it took most of an apply;
        drift there is repaired by the caller's periodic `resync=True`, as Felix's refresh does.

        A change of contents only (module docstring) takes `_apply_contents` instead: nothing else is
        rendered, compared or written.

        Order matters: sets before the rules that use them, stale sets only after the rules stopped
        referencing them, routes last."""
        self._links_dirty |= routes_changed
        # Forgotten until this apply is known to have worked: a failure leaves the kernel in a state
        # we did not see, so the next apply programs everything.
        previous, self._rendered = self._rendered, None
        self.phases = {}
        try:
            done = None
            if not resync and previous is not None:
                change = incremental.contents_change(previous.state, state)
                if change is not None:
                    done = self._apply_contents(previous, state, change)
            if done is None:
                done = self._apply_whole(state, previous, resync)
            rendered, skip = done
            if "links" in skip:
                self.phases["links"] = 0.0
            else:
                started = time.perf_counter()
                self._apply_links(state, own_vteps)
                self.phases["links"] = time.perf_counter() - started
        except Exception:
            self._links_dirty = True
            raise
        self._rendered = rendered
        if "links" not in skip:
            # A workload interface the CNI has not created yet: its route and sysctls wait for it, so
            # every apply tries again rather than only the next resync. (A missing tunnel device, say
            # tunl0 without the ipip module, is not coming soon: the resync retries that.)
            self._links_dirty = any(dev.startswith(self.iface_prefix) for dev in self.missing_devices)
        return sorted(skip)

    def _apply_whole(self, state: DesiredState, previous: _Rendered | None,
                     resync: bool) -> tuple[_Rendered, set[str]]:
        """Render everything; write what differs from the last apply (everything on a resync)."""
        started = time.perf_counter()
        tables = rules.render_tables(state, self.iface_prefix)
        wanted: dict[str, object] = dict(tables)
        # IPv6 tables under "ip6-<table>" (only on a node that uses IPv6; see DesiredState.ipv6).
        tables6 = rules.render_tables(state, self.iface_prefix, 6) if state.ipv6 else {}
        # IPv6 switched off (its last pool, block or host endpoint gone): take our IPv6 chains out
        # rather than leave the last IPv6 policy - a host endpoint's drops, say - in force.
        retire6 = not state.ipv6 and bool(self.programmed6)
        if retire6:
            tables6 = {name: rules.Table(name, table.builtins, {}) for name, table in tables.items()}
        wanted.update({f"ip6-{name}": table for name, table in tables6.items()})
        sets = rules.desired_ipsets(state)
        wanted["ipsets"] = sets
        skip: set[str] = set()
        if not resync and previous is not None:
            skip = {name for name, value in wanted.items() if previous.parts.get(name) == value}
        if not (resync or self._links_dirty):
            skip.add("links")
        self.phases["render"] = time.perf_counter() - started
        self._apply(state, tables, sets, skip, resync, tables6)
        if retire6:
            self.programmed6.clear()
        return _Rendered(state, wanted), skip

    def _apply_contents(self, previous: _Rendered, state: DesiredState,
                        change: incremental.Change) -> tuple[_Rendered, set[str]] | None:
        """Write only the chains and sets `change` touched; None (nothing written) where the change
        turns out not to be one of contents only, and the whole path must run."""
        started = time.perf_counter()
        parts = dict(previous.parts)
        written: dict[str, tuple[int, rules.Table, list[str]]] = {}  # part -> (version, table, chains)
        if change.chains:
            names = incremental.chain_names(change)
            for version, prefix in ((4, ""), (6, "ip6-")):
                old = previous.tables(version)
                if version == 6 and not state.ipv6:
                    continue
                programmed = self.programmed6 if version == 6 else self.programmed
                tables = incremental.render_chains(state, change, old, self.iface_prefix, version)
                if tables is None or "filter" not in programmed:
                    return None
                table = tables["filter"]
                written[prefix + "filter"] = (version, table, sorted(names & table.chains.keys()))
                parts[prefix + "filter"] = table
        programmed_sets = previous.sets()
        changed_sets = self._changed_sets(state, change, programmed_sets)
        sets = {name: s for name, s in programmed_sets.items() if name not in change.removed_ipsets}
        sets.update(changed_sets)
        parts["ipsets"] = sets
        self.phases["render"] = time.perf_counter() - started

        started = time.perf_counter()
        script = incremental.ipset_script(changed_sets.values(), programmed_sets)
        if script:
            self._run(["ipset", "restore"], script)
            self.stats.ipsets_written += len(changed_sets)
        self.phases["ipsets"] = time.perf_counter() - started
        started = time.perf_counter()
        for name, (version, table, chains) in written.items():
            self._apply_chains(name.removeprefix("ip6-"), table, chains, version)
        self.phases["iptables"] = time.perf_counter() - started
        self.destroy_ipsets(set(change.removed_ipsets))
        self.stats.contents_applies += 1
        skip = {name for name in previous.parts if name not in written}
        if not (change.ipsets or change.removed_ipsets):
            skip.add("ipsets")
        else:
            skip.discard("ipsets")
        if not self._links_dirty:
            skip.add("links")
        return _Rendered(state, parts), skip

    @staticmethod
    def _changed_sets(state: DesiredState, change: incremental.Change,
                      programmed: dict[str, rules.IPSet]) -> dict[str, rules.IPSet]:
        """The changed sets as `rules.desired_ipsets` would give them, checking only the members that
        are new since the last apply (the others passed the same per-member check then): with sets of
        10,000 pods, checking every member again cost more than the rest of an edit."""
        if not change.ipsets:
            return {}
        news: dict[str, frozenset[str]] = {}
        for name in change.ipsets:
            have = programmed.get(name)
            wanted = state.ipsets[name].members
            news[name] = wanted if have is None else wanted - have.members
        cut = dataclasses.replace(state, ipsets={name: dataclasses.replace(state.ipsets[name], members=news[name])
                                                 for name in change.ipsets})
        checked = rules.desired_ipsets(cut)  # the static sets come along; they are unchanged
        out: dict[str, rules.IPSet] = {}
        for name in sorted(change.ipsets):
            have = programmed.get(name)
            members = checked[name].members
            if have is not None:
                members |= have.members & state.ipsets[name].members
            out[name] = dataclasses.replace(checked[name], members=members)
        return out

    def _apply_links(self, state: DesiredState, own_vteps: Sequence[OwnVTEP]) -> None:
        self.apply_sysctls(state)
        for vtep in own_vteps:  # a family's device only while a pool of that family uses VXLAN
            if state.vxlan if vtep.version == 4 else state.vxlan6:
                self.ensure_vxlan_device(vtep)
        with self._ipr() as ipr:
            for version, enabled in ((4, state.vxlan), (6, state.vxlan6)):
                if not enabled:
                    vxlan.remove_device(ipr, version)
        self.apply_routes(state)

    def _apply(self, state: DesiredState, tables: dict[str, rules.Table], sets: dict[str, rules.IPSet],
               skip: set[str], resync: bool, tables6: dict[str, rules.Table] | None = None) -> None:
        started = time.perf_counter()
        existing_sets = set() if "ipsets" in skip else self.list_ipsets()
        if "ipsets" not in skip:
            self.write_ipsets(sets, existing_sets)
        self.phases["ipsets"] = time.perf_counter() - started
        started = time.perf_counter()
        for name in TABLES:
            if name not in skip:
                self.apply_table(name, tables[name], resync=resync)
        for name, table in (tables6 or {}).items():
            if f"ip6-{name}" not in skip:
                self.apply_table(name, table, resync=resync, version=6)
        self.phases["iptables"] = time.perf_counter() - started
        owned = (IPSET_OWNED_PREFIX, IPSET_V6_OWNED_PREFIX)
        stale = {s for s in existing_sets if s.startswith(owned) and s not in sets}
        self.destroy_ipsets(stale)

    # --- iptables -----------------------------------------------------------------------------

    def apply_table(self, table: str, desired: rules.Table, *, resync: bool = True, version: int = 4) -> None:
        """One iptables-restore (ip6tables-restore for `version` 6; one kernel transaction) of what
        differs. `resync` re-reads the table with iptables-save first, repairing drift; otherwise the
        last restore's result is trusted."""
        programmed = self.programmed6 if version == 6 else self.programmed
        old = None if resync else programmed.get(table)
        fresh = old is None
        if old is None:
            old = self.read_table(table, version)
        delta = iptables.table_delta(desired, old)
        # Forgotten until the restore is known to have worked: a failure or a timeout leaves the kernel
        # in a state we did not see, so the next apply must read it.
        programmed.pop(table, None)
        try:
            self._restore(delta, version)
        except DataplaneError:
            if fresh:
                raise
            # Memory disagreed with the kernel (a hook rule deleted behind our back makes its -D fail):
            # read the truth and try once more, still as one transaction.
            log.warning("incremental restore of %s (IPv%d) failed; re-reading the table", table, version)
            delta = iptables.table_delta(desired, self.read_table(table, version))
            self._restore(delta, version)
        programmed[table] = delta.state

    def _apply_chains(self, table: str, desired: rules.Table, chains: list[str], version: int = 4) -> None:
        """One iptables-restore of just `chains` of `table` (a contents-only change: no hook rule and no
        other chain differs), from memory; if the kernel disagrees, read it and restore what differs."""
        programmed = self.programmed6 if version == 6 else self.programmed
        untidy = self.untidy.setdefault((version, table), set())
        old = programmed.pop(table)
        delta = iptables.chains_delta(desired, chains, old)
        # A chain already untidy is rewritten whole: stacking versions would only grow it.
        insert = [c for c in delta.written if c in old.chains and c not in untidy] if self.make_before_break else []
        try:
            if insert:
                self._restore(iptables.insert_delta(desired, insert, delta), version)
            else:
                self._restore(delta, version)
        except DataplaneError:
            log.warning("incremental restore of %s (IPv%d) failed; re-reading the table", table, version)
            delta = iptables.table_delta(desired, self.read_table(table, version))
            self._restore(delta, version)
            insert = []
        untidy.difference_update(delta.written)
        if insert:
            untidy.update(insert)
            # The kernel holds more than the rendered chain: a hash nothing renders, so any later
            # delta (or `tidy`) rewrites it.
            delta = dataclasses.replace(delta, state=iptables.TableState(
                {**delta.state.chains, **dict.fromkeys(insert, iptables.UNTIDY)}, delta.state.hooks))
        programmed[table] = delta.state

    def tidy(self) -> None:
        """Rewrite the chains a make-before-break edit left with dead rules (one restore per table).
        After a failure the memory is forgotten and the next apply reads and repairs the table."""
        pending, self.untidy = self.untidy, {}
        rendered = self._rendered
        for (version, table), chains in pending.items():
            programmed = self.programmed6 if version == 6 else self.programmed
            desired = rendered.parts.get(("ip6-" if version == 6 else "") + table) if rendered else None
            if not chains or not isinstance(desired, rules.Table) or table not in programmed:
                continue
            delta = iptables.chains_delta(desired, sorted(chains & desired.chains.keys()), programmed.pop(table))
            try:
                self._restore(delta, version)
            except DataplaneError as error:
                log.warning("tidying %s (IPv%d) failed; the next apply re-reads it: %s", table, version, error)
                self._rendered = None
                continue
            programmed[table] = delta.state

    def read_table(self, table: str, version: int = 4) -> iptables.TableState:
        if version == 6:
            self.stats.ip6tables_reads += 1
        else:
            self.stats.iptables_reads += 1
        return iptables.parse_save(self._run([self.save6 if version == 6 else self.save, "-t", table], check=False))

    def _restore(self, delta: iptables.Delta, version: int = 4) -> None:
        if delta.text is None:
            return
        restore = self.restore6 if version == 6 else self.restore
        self._run([restore, "--noflush", "--wait"] if self.backend == "legacy" else [restore, "--noflush"],
                  delta.text)
        if version == 6:
            self.stats.ip6tables_tables += 1
        else:
            self.stats.iptables_tables += 1
        self.stats.chains_written += len(delta.written)
        self.stats.chains_deleted += len(delta.deleted)

    # --- IP sets ------------------------------------------------------------------------------

    def list_ipsets(self) -> set[str]:
        return set(self._run(["ipset", "list", "-n"]).split())

    def write_ipsets(self, sets: dict[str, rules.IPSet], existing: set[str]) -> None:
        # Leftover temporaries (a crash mid-restore) may have another type than the one we need now.
        temps = sorted(s for s in existing if s.startswith((IPSET_TEMP_PREFIX, IPSET_V6_TEMP_PREFIX)))
        text = rules.render_ipset_destroy(temps)
        text += rules.render_ipset_restore(sets, existing=existing & set(sets))
        if text:
            self._run(["ipset", "restore"], text)
            self.stats.ipsets_written += len(sets)

    def destroy_ipsets(self, names: set[str]) -> None:
        for name in sorted(names):
            # One at a time: a set still referenced by a rule we do not own must not block the others.
            try:
                self._run(["ipset", "destroy", name])
                self.stats.ipsets_destroyed += 1
            except DataplaneError as error:
                log.warning("could not destroy stale IP set %s: %s", name, error)

    # --- sysctls ------------------------------------------------------------------------------

    def _write_proc(self, path: str, value: str) -> None:
        if self.netns is None:
            p = Path(path)
            if p.exists() and p.read_text().strip() != value:
                p.write_text(value)
            return
        # Path and value go in as arguments, never as script text: nothing in them can become shell.
        self._run(["sh", "-c", '[ ! -e "$1" ] || [ "$(cat "$1")" = "$2" ] || echo "$2" > "$1"', "sh", path, value],
                  check=False)

    def apply_sysctls(self, state: DesiredState) -> None:
        self._write_proc("/proc/sys/net/ipv4/ip_forward", "1")
        for ep in state.endpoints:
            # Checked when the endpoint was parsed; again here because it becomes a path under /proc.
            iface = validate.interface_name(ep.iface)
            for key, value in (("conf/{}/route_localnet", "1"), ("neigh/{}/proxy_delay", "0"),
                               ("conf/{}/proxy_arp", "1"), ("conf/{}/forwarding", "1")):
                self._write_proc(f"/proc/sys/net/ipv4/{key.format(iface)}", value)
            if state.ipv6:
                # Felix's endpoint manager for IPv6: proxy NDP (the counterpart of proxy ARP) and forwarding.
                for key, value in (("conf/{}/proxy_ndp", "1"), ("conf/{}/forwarding", "1")):
                    self._write_proc(f"/proc/sys/net/ipv6/{key.format(iface)}", value)
        if state.ipv6:
            self._write_proc("/proc/sys/net/ipv6/conf/all/forwarding", "1")

    # --- VXLAN --------------------------------------------------------------------------------

    def ensure_vxlan_device(self, vtep: OwnVTEP) -> None:
        with self._ipr() as ipr:
            vxlan.ensure_device(ipr, vtep)

    # --- host interfaces ----------------------------------------------------------------------

    def host_interfaces(self) -> dict[str, set[str]]:
        """The namespace's non-workload interfaces and their addresses: what Felix's interface
        monitor gives endpoint_mgr.go to bind host endpoints by name or expected IP."""
        with self._ipr() as ipr:
            names = {int(link["index"]): link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            out: dict[str, set[str]] = {name: set() for name in names.values()
                                        if name and not name.startswith(self.iface_prefix)}
            for addr in ipr.get_addr():
                name = names.get(int(addr["index"]))
                address = addr.get_attr("IFA_LOCAL") or addr.get_attr("IFA_ADDRESS")
                if name in out and address:
                    out[name].add(address)
        return out

    # --- routes -------------------------------------------------------------------------------

    def apply_routes(self, state: DesiredState) -> None:
        with self._ipr() as ipr:
            names = {int(link["index"]): link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            vxlan.apply_vteps(ipr, state.vteps)
            vxlan.apply_vteps(ipr, state.vteps6, 6)
            self.missing_devices = set()
            self._apply_family_routes(ipr, names, state.routes, 4)
            # A node without IPv6 leaves IPv6 routes alone (it never programmed any).
            if state.ipv6:
                self._apply_family_routes(ipr, names, state.routes6, 6)

    def _apply_family_routes(self, ipr: Any, names: dict[int, str], routes: list[Route], version: int) -> None:
        index = {name: i for i, name in names.items()}
        family = _FAMILIES[version]
        tunnel = VXLAN_V6_DEVICE if version == 6 else VXLAN_DEVICE
        desired: dict[str, Route] = {}
        for route in routes:
            if route.dev and route.dev not in index:
                # The CNI has not created the interface yet (or the tunnel is down): the next
                # apply or resync adds the route once it exists.
                log.debug("route %s: device %s missing", route.dst, route.dev)
                self.missing_devices.add(route.dev)
                continue
            desired[str(ipaddress.ip_network(route.dst, strict=False))] = route
        # Keyed as the kernel keys routes: one destination can hold a route per metric, and a
        # `replace` with another metric adds a second route rather than changing the first.
        owned: dict[tuple[str, int], dict] = {}
        for msg in ipr.get_routes(family=family, table=254):
            oif = msg.get_attr("RTA_OIF")
            dev = names.get(oif, "") if oif is not None else ""
            mine = msg["proto"] == FELIX_ROUTE_PROTO or dev.startswith(self.iface_prefix) or dev == tunnel
            if not mine or msg["proto"] == 2:  # never the kernel's own subnet (and link-local) routes
                continue
            dst = f"{msg.get_attr('RTA_DST') or ('::' if version == 6 else '0.0.0.0')}/{msg['dst_len']}"
            metric = msg.get_attr("RTA_PRIORITY") or 0
            owned[dst, metric] = {"dev": dev, "via": msg.get_attr("RTA_GATEWAY") or "", "type": msg["type"],
                                  "proto": msg["proto"], "oif": oif, "scope": msg["scope"], "metric": metric}
        for (dst, metric), have in owned.items():
            want = desired.get(dst)
            if want is None or not self._matches(want, have):
                spec = {"dst": dst, "table": 254, "proto": have["proto"], "type": have["type"],
                        "scope": have["scope"], "priority": metric, "family": family}
                if have["oif"] is not None:
                    spec["oif"] = have["oif"]
                ipr.route("del", **spec)
                self.stats.routes_deleted += 1
        for dst, route in desired.items():
            current = owned.get((dst, route.metric))
            if current is not None and self._matches(route, current):
                continue
            ipr.route("replace", family=family, **self._route_args(route, dst, index))
            self.stats.routes_added += 1

    @staticmethod
    def _matches(route: Route, have: dict) -> bool:
        if have["metric"] != route.metric:
            return False
        if route.kind == "blackhole":
            return have["type"] == 6 and have["proto"] == FELIX_ROUTE_PROTO
        return have["dev"] == route.dev and (have["via"] or "") == route.via and have["type"] == 1

    @staticmethod
    def _route_args(route: Route, dst: str, index: dict[str, int]) -> dict:
        # The metric only where it is not the kernel's default for the family (0 for IPv4, 1024 for
        # IPv6): the route is then keyed exactly as before.
        metric = {"priority": route.metric} if route.metric else {}
        if route.kind == "blackhole":
            return {"dst": dst, "type": "blackhole", "proto": FELIX_ROUTE_PROTO, "table": 254, **metric}
        if route.kind == "local":
            # IPv6 routes have no scope of their own (the kernel reports universe for every one).
            scope = {} if route.version == 6 else {"scope": 253}
            return {"dst": dst, "oif": index[route.dev], **scope, "proto": RTPROT_BOOT, "table": 254, **metric}
        # Remote blocks: onlink, as Felix does, so the next hop need not be in a connected subnet.
        return {"dst": dst, "oif": index[route.dev], "gateway": route.via, "flags": 4,
                "proto": FELIX_ROUTE_PROTO, "table": 254, **metric}
