"""The `typha` command: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from typha import logs
from typha.config import ConfigError

# subcommand -> module exposing add_arguments(parser) and run(args) -> int
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("typha.daemon.serve", "serve the Sync protocol from the Kubernetes API (Typha)"),
    "dump": ("typha.daemon.dump", "print the KV set a client of a syncer receives"),
    "sim-apiserver": ("typha.testing.apiserver.cli", "run the Kubernetes API emulator"),
    "autoscale": ("typha.ops.autoscale", "scale the Typha Deployment with the number of schedulable nodes"),
    "demo": ("typha.demo.command", "run a generated cluster, typha and per-node agents on this machine"),
}
# Commands whose stdout is their product: no version line in front of it.
QUIET_START = ("dump",)


class OneLineParser(argparse.ArgumentParser):
    """A usage mistake is one line naming the flag (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line. With `only`, just that subcommand's module is imported and given its flags
    (the others are listed by name; "" imports none): `typha serve` then does not load the emulator, the
    demo and their libraries (aiohttp, jinja2, ...), which a serving typha would keep in RSS (docs/memory.md)."""
    parser = OneLineParser(prog="typha", description=__doc__)
    parser.add_argument("--version", action="version", version=logs.version_line("typha"))
    parser.add_argument("--log-level", default=None, type=str,
                        help="DEBUG, INFO, WARNING or ERROR, any case (default: serve's LogSeverityScreen, else INFO)")
    parser.add_argument("--log-format", default="text", type=str.lower, choices=logs.FORMATS,
                        help="text: Calico's layout; json: one object per line with time, level, file, msg and fields")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_module=module)
    return parser


class _Silent(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand `argv` names, if any (global flags and their values may come first)."""
    pre = _Silent(add_help=False)
    pre.add_argument("--log-level")
    pre.add_argument("--log-format")
    pre.add_argument("command", nargs="?")
    try:
        known, _ = pre.parse_known_args(argv)
    except ValueError:  # e.g. a global flag without its value: the full parser says so
        return None
    return known.command if known.command in SUBCOMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = chosen_command(argv)
    # No subcommand named (`typha --help`, a typo): a parser without any module imported tells the user.
    args = build_parser(only=command or "").parse_args(argv)

    def body() -> int:
        logs.configure(logs.parse_level(args.log_level or "INFO", "--log-level"), args.log_format)
        if args.command not in QUIET_START:
            logging.getLogger("typha").info("%s", logs.version_line("typha"))
        return int(args._module.run(args) or 0)

    return logs.run_main("typha", body, expected=(ConfigError,))


if __name__ == "__main__":
    sys.exit(main())
