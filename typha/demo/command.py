"""`typha demo`: a generated cluster, `typha serve`, and a felix-client and confd-client per node
(simulated, or with `--netns` in real network namespaces)."""

from __future__ import annotations

import argparse
from pathlib import Path

import trio
from rich.console import Console

from typha.demo.display import LiveDisplay, summary
from typha.demo.netns import NetnsDemo, NetnsOptions, why_not
from typha.demo.runner import Demo, DemoOptions, configure_logging, write_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults, small = DemoOptions(), NetnsOptions()
    # Sizes default by mode (the simulated demo is large, --netns builds real namespaces), so None here.
    parser.add_argument("--nodes", type=int, default=None,
                        help=f"simulated nodes (default {defaults.nodes}; {small.nodes} with --netns)")
    parser.add_argument("--pods-per-node", type=int, default=None,
                        help=f"pods on each node at the start (default {defaults.pods_per_node}; "
                        f"{small.pods_per_node} with --netns)")
    parser.add_argument("--policies", type=int, default=None,
                        help=f"NetworkPolicies (default {defaults.policies}; {small.policies} with --netns)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of churn: pods created, deleted and relabelled, policies edited "
                        f"(default {defaults.duration:g}; {small.duration:g} with --netns)")
    parser.add_argument("--rate", type=float, default=None,
                        help=f"API writes per second during churn (default {defaults.rate:g}; "
                        f"{small.rate:g} with --netns)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where each node's rendered files go (default: a new directory under $TMPDIR)")
    parser.add_argument("--agent-processes", type=int, default=0,
                        help="worker processes running the agents (default: one per 8 nodes, at most four per CPU)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed of the churn")
    parser.add_argument("--netns", action="store_true",
                        help="as root: build real node and pod network namespaces, program them with the agents "
                        "and BIRD, and finish with a connectivity matrix checked against the policies")


def _pick(value: float | None, default: float) -> float:
    return default if value is None else value


def run_netns(args: argparse.Namespace, console: Console) -> int:
    reason = why_not()
    if reason is not None:
        console.print(f"typha demo: {reason}", style="red", highlight=False)
        return 2
    small = NetnsOptions()
    options = NetnsOptions(nodes=int(_pick(args.nodes, small.nodes)),
                           pods_per_node=int(_pick(args.pods_per_node, small.pods_per_node)),
                           policies=int(_pick(args.policies, small.policies)),
                           duration=_pick(args.duration, small.duration), rate=_pick(args.rate, small.rate),
                           seed=args.seed, out=args.out)
    try:
        demo = NetnsDemo(options, console)
    except ValueError as error:
        console.print(f"typha demo: {error}", style="red")
        return 2
    return demo.run()


def run(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 132))  # a log or pipe: no need to wrap at 80
    if args.netns:
        return run_netns(args, console)
    d = DemoOptions()
    options = DemoOptions(nodes=int(_pick(args.nodes, d.nodes)), pods_per_node=int(_pick(args.pods_per_node,
                          d.pods_per_node)), policies=int(_pick(args.policies, d.policies)),
                          duration=_pick(args.duration, d.duration), rate=_pick(args.rate, d.rate), out=args.out,
                          seed=args.seed, agent_processes=args.agent_processes)
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
