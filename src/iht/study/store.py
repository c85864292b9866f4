"""The results store: a directory of Parquet parts (one row per run) and the resolved config.

Layout::

    DIR/config.json          the resolved study config (written once, atomically)
    DIR/parts/KEY.parquet    one part per finished chunk (written to a temporary file,
                             flushed, then renamed: a part is either whole or absent)

    DIR/config.sha256        the SHA-256 of config.json: a config edited by hand is detected

Nothing on disk is trusted by its name. Every part carries in its footer what it holds (the
config's hash, its chunk, its run ids and row count, a digest of its values) and is checked
on every open against the config and its chunk plan (:mod:`iht.study.part_check`): a part
that fails (unreadable, cut short, foreign, out of range, edited) is reported in one line,
moved aside to ``DIR/corrupt/`` (kept, not deleted) and computed again. Resuming means
computing only the chunks without a part that passed. Reads are bounded (regular files of
the sizes a part or config can have; no link is followed), and nothing is written through a
link.

One writer at a time: :meth:`ResultStore.open` takes an exclusive lock on ``DIR/.lock``
before it changes anything (``--overwrite`` included), held until :meth:`ResultStore.close`
or the process ends (``kill -9`` included), so the temporary files it finds are leftovers of a
killed writer and are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
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
from ..storage.files import (
    atomic_write_bytes,
    first_line,
    lock_directory,
    make_own_dir,
    move_aside,
    printable,
    read_bounded,
)
from .chunks import Chunk, plan_chunks
from .config import DENSE, StudyConfig
from .part_check import check_part, part_metadata
from .schema import RunRow

__all__ = ["ResultStore", "run_schema"]

_LOCK = ".lock"
_CONFIG_DIGEST = "config.sha256"
_MAX_CONFIG_BYTES = 1 << 16
#: This store's own temporary files in DIR (config, write probe) and in DIR/parts. (Not
#: the report's: ``iht report`` may be writing beside us, without the lock.)
_TEMP_GLOBS = (".config.json-*.tmp", ".config.sha256-*.tmp", ".probe-*")
_PART_TEMP_GLOB = ".*.tmp"


class ResultStore:
    """A study's results directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.parts = self.directory / "parts"
        self.config_path = self.directory / "config.json"
        self.digest_path = self.directory / _CONFIG_DIGEST
        self._lock: IO[bytes] | None = None
        #: Parts that passed their check in this process, by chunk key (we hold the lock, or
        #: read only): what :meth:`load` returns without reading them again.
        self._checked: dict[str, pa.Table] = {}
        self._config: StudyConfig | None = None

    # -- opening ----------------------------------------------------------------------
    def open(self, config: StudyConfig, *, overwrite: bool = False) -> list[str]:
        """Create or resume the store for ``config``; return warnings (e.g. parts moved aside).

        The lock is taken before anything is read or moved, so a running writer is never
        disturbed (``overwrite`` included).

        Raises:
            StoreError: the directory is in use, holds another (or an edited) config and
                ``overwrite`` is False, or cannot be written.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot write to {self.directory}: {self._why(exc)}") from None
        self._acquire_lock()
        if self.config_path.exists() or self.config_path.is_symlink():
            try:
                stored: StudyConfig | None = self.read_config()
            except StoreError:
                if not overwrite:
                    raise
                stored = None
            if stored != config:
                if not overwrite:
                    assert stored is not None
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
        make_own_dir(self.parts)
        try:
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".probe-"):
                pass
        except OSError as exc:
            raise StoreError(f"cannot write to {self.directory}: {self._why(exc)}") from None
        self._remove_stale_temporaries()
        if not self.config_path.exists():
            text = config.to_json().encode()
            atomic_write_bytes(self.config_path, text)
            atomic_write_bytes(self.digest_path, _digest_line(text))
        elif not self.digest_path.exists():  # a store of iht < 0.3, or killed between the two
            atomic_write_bytes(self.digest_path, _digest_line(self.config_path.read_bytes()))
        self._config = config
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
        if self._lock is None:
            self._lock = lock_directory(self.directory)

    def _remove_stale_temporaries(self) -> None:
        """Delete the temporary files of a writer that was killed (we hold the lock)."""
        if self._lock is None:
            return
        paths = [p for pattern in _TEMP_GLOBS for p in self.directory.glob(pattern)]
        for path in [*paths, *self.parts.glob(_PART_TEMP_GLOB)]:
            if path.is_symlink() or path.is_file():  # ours are files; anything else is left
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _holds_other_files(self) -> bool:
        """Whether the directory holds anything but the lock and temporaries of a killed run."""
        if not self.directory.is_dir():
            return False
        ours = {p.name for pattern in (_LOCK, *_TEMP_GLOBS) for p in self.directory.glob(pattern)}
        ours.add(".lock")
        if self.parts.is_dir() and not any(self.parts.iterdir()):
            ours.add(self.parts.name)  # a run killed before it wrote config.json
        return any(p.name not in ours for p in self.directory.iterdir())

    def _clear(self) -> None:
        """Move an earlier study aside (DIR/replaced-TIMESTAMP/), never delete it silently."""
        names = (
            "config.json",
            _CONFIG_DIGEST,
            "parts",
            "report.html",
            "figures",
            "summary.csv",
            "oracle.parquet",
        )
        move_aside(
            self.directory,
            [
                self.directory / n
                for n in names
                if (self.directory / n).exists() or (self.directory / n).is_symlink()
            ],
        )
        self._checked.clear()

    def read_config(self) -> StudyConfig:
        """The stored config, checked (a regular file of config size, unchanged since written).

        Raises:
            StoreError: ``config.json`` is missing, a link or not a regular file, not JSON, not
                a valid study config, or edited since the study was written.
        """
        try:
            raw = read_bounded(self.config_path, _MAX_CONFIG_BYTES)
        except FileNotFoundError:
            raise StoreError(f"{self.directory} holds no study (no config.json)") from None
        try:
            recorded = read_bounded(self.digest_path, 1024).decode("ascii").strip()
        except FileNotFoundError:
            recorded = None  # written by iht < 0.3 (open() records it)
        except (StoreError, UnicodeDecodeError):
            recorded = "unreadable"
        if recorded is not None and recorded != hashlib.sha256(raw).hexdigest():
            raise StoreError(
                f"{self.config_path} was changed after the study was written (it does not "
                f"match {_CONFIG_DIGEST}); restore it, or use --overwrite to move this study "
                "aside and start again"
            )
        try:
            return StudyConfig.from_dict(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            raise StoreError(
                f"{self.config_path} is not a valid study config: {first_line(exc)}"
            ) from None

    def _plan(self) -> dict[str, Chunk]:
        if self._config is None:
            self._config = self.read_config()
        return {chunk.key: chunk for chunk in plan_chunks(self._config)}

    # -- parts ------------------------------------------------------------------------
    def done_keys(self) -> set[str]:
        """The chunks whose part passed its check (all stored parts are checked once)."""
        if not self._checked:
            self._check_all(move=False)
        return set(self._checked)

    def check_parts(self) -> list[str]:
        """Check every part; move the ones that fail aside (``corrupt/``) and say why."""
        return self._check_all(move=True)

    def _check_all(self, *, move: bool) -> list[str]:
        """Check every entry of ``parts/`` (see :func:`~iht.study.part_check.check_part`).

        With ``move`` a failing entry is moved to ``corrupt/`` and named in a warning; without,
        the first failure raises StoreError (readers do not change the store).
        """
        if not self.parts.exists():
            return []
        if self.parts.is_symlink() or not self.parts.is_dir():
            raise StoreError(
                f"{self.parts} is a link or a file; a results directory holds its own parts/"
            )
        plan, schema = self._plan(), run_schema()
        assert self._config is not None
        warnings = []
        for path in sorted(self.parts.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                continue  # a writer's temporary file (removed by the next writer, under the lock)
            chunk = plan.get(path.stem) if path.suffix == ".parquet" else None
            if chunk is None:
                why: str = "is not a part of this study's plan"
            elif path.stem in self._checked:
                continue
            else:
                checked = check_part(path, self._config, chunk, schema)
                if isinstance(checked, str):
                    why = checked
                else:
                    self._checked[chunk.key] = checked.table
                    continue
            warnings.append(self._reject(path, why, move=move))
        for key, why in self._inconsistent_epsilons(plan):
            path = self.parts / f"{key}.parquet"
            del self._checked[key]
            warnings.append(self._reject(path, why, move=move))
        return warnings

    def _inconsistent_epsilons(self, plan: dict[str, Chunk]) -> list[tuple[str, str]]:
        """IHT parts whose dense losses are not the stored dense runs' (a foreign dense part
        used when they were computed)."""
        dense: dict[int, float] = {}
        for key, table in self._checked.items():
            if plan[key].kind == DENSE:
                dense.update(
                    zip(
                        table.column("index").to_pylist(),
                        table.column("train_loss").to_pylist(),
                        strict=True,
                    )
                )
        bad = []
        for key, table in self._checked.items():
            if plan[key].kind == DENSE:
                continue
            pairs = zip(
                table.column("index").to_pylist(),
                table.column("dense_train_loss").to_pylist(),
                strict=True,
            )
            for index, loss in pairs:
                if (
                    index in dense and loss == loss and loss != dense[index]
                ):  # loss == loss: not NaN
                    bad.append(
                        (key, f"used a dense loss of run {index} that is not the stored one")
                    )
                    break
        return bad

    def _reject(self, path: Path, why: str, *, move: bool) -> str:
        name = printable(path.name)
        if not move:
            if "another study config" in why:  # config.json and its checksum were both edited
                raise StoreError(
                    f"part {name} {why}: config.json was changed after the parts were written; "
                    "restore it, or run `iht reproduce` with the settings it now holds to "
                    "recompute the parts"
                )
            raise StoreError(
                f"part {name} {why}; run the same `iht reproduce` command again to move it "
                "aside and recompute it"
            )
        aside = self.directory / "corrupt"
        make_own_dir(aside)
        target = aside / f"{path.name}.{time.time_ns()}"
        try:
            os.rename(path, target)  # the entry itself (a link is moved, not followed)
        except OSError as exc:
            raise StoreError(f"cannot move part {name} to {aside}: {exc.strerror or exc}") from None
        return f"part {name} {why}; moved to {aside}, it will be recomputed"

    def write_part(self, key: str, rows: Sequence[RunRow]) -> None:
        """Store one chunk's rows atomically, with the record that proves them; never replace."""
        target = self.parts / f"{key}.parquet"
        if target.exists() or target.is_symlink():
            raise StoreError(f"part {target} exists already; refusing to overwrite a stored result")
        plan = self._plan()
        assert self._config is not None
        table = pa.Table.from_pylist([r.to_dict() for r in rows], schema=run_schema())
        table = table.replace_schema_metadata(part_metadata(self._config, plan[key], table))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(target, sink.getvalue().to_pybytes())
        self._checked[key] = table.replace_schema_metadata(None)

    def load(self) -> pd.DataFrame:
        """Every stored run, one row each, ordered by kind, sparsity and index.

        Every part is checked first; a part that fails raises (run ``iht reproduce`` to
        move it aside and recompute it).
        """
        keys = self.done_keys()
        if not keys:
            raise StoreError(f"{self.directory} holds no stored runs")
        frame = pd.concat([self._checked[k].to_pandas() for k in sorted(keys)], ignore_index=True)
        if frame["run_id"].duplicated().any():
            raise StoreError(f"{self.directory} holds duplicated runs; the store is inconsistent")
        return frame.sort_values(["kind", "sparsity", "index"], ignore_index=True)


def _digest_line(data: bytes) -> bytes:
    return (hashlib.sha256(data).hexdigest() + "\n").encode()


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
