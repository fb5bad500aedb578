"""`python -m bench report RESULTS.json… --out DIR`: plots from the benchmarks' JSON files.

Draws what the given files allow (each file says which benchmark wrote it):
- latency_cdf.png: fan-out write→client latency CDFs. Files written before fan-out recorded its
  quantiles only have p50/p99/max; those are drawn as points, not as a curve.
- deliveries_vs_clients.png, rss_vs_clients.png: fan-out deliveries/s and server RSS with idle
  clients against the number of clients, one point per run, labelled with its write rate and sink.
- storm_time_to_sync.png: per storm run and phase, the share of clients back in sync against the
  time since the event (kill, or cut start).
- snapshot_join.png: per snapshot run and round, the share of joining clients in sync against time.
Figures are built with matplotlib's object API (no pyplot), so no display or global state is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bench.output import report

Run = tuple[str, dict[str, Any]]  # (label: the file's name without .json, its results)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULTS.json")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for the PNG files (created)")


class ReportError(Exception):
    """A results file that cannot be read or plotted: one line naming the file."""


def load(paths: list[str]) -> dict[str, list[Run]]:
    by_kind: dict[str, list[Run]] = {}
    for path in paths:
        try:
            with open(path) as f:
                results = json.load(f)
        except OSError as exc:
            raise ReportError(f"{path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
            raise ReportError(f"{path}: not a JSON results file: {exc}") from None
        if not isinstance(results, dict):
            raise ReportError(f"{path}: not a results file (expected a JSON object, got {type(results).__name__})")
        label = os.path.splitext(os.path.basename(path))[0]
        by_kind.setdefault(results.get("benchmark", "unknown"), []).append((label, results))
    return by_kind


def cdf_axes(fig: Figure, xlabel: str, log: bool) -> Axes:
    ax = fig.add_subplot()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction ≤ x")
    ax.set_ylim(0, 1.02)
    if log:
        ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    return ax


def plot_quantiles(ax: Axes, quantiles: list[float], label: str) -> None:
    fractions = [q / (len(quantiles) - 1) for q in range(len(quantiles))]
    ax.step(quantiles, fractions, where="post", label=label)


def latency_cdf(fig: Figure, runs: list[Run]) -> None:
    ax = cdf_axes(fig, "API write → client receipt (ms)", log=True)
    for label, r in runs:
        if r.get("latency_ms_quantiles"):
            plot_quantiles(ax, [max(q, 1e-3) for q in r["latency_ms_quantiles"]], label)
        elif r.get("latency_samples"):
            ax.plot([r["latency_ms_p50"], r["latency_ms_p99"], r["latency_ms_max"]], [0.5, 0.99, 1.0],
                    "o--", label=f"{label} (p50/p99/max only)")
    ax.set_title("Fan-out latency")
    ax.legend(fontsize="small")


def _runs_by_clients(ax: Axes, runs: list[Run], value: Callable[[dict[str, Any]], float]) -> None:
    points = sorted((r["clients"], value(r), f"{label}: {r.get('rate', 0):g}/s, {r.get('sink', 'h2')}")
                    for label, r in runs)
    ax.plot([p[0] for p in points], [p[1] for p in points], "o")
    for x, y, text in points:
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set_xscale("log")
    ax.margins(x=0.25)  # room for the labels of the outermost points
    ax.set_xlabel("clients")
    ax.grid(True, which="both", alpha=0.3)


def deliveries_vs_clients(fig: Figure, runs: list[Run]) -> None:
    ax = fig.add_subplot()
    _runs_by_clients(ax, runs, lambda r: r["deliveries_per_sec"])
    ax.set_ylabel("deliveries/s (KVs received, summed over clients)")
    ax.set_title("Fan-out throughput")


def rss_vs_clients(fig: Figure, runs: list[Run]) -> None:
    ax = fig.add_subplot()
    _runs_by_clients(ax, runs, lambda r: r["server_rss_mb_idle_clients"])
    ax.set_ylabel("server RSS with idle clients (MB)")
    ax.set_title("Server memory")


def storm_time_to_sync(fig: Figure, runs: list[Run]) -> None:
    ax = cdf_axes(fig, "seconds since the event (kill / cut start)", log=False)
    ax.set_ylabel("fraction of clients back in sync")
    for label, r in runs:
        for phase, p in r["phases"].items():
            if p["secs_from_event_quantiles"]:
                # Scaled by the share that came back at all, so failures show as a curve below 1.
                share = p["back_in_sync"] / max(p["clients"], 1)
                quantiles = p["secs_from_event_quantiles"]
                fractions = [share * q / (len(quantiles) - 1) for q in range(len(quantiles))]
                ax.step(quantiles, fractions, where="post", label=f"{label} {phase} (N={p['clients']})")
    ax.set_title("Reconnect storm: time to get back in sync")
    ax.legend(fontsize="small")


def snapshot_join(fig: Figure, runs: list[Run]) -> None:
    ax = cdf_axes(fig, "seconds from a client's connect to its in-sync", log=False)
    for label, r in runs:
        for number, p in enumerate(r["rounds"], 1):
            if p["secs_quantiles"]:
                plot_quantiles(ax, p["secs_quantiles"],
                               f"{label} round {number} ({r['keys']:,} keys, M={p['clients']})")
    ax.set_title("Snapshot: clients joining at once")
    ax.legend(fontsize="small")


# file name -> (benchmark whose runs it draws, how)
PLOTS: dict[str, tuple[str, Callable[[Figure, list[Run]], None]]] = {
    "latency_cdf.png": ("fanout", latency_cdf),
    "deliveries_vs_clients.png": ("fanout", deliveries_vs_clients),
    "rss_vs_clients.png": ("fanout", rss_vs_clients),
    "storm_time_to_sync.png": ("storm", storm_time_to_sync),
    "snapshot_join.png": ("snapshot", snapshot_join),
}


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ReportError as exc:
        print(f"bench report: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    by_kind = load(args.results)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"--out {args.out}: {exc.strerror or exc}") from None
    rows = []
    for name, (kind, draw) in PLOTS.items():
        runs = by_kind.get(kind, [])
        if not runs:
            continue
        fig = Figure(figsize=(8, 5), layout="constrained")
        try:
            draw(fig, runs)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            labels = ", ".join(label for label, _ in runs)
            raise ReportError(f"{kind} results ({labels}) lack what the {name} plot needs: "
                              f"{type(exc).__name__}: {exc}") from None
        path = os.path.join(args.out, name)
        try:
            fig.savefig(path, dpi=110)
        except OSError as exc:
            raise ReportError(f"{path}: {exc.strerror or exc}") from None
        rows.append((name, f"{len(runs)} {kind} run(s) → {path}"))
    plotted = {kind for kind, _ in PLOTS.values()}
    rows.extend((f"({kind})", f"{len(by_kind[kind])} file(s) not plotted: no plot for this benchmark")
                for kind in sorted(set(by_kind) - plotted))
    if not rows:
        rows.append(("nothing", "no plottable results"))
    report(rows, {"plots": [name for name, _ in rows if name.endswith(".png")]}, None)
    return 0
