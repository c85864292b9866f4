"""``iht reproduce iris``: the paper's study, resumable, then its report."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ..study.config import BACKENDS, DTYPES, PRESETS, StudyConfig, preset_runs
from .options import (
    config_option,
    default_of,
    levels_option,
    no_progress_option,
    no_report_option,
    out_option,
)

__all__ = ["reproduce_command"]


def _default_levels() -> str:
    levels = default_of(StudyConfig, "levels")
    return f"{min(levels)}-{max(levels)}"


@click.command("reproduce")
@click.argument("dataset", type=click.Choice(["iris"]))
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="quick",
    show_default=True,
    help="quick: the study's structure with fewer runs; paper: 1,000 runs per level.",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    help=f"Runs per level (dense and each s).  [default: from --preset: {preset_runs()}]",
)
@levels_option(_default_levels())
@config_option(StudyConfig, "max_steps", click.IntRange(min=1), "Most steps per run.")
@config_option(StudyConfig, "tol", click.FloatRange(min=0), "Stop a run at training loss <= tol.")
@config_option(StudyConfig, "n_monte", click.IntRange(min=1), "Monte Carlo draws for L_2s.")
@config_option(StudyConfig, "seed", click.IntRange(min=0), "Master seed of every run's seeds.")
@config_option(StudyConfig, "dtype", click.Choice(list(DTYPES)), "The engine's precision.")
@config_option(StudyConfig, "chunk_runs", click.IntRange(min=1), "Runs per stored part.")
@out_option("results/iris-PRESET")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a directory made with another config "
    "(the old study is moved aside, not deleted).",
)
@no_report_option
@no_progress_option
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="local",
    show_default=True,
    help="local: compute in this process. ray: one Ray task per chunk "
    '(needs pip install "iht[ray]"); this process still writes every part.',
)
@click.option(
    "--address",
    metavar="ADDRESS",
    help="Ray cluster to use with --backend ray: auto (on a node of a cluster made with "
    "`ray start --head`) or ray://HOST:10001.  [default: start a local Ray, one CPU per core]",
)
def reproduce_command(
    dataset: str,
    preset: str,
    runs: int | None,
    levels: tuple[int, ...] | None,
    max_steps: int,
    tol: float,
    n_monte: int,
    seed: int,
    dtype: str,
    chunk_runs: int,
    out: Path | None,
    overwrite: bool,
    no_report: bool,
    no_progress: bool,
    backend: str,
    address: str | None,
) -> None:
    """Reproduce the paper's IRIS study: dense GD and IHT at every s, then the report.

    Results go to a directory of Parquet parts with the resolved config; running the same
    command again resumes where it stopped, with either backend.
    """
    from ..study.backends import check_backend
    from ..study.runner import run_study

    check_backend(backend, address)  # e.g. Ray not installed: one line, before anything else
    config = StudyConfig(
        runs=runs if runs is not None else PRESETS[preset]["runs"],
        levels=levels if levels is not None else default_of(StudyConfig, "levels"),
        max_steps=max_steps,
        tol=tol,
        n_monte=n_monte,
        seed=seed,
        dtype=dtype,
        chunk_runs=chunk_runs,
    )
    directory = out or Path("results") / f"{dataset}-{preset}"
    click.echo(f"study: {_describe(config)} -> {directory}", err=True)
    run_study(
        config,
        directory,
        overwrite=overwrite,
        progress=not no_progress,
        backend=backend,
        address=address,
    )
    if not no_report:
        from ..report.study import write_study_report

        html = write_study_report(directory)
        click.echo(f"report: {html}", err=True)


def _describe(config: StudyConfig) -> str:
    fields = dataclasses.asdict(config)
    levels = fields.pop("levels")
    shown = {k: fields[k] for k in ("runs", "max_steps", "tol", "n_monte", "seed", "dtype")}
    return f"levels {levels[0]}..{levels[-1]} ({len(levels)}), " + ", ".join(
        f"{k}={v}" for k, v in shown.items()
    )
