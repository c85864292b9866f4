"""The results store trusts nothing on disk (issue 11): parts prove what they hold.

Every attack ends the same way: one line naming the part and what is wrong with it, the part
moved to ``corrupt/`` (kept), the chunk computed again, and the finished study equal to an
uninterrupted one. Forged parts (a checksum recomputed over changed rows) are caught by the
identity and range checks behind the checksum.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from iht.cli.main import main
from iht.errors import StoreError
from iht.study.chunks import plan_chunks
from iht.study.config import StudyConfig
from iht.study.part_check import META_KEY, part_metadata
from iht.study.runner import run_study
from iht.study.store import ResultStore

CONFIG = StudyConfig(runs=4, chunk_runs=2, max_steps=20, n_monte=3, levels=(4,))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """An uninterrupted study: its directory (copied by each test) and its rows."""
    directory = tmp_path_factory.mktemp("reference")
    run_study(CONFIG, directory, progress=False)
    return directory, ResultStore(directory).load()


def _copy(reference: tuple[Path, pd.DataFrame], tmp_path: Path) -> Path:
    source, _ = reference
    target = tmp_path / "study"
    (target / "parts").mkdir(parents=True)
    for name in ("config.json", "config.sha256"):
        (target / name).write_bytes((source / name).read_bytes())
    for part in (source / "parts").iterdir():
        (target / "parts" / part.name).write_bytes(part.read_bytes())
    return target


def _rerun(directory: Path) -> list[str]:
    messages: list[str] = []
    run_study(CONFIG, directory, progress=False, log=messages.append)
    return messages


def _assert_recovered(directory: Path, reference: tuple[Path, pd.DataFrame], name: str) -> str:
    """Rerun: the part named is reported once, kept in corrupt/, and the rows are the reference's."""
    messages = _rerun(directory)
    about = [m for m in messages if name in m]
    assert len(about) == 1, messages
    assert "moved to" in about[0] and "recomputed" in about[0]
    assert any(p.name.startswith(name) for p in (directory / "corrupt").iterdir())
    pd.testing.assert_frame_equal(ResultStore(directory).load(), reference[1])
    assert "already stored" in _rerun(directory)[-1]  # and the next run trusts it
    return about[0]


def _rewrite(path: Path, table: pa.Table, *, forge: bool) -> None:
    """Write ``table`` back as the part at ``path``: with its old footer record, or (forge) a
    record recomputed for the new rows, as an attacker who knows the format would."""
    old = pq.read_table(path).schema.metadata
    chunk = next(c for c in plan_chunks(CONFIG) if c.key == path.stem)
    table = table.replace_schema_metadata(None)
    metadata = part_metadata(CONFIG, chunk, table) if forge else old
    pq.write_table(table.replace_schema_metadata(metadata), path)


def _table(path: Path) -> pa.Table:
    return pq.read_table(path).replace_schema_metadata(None)


def _set(table: pa.Table, name: str, values: list[object]) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, pa.array(values, type=table.schema.field(name).type))


# -- parts that are not what their name says ---------------------------------------------
@pytest.mark.parametrize("keep", [1, 0], ids=["cut-to-1-row", "cut-to-0-rows"])
def test_a_part_cut_short_is_recomputed(reference, tmp_path: Path, keep: int) -> None:
    directory = _copy(reference, tmp_path)
    part = directory / "parts" / "s04-00002.parquet"
    _rewrite(part, _table(part).slice(0, keep), forge=False)
    message = _assert_recovered(directory, reference, "s04-00002.parquet")
    assert f"holds {keep} rows" in message


