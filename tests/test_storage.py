"""Files on disk: typed records read back checked, atomic writes, nothing deleted."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from iht.budget import Budget, Pool
from iht.errors import InvalidValueError, StoreError
from iht.experiments.config import CompareConfig, TrainConfig
from iht.storage.files import atomic_write_bytes, check_output_dir, move_aside, read_json
from iht.storage.records import from_dict, to_dict, to_json
from iht.study.config import StudyConfig


@dataclass(frozen=True)
class Inner:
    name: str
    size: int
    share: float | None = None


@dataclass(frozen=True)
class Outer:
    inner: Inner
    items: tuple[Inner, ...]
    counts: dict[str, int]
    pair: tuple[int, str]
    flag: bool = False
    tags: tuple[str, ...] = field(default=())


def test_records_round_trip_nested_dataclasses() -> None:
    record = Outer(Inner("a", 1, 0.5), (Inner("b", 2), Inner("c", 3, 1.0)), {"x": 1}, (4, "y"))
    assert from_dict(Outer, json.loads(to_json(record))) == record
    assert to_dict(record)["items"][1] == {"name": "c", "size": 3, "share": 1.0}


@pytest.mark.parametrize(
    "config",
    [
        StudyConfig(runs=7, levels=(2, 5)),
        TrainConfig(data="iris", sparsity="10%", hidden=(8, 4), lr=0.5),
        TrainConfig(data="digits", sparsity=100, batch_size=32),
        CompareConfig(sparsity=(3, 5), hidden=(4,)),
        CompareConfig(data="wine", sparsity="0.1,10%"),
    ],
)
def test_the_configs_round_trip_through_json(config: object) -> None:
    assert from_dict(type(config), json.loads(to_json(config))) == config


def test_a_budget_round_trips() -> None:
    budget = Budget(
        "per_layer", 5, False, (Pool("0", ("0.weight",), 8, 3), Pool("b", ("b",), 2, 2, True))
    )
    assert from_dict(Budget, json.loads(to_json(budget))) == budget


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"inner": {"name": "a"}, "items": [], "counts": {}, "pair": [1, "x"]},
            "Outer.inner: missing field size",
        ),
        (
            {"inner": {"name": "a", "size": "1"}, "items": [], "counts": {}, "pair": [1, "x"]},
            "Outer.inner.size: expected int, got '1'",
        ),
        (
            {"inner": {"name": "a", "size": True}, "items": [], "counts": {}, "pair": [1, "x"]},
            "expected int, got True",
        ),
        (
            {
                "inner": {"name": "a", "size": 1},
                "items": [],
                "counts": {},
                "pair": [1, "x"],
                "extra": 1,
            },
            "unknown field(s) extra",
        ),
        (
            {"inner": {"name": "a", "size": 1}, "items": [5], "counts": {}, "pair": [1, "x"]},
            "Outer.items[0]: expected an object",
        ),
        (
            {"inner": {"name": "a", "size": 1}, "items": [], "counts": {}, "pair": [1]},
            "Outer.pair: expected a list of 2 items",
        ),
        ([], "Outer: expected an object (Outer)"),
    ],
)
def test_records_refuse_what_does_not_fit_naming_the_field(data: object, message: str) -> None:
    with pytest.raises(InvalidValueError) as caught:
        from_dict(Outer, data)
    assert message in str(caught.value)


def test_an_edited_study_config_is_refused_with_its_field() -> None:
    stored = json.loads(StudyConfig().to_json())
    stored["runs"] = "100"
    with pytest.raises(InvalidValueError, match=r"study config\.runs: expected int"):
        StudyConfig.from_dict(stored)
    stored["runs"] = 0
    with pytest.raises(InvalidValueError, match="runs must be an integer >= 1"):
        StudyConfig.from_dict(stored)


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_atomic_write_into_a_read_only_directory_is_one_line(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="cannot write"):
            atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        tmp_path.chmod(0o700)


def test_atomic_write_into_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot write .*missing.*No such file"):
        atomic_write_bytes(tmp_path / "missing" / "a.bin", b"x")


def test_move_aside_keeps_everything(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub").mkdir()
    first = move_aside(tmp_path)
    assert first is not None and (first / "a.txt").read_text() == "a" and (first / "sub").is_dir()
    (tmp_path / "b.txt").write_text("b")
    second = move_aside(tmp_path)
    assert second is not None and second != first and (first / "a.txt").exists()
    assert move_aside(tmp_path) is None  # only backups left: nothing to move


def test_output_directory_checks(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "new", overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is not a directory"):
        check_output_dir(tmp_path / "file", overwrite=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.json").write_text("{}")
    with pytest.raises(StoreError, match=r"not empty \(holds old.json"):
        check_output_dir(tmp_path / "full", overwrite=False)
    check_output_dir(tmp_path / "full", overwrite=True)


def test_read_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StoreError, match="cannot be read as JSON"):
        read_json(tmp_path / "bad.json")
