"""The `typha` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import sys

from typha import logs

# subcommand -> module exposing add_arguments(parser) and run(args) -> int
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("typha.daemon.serve", "serve the Sync protocol from the Kubernetes API (Typha)"),
    "dump": ("typha.daemon.dump", "print the KV set a client of a syncer receives"),
    "sim-apiserver": ("typha.testing.apiserver.cli", "run the Kubernetes API emulator"),
    "autoscale": ("typha.ops.autoscale", "scale the Typha Deployment with the number of schedulable nodes"),
    "demo": ("typha.demo.command", "run a generated cluster, typha and per-node agents on this machine"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="typha", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-format", default="text", choices=("text", "json"),
                        help="json: one object per line with time, level, logger, msg and fields")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
