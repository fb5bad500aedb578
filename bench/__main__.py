"""`python -m bench <subcommand>`: load tests that print numbers and write JSON (never asserted)."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module with add_arguments(parser) and run(args) -> int, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("bench.ingest", "list+convert and watch-event throughput of the datastore ingest"),
    "fanout": ("bench.fanout", "deliveries/s, latency, CPU and RSS per client of API → typha → N clients"),
    "workers": ("bench.workers", "fan-out deliveries/s of typha serve --workers N for several N in one run"),
    "workerkill": ("bench.workerkill", "SIGKILL a worker under churn: its clients' time back in sync, nothing lost"),
    "felix-routes": ("bench.felix_routes", "felix-client route calculation: cost of one block update, N blocks"),
    "confd": ("bench.confd", "confd-client: CPU per KV update, rendering only what changed vs. all six files"),
    "converge": ("bench.converge", "felix-client: policy write → dataplane change latency; iptables cost vs. policies"),
    "storm": ("bench.storm", "N clients back in sync after a server restart (snapshot) and a network cut (resume)"),
    "resync": ("bench.resync", "digest-resync vs snapshot: bytes and CPU of a client moving to another replica"),
    "snapshot": ("bench.snapshot", "K keys to M clients joining at once: time to first in-sync, server CPU"),
    "soak": ("bench.soak", "steady churn plus periodic faults: RSS and fds over time, the guarantee checker's verdict"),
    "memory": ("bench.memory", "typha RSS in sync with K pods for several K, and tracemalloc of where it goes"),
    "ceiling": ("bench.ceiling", "a bare grpc.aio server broadcasting pre-encoded messages: the floor for fanout CPU"),
    "tree": ("bench.tree", "ingest typha, relays following it, clients spread over them: API watches, p99"),
    "streamcost": ("bench.streamcost", "typha's own Python per client per message, gRPC taken out (CPU time)"),
    "report": ("bench.report", "plots (latency CDFs, deliveries/s and RSS vs clients, storm) from result JSON files"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_module=module)
    args = parser.parse_args(argv)
    return int(args._module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
