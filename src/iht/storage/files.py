"""Writing results safely: whole files or none, nothing earlier deleted.

:func:`atomic_write_bytes` writes beside the target, flushes and renames, so a reader (or a
process killed mid-write) sees the old file or the new one, never half of one; an ``OSError``
(disk full, read-only directory) becomes a one-line :class:`~iht.errors.StoreError`.
:func:`move_aside` moves earlier results to ``DIR/replaced-TIMESTAMP/`` instead of deleting
them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import StoreError
from ..untrusted import Refused, read_regular_file

if TYPE_CHECKING:  # pandas is imported by the callers that have frames
    import pandas as pd

__all__ = [
    "atomic_write_bytes",
    "check_output_dir",
    "first_line",
    "json_text",
    "lock_directory",
    "make_dir",
    "make_own_dir",
    "move_aside",
    "parquet_bytes",
    "printable",
    "read_bounded",
    "read_json",
    "read_parquet",
    "torch_bytes",
    "write_json",
]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename: a reader sees old or new, whole.

    Raises:
        StoreError: the file cannot be written (disk full, no permission, ...); nothing is left
            behind and an earlier ``path`` is untouched.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    try:
        _fsync_dir(path.parent)
    except OSError as exc:  # the directory vanished or went read-only after the rename
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON (paths as strings, numpy scalars as numbers), atomically."""
    atomic_write_bytes(path, json_text(value).encode())


def json_text(value: Any) -> str:
    """The text :func:`write_json` writes for ``value``."""
    return json.dumps(value, indent=2, default=_json_default) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    """A data frame as the bytes of a Parquet file (no index), to write atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def make_dir(directory: Path) -> None:
    """Create ``directory`` (and its parents) if missing.

    Raises:
        StoreError: it cannot be made (a file in the way, no permission, disk full, ...).
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the directory {directory}: {exc.strerror or exc}"
        ) from None


def make_own_dir(directory: Path) -> None:
    """Create a directory of a results directory (``parts/``, ``figures/``, ``corrupt/``).

    A link in its place is refused, not followed: iht writes, moves and deletes only inside the
    results directory it was given.

    Raises:
        StoreError: a link or a file is in the way, or the directory cannot be made.
    """
    if directory.is_symlink():
        raise StoreError(
            f"{printable(directory)} is a link; iht writes only inside its results directory "
            "(remove the link)"
        )
    make_dir(directory)
    if not directory.is_dir():
        raise StoreError(f"{printable(directory)} is a file, not a directory")


def lock_directory(directory: Path) -> IO[bytes] | None:
    """Take an exclusive lock on ``directory/.lock`` (held until the handle is closed or the
    process ends, ``kill -9`` included); None where there is no ``fcntl`` (not POSIX).

    The lock file is opened without following a link and without blocking (a FIFO put in
    its place would hang an ``open``), and must be a regular file.

    Raises:
        StoreError: another process holds the lock, or ``.lock`` is not a regular file.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    path = directory / ".lock"
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise StoreError(
            f"cannot use the lock file {printable(path)}: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{printable(path)} is not a regular file; remove it")
    handle = os.fdopen(fd, "r+b")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise StoreError(
            f"{printable(directory)} is in use by another iht process; wait for it to finish"
        ) from None
    return handle


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes, not a link.

    A link, FIFO or device is refused without being opened for reading (a FIFO would block, a
    device such as /dev/zero never ends), and so is a file larger than ``limit``.

    Raises:
        FileNotFoundError: there is no such file (the caller says what it means).
        StoreError: anything else, in one line naming the file.
    """
    try:
        return read_regular_file(path, limit, follow_links=False)
    except Refused as exc:
        raise StoreError(f"{printable(path)} {exc}") from None


def printable(text: object) -> str:
    """``str(text)`` with control characters escaped (``\\x1b``): file names reach the terminal."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in value)


def move_aside(directory: Path, entries: list[Path] | None = None) -> Path | None:
    """Move ``entries`` (default: everything but earlier backups) to DIR/replaced-TIMESTAMP/.

    Earlier results are never deleted; two moves within one second get distinct folders.
    Returns the backup folder, or None when there was nothing to move.
    """
    if entries is None:
        entries = [
            p
            for p in directory.iterdir()
            if not p.name.startswith("replaced-") and p.name != ".lock"
        ]
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = directory / f"replaced-{stamp}"
    counter = 1
    while backup.exists():
        counter += 1
        backup = directory / f"replaced-{stamp}-{counter}"
    backup.mkdir()
    for path in entries:
        shutil.move(str(path), backup / path.name)
    return backup


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_json(path: Path) -> Any:
    """The JSON value stored in ``path``.

    Raises:
        FileNotFoundError: there is no such file (the caller says what it means).
        StoreError: it cannot be read or is not JSON.
    """
    try:
        return json.loads(read_bounded(path, MAX_JSON_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise StoreError(f"{path} cannot be read as JSON: {first_line(exc)}") from None


#: The largest JSON file iht reads back (its configs, metrics and certificates are kilobytes).
MAX_JSON_BYTES = 16 << 20
#: The largest Parquet table of a train run or comparison iht reads back.
MAX_TABLE_BYTES = 1 << 30


def read_parquet(path: Path, *, max_rows: int | None = None) -> pd.DataFrame:
    """A Parquet file of a results directory as a frame, read within :data:`MAX_TABLE_BYTES`
    (a regular file, not a link; see :func:`read_bounded`) and, with ``max_rows``, refused
    from its footer, unread, when it claims more rows (a small file can declare millions).

    Raises:
        FileNotFoundError: there is no such file.
        StoreError: it cannot be read, or claims more than ``max_rows`` rows.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    data = read_bounded(path, MAX_TABLE_BYTES)
    try:
        if max_rows is not None:
            rows = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
            if rows > max_rows:
                raise StoreError(
                    f"{printable(path)} claims {rows} rows; it can hold at most {max_rows}"
                )
        return pd.read_parquet(io.BytesIO(data))
    except (OSError, ValueError, MemoryError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        if isinstance(exc, StoreError):
            raise
        raise StoreError(
            f"{printable(path)} is not a readable Parquet file: {first_line(exc)}"
        ) from None


def torch_bytes(value: Any) -> bytes:
    """``torch.save(value)`` as bytes, to write atomically."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def check_output_dir(directory: Path, *, overwrite: bool) -> None:
    """Refuse an output directory that is a file, or not empty unless ``overwrite``.

    Checked before any work, so that a long run never ends on a directory it cannot use.

    Raises:
        StoreError: naming what is there and what to do.
    """
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"--out {directory} exists and is not a directory")
    held = [p for p in directory.iterdir() if p.name != ".lock"] if directory.is_dir() else []
    if held and not overwrite:  # (a lock file left by a finished or killed run is not in the way)
        shown = ", ".join(sorted(p.name for p in held)[:4])
        raise StoreError(
            f"{directory} is not empty (holds {shown}, ...); choose another --out, or add "
            "--overwrite to move its contents aside (nothing is deleted)"
        )
