"""`felix-client render`: the files a dry-run agent writes for a node, from a `typha dump --json` of
the same cluster (issue 14 item 7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typha.testing.apiserver.server import KubeAPIEmulator

from .test_agent_dry_run import typha, wait_for  # noqa: F401 (typha is a fixture)
from .test_agent_kernel import stop_agent
from .worked_example import BACKEND_IF, policy_object

FILES = ("iptables.save", "ip6tables.save", "ipsets.save", "routes.txt")


def test_render_reproduces_a_dry_run_agents_files_from_a_typha_dump(
    typha: tuple[KubeAPIEmulator, int], tmp_path: Path,  # noqa: F811
) -> None:
    api, port = typha
    api.create(policy_object())
    agent_out = tmp_path / "agent"
    agent = subprocess.Popen(
        [sys.executable, "-m", "felix_client.agent", "--typha", f"127.0.0.1:{port}", "--hostname", "node-1",
         "--dry-run", str(agent_out), "--debounce", "0.02", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        files = wait_for(agent_out, lambda f: f"cali-tw-{BACKEND_IF}" in f["iptables.save"]
                         and "cali-pi-" in f["iptables.save"], "the endpoints' and the policy's chains")
    finally:
        stop_agent(agent)

    dump = subprocess.run([sys.executable, "-m", "typha.cli", "dump", "--server", f"127.0.0.1:{port}", "--json"],
                          capture_output=True, text=True, timeout=60, check=True)
    kvs_file = tmp_path / "kvs.json"
    kvs_file.write_text(dump.stdout)
    assert any(key.startswith("/calico/v1/policy/") for key in json.loads(dump.stdout))

    out = tmp_path / "rendered"
    render = subprocess.run([sys.executable, "-m", "felix_client.agent", "render", "--kvs", str(kvs_file),
                             "--node", "node-1", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert render.returncode == 0, render.stderr
    for name in FILES:
        assert (out / name).read_text() == files[name], name


def test_render_refuses_a_file_that_is_not_a_dump(tmp_path: Path) -> None:
    bad = tmp_path / "kvs.json"
    bad.write_text("[1, 2]")
    render = subprocess.run([sys.executable, "-m", "felix_client.agent", "render", "--kvs", str(bad),
                             "--node", "n", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert render.returncode == 1
    assert "not a JSON object" in render.stderr
    assert "Traceback" not in render.stderr
    assert not (tmp_path / "out").exists()
