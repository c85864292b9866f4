"""Data: the data sets scikit-learn ships, CSV files, random train/test splits, standardisation.

Nothing is downloaded: iris, wine, breast_cancer, digits and diabetes ship inside
scikit-learn. A CSV file needs a header row, numeric feature columns and one target column:
class labels (strings or integers) for classification, numbers for regression. A numeric
target with many distinct values is never guessed into classes: without ``task`` it is an
error that asks for one. Every problem with a file is a :class:`DataError` of one line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray

from .errors import DataError, InvalidValueError

__all__ = [
    "BUILTIN_DATASETS",
    "MAX_GUESSED_CLASSES",
    "MISSING_TOKENS",
    "REGRESSION_DATASETS",
    "DataError",
    "Dataset",
    "load_builtin",
    "load_csv",
    "load_dataset",
    "load_mnist1d",
    "n_test_rows",
    "random_split",
    "standardise",
]

BUILTIN_DATASETS = ("iris", "wine", "breast_cancer", "digits", "mnist1d", "diabetes")

#: The built-in regression data sets (the others are classification).
REGRESSION_DATASETS = frozenset({"diabetes"})

#: A numeric target with more distinct values than this is not read as class labels unless
#: the task says so (``task="classification"``).
MAX_GUESSED_CLASSES = 20

#: Cell values read as "missing" in a CSV file (compared after stripping, case-insensitively).
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?", "-"})


@dataclass(frozen=True)
class Dataset:
    """Features X (n, d) as float64 and the target y (n,): integer class labels in
    0..n_classes-1 (``task="classification"``) or float64 values (``task="regression"``).

    ``class_names[c]`` is the original label of class c (for a CSV target, the labels in
    sorted order); ``feature_names`` are the column names. Both may be empty.
    ``input_shape`` is the shape of one example as a convolution sees it ((channels, length)
    for signals, (channels, height, width) for images; None for tabular rows), and
    ``split`` a fixed (train, test) split of the rows the data set comes with (None: draw one).
    """

    name: str
    X: NDArray[np.float64]
    y: NDArray[Any]  # int64 labels, or float64 values for a regression
    feature_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    input_shape: tuple[int, ...] | None = None
    split: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None
    task: str = "classification"

    @property
    def n_classes(self) -> int:
        """Classes of a classification target; 0 for a regression target."""
        if self.task == "regression":
            return 0
        return max(len(self.class_names), int(self.y.max()) + 1)

    @property
    def n_outputs(self) -> int:
        """The model's output width: one logit per class, or one number."""
        return 1 if self.task == "regression" else self.n_classes

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


def load_builtin(name: str) -> Dataset:
    """Load one of :data:`BUILTIN_DATASETS`: scikit-learn's, or MNIST-1D (no network)."""
    if name == "mnist1d":
        return load_mnist1d()
    from sklearn import datasets

    loaders = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
        "diabetes": datasets.load_diabetes,
    }
    if name not in loaders:
        raise InvalidValueError(
            f"unknown data set {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}"
        )
    bunch = loaders[name]()
    if name in REGRESSION_DATASETS:
        return Dataset(
            name=name,
            X=np.asarray(bunch.data, dtype=np.float64),
            y=np.asarray(bunch.target, dtype=np.float64),
            feature_names=tuple(str(f) for f in bunch.feature_names),
            task="regression",
        )
    return Dataset(
        name=name,
        X=np.asarray(bunch.data, dtype=np.float64),
        y=np.asarray(bunch.target, dtype=np.int64),
        feature_names=tuple(str(f) for f in bunch.feature_names),
        class_names=tuple(str(c) for c in bunch.target_names),
        input_shape=(1, 8, 8) if name == "digits" else None,
    )


