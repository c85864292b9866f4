"""``iht report DIR``: find what a results directory holds and redraw its report.

A directory holds one of: a study (``parts/``, with ``oracle.parquet`` when ``iht oracle`` ran
on it), an ``iht train`` run (``history.parquet``) or an ``iht compare`` run
(``results.parquet``). Each is redrawn from its stored files only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ..errors import StoreError
from .compare import write_compare_report
from .study import write_study_report
from .train import write_train_report

__all__ = ["Kind", "kind_of", "redraw"]

Kind = Literal["study", "train", "compare"]


def kind_of(directory: str | os.PathLike[str]) -> Kind:
    """What ``directory`` holds: ``"study"``, ``"train"`` or ``"compare"``.

    Raises:
        StoreError: it is not a directory, or holds none of them.
    """
    path = Path(directory)
    if not path.is_dir():
        raise StoreError(f"{path} is not a directory of results")
    if (path / "parts").is_dir():
        return "study"
    if (path / "history.parquet").is_file():
        return "train"
    if (path / "results.parquet").is_file():
        return "compare"
    raise StoreError(
        f"{path} holds no study (parts/), train run (history.parquet) or comparison "
        "(results.parquet)"
    )


def redraw(directory: str | os.PathLike[str], *, print_summary: bool = True) -> Path:
    """Redraw the report of whatever ``directory`` holds; return the page's path.

    Args:
        directory: a study, train run or comparison directory.
        print_summary: for a study, print its summary table to stdout.

    Raises:
        StoreError: the directory holds none of them, or its files are incomplete.
    """
    directory = Path(directory)
    kind = kind_of(directory)
    if kind == "study":
        return write_study_report(directory, print_summary=print_summary)
    if kind == "train":
        return write_train_report(directory)
    return write_compare_report(directory)
