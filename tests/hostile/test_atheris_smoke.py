"""The atheris entry points start and run a few hundred inputs (skipped where atheris is not installed:
it is an optional extra, `pip install -e '.[fuzz]'`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("target", "runs"), [("client-core", 2000), ("server", 100)])
def test_fuzz_target_runs(target, runs):
    result = subprocess.run([sys.executable, "-m", "tests.hostile.fuzz_atheris", target, f"-runs={runs}", "-seed=1"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Done {runs} runs" in result.stderr
