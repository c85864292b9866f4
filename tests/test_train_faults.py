"""Faults end in one line and lose nothing (issue 11): stop signals, kill -9, a full disk.

``iht train`` keeps its history and a checkpoint when it is stopped, and the same command
resumes it: the finished run equals an uninterrupted one bit for bit (model and history).
A full disk (a small tmpfs, where this machine lets us mount one) gives one line and a
non-zero exit for ``reproduce``, ``train`` and ``compare``, and the same command finishes
once there is room.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from iht.experiments import train as train_module
from iht.experiments.config import TrainConfig
from iht.experiments.train import run_train

IHT = [sys.executable, "-c", "from iht.cli.main import run; run()"]
TRAIN = [
    "train",
    "--data",
    "digits",
    "--hidden",
    "32",
    "--sparsity",
    "0.1",
    "--steps",
    "3000",
    "--batch-size",
    "50",
    "--optimizer",
    "adam",
    "--lr",
    "0.01",
    "--no-report",
]
CONFIG = TrainConfig(
    data="digits",
    hidden=(32,),
    sparsity="0.1",
    steps=400,
    batch_size=50,
    optimizer="adam",
    lr=0.01,
)


def _same_run(a: Path, b: Path) -> None:
    assert (a / "model.pt").read_bytes() == (b / "model.pt").read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(a / "history.parquet"), pd.read_parquet(b / "history.parquet")
    )
    assert not (b / "checkpoint.pt").exists()  # a finished run keeps no checkpoint


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run([*IHT, *TRAIN, "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def uninterrupted_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whole-lib") / "run"
    run_train(CONFIG, out=out, log=lambda m: None)
    return out


@pytest.mark.parametrize("stop_at", [0, 137, 159, 399])  # 36 batches an epoch: 159 ends one
def test_a_run_stopped_at_any_step_resumes_bit_for_bit(
    uninterrupted_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_at: int
) -> None:
    out = tmp_path / "run"

    class StopAt(train_module.StepProgress):
        def __call__(self, step: int, history) -> None:  # type: ignore[no-untyped-def]
            if step == stop_at:
                raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "StepProgress", StopAt)
        with pytest.raises(KeyboardInterrupt):
            run_train(CONFIG, out=out, log=lambda m: None)
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    assert len(pd.read_parquet(out / "history.parquet")) == stop_at + 1
    messages: list[str] = []
    run_train(CONFIG, out=out, log=messages.append)
    assert any(f"resuming: {stop_at + 1} of 400 steps" in m for m in messages), messages
    _same_run(uninterrupted_lib, out)


def test_checkpoints_as_it_goes(uninterrupted_lib: Path, tmp_path: Path, monkeypatch) -> None:
    """With a checkpoint after every step, a run killed anywhere resumes from its last step."""
    monkeypatch.setattr(train_module, "CHECKPOINT_SECONDS", 0.0)
    out = tmp_path / "run"
    written: list[int] = []
    original = train_module.write_checkpoint

    def write_then_die(directory: Path, checkpoint) -> None:  # type: ignore[no-untyped-def]
        original(directory, checkpoint)
        written.append(checkpoint.steps_done)
        if checkpoint.steps_done == 250:
            raise SystemExit("killed")  # as kill -9 right after a checkpoint

    monkeypatch.setattr(train_module, "write_checkpoint", write_then_die)
    with pytest.raises(SystemExit):
        run_train(CONFIG, out=out, log=lambda m: None)
    assert written[:3] == [1, 2, 3]
    monkeypatch.setattr(train_module, "write_checkpoint", original)
    run_train(CONFIG, out=out, log=lambda m: None)
    _same_run(uninterrupted_lib, out)


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"

    class StopAt(train_module.StepProgress):
        def __call__(self, step: int, history) -> None:  # type: ignore[no-untyped-def]
            if step == 10:
                raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "StepProgress", StopAt)
    with pytest.raises(KeyboardInterrupt):
        run_train(CONFIG, out=out, log=lambda m: None)
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    from iht.errors import StoreError

    with pytest.raises(StoreError, match=r"checkpoint\.pt: it cannot be read"):
        run_train(CONFIG, out=out, log=lambda m: None)
    other = TrainConfig(data="digits", hidden=(32,), sparsity="0.2", steps=400, batch_size=50)
    with pytest.raises(StoreError, match="unfinished run of another config"):
        run_train(other, out=out, log=lambda m: None)
    assert (out / "history.parquet").exists()  # nothing was lost on the way


def _start(out: Path) -> subprocess.Popen[str]:
    """Start ``iht train`` and return once it is training (its progress bar is drawn)."""
    process = subprocess.Popen(
        [*IHT, *TRAIN, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    started = threading.Event()

    def watch() -> None:
        assert process.stderr is not None
        while chunk := process.stderr.read(1):
            seen.append(chunk)
            if not started.is_set() and "Adam:" in "".join(seen[-200:]):
                started.set()
        started.set()

    threading.Thread(target=watch, daemon=True).start()
    assert started.wait(timeout=120) and process.poll() is None, "".join(seen)
    time.sleep(1.0)  # the bar is drawn as the first step starts; 3,000 steps take ~4 s
    process.stderr_seen = seen  # type: ignore[attr-defined]
    return process


def _finish(process: subprocess.Popen[str]) -> str:
    """Wait for the process; its whole stderr."""
    process.wait(timeout=120)
    time.sleep(0.1)
    return "".join(process.stderr_seen)  # type: ignore[attr-defined]


def test_kill_9_then_sigterm_then_the_same_command_finishes_the_run(
    uninterrupted: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    process = _start(out)
    process.kill()  # SIGKILL: nothing can be saved; the unfinished run must not block a rerun
    _finish(process)
    assert not (out / "metrics.json").exists()
    process = _start(out)
    process.send_signal(signal.SIGTERM)
    err = _finish(process)
    assert process.returncode == 143, err
    assert "iht: stopped by SIGTERM; what was finished is kept" in err
    assert "Traceback" not in err
    assert (out / "checkpoint.pt").exists() and (out / "history.parquet").exists(), err
    done = subprocess.run([*IHT, *TRAIN, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming:" in done.stdout
    _same_run(uninterrupted, out)


def test_a_run_killed_before_its_first_checkpoint_does_not_block_the_same_command(
    uninterrupted_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"

    def killed(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise SystemExit("killed")  # as kill -9 once config.json is written

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "fit", killed)
        with pytest.raises(SystemExit):
            run_train(CONFIG, out=out, log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.json"]
    run_train(CONFIG, out=out, log=lambda m: None)
    _same_run(uninterrupted_lib, out)


def test_stop_signals_wait_for_the_step_boundary() -> None:
    from iht.errors import Terminated
    from iht.experiments.stopping import StopAtStep

    before = signal.getsignal(signal.SIGTERM)  # (Ray, if a test started it, has its own)
    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        with pytest.raises(KeyboardInterrupt) as raised, StopAtStep() as stop:
            os.kill(os.getpid(), getattr(signal, name))
            time.sleep(0.05)  # the handler has run: only recorded
            assert stop.requested == (name, getattr(signal, name))
            stop.check()
        if name == "SIGINT":
            assert not isinstance(raised.value, Terminated)
        else:
            assert isinstance(raised.value, Terminated) and raised.value.signal_name == name
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


# -- a full disk ------------------------------------------------------------------------------
def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64m"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount)")
    try:
        filler = disk / "filler"
        free = shutil.disk_usage(disk).free
        with open(filler, "wb") as handle:  # leave 24 KiB: config.json fits, results do not
            handle.write(b"\0" * (free - 24 * 1024))
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _grow(disk: Path) -> None:
    (disk / "filler").unlink()


@pytest.mark.parametrize(
    "command",
    [
        [
            "reproduce",
            "iris",
            "--runs",
            "20",
            "--max-steps",
            "100",
            "--levels",
            "1,5",
            "--chunk-runs",
            "5",
            "--n-monte",
            "3",
            "--no-progress",
        ],
        [*TRAIN[:7], "--steps", "300", *TRAIN[9:]],
        ["compare", "--data", "iris", "--sparsity", "2,5", "--seeds", "1", "--steps", "50"],
    ],
    ids=["reproduce", "train", "compare"],
)
def test_a_full_disk_gives_one_line_and_the_same_command_finishes(
    small_disk: Path, command: list[str]
) -> None:
    out = small_disk / "out"
    full = subprocess.run([*IHT, *command, "--out", str(out)], capture_output=True, text=True)
    assert full.returncode == 2, full.stderr
    lines = [line for line in full.stderr.splitlines() if line.startswith("iht")]
    assert any("No space left on device" in line for line in lines), full.stderr
    assert "Traceback" not in full.stderr
    assert not list(out.rglob("*.tmp"))  # nothing half-written left behind
    _grow(small_disk)
    again = subprocess.run([*IHT, *command, "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr


REPRODUCE = ["reproduce", "iris", "--runs", "20", "--chunk-runs", "2", "--levels", "5"]
REPRODUCE += ["--max-steps", "300", "--n-monte", "3", "--no-progress", "--no-report"]


def test_sigterm_stops_reproduce_cleanly_and_the_same_command_resumes(tmp_path: Path) -> None:
    from iht.study.config import StudyConfig
    from iht.study.runner import run_study
    from iht.study.store import ResultStore

    whole, out = tmp_path / "whole", tmp_path / "run"
    config = StudyConfig(runs=20, chunk_runs=2, levels=(5,), max_steps=300, n_monte=3)
    run_study(config, whole, progress=False, log=lambda m: None)  # the same, uninterrupted
    process = subprocess.Popen(
        [*IHT, *REPRODUCE, "--out", str(out)], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while len(list((out / "parts").glob("*.parquet"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "iht: stopped by SIGTERM; what was finished is kept" in err and "Traceback" not in err
    stored = len(list((out / "parts").glob("*.parquet")))
    assert 2 <= stored < 21  # 10 dense and 10 IHT chunks, then the showcase
    done = subprocess.run([*IHT, *REPRODUCE, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resuming: {stored * 2} of 41 runs" in done.stderr  # the showcase is last
    pd.testing.assert_frame_equal(ResultStore(out).load(), ResultStore(whole).load())


COMPARE = ["compare", "--data", "iris", "--sparsity", "2,5", "--seeds", "3", "--steps", "60"]
COMPARE += ["--no-report", "--no-progress"]


def test_a_stopped_comparison_keeps_its_finished_seeds_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iht.cli.main import main
    from iht.experiments import compare as compare_module

    whole, out = tmp_path / "whole", tmp_path / "run"
    assert main([*COMPARE, "--out", str(whole)]) == 0
    original = compare_module._run_seed
    ran: list[int] = []

    def stop_at_seed_2(config, levels, dataset, seed, report):  # type: ignore[no-untyped-def]
        if seed == 2:
            raise KeyboardInterrupt
        ran.append(seed)
        return original(config, levels, dataset, seed, report)

    monkeypatch.setattr(compare_module, "_run_seed", stop_at_seed_2)
    assert main([*COMPARE, "--out", str(out)]) == 130
    assert sorted(p.name for p in (out / "partial").iterdir()) == [
        "config.json",
        "seed-0000.parquet",
        "seed-0001.parquet",
    ]
    monkeypatch.setattr(compare_module, "_run_seed", original)
    ran.clear()
    assert main([*COMPARE, "--out", str(out)]) == 0
    assert not (out / "partial").exists()  # superseded by results.parquet
    timing = ["seconds", "estimate_seconds"]
    a = pd.read_parquet(whole / "results.parquet").drop(columns=timing)
    b = pd.read_parquet(out / "results.parquet").drop(columns=timing)
    pd.testing.assert_frame_equal(a, b)
    # the seeds of another comparison are refused, not mixed in
    other = tmp_path / "other"
    assert main([*COMPARE, "--out", str(other)]) == 0
    (other / "results.parquet").unlink()
    (other / "config.json").unlink()
    (other / "partial").mkdir()
    (other / "partial" / "config.json").write_text('{"seeds": 99}')
    assert main([*COMPARE, "--out", str(other)]) == 2


def _edit_checkpoint(out: Path, edit) -> None:  # type: ignore[no-untyped-def]
    import torch

    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    edit(payload)
    torch.save(payload, out / "checkpoint.pt")


def _first_state(payload):  # type: ignore[no-untyped-def]
    return next(iter(payload["optimizer"]["optimizer"]["state"].values()))


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p["optimizer"]["optimizer"].update(param_groups=[]),
        lambda p: p["optimizer"].update(pools="x"),
        lambda p: p.update(
            epoch_generator=__import__("torch").zeros(3, dtype=__import__("torch").uint8)
        ),
        lambda p: p.update(epoch_generator=__import__("torch").zeros(5056)),
        lambda p: _first_state(p).update(exp_avg=__import__("torch").zeros(2, 2)),
        lambda p: p.update(epoch_position=10**6),
        lambda p: p["optimizer"].update(steps_taken=-5),
    ],
    ids=[
        "no-groups",
        "pools-str",
        "generator-3",
        "generator-float",
        "moment-shape",
        "position",
        "clock",
    ],
)
def test_a_hostile_checkpoint_is_one_line_and_changes_nothing(
    tmp_path: Path, monkeypatch, edit
) -> None:  # type: ignore[no-untyped-def]
    from iht.errors import StoreError

    out = tmp_path / "run"

    class StopAt(train_module.StepProgress):
        def __call__(self, step: int, history) -> None:  # type: ignore[no-untyped-def]
            if step == 10:
                raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "StepProgress", StopAt)
        with pytest.raises(KeyboardInterrupt):
            run_train(CONFIG, out=out, log=lambda m: None)
    _edit_checkpoint(out, edit)
    before = sorted((p.name, p.stat().st_size) for p in out.iterdir())
    with pytest.raises(StoreError, match=r"checkpoint\.pt"):
        run_train(CONFIG, out=out, log=lambda m: None)
    assert sorted((p.name, p.stat().st_size) for p in out.iterdir()) == before
