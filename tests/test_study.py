"""The many-runs engine against the faithful one-run loop; the store's resume guarantees."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from iht.cli import main
from iht.errors import StoreError
from iht.study.chunks import Chunk, plan_chunks, run_chunk
from iht.study.config import DENSE, P, StudyConfig
from iht.study.faithful import run_one_faithful
from iht.study.runner import run_study
from iht.study.seeds import run_seeds
from iht.study.store import ResultStore


def chunk_rows(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """A chunk's runs as dicts (the stored rows)."""
    return [row.to_dict() for row in run_chunk(*args, **kwargs)]


def assert_rows_equal(row: dict[str, Any], ref: dict[str, Any], tol: float) -> None:
    assert row.keys() == ref.keys()
    for key, value in row.items():
        expected = ref[key]
        if isinstance(value, float):
            if math.isnan(expected):
                assert math.isnan(value), key
            else:
                assert abs(value - expected) <= tol, (key, value, expected)
        elif isinstance(value, list) and value and isinstance(value[0], float):
            np.testing.assert_allclose(value, expected, rtol=0, atol=tol, err_msg=key)
        else:
            assert value == expected, (key, value, expected)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_engine_equals_faithful_single_runs_float64(engine: str) -> None:
    config = StudyConfig(
        runs=3,
        chunk_runs=3,
        max_steps=300,
        dtype="float64",
        n_monte=20,
        levels=(1, 5, 12),
        engine=engine,
    )
    chunks = plan_chunks(config)
    dense_rows = chunk_rows(config, chunks[0])
    dense_loss = {r["index"]: r["train_loss"] for r in dense_rows}
    # at least one dense run must stop by the tolerance for the stopping path to be tested
    checked_reached = False
    for chunk in chunks:
        rows = dense_rows if chunk.kind == DENSE else chunk_rows(config, chunk, dense_loss)
        for row, spec in zip(rows, chunk.specs(config), strict=True):
            ref = run_one_faithful(config, spec, dense_loss.get(spec.index, float("nan"))).to_dict()
            assert_rows_equal(row, ref, tol=1e-10)
            checked_reached |= row["reached_tol"] and row["steps"] < config.max_steps
    assert checked_reached


def test_seeds_are_derived_and_recreate_a_run_alone() -> None:
    config = StudyConfig(runs=4, chunk_runs=2, max_steps=50, n_monte=5, levels=(3,))
    a = run_seeds(config, "iht", 3, 2)
    assert a == run_seeds(config, "iht", 3, 2)
    assert a.data_seed == run_seeds(config, DENSE, P, 2).data_seed  # paired split
    assert a.init_seed != run_seeds(config, "iht", 3, 3).init_seed
    assert a != run_seeds(StudyConfig(seed=1, runs=4, levels=(3,)), "iht", 3, 2)
    # a run computed inside its chunk equals the same run computed alone
    chunk = next(c for c in plan_chunks(config) if c.sparsity == 3 and 3 in c.indices)
    together = chunk_rows(config, chunk)
    alone = chunk_rows(config, Chunk("x", "iht", 3, (3,)))
    assert_rows_equal(together[chunk.indices.index(3)], alone[0], tol=1e-6)


def test_float32_and_float64_studies_agree() -> None:
    """The default dtype is float32; every stored figure agrees with float64 to the stated tolerance.

    Tolerances: losses within 1e-3, L_hat within 1e-3 relative, parameters within 2e-2, the
    same support, steps within 1% of max_steps, the same accuracies.
    """
    common = dict(runs=4, chunk_runs=4, max_steps=2000, n_monte=30, levels=(2, 6, 13))
    c32, c64 = StudyConfig(dtype="float32", **common), StudyConfig(dtype="float64", **common)
    for chunk in plan_chunks(c32)[:-1]:
        rows32 = chunk_rows(c32, chunk, {})
        rows64 = chunk_rows(c64, chunk, {})
        for a, b in zip(rows32, rows64, strict=True):
            assert a["l_hat"] == pytest.approx(b["l_hat"], rel=1e-3)
            assert a["support"] == b["support"]
            assert abs(a["steps"] - b["steps"]) <= 0.01 * common["max_steps"]
            for key in ("train_loss", "test_loss"):
                assert a[key] == pytest.approx(b[key], abs=1e-3)
            for key in ("train_acc", "test_acc"):
                assert a[key] == pytest.approx(b[key], abs=1 / 30 + 1e-9)
            np.testing.assert_allclose(a["theta_final"], b["theta_final"], atol=2e-2)


