"""Calico's confd goldens as an acceptance suite: the runner of the fixture pack's README contract.

For every case in `<pack>/manifest.yaml` (pack from `CONFD_FIXTURE_PACK`, default
`../shared/fixtures/confd` beside the repository): a fresh Kubernetes API emulator, the standard
block affinities if asked, the case's inputs through the Calico v3 loader, an in-process `typha
serve`, and confd_client rendering for the case's NODENAME; then all six files are compared with
`expected/` after the README's blank-line normalisation, with a unified diff on mismatch.

- oneshot cases: apply everything, run the agent's `--oneshot`, compare.
- daemon-steps cases: the agent runs in daemon mode; inputs are applied one file at a time (before
  or after the agent starts, per `start`), and after each checkpoint's file the output is polled
  until it matches the expected output of the case the checkpoint names.
- `bird_parse`: the rendered bird.cfg/bird6.cfg also go through `bird -p -c` when BIRD is installed;
  `fork-only` cases are expected to fail there (only Calico's BIRD fork knows `krt_tunnel`).

Nothing about the cases is hard-coded here. Cases the client cannot render yet are listed, with a
reason, in `known_failures.txt` beside this file: they run as non-strict xfail, so progress shows as
XPASS and the list can only shrink.
"""

from __future__ import annotations

import asyncio
import difflib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from confd_client.agent import ConfdAgent, Settings
from confd_client.render import FILES, normalize_blank_lines
from typha.config import TyphaConfig
from typha.daemon.serve import TyphaDaemon
from typha.kube.client import KubeClient
from typha.testing.apiserver import calico_v3
from typha.testing.apiserver.server import KubeAPIEmulator
from typha.testing.procs import free_port

REPO = Path(__file__).resolve().parents[2]
PACK = Path(os.environ.get("CONFD_FIXTURE_PACK") or REPO.parent / "shared" / "fixtures" / "confd").resolve()
KNOWN_FAILURES = Path(__file__).with_name("known_failures.txt")
CHECKPOINT_TIMEOUT = 20.0  # upstream polls for 10 s; CI machines get some slack
# A known failure is expected to time out: don't spend the full wait on it (a real fix converges
# in well under a second, and shows up as XPASS).
KNOWN_FAILURE_TIMEOUT = 2.0
POLL = 0.1


def _load_manifest() -> dict[str, Any]:
    path = PACK / "manifest.yaml"
    if not path.exists():
        return {"cases": []}
    return yaml.safe_load(path.read_text()) or {"cases": []}


def _known_failures() -> dict[str, str]:
    """`<case id> <reason…>` per line; `#` starts a comment."""
    known = {}
    for line in KNOWN_FAILURES.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            case_id, _, reason = line.partition(" ")
            known[case_id] = reason.strip() or "known failure"
    return known


MANIFEST = _load_manifest()
CASES: dict[str, dict[str, Any]] = {case["id"]: case for case in MANIFEST.get("cases") or []}
GOLDEN_FILES: list[str] = list(MANIFEST.get("golden_files") or FILES)
KNOWN = _known_failures()


def _params() -> list[Any]:
    params = []
    for case_id, case in CASES.items():
        marks = [pytest.mark.xfail(reason=KNOWN[case_id], strict=False)] if case_id in KNOWN else []
        params.append(pytest.param(case, id=case_id, marks=marks))
    return params


def expected_files(case_id: str) -> dict[str, str]:
    directory = PACK / "cases" / case_id / "expected"
    return {name: normalize_blank_lines((directory / name).read_text()) for name in GOLDEN_FILES}


def read_rendered(directory: Path) -> dict[str, str]:
    out = {}
    for name in GOLDEN_FILES:
        path = directory / name
        out[name] = normalize_blank_lines(path.read_text()) if path.exists() else "<missing>\n"
    return out


def diff_report(got: dict[str, str], want: dict[str, str], label: str) -> str:
    parts = [
        "".join(difflib.unified_diff(
            want[name].splitlines(keepends=True), got[name].splitlines(keepends=True),
            f"expected/{label}/{name}", f"rendered/{name}"))
        for name in GOLDEN_FILES
        if got[name] != want[name]
    ]
    return "\n".join(parts)


def case_env(case: dict[str, Any], case_dir: Path) -> dict[str, str]:
    """NODENAME plus the case's env: the client's whole environment (nothing of ours leaks in)."""
    env = {"NODENAME": str(case.get("nodename") or "kube-master")}
    for name, value in (case.get("env") or {}).items():
        env[str(name)] = str(value).replace("{case_dir}", str(case_dir))
    return env