def load_mnist1d(cache: Path | None = None) -> Dataset:
    """MNIST-1D (Greydanus & Kobak 2024): 5,000 signals of length 40, 10 classes, generated
    offline by the ``mnist1d`` package with its default arguments (seed 42), and its own split:
    the first 4,000 for training, the last 1,000 for testing.

    The generated arrays are cached in ``cache`` (default ``$XDG_CACHE_HOME/iht`` or
    ``~/.cache/iht``) keyed on the generator's arguments; generation takes ~2 s. The
    generator seeds Python's and numpy's global random state: both are restored afterwards.

    Raises:
        DataError: the ``mnist1d`` package is not installed.
    """
    import json
    import random

    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError("MNIST-1D needs the mnist1d package: pip install mnist1d") from None
    args = vars(get_dataset_args())
    key = json.dumps({k: v for k, v in sorted(args.items()) if k != "url"}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    directory = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "iht"
    path = directory / f"mnist1d-{digest}.npz"
    arrays = _read_cache(path)
    if arrays is None:
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            made = make_dataset(get_dataset_args())
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        arrays = {
            "X": np.concatenate([made["x"], made["x_test"]]).astype(np.float64),
            "y": np.concatenate([made["y"], made["y_test"]]).astype(np.int64),
            "n_train": np.array(len(made["y"])),
        }
        _write_cache(path, arrays)
    n_train = int(arrays["n_train"])
    n = len(arrays["y"])
    return Dataset(
        name="mnist1d",
        X=arrays["X"],
        y=arrays["y"],
        feature_names=tuple(f"t{i}" for i in range(arrays["X"].shape[1])),
        class_names=tuple(str(c) for c in range(10)),
        input_shape=(1, arrays["X"].shape[1]),
        split=(np.arange(n_train, dtype=np.int64), np.arange(n_train, n, dtype=np.int64)),
    )


def _read_cache(path: Path) -> dict[str, NDArray[Any]] | None:
    """The cached arrays, or None when missing or unreadable (then they are made again)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {k: stored[k] for k in ("X", "y", "n_train")}
    except (OSError, KeyError, ValueError):
        return None
    if arrays["X"].ndim != 2 or arrays["y"].shape != (arrays["X"].shape[0],):
        return None
    return arrays


def _write_cache(path: Path, arrays: dict[str, NDArray[Any]]) -> None:
    """Write the cache atomically; a cache that cannot be written is only a cost, not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, X=arrays["X"], y=arrays["y"], n_train=arrays["n_train"])
        os.replace(tmp, path)
    except OSError:
        pass


def load_dataset(spec: str, *, target: str | None = None, task: str | None = None) -> Dataset:
    """A built-in data set by name (:data:`BUILTIN_DATASETS`) or a CSV file by path.

    Args:
        spec: ``"iris"``, ``"wine"``, ``"breast_cancer"``, ``"digits"``, ``"mnist1d"``,
            ``"diabetes"`` or a CSV path.
        target: the target column of a CSV file (required for a CSV, refused otherwise).
        task: ``"classification"``, ``"regression"`` or None: a built-in set's own task; for
            a CSV, class labels unless the target is numbers that do not look like labels
            (then an error asks for the task: it is never guessed).

    Raises:
        DataError: see :func:`load_csv`; ``target`` given with a built-in set or missing
            with a CSV file; a ``task`` a built-in set does not have.
    """
    if task is not None and task not in ("classification", "regression"):
        raise DataError(f"task must be classification or regression, got {task!r}")
    if spec in BUILTIN_DATASETS:
        if target is not None:
            raise DataError(
                f"--target is only for CSV files; the built-in set {spec!r} has its own labels"
            )
        own = "regression" if spec in REGRESSION_DATASETS else "classification"
        if task is not None and task != own:
            raise DataError(f"{spec} is a {own} data set; --task {task} does not apply to it")
        return load_builtin(spec)
    path = Path(spec)
    if not path.exists():
        raise DataError(
            f"no such file {spec!r}, and it is not a built-in data set "
            f"({', '.join(BUILTIN_DATASETS)})"
        )
    if target is None:
        raise DataError(f"a CSV file needs --target COLUMN naming its target column ({spec})")
    return load_csv(path, target=target, task=task)


