"""The examples run as the README says (short runs), so an API change cannot break them silently."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs_and_certifies() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout and "certificate: stable=" in done.stdout


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on the PATH")
def test_torchrun_example_on_two_cpu_processes() -> None:
    done = subprocess.run(
        ["torchrun", "--nproc_per_node", "2", str(EXAMPLES / "torchrun_mlp.py"), "--steps", "20"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "all 2 ranks hold the same mask: True, same parameters: True" in done.stdout


def test_the_deep_cnn_example_ends_on_its_budget() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "deep_cnn.py"), "--steps", "60"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "nonzeros per tensor {'weights': 513, 'dense': 85}" in done.stdout
    assert "certificate at lr 1e-2: stable=" in done.stdout


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on the PATH")
def test_the_fsdp2_example_keeps_its_budget_on_two_cpu_processes() -> None:
    done = subprocess.run(
        ["torchrun", "--nproc_per_node", "2", str(EXAMPLES / "fsdp_mlp.py"), "--steps", "30"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Linear weights kept 1702 (budget 1702)" in done.stdout
    assert "certificate at lr 1e-2: stable=" in done.stdout
