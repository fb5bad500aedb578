"""The demo's live view and final summary, with `rich`.

On a terminal the live view is a panel redrawn four times a second; otherwise (a pipe, CI, a test)
a plain progress line every two seconds, so logs stay readable.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from typha.demo.runner import Demo


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _secs(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "-"


class LiveDisplay:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Live | None = None
        self._last_line = 0.0

    def __enter__(self) -> LiveDisplay:
        if self.console.is_terminal:
            self.live = Live(Text("starting…"), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self, demo: Demo) -> None:
        if self.live is not None:
            self.live.update(self.render(demo))
            return
        now = time.monotonic()
        if now - self._last_line >= 2.0:
            self._last_line = now
            self.console.print(self.line(demo), highlight=False)

    @staticmethod
    def _churn_clock(demo: Demo) -> str:
        p = demo.progress
        if p.churn_started is None:
            return ""
        end = p.churn_ended or time.monotonic()
        return f" {min(end - p.churn_started, demo.options.duration):.0f}/{demo.options.duration:.0f} s"

    def line(self, demo: Demo) -> str:
        p, n = demo.progress, demo.spec.nodes
        return (f"[{time.monotonic() - p.started:5.1f} s] {p.phase}{self._churn_clock(demo)}: "
                f"typha connections {p.connections}/{2 * n}, felix in sync {p.felix_in_sync}/{n}, "
                f"confd in sync {p.confd_in_sync}/{n}, API writes {p.writes}, "
                f"updates {p.updates} ({p.updates_per_sec:.0f}/s), latency p50 {_ms(p.latency_p50)} "
                f"p99 {_ms(p.latency_p99)}")

    def render(self, demo: Demo) -> Any:
        p, n = demo.progress, demo.spec.nodes
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", justify="right")
        table.add_column()
        table.add_row("phase", f"{p.phase}{self._churn_clock(demo)}  (elapsed {time.monotonic() - p.started:.1f} s)")
        table.add_row("typha serve", f"{p.connections}/{2 * n} clients connected · KVs felix {p.felix_kvs}, "
                                     f"bgp {p.bgp_kvs} · RSS {_mib(p.typha_rss)}")
        table.add_row("felix-client", f"{p.felix_in_sync}/{n} in sync · {p.applies} applies")
        table.add_row("confd-client", f"{p.confd_in_sync}/{n} in sync")
        table.add_row("files written", f"{p.files_written}/{2 * n} agents")
        table.add_row("API writes", f"{p.writes} ({p.writes_per_sec:.0f}/s)  {_writes(demo.writes)}")
        table.add_row("delivered", f"{p.updates} updates ({p.updates_per_sec:.0f}/s)")
        table.add_row("write → agent", f"p50 {_ms(p.latency_p50)} · p99 {_ms(p.latency_p99)} (last 3 s)")
        title = (f"typha demo · {n} nodes · {demo.spec.pods} pods · {demo.spec.policies} policies · "
                 f"output {demo.out}")
        return Panel(table, title=title, title_align="left")


def _writes(writes: dict[str, int]) -> str:
    return " · ".join(f"{k} {v}" for k, v in writes.items())


def summary(result: dict[str, Any], *, nodes_shown: int = 3) -> Group:
    """The final tables: what ran, what was delivered, and where each node's files are."""
    c, t, a, ch = result["cluster"], result["typha"], result["agents"], result["churn"]
    lat, sync = ch["latency_secs"], a["time_to_files_secs"]
    timings = result["timings_secs"]
    table = Table(title="typha demo: summary", show_header=True, header_style="bold")
    table.add_column("", style="bold cyan")
    table.add_column("value")
    table.add_row("cluster", f"{c['nodes']} nodes, {c['pods_initial']} pods ({c['pods_final']} after churn), "
                             f"{c['namespaces']} namespaces, {c['policies']} NetworkPolicies, {c['ip_pools']} IP pools "
                             f"(no-encap, VXLAN), {c['ipam_blocks']} IPAM blocks, BGP full mesh")
    table.add_row("typha KVs per syncer", f"felix {t['kvs']['felix']}, bgp {t['kvs']['bgp']}")
    table.add_row("typha ingest", f"updates felix {t['updates_ingested']['felix']}, bgp {t['updates_ingested']['bgp']} "
                                  f"(skipped as unchanged: felix {t['updates_skipped']['felix']}, "
                                  f"bgp {t['updates_skipped']['bgp']}) · RSS {_mib(t['rss_bytes'])}")
    table.add_row("clients", f"{a['felix_written']}/{a['felix_clients']} felix-client (dry run), "
                             f"{a['confd_written']}/{a['confd_clients']} confd-client wrote their files "
                             f"({a['agent_processes']} agent processes, {a['agent_processes_cpu_secs']:.1f} s CPU)")
    table.add_row("time to in-sync", f"typha ready {_secs(timings.get('typha_ready'))}; all agents' files written "
                                     f"{_secs(timings.get('agents_in_sync'))} after that; each agent's: "
                                     f"felix median {_secs(sync['felix_median'])}, max {_secs(sync['felix_max'])}; "
                                     f"confd median {_secs(sync['confd_median'])}, max {_secs(sync['confd_max'])}")
    table.add_row("churn", f"{ch['duration_secs']:.1f} s: {_writes(ch['writes'])}")
    table.add_row("updates delivered", f"{ch['updates_delivered']} KVs to agents (snapshots + deltas), "
                                       f"peak {ch['peak_updates_per_sec']:.0f}/s during churn")
    table.add_row("API write → agent", f"p50 {_ms(lat['p50'])}, p90 {_ms(lat['p90'])}, p99 {_ms(lat['p99'])}, "
                                       f"max {_ms(lat['max'])} ({lat['samples']} receipts)")
    table.add_row("felix applies", f"{a['felix_applies']} renders written, {a['felix_applies_skipped']} skipped "
                                   f"(nothing changed on that node); confd {a['confd_renders']} renders, "
                                   f"{a['confd_files_written']} files written")
    table.add_row("run time", f"{timings.get('total', 0):.1f} s")
    if result["failure"]:
        table.add_row("[red]FAILED[/red]", result["failure"])
    if result["interrupted"]:
        table.add_row("[yellow]interrupted[/yellow]", "stopped by a signal; the files are as far as they got")

    nodes = Table(title="per-node output (rendered, not programmed)", header_style="bold")
    for column in ("node", "iptables.save", "ipsets.save", "routes.txt", "bird.cfg"):
        nodes.add_column(column)
    items = list(result["nodes"].items())
    for name, info in items[:nodes_shown]:
        nodes.add_row(
            name,
            f"{info['iptables_rules']} rules, {info['policy_chains']} cali-pi- chains",
            f"{info['ipset_count']} sets",
            f"{info['route_count']} routes",
            f"{info['bgp_peers']} BGP peers",
        )
    if len(items) > nodes_shown:
        nodes.add_row(f"… {len(items) - nodes_shown} more", "", "", "", "")
    out = result["out"]
    first = next(iter(result["nodes"]), "node-000")
    where = Text.assemble(
        ("Output in ", "bold"), (out, "bold"), "\n",
        "  nodes/<node>/felix/  iptables.save ipsets.save routes.txt status.json\n",
        "  nodes/<node>/bird/   bird.cfg bird_ipam.cfg bird_aggr.cfg bird6*.cfg\n",
        "  summary.json (all of this as JSON), typha.log, demo.log\n",
        f"e.g. less {out}/nodes/{first}/felix/iptables.save",
    )
    return Group(table, nodes, where)
