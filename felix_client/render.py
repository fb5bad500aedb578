"""`felix-client render`: what the agent would program on one node, from a saved KV snapshot.

For debugging a node offline: `typha dump --json` (Felix's syncer, `{key: value}`) taken from the
cluster, then `felix-client render --kvs FILE --node NAME --out DIR` writes the same files a
`--dry-run` agent on that node writes (`iptables.save`, `ip6tables.save`, `ipsets.save`, `routes.txt`), through the
same calculation and renderer. FELIX_* settings in the environment override the snapshot's
FelixConfiguration, as they do for the agent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from felix_client.calc.graph import Calculator, DesiredState
from felix_client.calc.model import SETTINGS_ENV
from felix_client.dataplane.files import write_files
from typha import logs

log = logging.getLogger("felix_client.render")


def load_kvs(path: Path) -> dict[str, Any]:
    """A `typha dump --json` file: one object of key → value (`ValueError` when it is not one)."""
    with path.open() as handle:
        kvs = json.load(handle)
    if not isinstance(kvs, dict) or not all(isinstance(k, str) for k in kvs):
        raise ValueError(f"{path}: not a JSON object of keys to values (typha dump --json)")
    return kvs


def desired_state(kvs: dict[str, Any], node: str, *, uplink: str = "eth0",
                  env: dict[str, str] | None = None) -> DesiredState:
    calc = Calculator(node, uplink=uplink, env=env)
    # Sorted, as a syncer snapshot arrives: the result does not depend on the order anyway.
    calc.apply(sorted(kvs.items()))
    return calc.snapshot()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="felix-client render", description=__doc__.splitlines()[0])
    parser.add_argument("--kvs", type=Path, required=True, metavar="FILE", help="a `typha dump --json` file")
    parser.add_argument("--node", required=True, help="the node to render for (its Felix hostname)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where to write the files")
    parser.add_argument("--uplink", default="eth0", help="underlay interface for no-encap routes")
    parser.add_argument("--log-level", default=os.environ.get("FELIX_LOGSEVERITYSCREEN", "WARNING"))
    args = parser.parse_args(argv)
    logs.configure(logs.parse_level(args.log_level, "FELIX_LOGSEVERITYSCREEN"), "text")
    try:
        kvs = load_kvs(args.kvs)
    except (OSError, ValueError) as exc:
        print(f"felix-client render: {exc}", file=sys.stderr)
        return 1
    env = {name: os.environ[name] for name in SETTINGS_ENV if name in os.environ}
    state = desired_state(kvs, args.node, uplink=args.uplink, env=env)
    if not state.endpoints and not any(key.startswith(f"/calico/v1/host/{args.node}/") for key in kvs):
        log.warning("no KV mentions node %r: rendering a node with no endpoints or host config", args.node)
    write_files(args.out, state)
    print(f"wrote {args.out}: {len(state.endpoints)} endpoints, {len(state.policies)} policies, "
          f"{len(state.ipsets)} IP sets", file=sys.stderr)
    return 0
