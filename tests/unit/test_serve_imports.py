"""`typha serve` loads only what serving needs: no web framework, emulator or demo.

Run in a fresh interpreter, through the command line's own parsing (typha.cli), so that nothing a
test imported earlier hides an import (docs/memory.md: each of these cost MBs in every typha).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
from typha import cli
argv = ["--log-format", "json", "serve", "--syncers", "felix"]
cli.build_parser(only=cli.chosen_command(argv)).parse_args(argv)
import typha.daemon.serve
print(json.dumps(sorted(sys.modules)))
"""

NOT_ON_THE_SERVE_PATH = ("aiohttp", "jinja2", "typha.demo", "typha.testing", "trio")


def test_serve_imports_no_web_framework_emulator_or_demo() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    modules = json.loads(out.stdout)
    assert "typha.daemon.serve" in modules
    loaded = [m for m in modules if any(m == p or m.startswith(p + ".") for p in NOT_ON_THE_SERVE_PATH)]
    assert not loaded, loaded


SUPERVISOR = """
import json, sys
from typha import cli
argv = ["serve", "--workers", "2", "--kubeconfig", sys.argv[1]]
args = cli.build_parser(only=cli.chosen_command(argv)).parse_args(argv)
args._module.load(args)  # what the supervisor checks before it starts its children
import typha.daemon.workers
print(json.dumps(sorted(sys.modules)))
"""

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_the_workers_supervisor_does_not_load_the_server(tmp_path: Path) -> None:
    """`typha serve --workers N`'s first process only supervises: gRPC and the caches live in its children."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    out = subprocess.run([sys.executable, "-c", SUPERVISOR, str(kubeconfig)], capture_output=True, text=True,
                         timeout=120, check=True)
    modules = json.loads(out.stdout)
    assert "typha.daemon.workers" in modules
    loaded = [m for m in modules if m.split(".")[0] == "grpc" or m.startswith(("typha.syncserver", "typha.snapcache"))]
    assert not loaded, loaded


def test_the_supervisor_and_the_rebalancer_agree_on_the_worker_load_variables() -> None:
    from typha.daemon import workers
    from typha.ops import rebalance

    assert (workers.LOADS_DIR_ENV, workers.WORKER_INDEX_ENV) == (rebalance.LOADS_DIR_ENV, rebalance.WORKER_INDEX_ENV)


def test_the_full_parser_still_knows_every_subcommand() -> None:
    from typha import cli

    assert cli.chosen_command(["--log-level", "debug", "dump", "--server", "x:1"]) == "dump"
    assert cli.chosen_command(["--help"]) is None
    assert cli.chosen_command(["--log-level"]) is None
    args = cli.build_parser().parse_args(["sim-apiserver", "--kubeconfig-out", "/tmp/kc"])
    assert args.command == "sim-apiserver"
