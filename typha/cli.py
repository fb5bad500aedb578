"""The `typha` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module exposing add_arguments(parser) and run(args) -> int
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("typha.daemon", "serve the Sync protocol from the Kubernetes API (Typha)"),
    "dump": ("typha.dump", "print the KV set a client of a syncer receives"),
    "sim-apiserver": ("typha.testing.apiserver_cli", "run the Kubernetes API emulator"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="typha", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
