"""What a stored part must prove before its rows are used: that it is the chunk it is named.

A part is trusted by its content, not its file name. :func:`part_metadata` is written into
every part's Parquet footer: the hash of the study config, the chunk key, the run ids, the
row count and a digest of the rows' values. :func:`check_part` reads a part back within
bounds (a regular file of a size its rows can take; the footer's row count before any row)
and checks, in order, the schema, the footer against the config and its chunk plan, the
digest, each row's identity and seeds against the plan, and every value against its range.
The first failure is returned as one line; ``None`` means the part is what it claims.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .chunks import Chunk
from .config import DENSE, N_POINTS, P, StudyConfig

__all__ = [
    "META_KEY",
    "CheckedPart",
    "check_part",
    "config_digest",
    "content_digest",
    "max_part_bytes",
    "part_metadata",
]

#: The key of a part's own record in its Parquet footer (key-value metadata).
META_KEY = b"iht.part"
_META_VERSION = 1


def config_digest(config: StudyConfig) -> str:
    """SHA-256 of the config's canonical JSON: the identity of a study."""
    return hashlib.sha256(config.to_json().encode()).hexdigest()


def max_part_bytes(n_rows: int) -> int:
    """The most bytes a part of ``n_rows`` runs can take (a row is well under 8 KiB)."""
    return (1 << 20) + 8192 * n_rows


def content_digest(table: pa.Table) -> str:
    """SHA-256 of a table's values column by column (independent of Parquet's encoding).

    Primitive columns contribute their values' bytes, list columns their lengths and then their
    flattened values, strings their UTF-8 bytes with their lengths: two tables with the same
    columns, types and values give the same digest.
    """
    digest = hashlib.sha256()
    for name, column in zip(table.column_names, table.columns, strict=True):
        digest.update(name.encode() + b"\0" + _type_name(column.type).encode() + b"\0")
        _digest_array(digest, column.combine_chunks())
    return digest.hexdigest()


def _type_name(kind: pa.DataType) -> str:
    # Parquet names a list's item "element" where Arrow says "item": the type, not the name.
    if pa.types.is_list(kind):
        return f"list<{_type_name(kind.value_type)}>"
    return str(kind)


def _digest_array(digest: hashlib._Hash, array: pa.Array) -> None:
    if pa.types.is_list(array.type):
        digest.update(np.asarray(pc.list_value_length(array), dtype=np.int64).tobytes())
        _digest_array(digest, pc.list_flatten(array))
    elif pa.types.is_string(array.type):
        for text in array.to_pylist():
            raw = text.encode()
            digest.update(len(raw).to_bytes(8, "little") + raw)
    else:
        digest.update(np.ascontiguousarray(array.to_numpy(zero_copy_only=False)).tobytes())


def part_metadata(config: StudyConfig, chunk: Chunk, table: pa.Table) -> dict[bytes, bytes]:
    """The footer record of a part holding ``table`` as chunk ``chunk`` of ``config``."""
    record = {
        "version": _META_VERSION,
        "config_sha256": config_digest(config),
        "chunk": chunk.key,
        "rows": table.num_rows,
        "run_ids": table.column("run_id").to_pylist(),
        "content_sha256": content_digest(table),
    }
    return {META_KEY: json.dumps(record).encode()}


@dataclass(frozen=True)
class CheckedPart:
    """A part that passed :func:`check_part`: its rows, as stored."""

    table: pa.Table


def check_part(
    path: Path, config: StudyConfig, chunk: Chunk, schema: pa.Schema
) -> CheckedPart | str:
    """The part at ``path`` read and checked as chunk ``chunk`` of ``config``, or why not."""
    expected_rows = len(chunk.indices)
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISLNK(info.st_mode):
        return "is a link, not a file of this store"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_size > max_part_bytes(expected_rows):
        return f"has {info.st_size} bytes, more than {expected_rows} runs can take"
    try:
        with open(path, "rb", opener=_no_follow) as handle:
            footer = pq.read_metadata(handle)
            if footer.num_rows != expected_rows:
                return f"holds {footer.num_rows} rows; chunk {chunk.key} has {expected_rows} runs"
            stored_schema = footer.schema.to_arrow_schema().remove_metadata()
            if not stored_schema.equals(schema):
                return "has another schema (columns or types) than this version's runs"
            why = _check_footer(footer.metadata or {}, config, chunk)
            if why is not None:
                return why
            handle.seek(0)
            table = pq.read_table(handle).replace_schema_metadata(None)
    except (OSError, pa.ArrowException) as exc:
        return f"is damaged ({_one_line(exc)})"
    if table.num_rows != expected_rows:
        return f"holds {table.num_rows} rows; chunk {chunk.key} has {expected_rows} runs"
    if any(column.null_count for column in table.columns):
        return "holds missing values"
    record = json.loads((footer.metadata or {})[META_KEY])
    if content_digest(table) != record["content_sha256"]:
        return "does not match its checksum (its rows were changed after it was written)"
    return _check_rows(table, config, chunk) or CheckedPart(table)


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))