class AgentThread:
    """The trio agent on its own thread, as a separate process would run it."""

    def __init__(self, agent: ConfdAgent) -> None:
        self.agent = agent
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            trio.run(self.agent.run)
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(15)


def bird_parse(directory: Path) -> list[str]:
    """Errors of `bird -p -c` / `bird6 -p -c` on the rendered files (empty when both accept them)."""
    errors = []
    for binary, name in (("bird", "bird.cfg"), ("bird6", "bird6.cfg")):
        result = subprocess.run([binary, "-p", "-c", str(directory / name)], capture_output=True, text=True,
                                timeout=30, check=False)
        if result.returncode != 0:
            errors.append(f"{binary}: {(result.stdout + result.stderr).strip()}")
    return errors


@pytest.fixture
def api() -> Iterator[KubeAPIEmulator]:
    with KubeAPIEmulator(bookmark_interval=0.2).start() as emulator:
        yield emulator


async def _wait_match(
    directory: Path, want: dict[str, str], label: str, runner: AgentThread, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(read_rendered, directory)
        if got == want:
            return
        if runner.error is not None:
            raise AssertionError(f"agent died: {runner.error!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"rendered files never matched {label}:\n{diff_report(got, want, label)}")
        await asyncio.sleep(POLL)


@pytest.mark.skipif(not CASES, reason=f"no fixture pack at {PACK}")
@pytest.mark.parametrize("case", _params())
def test_case(case: dict[str, Any], api: KubeAPIEmulator, tmp_path: Path) -> None:
    case_id = case["id"]
    case_dir = PACK / "cases" / case_id
    out_dir = tmp_path / "config"
    out_dir.mkdir()
    env = case_env(case, case_dir)
    daemon_mode = case.get("mode") == "daemon-steps"
    inputs = [case_dir / name for name in case.get("inputs") or []]
    start_before = daemon_mode and case.get("start", "before-inputs") == "before-inputs"
    timeout = KNOWN_FAILURE_TIMEOUT if case_id in KNOWN else CHECKPOINT_TIMEOUT

    if case.get("standard_block_affinities"):
        for obj in calico_v3.standard_block_affinities():
            api.upsert(obj)
    if not start_before:
        for path in inputs:
            calico_v3.load_file(api, path)

    kubeconfig = tmp_path / "kubeconfig"
    api.write_kubeconfig(kubeconfig)
    kube = KubeClient.from_kubeconfig(str(kubeconfig))
    env["KUBECONFIG"] = str(kubeconfig)  # as upstream's harness: confd reads Secrets from the API itself

    async def scenario() -> None:
        daemon = TyphaDaemon(TyphaConfig(server_host="127.0.0.1", server_port=free_port()), kube=kube)
        await daemon.start()
        try:
            argv = ["--typha", f"127.0.0.1:{daemon.port}", "--config-dir", str(out_dir)]
            if not daemon_mode:
                agent = ConfdAgent(Settings.from_env(env, [*argv, "--oneshot", "--in-sync-timeout", "30"]))
                await asyncio.to_thread(trio.run, agent.run)
                got, want = read_rendered(out_dir), expected_files(case_id)
                assert got == want, f"{case_id} differs:\n{diff_report(got, want, case_id)}"
                return
            agent = ConfdAgent(Settings.from_env(env, [*argv, "--debounce", "0.05"]))
            runner = AgentThread(agent)
            runner.start()
            try:
                checkpoints: dict[str, list[str]] = {}
                for checkpoint in case.get("checkpoints") or []:
                    checkpoints.setdefault(checkpoint["after"], []).append(checkpoint["expect"])
                if start_before:
                    await asyncio.sleep(0.5)  # upstream gives confd half a second before the inputs
                for path in inputs:
                    if start_before:
                        await asyncio.to_thread(calico_v3.load_file, api, path)
                    for expect in checkpoints.get(path.name, []):
                        await _wait_match(out_dir, expected_files(expect), expect, runner, timeout)
                if not case.get("checkpoints"):
                    await _wait_match(out_dir, expected_files(case_id), case_id, runner, timeout)
            finally:
                await asyncio.to_thread(runner.stop)
        finally:
            await daemon.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        kube.close()

    if shutil.which("bird") and shutil.which("bird6"):
        errors = bird_parse(out_dir)
        if case.get("bird_parse") == "fork-only":
            # Stock BIRD 1.6 must refuse krt_tunnel; the text comparison above already passed.
            assert errors, "expected stock BIRD to reject this fork-only config"
        else:
            assert not errors, "\n".join(errors)
