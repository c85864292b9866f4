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


# -- the second adversarial pass: the store's own entries, comparisons, train runs, checkpoints --
@pytest.mark.parametrize("entry", [".lock", "parts/.x.tmp", ".probe-x"])
@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_hostile_entries_named_like_the_stores_own(
    reference, tmp_path: Path, entry: str, kind: str
) -> None:
    directory = _copy(reference, tmp_path)
    path = directory / entry
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    if entry == ".lock":  # one line, no hang, nothing changed
        with pytest.raises(StoreError, match=r"\.lock"):
            run_study(CONFIG, directory, progress=False)
    else:  # not ours to delete: left, and the study resumes
        assert "already stored" in _rerun(directory)[-1]
        assert path.exists() or path.is_symlink()


COMPARE = [
    "compare",
    "--data",
    "iris",
    "--sparsity",
    "2,5",
    "--seeds",
    "2",
    "--steps",
    "40",
    "--no-report",
    "--no-progress",
]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cmp") / "whole"
    assert main([*COMPARE, "--out", str(out)]) == 0
    return out


def _seed_file(comparison: Path, target: Path, seed: int, change) -> None:  # type: ignore[no-untyped-def]
    from iht.experiments.compare import read_comparison
    from iht.storage.files import write_json
    from iht.storage.records import to_dict

    result = read_comparison(comparison)
    rows = result.frame[result.frame["seed"] == seed].reset_index(drop=True)
    (target / "partial").mkdir(parents=True)
    write_json(target / "partial" / "config.json", to_dict(result.record.config))
    change(rows).to_parquet(target / "partial" / f"seed-{seed:04d}.parquet", index=False)


def _set_first(column: str, value: object):  # type: ignore[no-untyped-def]
    def change(rows: pd.DataFrame) -> pd.DataFrame:
        rows = rows.copy()
        rows.loc[0, column] = value
        return rows

    return change


@pytest.mark.parametrize(
    "change, why",
    [
        (_set_first("steps", 41), "another number of steps"),
        (_set_first("seed", 1), "one row per method"),
        (lambda rows: rows.head(3), "one row per method"),
        (_set_first("test_acc", 7.0), "accuracy outside"),
        (lambda rows: pd.DataFrame({"x": [1]}), "columns"),
    ],
    ids=["steps", "other-seed", "cut", "acc-7", "foreign-columns"],
)
def test_a_foreign_or_edited_seed_file_is_moved_aside_and_run_again(
    comparison: Path, tmp_path: Path, capsys, change, why: str
) -> None:
    out = tmp_path / "run"
    _seed_file(comparison, out, 0, change)
    assert main([*COMPARE, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert why in err and "seed 0 will be run again" in err, err
    timing = ["seconds", "estimate_seconds"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "results.parquet").drop(columns=timing),
        pd.read_parquet(comparison / "results.parquet").drop(columns=timing),
    )


@pytest.mark.parametrize(
    "change, why",
    [
        (_set_first("test_acc", 7.0), "accuracy outside"),
        (lambda rows: rows.drop(columns="test_acc"), "columns"),
        (lambda rows: rows.head(0), "one row per method"),
    ],
    ids=["acc-7", "dropped-column", "no-rows"],
)
def test_an_edited_comparison_is_one_line(
    comparison: Path, tmp_path: Path, capsys, change, why: str
) -> None:
    import shutil

    out = tmp_path / "cmp"
    shutil.copytree(comparison, out)
    frame = pd.read_parquet(out / "results.parquet")
    change(frame).to_parquet(out / "results.parquet", index=False)
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert why in err and len(err.strip().splitlines()) == 1, err
    assert main([*COMPARE, "--out", str(out)]) == 2  # not redrawn as if it were this comparison
    capsys.readouterr()


@pytest.fixture(scope="module")
def train_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from iht.experiments.config import TrainConfig
    from iht.experiments.train import run_train

    out = tmp_path_factory.mktemp("train") / "run"
    run_train(TrainConfig(data="iris", sparsity="5", steps=20), out=out, log=lambda m: None)
    return out


@pytest.mark.parametrize(
    "damage, why",
    [
        (
            lambda d: (
                pd.read_parquet(d / "history.parquet")
                .drop(columns="step")
                .to_parquet(d / "history.parquet")
            ),
            "lacks the column",
        ),
        (
            lambda d: (
                pd.read_parquet(d / "history.parquet")
                .astype({"train_loss": str})
                .to_parquet(d / "history.parquet")
            ),
            "not numeric",
        ),
        (
            lambda d: (
                pd.read_parquet(d / "history.parquet").head(5).to_parquet(d / "history.parquet")
            ),
            "steps 0..19",
        ),
        (lambda d: (d / "certificate.json").write_text("[]"), "not a certificate"),
        (lambda d: (d / "certificate.json").write_text("{}"), "stable"),
        (
            lambda d: (d / "config.json").write_text("[" * 100_000 + "]" * 100_000),
            "cannot be read as JSON",
        ),
    ],
    ids=["no-step", "string-loss", "cut", "cert-list", "cert-empty", "deep-json"],
)
def test_a_hostile_train_run_is_one_line(
    train_run: Path, tmp_path: Path, capsys, damage, why: str
) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(train_run, out)
    damage(out)
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert why in err and len(err.strip().splitlines()) == 1, err


def test_a_history_that_claims_many_rows_is_refused_unread(
    train_run: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(train_run, out)
    pa_table = pa.table({"step": pa.array([0] * 5_000_000, type=pa.int64())})
    pq.write_table(pa_table, out / "history.parquet")
    assert main(["report", str(out)]) == 2
    assert "claims 5000000 rows" in capsys.readouterr().err


def test_train_takes_its_directory_lock(tmp_path: Path) -> None:
    from iht.experiments.config import TrainConfig
    from iht.experiments.train import run_train
    from iht.storage.files import lock_directory

    out = tmp_path / "run"
    out.mkdir()
    held = lock_directory(out)  # a running `iht train` in this directory
    try:
        with pytest.raises(StoreError, match="in use by another iht process"):
            run_train(TrainConfig(data="iris", sparsity="5", steps=5), out=out, overwrite=True)
        assert [p.name for p in out.iterdir()] == [".lock"]  # nothing moved or written
    finally:
        assert held is not None
        held.close()


def test_an_oracle_file_of_other_columns_is_one_line(reference, tmp_path: Path, capsys) -> None:
    directory = _copy(reference, tmp_path)
    pd.DataFrame({"x": [1.0]}).to_parquet(directory / "oracle.parquet")
    assert main(["oracle", str(directory), "--splits", "1", "--levels", "4"]) == 2
    err = capsys.readouterr().err
    assert "not an oracle file" in err and len(err.strip().splitlines()) == 1, err
    assert main(["report", str(directory)]) == 0  # the report is drawn, without that figure


def test_a_config_edited_with_its_checksum_gets_advice_that_works(
    reference, tmp_path: Path
) -> None:
    import hashlib

    directory = _copy(reference, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["tol"] = 0.5
    text = json.dumps(config).encode()
    (directory / "config.json").write_bytes(text)
    (directory / "config.sha256").write_text(hashlib.sha256(text).hexdigest() + "\n")
    with pytest.raises(StoreError, match=r"config\.json was changed after the parts were written"):
        ResultStore(directory).load()
    # the advice: reproduce with the settings config.json now holds recomputes the parts
    messages: list[str] = []
    run_study(StudyConfig.from_dict(config), directory, progress=False, log=messages.append)
    assert sum("belongs to another study config" in m for m in messages) == 5
    assert len(ResultStore(directory).load()) == len(reference[1])