def load_csv(path: str | os.PathLike[str], *, target: str, task: str | None = None) -> Dataset:
    """Read a data set from a CSV file (comma-separated, UTF-8, header row).

    Every column but ``target`` is a numeric feature. For classification the target holds
    class labels: integers (sorted numerically) or strings (sorted as strings); class c is
    the c-th label in that order and ``class_names`` keeps the labels. For regression it
    holds finite numbers. With ``task=None`` the target is read as class labels, except a
    numeric target with non-integer values or more than :data:`MAX_GUESSED_CLASSES`
    distinct values: that is an error asking for ``task`` (a regression target silently
    trained as hundreds of classes is the mistake this prevents). Blank lines are skipped.
    Cells in :data:`MISSING_TOKENS` (empty, NA, NaN, ...) count as missing, which is an
    error: this function never guesses a value.

    Raises:
        DataError: with one line naming the problem: missing or unreadable file, empty file,
            no header row, a header without data rows, fewer than 2 columns, a row with the
            wrong number of fields, duplicate or empty column names, unknown ``target``
            (the message lists the columns), missing values (column, count, first line),
            a non-numeric or infinite feature value (column, line, the value), non-integer
            numeric labels, a numeric target that needs ``task``, a non-numeric or constant
            regression target, fewer than 2 classes, fewer than 2 rows.

    Example:
        >>> data = load_csv("flowers.csv", target="species")      # doctest: +SKIP
        >>> data.X.shape, data.class_names                        # doctest: +SKIP
        ((150, 4), ('setosa', 'versicolor', 'virginica'))
    """
    path = Path(path)
    rows, lines = _read_rows(path)
    where = path.name
    if not rows:
        raise DataError(f"{path} is empty; a CSV file needs a header row and data rows")
    header = [name.strip() for name in rows[0]]
    data, data_lines = rows[1:], lines[1:]
    if len(header) < 2:
        raise DataError(
            f"{where} has {len(header)} column ({header[0]!r}); it needs at least one feature "
            "column and the target column, separated by commas"
        )
    if all(_is_number(name) for name in header):
        raise DataError(
            f"{where} has no header row: its first line ({_preview(header)}) is all numbers; "
            "add a first line naming the columns"
        )
    for j, name in enumerate(header):
        if not name:
            raise DataError(f"{where}: column {j + 1} has an empty name in the header row")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataError(f"{where}: duplicate column names in the header: {_preview(duplicated)}")
    if not data:
        raise DataError(f"{where} has a header row but no data rows")
    for row, line in zip(data, data_lines, strict=True):
        if len(row) != len(header):
            raise DataError(
                f"{where}: line {line} has {len(row)} fields, the header has {len(header)}"
            )
    if target not in header:
        raise DataError(
            f"target column {target!r} is not in {where}; its columns are: {_preview(header, 20)}"
        )
    if len(data) < 2:
        raise DataError(
            f"{where} has only 1 data row; at least 2 are needed to split into training and test rows"
        )

    columns = [[row[j].strip() for row in data] for j in range(len(header))]
    for name, values in zip(header, columns, strict=True):
        missing = [i for i, v in enumerate(values) if v.lower() in MISSING_TOKENS]
        if missing:
            raise DataError(
                f"{where}: column {name!r} has {len(missing)} missing value(s) of {len(values)} "
                f"rows (first on line {data_lines[missing[0]]}: {values[missing[0]] or 'an empty cell'!r}); "
                "fill or drop them first"
            )
    features = [j for j, name in enumerate(header) if name != target]
    X = np.empty((len(data), len(features)), dtype=np.float64)
    for k, j in enumerate(features):
        X[:, k] = _numeric_column(header[j], columns[j], data_lines, where)
    values = columns[header.index(target)]
    if task == "regression":
        return Dataset(
            name=path.stem,
            X=X,
            y=_regression_target(target, values, data_lines, where),
            feature_names=tuple(header[j] for j in features),
            task="regression",
        )
    if task is None:
        _refuse_guess(target, values, data_lines, where)
    y, class_names = _labels(target, values, data_lines, where)
    return Dataset(
        name=path.stem,
        X=X,
        y=y,
        feature_names=tuple(header[j] for j in features),
        class_names=class_names,
    )


def _read_rows(path: Path) -> tuple[list[list[str]], list[int]]:
    """Non-blank CSV rows and the file line on which each starts."""
    if not path.exists():
        raise DataError(f"CSV file {path} does not exist")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a CSV file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: drop a byte-order mark
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a UTF-8 text file; save it as UTF-8 CSV") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows: list[list[str]] = []
    lines: list[int] = []
    reader = csv.reader(io.StringIO(text))
    start = 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append(row)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path.name}: line {reader.line_num} is not valid CSV: {exc}") from None
    return rows, lines


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _exact_integer(text: str) -> int | None:
    """The integer a label spells ("7", "-3", " 12 "), exactly; None for anything else."""
    stripped = text.strip()
    digits = stripped[1:] if stripped[:1] in "+-" else stripped
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 4000:
        return None
    return int(stripped)


