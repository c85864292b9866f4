"""The examples run as the README says (short runs), so an API change cannot break them silently."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TORCHRUN = pytest.mark.skipif(
    shutil.which("torchrun") is None, reason="torchrun is not on the PATH"
)


def _run(*argv: str, one_thread: bool = True) -> str:
    """Run a command as a user would; its stdout once it exited 0 (the tail of stderr if not)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if one_thread else None
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _torchrun(script: str, *args: str) -> str:
    return _run(
        "torchrun", "--nproc_per_node", "2", str(EXAMPLES / script), *args, one_thread=False
    )


def test_quickstart_runs_and_certifies() -> None:
    out = _run(sys.executable, str(EXAMPLES / "quickstart.py"))
    assert "test accuracy" in out and "certificate: stable=" in out


@TORCHRUN
def test_torchrun_example_on_two_cpu_processes() -> None:
    out = _torchrun("torchrun_mlp.py", "--steps", "20")
    assert "all 2 ranks hold the same mask: True, same parameters: True" in out


def test_the_deep_cnn_example_ends_on_its_budget() -> None:
    out = _run(sys.executable, str(EXAMPLES / "deep_cnn.py"), "--steps", "60")
    assert "nonzeros per tensor {'weights': 513, 'dense': 85}" in out
    assert "certificate at lr 1e-2: stable=" in out


@TORCHRUN
def test_the_fsdp2_example_keeps_its_budget_on_two_cpu_processes() -> None:
    out = _torchrun("fsdp_mlp.py", "--steps", "30")
    assert "Linear weights kept 1702 (budget 1702)" in out
    assert "certificate at lr 1e-2: stable=" in out