def _check_footer(metadata: dict[bytes, bytes], config: StudyConfig, chunk: Chunk) -> str | None:
    raw = metadata.get(META_KEY)
    if raw is None:
        return "carries no record of what it holds (written by iht < 0.3, or not by iht)"
    try:
        record = json.loads(raw)
        version, digest = record["version"], record["config_sha256"]
        key, rows, run_ids = record["chunk"], record["rows"], record["run_ids"]
        str(record["content_sha256"])
    except (ValueError, KeyError, TypeError):
        return "has an unreadable record of what it holds"
    if version != _META_VERSION:
        return f"has a record of version {version!r}; this iht reads version {_META_VERSION}"
    if digest != config_digest(config):
        return "belongs to another study config (written for a different config.json)"
    if key != chunk.key:
        return f"holds chunk {str(key)[:40]!r}, not {chunk.key}"
    expected = [spec.run_id for spec in chunk.specs(config)]
    if rows != len(expected) or run_ids != expected:
        return f"records runs other than chunk {chunk.key}'s"
    return None


#: Columns that are finite numbers >= 0, and those in [0, 1].
_NON_NEGATIVE = (
    "l_hat",
    "lr",
    "train_loss",
    "test_loss",
    "max_grad_on_support",
    "max_grad_off_support",
    "off_support_ratio",
    "residual",
)
_UNIT = ("train_acc", "test_acc")


def _check_rows(table: pa.Table, config: StudyConfig, chunk: Chunk) -> str | None:
    """Identity and seeds against the plan, then every value against its range."""
    specs = chunk.specs(config)
    for name in (
        "run_id",
        "kind",
        "sparsity",
        "index",
        "data_seed",
        "init_seed",
        "support_seed",
        "mc_seed",
    ):
        stored = table.column(name).to_pylist()
        planned = [spec.identity()[name] for spec in specs]
        if stored != planned:
            row = next(i for i, (a, b) in enumerate(zip(stored, planned, strict=True)) if a != b)
            return f"row {row} has {name} {_show(stored[row])}; the plan says {_show(planned[row])}"
    for name in _NON_NEGATIVE:
        values = _floats(table, name)
        bad = ~np.isfinite(values) | (values < 0)
        if name in ("l_hat", "lr"):
            bad |= values <= 0
        if bad.any():
            return _out_of_range(table, name, values, bad, "a finite number >= 0")
    for name in _UNIT:
        values = _floats(table, name)
        bad = ~((values >= 0) & (values <= 1))
        if bad.any():
            return _out_of_range(table, name, values, bad, "an accuracy in [0, 1]")
    steps = _floats(table, "steps")
    if ((steps < 0) | (steps > config.max_steps)).any():
        return _out_of_range(
            table,
            "steps",
            steps,
            (steps < 0) | (steps > config.max_steps),
            f"in 0..{config.max_steps}",
        )
    nonzeros = _floats(table, "nonzeros")
    sparsity = _floats(table, "sparsity")
    if ((nonzeros < 0) | (nonzeros > sparsity)).any():
        return _out_of_range(
            table, "nonzeros", nonzeros, (nonzeros < 0) | (nonzeros > sparsity), "in 0..s"
        )
    why = _check_vectors(table, config)
    if why is not None:
        return why
    dense = _floats(table, "dense_train_loss")
    loss, epsilon = _floats(table, "train_loss"), _floats(table, "epsilon")
    known = np.isfinite(dense)
    if (dense[known] < 0).any():
        return "holds a negative dense training loss"
    if not np.allclose(epsilon[known], loss[known] - dense[known], rtol=0, atol=1e-12):
        return "holds an epsilon that is not its training loss minus the dense one"
    if chunk.kind == DENSE and not np.array_equal(dense, loss):
        return "holds a dense run whose dense training loss is not its own"
    return None


def _check_vectors(table: pa.Table, config: StudyConfig) -> str | None:
    for name, length in (("theta_init", P), ("theta_final", P), ("grad_final", P)):
        column = table.column(name).combine_chunks()
        if (np.asarray(pc.list_value_length(column)) != length).any():
            return f"holds a {name} that is not of length {length}"
        if not np.isfinite(np.asarray(pc.list_flatten(column), dtype=np.float64)).all():
            return f"holds a non-finite {name}"
    for name, bound, size in (("support", P, None), ("train_idx", N_POINTS, config.n_train)):
        column = table.column(name).combine_chunks()
        values = np.asarray(pc.list_flatten(column), dtype=np.int64)
        if ((values < 0) | (values >= bound)).any():
            return f"holds a {name} entry outside 0..{bound - 1}"
        lengths = np.asarray(pc.list_value_length(column))
        if size is not None and (lengths != size).any():
            return f"holds a {name} that is not of length {size}"
    support_sizes = np.asarray(pc.list_value_length(table.column("support").combine_chunks()))
    if (support_sizes != _floats(table, "nonzeros")).any():
        return "holds a support whose size is not its nonzero count"
    return None


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(), dtype=np.float64)


def _out_of_range(
    table: pa.Table, name: str, values: np.ndarray, bad: np.ndarray, allowed: str
) -> str:
    row = int(np.flatnonzero(bad)[0])
    return f"row {row} has {name} = {float(values[row])!r}; it must be {allowed}"


def _show(value: object) -> str:
    return repr(value)[:40]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
