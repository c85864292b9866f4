"""The results store: a directory of Parquet parts (one row per run) and the resolved config.

Layout::

    DIR/config.json          the resolved study config (written once, atomically)
    DIR/parts/KEY.parquet    one part per finished chunk (written to a temporary file,
                             flushed, then renamed: a part is either whole or absent)

Resuming means computing only the chunks whose part is missing. A part that cannot be read
is reported, moved aside to ``DIR/corrupt/`` (kept, not deleted) and computed again.

One writer at a time: :meth:`ResultStore.open` takes an exclusive lock on ``DIR/.lock`` (held
until :meth:`ResultStore.close` or the process ends, ``kill -9`` included), so the temporary
files it finds are leftovers of a killed writer and are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StoreError
from ..storage.files import atomic_write_bytes, first_line, move_aside
from .config import StudyConfig
from .schema import RunRow

try:
    import fcntl
except ImportError:  # not POSIX: no lock, and temporary files are left where they are
    fcntl = None  # type: ignore[assignment]

__all__ = ["ResultStore", "run_schema"]

_LOCK = ".lock"
#: This store's own temporary files in DIR (config, write probe) and in DIR/parts. (Not
#: the report's: ``iht report`` may be writing beside us, without the lock.)
_TEMP_GLOBS = (".config.json-*.tmp", ".probe-*")
_PART_TEMP_GLOB = ".*.tmp"


class ResultStore:
    """A study's results directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.parts = self.directory / "parts"
        self.config_path = self.directory / "config.json"
        self._lock: IO[bytes] | None = None

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
        elif self._holds_other_files() and not overwrite:
            raise StoreError(
                f"{self.directory} is not empty and holds no config.json; choose an empty or new directory"
            )
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".probe-"):
                pass
        except OSError as exc:
            raise StoreError(f"cannot write to {self.directory}: {self._why(exc)}") from None
        self._acquire_lock()
        self._remove_stale_temporaries()
        if not self.config_path.exists():
            atomic_write_bytes(self.config_path, config.to_json().encode())
        return self.check_parts()

    def _why(self, exc: OSError) -> str:
        if isinstance(exc, (NotADirectoryError, FileExistsError)):
            # name the culprit: a file where the path needs a directory
            for path in (self.parts, self.directory, *self.directory.parents):
                if path.exists() and not path.is_dir():
                    return f"{path} is a file, not a directory"
        return exc.strerror or str(exc)

    def close(self) -> None:
        """Release the directory's lock (the store can still be read)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _acquire_lock(self) -> None:
        if fcntl is None or self._lock is not None:
            return
        handle = open(self.directory / _LOCK, "ab")  # noqa: SIM115 (held until close())
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise StoreError(
                f"{self.directory} is in use by another iht process; wait for it to finish"
            ) from None
        self._lock = handle

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary files of a writer that was killed (we hold the lock)."""
        if self._lock is None:
            return
        paths = [p for pattern in _TEMP_GLOBS for p in self.directory.glob(pattern)]
        for path in [*paths, *self.parts.glob(_PART_TEMP_GLOB)]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _holds_other_files(self) -> bool:
        """Whether the directory holds anything but the lock and temporaries of a killed run."""
        if not self.directory.is_dir():
            return False
        ours = {p.name for pattern in (_LOCK, *_TEMP_GLOBS) for p in self.directory.glob(pattern)}
        if self.parts.is_dir() and not any(self.parts.iterdir()):
            ours.add(self.parts.name)  # a run killed before it wrote config.json
        return any(p.name not in ours for p in self.directory.iterdir())

    def _clear(self) -> None:
        """Move an earlier study aside (DIR/replaced-TIMESTAMP/), never delete it silently."""
        names = ("config.json", "parts", "report.html", "figures", "summary.csv", "oracle.parquet")
        move_aside(
            self.directory, [self.directory / n for n in names if (self.directory / n).exists()]
        )

    def read_config(self) -> StudyConfig:
        """The stored config, checked.

        Raises:
            StoreError: ``config.json`` is missing, not JSON, or not a valid study config.
        """
        try:
            return StudyConfig.from_dict(json.loads(self.config_path.read_text()))
        except FileNotFoundError:
            raise StoreError(f"{self.directory} holds no study (no config.json)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            raise StoreError(
                f"{self.config_path} is not a valid study config: {first_line(exc)}"
            ) from None

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
                shutil.move(str(path), aside / f"{path.name}.{time.time_ns()}")
                warnings.append(
                    f"part {path.name} is damaged ({first_line(exc)}); moved to {aside}, "
                    "it will be recomputed"
                )
        return warnings

    def write_part(self, key: str, rows: Sequence[RunRow]) -> None:
        """Store one chunk's rows atomically; a part is never replaced."""
        target = self.parts / f"{key}.parquet"
        if target.exists():
            raise StoreError(f"part {target} exists already; refusing to overwrite a stored result")
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([r.to_dict() for r in rows], schema=run_schema()), sink)
        atomic_write_bytes(target, sink.getvalue().to_pybytes())

    def load(self) -> pd.DataFrame:
        """Every stored run, one row each, ordered by kind, sparsity and index."""
        paths = sorted(self.parts.glob("*.parquet")) if self.parts.exists() else []
        if not paths:
            raise StoreError(f"{self.directory} holds no stored runs")
        frame = pd.concat([self._read_part(p) for p in paths], ignore_index=True)
        if frame["run_id"].duplicated().any():
            raise StoreError(f"{self.directory} holds duplicated runs; the store is inconsistent")
        return frame.sort_values(["kind", "sparsity", "index"], ignore_index=True)

    def _read_part(self, path: Path) -> pd.DataFrame:
        try:
            return pq.read_table(path).to_pandas()
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(
                f"part {path} is damaged ({first_line(exc)}); run the same `iht reproduce` "
                "command again to move it aside and recompute it"
            ) from None


def _differences(a: StudyConfig, b: StudyConfig) -> str:
    da, db = json.loads(a.to_json()), json.loads(b.to_json())
    diffs = [f"{k}: stored {da[k]} vs asked {db[k]}" for k in sorted(da) if da[k] != db[k]]
    return "; ".join(diffs)


def run_schema() -> pa.Schema:
    """The Arrow schema of a stored part: one column per :class:`RunRow` field, in order."""
    kinds = {
        "str": pa.string(),
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "list[int]": pa.list_(pa.int64()),
        "list[float]": pa.list_(pa.float64()),
    }
    hints = typing.get_type_hints(RunRow)
    return pa.schema(
        [(f.name, kinds[_type_name(hints[f.name])]) for f in dataclasses.fields(RunRow)]
    )


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        return f"list[{typing.get_args(kind)[0].__name__}]"
    return str(kind.__name__)
