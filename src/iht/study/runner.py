"""Run a study into a results store: skip stored chunks, show progress, stop cleanly."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm import tqdm

from .backends import check_backend, ray_chunks, ray_session
from .chunks import Chunk, plan_chunks, run_chunk
from .config import DENSE, StudyConfig
from .store import ResultStore

__all__ = ["run_study"]


def run_study(
    config: StudyConfig,
    directory: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
    backend: str = "local",
    address: str | None = None,
) -> ResultStore:
    """Compute every chunk of ``config`` not yet stored in ``directory``.

    Each finished chunk is stored at once (atomically), so an interruption, even ``kill -9``,
    loses at most the chunks in flight; running again resumes, on either backend.

    Args:
        config: the study.
        directory: its results store (created, or resumed if it holds the same config).
        overwrite: move a study with another config aside instead of refusing.
        progress: show a progress bar.
        log: where messages go (resuming, damaged parts, interruption).
        backend: ``"local"`` (this process) or ``"ray"`` (one Ray task per chunk; see
            :mod:`iht.study.backends`). The driver writes the parts either way.
        address: the Ray cluster (``ray.init(address=...)``): ``"auto"``,
            ``"ray://HOST:10001"``; None starts a local Ray (unless one is initialised).

    Raises:
        BackendError: unknown backend, Ray not installed or not reachable.
        StoreError: the directory holds another config, or cannot be written (raised before
            any run is computed).
    """
    check_backend(backend, address)  # before touching the directory
    store = ResultStore(directory)
    try:
        for warning in store.open(config, overwrite=overwrite):
            log(warning)
        return _run(config, store, progress=progress, log=log, backend=backend, address=address)
    finally:
        store.close()  # release the directory's lock; the store stays readable


def _run(
    config: StudyConfig,
    store: ResultStore,
    *,
    progress: bool,
    log: Callable[[str], None],
    backend: str,
    address: str | None,
) -> ResultStore:
    directory = store.directory
    chunks = plan_chunks(config)
    done = store.done_keys()
    todo = [c for c in chunks if c.key not in done]
    total_runs = sum(len(c.indices) for c in chunks)
    stored_runs = total_runs - sum(len(c.indices) for c in todo)
    if not todo:
        log(f"all {total_runs} runs already stored in {directory}")
        return store
    if stored_runs:
        log(f"resuming: {stored_runs} of {total_runs} runs already stored in {directory}")
    with contextlib.ExitStack() as stack:
        # Ray is started (or reached) before the progress bar, so that its failure is one line
        ray = stack.enter_context(ray_session(address, log=log)) if backend == "ray" else None
        _compute(
            config,
            store,
            chunks,
            todo,
            stored_runs,
            progress=progress,
            log=log,
            ray=ray,
        )
    return store


def _compute(
    config: StudyConfig,
    store: ResultStore,
    chunks: list[Chunk],
    todo: list[Chunk],
    stored_runs: int,
    *,
    progress: bool,
    log: Callable[[str], None],
    ray: ModuleType | None,
) -> None:
    """Compute ``todo`` (locally, or on Ray if given) and store each chunk as it finishes."""
    total_runs = sum(len(c.indices) for c in chunks)
    bar = tqdm(
        total=total_runs,
        initial=stored_runs,
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total} runs [{elapsed}<{remaining}, {rate_fmt}]",
    )
    try:
        if ray is not None:
            bar.set_description("ray")
            finished = ray_chunks(ray, config, todo, lambda: _dense_losses(store))
            # closing() cancels the tasks still running when we stop early (error, Ctrl-C)
            with contextlib.closing(finished):
                for chunk, rows in finished:
                    store.write_part(chunk.key, rows)
                    bar.update(len(chunk.indices))
        else:
            for chunk in todo:
                dense_loss = _dense_losses(store) if chunk.kind != DENSE else None
                bar.set_description(_label(chunk))
                progress_of_chunk = _ChunkProgress(bar, len(chunk.indices), config.max_steps)
                rows = run_chunk(config, chunk, dense_loss, on_step=progress_of_chunk)
                store.write_part(chunk.key, rows)
                progress_of_chunk.finish()
    except KeyboardInterrupt:
        bar.close()
        kept = len(store.done_keys())
        log(
            f"interrupted: {kept} of {len(chunks)} chunks are stored; run the same command to resume"
        )
        raise
    bar.close()


def _label(chunk: Chunk) -> str:
    return "dense" if chunk.kind == DENSE else f"{chunk.kind} s={chunk.sparsity}"


def _dense_losses(store: ResultStore) -> dict[int, float]:
    """Training loss of each stored dense run by its index (its split is shared)."""
    if not store.done_keys():
        return {}
    frame = store.load()
    dense = frame[frame["kind"] == DENSE]
    return dict(zip(dense["index"].astype(int), dense["train_loss"].astype(float), strict=True))


class _ChunkProgress:
    """Advance the bar by each run's share of steps; a finished run counts 1."""

    def __init__(self, bar: Any, n_runs: int, max_steps: int) -> None:
        self.bar, self.n_runs, self.max_steps, self.shown = bar, n_runs, max_steps, 0.0

    def __call__(self, step: int, active: int) -> None:
        self._show((self.n_runs - active) + active * min(step / self.max_steps, 1.0))

    def finish(self) -> None:
        self._show(float(self.n_runs))

    def _show(self, value: float) -> None:
        # Never past the bar's end: float shares may sum a hair above the run count.
        value = min(value, self.bar.total - self.bar.n + self.shown)
        self.bar.update(value - self.shown)
        self.shown = value
