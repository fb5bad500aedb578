"""`typha demo`: a generated cluster, `typha serve`, and a felix-client and confd-client per node."""

from __future__ import annotations

import argparse
from pathlib import Path

import trio
from rich.console import Console

from typha.demo.display import LiveDisplay, summary
from typha.demo.runner import Demo, DemoOptions, configure_logging, write_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoOptions()
    parser.add_argument("--nodes", type=int, default=defaults.nodes, help="simulated nodes (default %(default)s)")
    parser.add_argument("--pods-per-node", type=int, default=defaults.pods_per_node,
                        help="pods on each node at the start (default %(default)s)")
    parser.add_argument("--policies", type=int, default=defaults.policies,
                        help="NetworkPolicies (default %(default)s)")
    parser.add_argument("--duration", type=float, default=defaults.duration,
                        help="seconds of churn: pods created, deleted and relabelled, policies edited "
                        "(default %(default)s)")
    parser.add_argument("--rate", type=float, default=defaults.rate,
                        help="API writes per second during churn (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where each node's rendered files go (default: a new directory under $TMPDIR)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed of the churn")


def run(args: argparse.Namespace) -> int:
    options = DemoOptions(nodes=args.nodes, pods_per_node=args.pods_per_node, policies=args.policies,
                          duration=args.duration, rate=args.rate, out=args.out, seed=args.seed)
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 132))  # a log or pipe: no need to wrap at 80
    try:
        demo = Demo(options, display=None)
    except ValueError as error:
        console.print(f"typha demo: {error}", style="red")
        return 2
    demo.out.mkdir(parents=True, exist_ok=True)
    configure_logging(demo.out / "demo.log")
    with LiveDisplay(console) as display:
        demo.display = display
        code = trio.run(demo.run)
        display.update(demo)
    result = write_summary(demo)
    console.print(summary(result))
    if code == 130:
        console.print("interrupted", style="yellow")
    return code
