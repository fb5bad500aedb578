"""`typha serve` loads only what serving needs: no web framework, emulator, demo or unused kubernetes parts.

Run in a fresh interpreter, through the command line's own parsing (typha.cli), so that nothing a
test imported earlier hides an import (docs/memory.md: each of these cost MBs in every typha).
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from typha import cli
argv = ["--log-format", "json", "serve", "--syncers", "felix"]
cli.build_parser(only=cli.chosen_command(argv)).parse_args(argv)
import typha.daemon.serve
print(json.dumps(sorted(sys.modules)))
"""

NOT_ON_THE_SERVE_PATH = ("aiohttp", "jinja2", "typha.demo", "typha.testing", "trio",
                         # the kubernetes package's subpackages typha never calls (typha/kube/client.py)
                         "kubernetes.dynamic", "kubernetes_validate", "jsonschema", "kubernetes.stream", "websocket",
                         "kubernetes.watch", "kubernetes.informer", "kubernetes.leaderelection")


def test_serve_imports_no_web_framework_emulator_or_demo() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    modules = json.loads(out.stdout)
    assert "typha.daemon.serve" in modules
    loaded = [m for m in modules if any(m == p or m.startswith(p + ".") for p in NOT_ON_THE_SERVE_PATH)]
    assert not loaded, loaded


KUBERNETES_AFTER_TYPHA = """
import typha.kube.client
import kubernetes
from kubernetes import watch
print(kubernetes.__version__, watch.Watch.__name__, kubernetes.dynamic.DynamicClient.__name__)
"""


def test_the_whole_kubernetes_package_is_there_for_code_that_imports_it_after_typha() -> None:
    out = subprocess.run([sys.executable, "-c", KUBERNETES_AFTER_TYPHA], capture_output=True, text=True,
                         timeout=120, check=True)
    version, watch, dynamic = out.stdout.split()
    assert version[0].isdigit()
    assert (watch, dynamic) == ("Watch", "DynamicClient")


def test_the_full_parser_still_knows_every_subcommand() -> None:
    from typha import cli

    assert cli.chosen_command(["--log-level", "debug", "dump", "--server", "x:1"]) == "dump"
    assert cli.chosen_command(["--help"]) is None
    assert cli.chosen_command(["--log-level"]) is None
    args = cli.build_parser().parse_args(["sim-apiserver", "--kubeconfig-out", "/tmp/kc"])
    assert args.command == "sim-apiserver"
