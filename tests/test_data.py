"""Data: built-in sets, CSV files (every error is one clear DataError), splits, standardisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iht.data import (
    BUILTIN_DATASETS,
    DataError,
    load_builtin,
    load_csv,
    load_dataset,
    n_test_rows,
    random_split,
    standardise,
)


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- built-in sets ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [
        ("iris", (150, 4), 3),
        ("wine", (178, 13), 3),
        ("breast_cancer", (569, 30), 2),
        ("digits", (1797, 64), 10),
    ],
)
def test_builtin_sets_ship_with_names(name: str, shape: tuple[int, int], classes: int) -> None:
    data = load_builtin(name)
    assert data.X.shape == shape and data.X.dtype == np.float64
    assert data.n_classes == classes == len(data.class_names)
    assert len(data.feature_names) == shape[1]
    assert set(np.unique(data.y)) == set(range(classes))
    assert np.isfinite(data.X).all()


def test_load_dataset_picks_builtin_or_csv(tmp_path: Path) -> None:
    assert load_dataset("iris").name == "iris"
    path = write(tmp_path, "a,b,label\n1,2,x\n3,4,y\n")
    assert load_dataset(str(path), target="label").class_names == ("x", "y")
    with pytest.raises(DataError, match="--target is only for CSV"):
        load_dataset("iris", target="species")
    with pytest.raises(DataError, match="needs --target"):
        load_dataset(str(path))
    with pytest.raises(DataError, match=r"no such file 'nope\.csv'.*iris, wine"):
        load_dataset("nope.csv", target="y")
    assert set(BUILTIN_DATASETS) == {
        "iris",
        "wine",
        "breast_cancer",
        "digits",
        "mnist1d",
        "diabetes",
    }


def test_mnist1d_is_generated_offline_cached_and_leaves_the_global_rngs_alone(
    tmp_path: Path,
) -> None:
    import random

    import numpy as np

    from iht.data import load_mnist1d

    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    first = load_mnist1d(cache=tmp_path)
    assert (random.random(), np.random.rand()) == expected  # mnist1d seeds them globally
    assert first.X.shape == (5000, 40) and first.input_shape == (1, 40)
    assert first.split is not None and len(first.split[0]) == 4000 and len(first.split[1]) == 1000
    assert sorted(set(first.y.tolist())) == list(range(10))
    cached = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(cached) == 1
    again = load_mnist1d(cache=tmp_path)
    assert np.array_equal(again.X, first.X) and np.array_equal(again.y, first.y)
    cached[0].write_bytes(b"not an npz file")  # a damaged cache is made again, not trusted
    assert np.array_equal(load_mnist1d(cache=tmp_path).X, first.X)


# -- CSV: what is accepted --------------------------------------------------------------
def test_csv_string_labels_map_to_sorted_classes(tmp_path: Path) -> None:
    path = write(tmp_path, "f1, f2 ,species\n1.5,2,versicolor\n-3,4e2,setosa\n5, 6 ,versicolor\n")
    data = load_csv(path, target="species")
    assert data.class_names == ("setosa", "versicolor")
    np.testing.assert_array_equal(data.y, [1, 0, 1])
    np.testing.assert_array_equal(data.X, [[1.5, 2.0], [-3.0, 400.0], [5.0, 6.0]])
    assert data.feature_names == ("f1", "f2") and data.name == "data" and data.n_classes == 2


def test_csv_integer_labels_sort_numerically_and_target_can_be_anywhere(tmp_path: Path) -> None:
    path = write(tmp_path, "y,a,b\n10,0,1\n9,1,0\n2,1,1\n10,0,0\n2.0,1,1\n")
    data = load_csv(path, target="y")
    assert data.class_names == ("2", "9", "10")  # not the string order "10" < "2"
    np.testing.assert_array_equal(data.y, [2, 1, 0, 2, 0])
    assert data.feature_names == ("a", "b")


def test_csv_byte_order_mark_and_blank_lines_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffa,b,y\n\n1,2,u\n\n3,4,v\n".encode())
    data = load_csv(path, target="y")
    assert data.X.shape == (2, 2) and data.feature_names == ("a", "b")


# -- CSV: every error is one line that names the problem --------------------------------
CSV_ERRORS = [
    ("empty", "", "is empty"),
    ("blank", "\n  \n", "is empty"),
    ("header only", "a,b,y\n", "header row but no data rows"),
    ("no header", "1,2,3\n4,5,6\n", "no header row"),
    ("one column", "a;b;y\n1;2;x\n", "1 column"),
    ("missing target", "a,b,label\n1,2,x\n3,4,y\n", "target column 'y' is not in .*a, b, label"),
    ("one class", "a,b,y\n1,2,x\n3,4,x\n", "single class \\('x'\\)"),
    (
        "strings in a feature",
        "a,b,y\n1,2,x\n3,hello,z\n",
        "'b' is not numeric \\(line 3 holds 'hello'\\)",
    ),
    ("empty cell", "a,b,y\n1,,x\n3,4,z\n5,6,x\n", "'b' has 1 missing value.*line 2"),
    ("NaN", "a,b,y\n1,NaN,x\n3,nan,z\n5,6,x\n", "'b' has 2 missing value.*3 rows"),
    ("missing label", "a,b,y\n1,2,x\n3,4,\n", "'y' has 1 missing value"),
    ("infinite", "a,b,y\n1,inf,x\n3,4,z\n", "non-finite value 'inf' on line 2"),
    ("single row", "a,b,y\n1,2,x\n", "only 1 data row"),
    ("ragged", "a,b,y\n1,2,x\n3,4\n", "line 3 has 2 fields, the header has 3"),
    ("duplicate names", "a,a,y\n1,2,x\n3,4,z\n", "duplicate column names"),
    ("empty name", "a,,y\n1,2,x\n3,4,z\n", "column 2 has an empty name"),
    ("float labels", "a,b,y\n1,2,0.5\n3,4,1\n", "holds the number '0.5'"),
]


@pytest.mark.parametrize(("case", "text", "message"), CSV_ERRORS, ids=[c[0] for c in CSV_ERRORS])
def test_csv_errors_are_clear(tmp_path: Path, case: str, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=message) as info:
        load_csv(path, target="y")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_csv_file_problems(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_csv(tmp_path / "absent.csv", target="y")
    with pytest.raises(DataError, match="is a directory"):
        load_csv(tmp_path, target="y")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        load_csv(binary, target="y")


# -- splits and standardisation ---------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(150, 0.2, 30), (1797, 0.2, 359), (10, 0.25, 3), (2, 0.2, 1), (2, 0.9, 1), (5, 0.5, 3)],
)
def test_n_test_rows_rounds_half_up_and_keeps_both_sides(
    n: int, fraction: float, expected: int
) -> None:
    assert n_test_rows(n, fraction) == expected


@pytest.mark.parametrize(("n", "fraction"), [(1, 0.2), (0, 0.5), (10, 0.0), (10, 1.0), (10, -1)])
def test_n_test_rows_refuses(n: int, fraction: float) -> None:
    with pytest.raises(DataError):
        n_test_rows(n, fraction)


def test_random_split_partitions_and_is_seeded() -> None:
    train, test = random_split(20, 15, seed=3)
    assert len(train) == 15 and len(test) == 5
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(20))
    again, _ = random_split(20, 15, seed=3)
    other, _ = random_split(20, 15, seed=4)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)
    with pytest.raises(ValueError):
        random_split(5, 5, seed=0)


def test_standardise_uses_training_rows_only() -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(3, 2, 50), np.full(50, 7.0)])
    train = np.arange(40)
    Z = standardise(X, train)
    np.testing.assert_allclose(Z[train, 0].mean(), 0, atol=1e-12)
    np.testing.assert_allclose(Z[train, 0].std(), 1, atol=1e-12)
    np.testing.assert_array_equal(Z[:, 1], 0.0)  # constant column: centred only