def test_store_refuses_another_config_and_keeps_the_old_study(tmp_path: Path) -> None:
    config = StudyConfig(runs=2, chunk_runs=2, max_steps=20, n_monte=3, levels=(4,))
    run_study(config, tmp_path, progress=False)
    before = ResultStore(tmp_path).load()
    other = StudyConfig(runs=2, chunk_runs=2, max_steps=21, n_monte=3, levels=(4,))
    with pytest.raises(StoreError, match="max_steps: stored 20 vs asked 21"):
        run_study(other, tmp_path, progress=False)
    pd.testing.assert_frame_equal(ResultStore(tmp_path).load(), before)
    # through the CLI: one line, exit code 2
    code = main(
        [
            "reproduce",
            "iris",
            "--runs",
            "2",
            "--max-steps",
            "21",
            "--out",
            str(tmp_path),
            "--no-report",
        ]
    )
    assert code == 2
    # with --overwrite the old study is moved aside, not deleted
    run_study(other, tmp_path, overwrite=True, progress=False)
    backups = list(tmp_path.glob("replaced-*"))
    assert len(backups) == 1 and (backups[0] / "config.json").exists()


def test_rerun_on_a_finished_study_recomputes_nothing(tmp_path: Path) -> None:
    config = StudyConfig(runs=2, chunk_runs=1, max_steps=20, n_monte=3, levels=(4,))
    run_study(config, tmp_path, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "parts").iterdir()}
    run_study(config, tmp_path, progress=False)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "parts").iterdir()}


def test_damaged_part_is_detected_and_recomputed(tmp_path: Path) -> None:
    config = StudyConfig(runs=2, chunk_runs=1, max_steps=20, n_monte=3, levels=(4,))
    run_study(config, tmp_path, progress=False)
    reference = ResultStore(tmp_path).load()
    part = tmp_path / "parts" / "s04-00001.parquet"
    part.write_bytes(part.read_bytes()[:100])
    messages: list[str] = []
    run_study(config, tmp_path, progress=False, log=messages.append)
    assert any("s04-00001.parquet is damaged" in m for m in messages)
    assert list((tmp_path / "corrupt").iterdir())
    pd.testing.assert_frame_equal(ResultStore(tmp_path).load(), reference)


def _cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "iht.cli",
        "reproduce",
        "iris",
        "--runs",
        "6",
        "--chunk-runs",
        "2",
        "--levels",
        "1,7,13",
        "--max-steps",
        "1500",
        "--n-monte",
        "10",
        "--out",
        str(out),
        "--no-report",
        "--no-progress",
        *extra,
    ]


def test_resume_after_sigkill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_cli(reference_dir), check=True, capture_output=True)
    reference = ResultStore(reference_dir).load()

    kills = 0
    for delay in (1.5, 3.0):
        proc = subprocess.Popen(
            _cli(killed_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        parts = killed_dir / "parts"
        start_count = len(list(parts.glob("*.parquet"))) if parts.exists() else 0
        # kill once at least one more part has landed (or after the delay), mid-way
        time.sleep(delay)
        while time.monotonic() < deadline and proc.poll() is None:
            if parts.exists() and len(list(parts.glob("*.parquet"))) > start_count:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    stored = len(list((killed_dir / "parts").glob("*.parquet")))
    assert 0 < stored < len(list((reference_dir / "parts").glob("*.parquet")))

    subprocess.run(_cli(killed_dir), check=True, capture_output=True)
    resumed = ResultStore(killed_dir).load()
    assert not resumed["run_id"].duplicated().any()
    assert list((killed_dir / "parts").glob(".*.tmp")) == []
    pd.testing.assert_frame_equal(resumed, reference)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runs", "0"], "--runs"),
        (["--levels", "0-3"], "levels must be sparsity levels in 1..14"),
        (["--levels", "15"], "levels must be sparsity levels in 1..14"),
        (["--levels", "x"], "not a list of levels"),
        (["--dtype", "float16"], "--dtype"),
        (["--tol", "-1"], "--tol"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["reproduce", "iris", "--out", str(tmp_path / "x"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_engine_stops_runs_independently() -> None:
    """Runs that reach the tolerance freeze at once while others continue."""
    config = StudyConfig(runs=6, chunk_runs=6, max_steps=3000, n_monte=10, dtype="float64")
    rows = chunk_rows(config, plan_chunks(config)[0])
    steps = [r["steps"] for r in rows]
    assert min(steps) < max(steps)
    for r in rows:
        if r["reached_tol"]:
            assert r["train_loss"] <= config.tol
        else:
            assert r["steps"] == config.max_steps and r["train_loss"] > config.tol
    assert torch.get_default_dtype() == torch.float32
