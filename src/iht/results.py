"""The results store: a directory of Parquet parts (one row per run) and the resolved config.

Layout::

    DIR/config.json          the resolved study config (written once, atomically)
    DIR/parts/KEY.parquet    one part per finished chunk (written to a temporary file,
                             flushed, then renamed: a part is either whole or absent)

Resuming means computing only the chunks whose part is missing. A part that cannot be read
is reported, moved aside to ``DIR/corrupt/`` (kept, not deleted) and computed again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .study import StudyConfig

__all__ = ["ResultStore", "StoreError"]


class StoreError(ValueError):
    """The results directory cannot be used as asked (another config, unwritable, ...)."""


class ResultStore:
    """A study's results directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.parts = self.directory / "parts"
        self.config_path = self.directory / "config.json"

    # -- opening ----------------------------------------------------------------------
    def open(self, config: StudyConfig, *, overwrite: bool = False) -> list[str]:
        """Create or resume the store for ``config``; return warnings (e.g. corrupt parts).

        Raises:
            StoreError: the directory holds another config and ``overwrite`` is False, or it
                cannot be written.
        """
        if self.config_path.exists():
            stored = self.read_config()
            if stored != config:
                if not overwrite:
                    raise StoreError(
                        f"{self.directory} holds a study with another config "
                        f"({_differences(stored, config)}); use another --out, or --overwrite "
                        "to replace it"
                    )
                self._clear()
        elif self.directory.exists() and any(self.directory.iterdir()) and not overwrite:
            raise StoreError(
                f"{self.directory} is not empty and holds no config.json; choose an empty or new directory"
            )
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".probe-"):
                pass
        except OSError as exc:
            raise StoreError(f"cannot write to {self.directory}: {exc.strerror or exc}") from None
        if not self.config_path.exists():
            _atomic_write_bytes(self.config_path, config.to_json().encode())
        return self.check_parts()

    def _clear(self) -> None:
        """Move an earlier study aside (DIR/replaced-TIMESTAMP/), never delete it silently."""
        backup = self.directory / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        backup.mkdir()
        for name in ("config.json", "parts", "report.html", "figures", "summary.csv"):
            path = self.directory / name
            if path.exists():
                shutil.move(str(path), backup / name)

    def read_config(self) -> StudyConfig:
        try:
            return StudyConfig.from_dict(json.loads(self.config_path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.config_path} is not a valid study config: {exc}") from None

    # -- parts ------------------------------------------------------------------------
    def done_keys(self) -> set[str]:
        return {p.stem for p in self.parts.glob("*.parquet")} if self.parts.exists() else set()

    def check_parts(self) -> list[str]:
        """Verify every part reads; move unreadable ones aside and say so."""
        warnings = []
        for path in sorted(self.parts.glob("*.parquet")) if self.parts.exists() else []:
            try:
                pq.read_metadata(path)
                pq.read_table(path)
            except (OSError, pa.ArrowException) as exc:
                aside = self.directory / "corrupt"
                aside.mkdir(exist_ok=True)
                shutil.move(str(path), aside / f"{path.name}.{int(time.time())}")
                warnings.append(
                    f"part {path.name} is damaged ({exc}); moved to {aside}, it will be recomputed"
                )
        return warnings

    def write_part(self, key: str, rows: list[dict[str, Any]]) -> None:
        """Store one chunk's rows atomically; a part is never replaced."""
        target = self.parts / f"{key}.parquet"
        if target.exists():
            raise StoreError(f"part {target} exists already; refusing to overwrite a stored result")
        table = pa.Table.from_pylist(rows)
        fd, tmp = tempfile.mkstemp(dir=self.parts, prefix=f".{key}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                pq.write_table(table, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.parts)

    def load(self) -> pd.DataFrame:
        """Every stored run, one row each, ordered by kind, sparsity and index."""
        paths = sorted(self.parts.glob("*.parquet")) if self.parts.exists() else []
        if not paths:
            raise StoreError(f"{self.directory} holds no stored runs")
        frame = pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True)
        if frame["run_id"].duplicated().any():
            raise StoreError(f"{self.directory} holds duplicated runs; the store is inconsistent")
        return frame.sort_values(["kind", "sparsity", "index"], ignore_index=True)


def _differences(a: StudyConfig, b: StudyConfig) -> str:
    da, db = json.loads(a.to_json()), json.loads(b.to_json())
    diffs = [f"{k}: stored {da[k]} vs asked {db[k]}" for k in sorted(da) if da[k] != db[k]]
    return "; ".join(diffs)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