def _preview(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _numeric_column(
    name: str, values: list[str], lines: list[int], where: str, kind: str = "feature"
) -> NDArray[np.float64]:
    try:
        column = np.asarray(values, dtype=np.float64)
    except ValueError:
        bad = next(i for i, v in enumerate(values) if not _is_number(v))
        raise DataError(
            f"{where}: feature column {name!r} is not numeric (line {lines[bad]} holds "
            f"{values[bad]!r}); features must be numbers, only the target may hold strings"
        ) from None
    if not np.isfinite(column).all():
        bad = int(np.flatnonzero(~np.isfinite(column))[0])
        raise DataError(
            f"{where}: {kind} column {name!r} holds the non-finite value {values[bad]!r} "
            f"on line {lines[bad]}"
        )
    return column


def _regression_target(
    name: str, values: list[str], lines: list[int], where: str
) -> NDArray[np.float64]:
    """A regression target: finite numbers, not all equal."""
    bad = [i for i, v in enumerate(values) if not _is_number(v)]
    if bad:
        raise DataError(
            f"{where}: target column {name!r} holds {values[bad[0]]!r} on line "
            f"{lines[bad[0]]}; a regression target must be numbers"
        )
    column = _numeric_column(name, values, lines, where, kind="target")
    if float(column.min()) == float(column.max()):
        raise DataError(
            f"{where}: target column {name!r} is the constant {values[0]!r}; there is nothing "
            "to regress"
        )
    return column


def _refuse_guess(name: str, values: list[str], lines: list[int], where: str) -> None:
    """Refuse to read a numeric target as classes when it does not look like labels."""
    if not all(_is_number(v) for v in values):
        return  # strings: class labels
    numbers = np.asarray(values, dtype=np.float64)
    finite = numbers[np.isfinite(numbers)]
    distinct = len(set(values)) if finite.size < numbers.size else len(np.unique(finite))
    whole = bool(np.all(finite == np.round(finite)))
    if whole and distinct <= MAX_GUESSED_CLASSES:
        return
    if whole:
        what = f"{distinct} distinct numbers in {len(values)} rows"
    else:
        i = next(
            k
            for k, v in enumerate(values)
            if math.isfinite(float(v)) and float(v) != round(float(v))
        )
        what = f"the number {values[i]!r} on line {lines[i]}, not a class label"
    raise DataError(
        f"{where}: target column {name!r} holds {what}; pass --task regression to predict "
        "the number, or --task classification to treat each value as a class"
    )


def _labels(
    name: str, values: list[str], lines: list[int], where: str
) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    """Map labels to 0..C-1 in sorted order (numeric order if every label is a number).

    Integer labels are read exactly, at any size ("9007199254740993" and "9007199254740992"
    are two classes); other numbers ("1.0") as float64, and when one of them is beyond 2**53
    (where float64 no longer holds every integer) the labels are read as text instead.
    """
    integers = [_exact_integer(v) for v in values]
    numeric = all(_is_number(v) for v in values)
    if all(i is not None for i in integers):
        classes_int = sorted(set(cast(list[int], integers)))
        index = {c: k for k, c in enumerate(classes_int)}
        y = np.asarray([index[cast(int, i)] for i in integers], dtype=np.int64)
        class_names = tuple(str(c) for c in classes_int)
    elif numeric and bool((np.abs(np.asarray(values, dtype=np.float64)) < 2.0**53).all()):
        numbers = np.asarray(values, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(numbers) | (numbers != np.round(numbers)))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{where}: target column {name!r} holds the number {values[i]!r} on line "
                f"{lines[i]}; class labels must be integers or strings (for a numeric target "
                "pass --task regression)"
            )
        classes, y = np.unique(numbers.astype(np.int64), return_inverse=True)
        class_names = tuple(str(int(c)) for c in classes)
    else:
        labels, y = np.unique(np.asarray(values, dtype=str), return_inverse=True)
        class_names = tuple(str(c) for c in labels)
    if len(class_names) < 2:
        raise DataError(
            f"{where}: target column {name!r} holds a single class ({class_names[0]!r}); "
            "classification needs at least 2"
        )
    return y.astype(np.int64).reshape(-1), class_names


def n_test_rows(n: int, test_fraction: float) -> int:
    """The number of test rows for ``n`` rows: round(test_fraction * n), kept in 1..n-1.

    Rounds half up; at least one row goes to each side, so ``n >= 2`` is needed.

    Raises:
        DataError: ``n < 2`` or ``test_fraction`` not in (0, 1).
    """
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise DataError(f"test fraction must be in (0, 1), got {test_fraction!r}")
    if n < 2:
        raise DataError(f"{n} row(s) cannot be split into training and test rows; need at least 2")
    return min(max(math.floor(test_fraction * n + 0.5), 1), n - 1)


def random_split(n: int, n_train: int, *, seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """A uniformly random split of range(n) into n_train training and n - n_train test indices.

    Drawn with ``torch.randperm`` from a generator seeded with ``seed`` (the run's data seed);
    both index arrays are sorted.
    """
    if not 0 < n_train < n:
        raise InvalidValueError(f"n_train must be in 1..{n - 1} for {n} points, got {n_train}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(perm[:n_train]).astype(np.int64), np.sort(perm[n_train:]).astype(np.int64)


def standardise(X: NDArray[np.float64], train: NDArray[np.int64]) -> NDArray[np.float64]:
    """z-score every column with the training rows' mean and (population) std.

    Columns constant on the training rows are only centred (their std is taken as 1), so
    no division by zero happens (digits has such pixels).
    """
    mean = X[train].mean(axis=0)
    std = X[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (X - mean) / std
