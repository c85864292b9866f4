"""The ``iht`` command line: a thin layer over typed configs.

User errors (bad flags, out-of-range values, a results directory made with another config)
end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click

from .errors import EstimateError, NonFiniteError
from .results import StoreError
from .study import PRESETS, StudyConfig

__all__ = ["cli", "main", "parse_levels"]

USER_ERRORS = (StoreError, EstimateError, NonFiniteError, ValueError, TypeError, FileNotFoundError)


def parse_levels(text: str) -> tuple[int, ...]:
    """Parse sparsity levels: "1-14", "1,2,5", "3-5,9"."""
    levels: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                levels.extend(range(lo, hi + 1))
            else:
                levels.append(int(part))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a list of levels; write e.g. 1-14 or 1,5,10"
        ) from None
    return tuple(levels)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="iht")
def cli() -> None:
    """Train sparse neural networks with Iterative Hard Thresholding (IHT)."""


@cli.command()
@click.argument("dataset", type=click.Choice(["iris"]))
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default="quick",
    show_default=True,
    help="quick: the study's structure with fewer runs; paper: 1,000 runs per level.",
)
@click.option("--runs", type=click.IntRange(min=1), help="Runs per level (dense and each s).")
@click.option("--levels", help="Sparsity levels, e.g. 1-14 or 1,5,10.  [default: 1-14]")
@click.option(
    "--max-steps", type=click.IntRange(min=1), help="Most steps per run.  [default: 10000]"
)
@click.option(
    "--tol",
    type=click.FloatRange(min=0),
    help="Stop a run at training loss <= tol.  [default: 0.05]",
)
@click.option(
    "--n-monte", type=click.IntRange(min=1), help="Monte Carlo draws for L_2s.  [default: 100]"
)
@click.option(
    "--seed", type=click.IntRange(min=0), help="Master seed of every run's seeds.  [default: 0]"
)
@click.option(
    "--dtype", type=click.Choice(["float32", "float64"]), help="Engine dtype.  [default: float32]"
)
@click.option(
    "--chunk-runs", type=click.IntRange(min=1), help="Runs per stored part.  [default: 500]"
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Results directory.  [default: results/iris-PRESET]",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a directory made with another config "
    "(the old study is moved aside, not deleted).",
)
@click.option("--no-report", is_flag=True, help="Do not write the report at the end.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
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
def reproduce(
    dataset: str,
    preset: str,
    out: Path | None,
    overwrite: bool,
    no_report: bool,
    no_progress: bool,
    backend: str,
    address: str | None,
    **overrides: Any,
) -> None:
    """Reproduce the paper's IRIS study: dense GD and IHT at every s, then the report.

    Results go to a directory of Parquet parts with the resolved config; running the same
    command again resumes where it stopped, with either backend.
    """
    from .backends import check_backend
    from .runner import run_study

    check_backend(backend, address)  # e.g. Ray not installed: one line, before anything else
    values: dict[str, Any] = dict(PRESETS[preset])
    if overrides.get("levels") is not None:
        overrides["levels"] = parse_levels(overrides["levels"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = StudyConfig(**values)
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
        from .report import write_report

        html = write_report(directory)
        click.echo(f"report: {html}", err=True)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def report(directory: Path) -> None:
    """Write DIRECTORY/report.html and the figures from a stored study."""
    from .report import write_report

    if not (directory / "config.json").exists():
        raise StoreError(f"{directory} holds no study (no config.json)")
    html = write_report(directory)
    click.echo(f"report: {html}", err=True)


def _register_commands() -> None:
    """Commands that live in their own modules (imported here, run lazily by click)."""
    from .compare import compare_command
    from .oracle import oracle_command
    from .train_cmd import train_command

    cli.add_command(train_command)
    cli.add_command(compare_command)
    cli.add_command(oracle_command)


_register_commands()


def _describe(config: StudyConfig) -> str:
    fields = dataclasses.asdict(config)
    levels = fields.pop("levels")
    shown = {k: fields[k] for k in ("runs", "max_steps", "tol", "n_monte", "seed", "dtype")}
    return f"levels {levels[0]}..{levels[-1]} ({len(levels)}), " + ", ".join(
        f"{k}={v}" for k, v in shown.items()
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``iht`` console script; returns the exit code."""
    try:
        cli.main(args=argv, prog_name="iht", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        click.echo("iht: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo(
            "iht: interrupted; finished chunks are kept, run the same command to resume", err=True
        )
        return 130
    except USER_ERRORS as exc:
        click.echo(f"iht: error: {exc}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())
