"""``iht train`` and ``iht compare`` run in-process from the tests: what they print, their
exit code (a user error is one line and exit 2), on one torch thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from iht.cli import main


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tests that import this run torch on one thread (2 busy cores), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(capsys: pytest.CaptureFixture[str], argv: list[str], code: int) -> str:
    result = main(argv)
    captured = capsys.readouterr()
    assert result == code, captured.err
    return captured.out + captured.err


def train_cli(capsys: pytest.CaptureFixture[str], out: Path, *args: str, code: int = 0) -> str:
    """``iht train ARGS --no-progress --out OUT``: stdout and stderr, after checking the code."""
    return _run(capsys, ["train", *args, "--no-progress", "--out", str(out)], code)


def compare_cli(capsys: pytest.CaptureFixture[str], out: Path, *args: str, code: int = 0) -> str:
    """``iht compare ARGS --no-progress --no-report --out OUT``, likewise."""
    argv = ["compare", *args, "--no-progress", "--no-report", "--out", str(out)]
    return _run(capsys, argv, code)