def test_a_part_of_another_study_is_recomputed(reference, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run_study(
        StudyConfig(runs=4, chunk_runs=2, max_steps=20, n_monte=3, levels=(4,), seed=1),
        other,
        progress=False,
    )
    directory = _copy(reference, tmp_path)
    for name in ("dense-00000.parquet", "s04-00000.parquet"):
        (directory / "parts" / name).write_bytes((other / "parts" / name).read_bytes())
    messages = _rerun(directory)
    assert sum("belongs to another study config" in m for m in messages) == 2, messages
    pd.testing.assert_frame_equal(ResultStore(directory).load(), reference[1])


def test_a_part_outside_the_plan_is_moved_aside(reference, tmp_path: Path) -> None:
    directory = _copy(reference, tmp_path)
    parts = directory / "parts"
    (parts / "s07-00000.parquet").write_bytes((parts / "s04-00000.parquet").read_bytes())
    message = _assert_recovered(directory, reference, "s07-00000.parquet")
    assert "not a part of this study's plan" in message


@pytest.mark.parametrize(
    "column, value, expected",
    [
        ("kind", "dense", "row 0 has kind 'dense'; the plan says 'iht'"),
        ("data_seed", 12345, "row 0 has data_seed"),
        ("train_loss", -1.0, "train_loss = -1.0; it must be a finite number >= 0"),
        ("test_acc", 7.0, "test_acc = 7.0; it must be an accuracy in [0, 1]"),
        ("l_hat", float("nan"), "l_hat = nan"),
        ("steps", 10**9, "steps = 1000000000.0; it must be in 0..20"),
        ("nonzeros", 9, "nonzeros = 9.0; it must be in 0..s"),
    ],
)
@pytest.mark.parametrize("forge", [False, True], ids=["old-record", "forged-record"])
def test_an_edited_row_is_caught(
    reference, tmp_path: Path, column: str, value: object, expected: str, forge: bool
) -> None:
    directory = _copy(reference, tmp_path)
    part = directory / "parts" / "s04-00000.parquet"
    table = _table(part)
    values = table.column(column).to_pylist()
    values[0] = value
    _rewrite(part, _set(table, column, values), forge=forge)
    message = _assert_recovered(directory, reference, "s04-00000.parquet")
    assert (expected if forge else "does not match its checksum") in message, message


def test_an_epsilon_from_a_foreign_dense_loss_is_caught(reference, tmp_path: Path) -> None:
    directory = _copy(reference, tmp_path)
    part = directory / "parts" / "s04-00000.parquet"
    table = _table(part)
    dense = [x + 0.5 for x in table.column("dense_train_loss").to_pylist()]
    table = _set(table, "dense_train_loss", dense)
    eps = pc.subtract(table.column("train_loss"), table.column("dense_train_loss"))
    _rewrite(part, _set(table, "epsilon", eps.to_pylist()), forge=True)
    message = _assert_recovered(directory, reference, "s04-00000.parquet")
    assert "dense loss of run 0 that is not the stored one" in message


def test_a_schema_change_is_caught(reference, tmp_path: Path) -> None:
    directory = _copy(reference, tmp_path)
    part = directory / "parts" / "dense-00002.parquet"
    table = _table(part)
    table = table.set_column(
        table.schema.get_field_index("steps"), "steps", pc.cast(table.column("steps"), pa.float64())
    )
    _rewrite(part, table, forge=False)
    assert "another schema" in _assert_recovered(directory, reference, "dense-00002.parquet")


def test_a_part_without_a_record_is_recomputed(reference, tmp_path: Path) -> None:
    directory = _copy(reference, tmp_path)
    part = directory / "parts" / "dense-00000.parquet"
    pq.write_table(_table(part), part)  # as iht < 0.3 wrote it: no footer record
    assert "carries no record" in _assert_recovered(directory, reference, "dense-00000.parquet")


def test_a_row_count_bomb_is_refused_before_its_rows_are_read(reference, tmp_path: Path) -> None:
    directory = _copy(reference, tmp_path)
    part = directory / "parts" / "dense-00000.parquet"
    bomb = pa.table({"run_id": pa.nulls(20_000_000, type=pa.string())})
    pq.write_table(bomb, part)
    assert part.stat().st_size < 1 << 20
    assert "holds 20000000 rows" in _assert_recovered(directory, reference, "dense-00000.parquet")


def test_a_fifo_or_a_link_named_like_a_part_is_not_read(reference, tmp_path: Path) -> None:
    directory = _copy(reference, tmp_path)
    parts = directory / "parts"
    (parts / "dense-00000.parquet").unlink()
    os.mkfifo(parts / "dense-00000.parquet")  # reading it would block forever
    (parts / "s04-00000.parquet").unlink()
    outside = tmp_path / "outside.parquet"
    outside.write_bytes((reference[0] / "parts" / "s04-00000.parquet").read_bytes())
    (parts / "s04-00000.parquet").symlink_to(outside)
    messages = _rerun(directory)
    assert any("dense-00000.parquet is not a regular file" in m for m in messages), messages
    assert any("s04-00000.parquet is a link" in m for m in messages), messages
    assert outside.exists()  # the link was moved aside, not what it points to
    pd.testing.assert_frame_equal(ResultStore(directory).load(), reference[1])


def test_terminal_escapes_in_a_file_name_are_shown_escaped(reference, tmp_path: Path) -> None:
    directory = _copy(reference, tmp_path)
    (directory / "parts" / "\x1b[2Jevil.parquet").write_bytes(b"x")
    messages = _rerun(directory)
    assert any("\\x1b[2Jevil.parquet" in m for m in messages), messages
    assert not any("\x1b" in m for m in messages)


# -- the config -----------------------------------------------------------------------------
def test_an_edited_config_is_detected(reference, tmp_path: Path, capsys) -> None:
    directory = _copy(reference, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["tol"] = 0.5  # the old rows would pass as this config's
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(StoreError, match="was changed after the study was written"):
        ResultStore(directory).load()
    assert main(["report", str(directory)]) == 2
    assert "was changed after the study was written" in capsys.readouterr().err
    edited = StudyConfig.from_dict(config)
    with pytest.raises(StoreError, match="was changed after the study was written"):
        run_study(edited, directory, progress=False)
    assert len(list((directory / "parts").iterdir())) == 5  # nothing moved or lost


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_a_config_that_is_a_device_or_fifo_is_refused(
    reference, tmp_path: Path, target: str
) -> None:
    directory = _copy(reference, tmp_path)
    (directory / "config.json").unlink()
    if target == "fifo":
        os.mkfifo(directory / "config.json")
    else:
        (directory / "config.json").symlink_to(target)
    with pytest.raises(StoreError, match=r"link|not a regular file"):
        run_study(CONFIG, directory, progress=False)


# -- links out of the results directory -------------------------------------------------------
@pytest.mark.parametrize("name", ["parts", "corrupt", "figures"])
def test_nothing_is_written_through_a_link(reference, tmp_path: Path, name: str) -> None:
    directory = _copy(reference, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    if name == "parts":
        (directory / "parts").rename(outside / "parts")
        (directory / "parts").symlink_to(outside / "parts")
    else:
        (directory / name).symlink_to(outside)
    if name == "corrupt":  # something to move aside
        (directory / "parts" / "dense-00000.parquet").write_bytes(b"garbage")
    before = sorted(p.relative_to(outside) for p in outside.rglob("*"))
    code = main(
        [
            "reproduce",
            "iris",
            "--runs",
            "4",
            "--chunk-runs",
            "2",
            "--max-steps",
            "20",
            "--n-monte",
            "3",
            "--levels",
            "4",
            "--out",
            str(directory),
            "--no-progress",
        ]
    )
    assert code == 2
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == before


# -- --overwrite and the lock ---------------------------------------------------------------------
def test_overwrite_takes_the_lock_before_moving_anything(reference, tmp_path: Path) -> None:
    directory = _copy(reference, tmp_path)
    holder = ResultStore(directory)
    holder.open(CONFIG)  # a live writer holds the lock
    try:
        other = StudyConfig(runs=2, chunk_runs=2, max_steps=20, n_monte=3, levels=(4,))
        with pytest.raises(StoreError, match="in use by another iht process"):
            run_study(other, directory, overwrite=True, progress=False)
        assert not list(directory.glob("replaced-*"))
        assert (directory / "config.json").exists() and len(
            list((directory / "parts").iterdir())
        ) == 5
    finally:
        holder.close()


def test_a_reader_does_not_change_a_store_with_a_bad_part(reference, tmp_path: Path) -> None:
    directory = _copy(reference, tmp_path)
    (directory / "parts" / "dense-00002.parquet").write_bytes(b"garbage")
    with pytest.raises(StoreError, match=r"dense-00002\.parquet is damaged"):
        ResultStore(directory).load()
    assert not (directory / "corrupt").exists()
    assert (directory / "parts" / "dense-00002.parquet").read_bytes() == b"garbage"


def test_two_readers_and_a_writer_agree(reference, tmp_path: Path) -> None:
    """Readers beside a writer see whole, checked parts only (never a half-written one)."""
    directory = tmp_path / "live"
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                ResultStore(directory).load()
            except StoreError as exc:
                if "holds no" not in str(exc):
                    errors.append(exc)
            except BaseException as exc:
                errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    try:
        run_study(CONFIG, directory, progress=False)
    finally:
        done.set()
        for r in readers:
            r.join()
    assert not errors, errors[:1]
    pd.testing.assert_frame_equal(ResultStore(directory).load(), reference[1])


def test_the_record_lists_the_chunk(reference) -> None:
    footer = pq.read_metadata(reference[0] / "parts" / "s04-00002.parquet").metadata
    record = json.loads(footer[META_KEY])
    assert record["chunk"] == "s04-00002" and record["rows"] == 2
    assert record["run_ids"] == ["s04-00002", "s04-00003"]


# -- train runs and comparisons read back --------------------------------------------------------
@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda d: (d / "metrics.json").unlink() or (d / "metrics.json").symlink_to("/dev/zero"),
            "is a link",
        ),
        (lambda d: (d / "history.parquet").write_bytes(b"garbage"), "not a readable Parquet file"),
        (lambda d: (d / "config.json").write_bytes(b"{" * 100), "cannot be read as JSON"),
    ],
    ids=["devzero-link", "garbage-history", "bad-json"],
)
def test_a_damaged_train_run_is_one_line(tmp_path: Path, capsys, damage, expected: str) -> None:
    from iht.experiments.config import TrainConfig
    from iht.experiments.train import run_train

    out = tmp_path / "run"
    run_train(TrainConfig(data="iris", sparsity="5", steps=20), out=out, log=lambda m: None)
    damage(out)
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
