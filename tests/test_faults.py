"""Faults: kill -9 at random moments, damaged parts, an unwritable directory, a busy directory.

Each test compares the stored rows with those of an uninterrupted run of the same study.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import iht.study.backends
import iht.study.runner
from iht.cli import main
from iht.study.chunks import plan_chunks
from iht.study.config import StudyConfig
from iht.study.runner import run_study
from iht.study.store import ResultStore

# 17 parts of about 0.5 s each here, after ~7 s of start-up (imports, compiling the kernel):
# an uninterrupted run of the command takes ~15 s.
CONFIG = StudyConfig(runs=40, chunk_runs=10, levels=(1, 2, 3), max_steps=60_000, n_monte=10)
ARGS = ["--runs", "40", "--chunk-runs", "10", "--levels", "1-3", "--max-steps", "60000"]
ARGS += ["--n-monte", "10", "--no-report", "--no-progress"]
N_PARTS = len(plan_chunks(CONFIG))


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "iht.cli", "reproduce", "iris", *ARGS, "--out", str(out)]


def _parts(directory: Path) -> set[str]:
    parts = directory / "parts"
    return {p.name for p in parts.glob("*.parquet")} if parts.is_dir() else set()


def _leftovers(directory: Path) -> list[Path]:
    """Temporary files of the store (parts, config, write probe)."""
    return [*directory.glob(".*.tmp"), *directory.glob(".probe-*"), *directory.glob("parts/.*")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study run once, uninterrupted (in this process: the same code as the command)."""
    directory = tmp_path_factory.mktemp("reference")
    run_study(CONFIG, directory, progress=False)
    return directory


def _copy(reference: Path, target: Path) -> Path:
    shutil.copytree(reference, target)
    return target


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool]) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; False when it finished first.

    Decided from what is on disk, polled every millisecond, never from a sleep: on a fast
    machine as on a slow one the kill lands at the same point of the study.
    """
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
            return True
        time.sleep(0.001)
    proc.communicate()
    return False


def test_kill_9_at_random_moments_then_finish(reference: Path, tmp_path: Path) -> None:
    rng = random.Random(20240428)
    out = tmp_path / "killed"
    kills = []
    # Three kills, each decided from the store on disk: once the config is written and the
    # first chunk is computing; while a part is being written (its temporary file exists) or
    # the moment after it landed; after one or two more parts landed, mid-chunk.
    for attempt in range(3):
        before = len(_parts(out))
        target = before + rng.randint(1, 2)
        conditions: list[Callable[[], bool]] = [
            lambda: (out / "config.json").exists(),
            lambda: any((out / "parts").glob(".*.tmp")) or len(_parts(out)) > before,  # noqa: B023
            lambda: len(_parts(out)) >= target,  # noqa: B023
        ]
        proc = subprocess.Popen(_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if _kill_when(proc, conditions[attempt]):
            kills.append(len(_parts(out)))
    assert len(kills) == 3, f"the study finished before it could be killed ({kills})"
    assert 0 < len(_parts(out)) < N_PARTS

    done = subprocess.run(_command(out), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming:" in done.stderr
    stored = ResultStore(out)
    assert stored.read_config() == CONFIG
    resumed = stored.load()
    assert not resumed["run_id"].duplicated().any()
    assert _parts(out) == _parts(reference)
    assert _leftovers(out) == []
    pd.testing.assert_frame_equal(resumed, ResultStore(reference).load())


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_part_is_reported_moved_aside_and_recomputed(
    damage: str, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(reference, tmp_path / "study")
    part = out / "parts" / "s02-00010.parquet"
    data = part.read_bytes()
    part.write_bytes(
        data[: len(data) // 2] if damage == "truncated" else random.Random(7).randbytes(len(data))
    )

    # the report refuses it in one line, naming the part
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "s02-00010.parquet is damaged" in err and "iht reproduce" in err

    # the study reports it, moves it aside (kept) and recomputes it alone
    others = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir() if p != part}
    assert main(["reproduce", "iris", *ARGS, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "part s02-00010.parquet is damaged" in err and "recomputed" in err
    (aside,) = (out / "corrupt").iterdir()
    assert aside.name.startswith("s02-00010.parquet.") and aside.stat().st_size > 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir() if p != part} == others
    pd.testing.assert_frame_equal(ResultStore(out).load(), ResultStore(reference).load())


def test_temporary_files_of_a_killed_writer_are_removed(reference: Path, tmp_path: Path) -> None:
    out = _copy(reference, tmp_path / "study")
    for stale in ("parts/.s01-00000.parquet-x1.tmp", ".config.json-x2.tmp", ".probe-x3"):
        (out / stale).write_bytes(b"half written")
    messages: list[str] = []
    run_study(CONFIG, out, progress=False, log=messages.append)
    assert messages == [f"all {CONFIG.runs * 4 + 1} runs already stored in {out}"]
    assert _leftovers(out) == []


def _no_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a chunk was computed")

    monkeypatch.setattr(iht.study.runner, "run_chunk", fail)
    monkeypatch.setattr(iht.study.backends, "run_chunk", fail)


def _unwritable(way: str, tmp_path: Path) -> Path:
    if way == "parent-is-a-file":
        # Fails for every user, root included: a path cannot go through a regular file.
        (tmp_path / "file").write_text("not a directory")
        return tmp_path / "file" / "study"
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with tempfile.NamedTemporaryFile(dir=parent):
            pass
    except PermissionError:
        return parent / "study"
    parent.chmod(0o700)
    pytest.skip("running as root: chmod 0o500 does not stop root's writes (see parent-is-a-file)")


@pytest.mark.parametrize("way", ["parent-is-a-file", "chmod-0o500"])
def test_unwritable_directory_is_one_line_before_any_work(
    way: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _unwritable(way, tmp_path)
    _no_computation(monkeypatch)
    start = time.perf_counter()
    code = main(["reproduce", "iris", *ARGS, "--out", str(out)])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert err[-1].startswith(f"iht: error: cannot write to {out}: ")
    assert "Traceback" not in "\n".join(err) and len(err) == 2  # "study: ..." and the error
    if way == "parent-is-a-file":
        assert err[-1].endswith(f"{tmp_path / 'file'} is a file, not a directory")
    assert not out.exists()
    assert elapsed < 5, elapsed


def test_a_directory_in_use_is_refused(
    reference: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _copy(reference, tmp_path / "study")
    (out / "parts" / "s03-00000.parquet").unlink()
    holder = ResultStore(out)
    holder.open(CONFIG)  # as another `iht reproduce` on the same directory would
    _no_computation(monkeypatch)
    try:
        assert main(["reproduce", "iris", *ARGS, "--out", str(out)]) == 2
        assert f"{out} is in use by another iht process" in capsys.readouterr().err
    finally:
        holder.close()
