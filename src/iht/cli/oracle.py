"""``iht oracle DIR``: the exact best s-sparse network on splits of a stored study."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..study.config import OracleConfig
from .options import config_option, levels_option, no_progress_option, no_report_option

__all__ = ["oracle_command"]


@click.command("oracle")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@config_option(
    OracleConfig,
    "splits",
    click.IntRange(min=1),
    "Solve the first K data splits of the study (split i is that of runs i).",
)
@levels_option("the study's")
@config_option(
    OracleConfig,
    "gtol",
    click.FloatRange(min=0, min_open=True),
    "Newton's stopping test on the gradient norm on the support.",
)
@config_option(
    OracleConfig,
    "tie_tol",
    click.FloatRange(min=0),
    "Supports within this of the best loss count as optimal.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an oracle file made with other settings (moved aside, not deleted).",
)
@no_report_option
@no_progress_option
@click.pass_context
def oracle_command(
    ctx: click.Context,
    directory: Path,
    splits: int,
    levels: tuple[int, ...] | None,
    gtol: float,
    tie_tol: float,
    overwrite: bool,
    no_report: bool,
    no_progress: bool,
) -> None:
    """The exact best s-sparse network on the first K splits of the study in DIRECTORY.

    Solves the convex training problem on every support of every level (IRIS: 32,766
    supports per split), stores DIRECTORY/oracle.parquet, prints the optimum against the
    stored IHT runs on the same splits and redraws the report with the figure oracle.png.
    Exits with code 1 if an IHT run is below the optimum (a bug).
    """
    from ..report.oracle import format_comparison
    from ..study.oracle import ORACLE_FILE, comparison_table, run_oracle

    t0 = time.perf_counter()
    config = OracleConfig(splits=splits, levels=levels, gtol=gtol, tie_tol=tie_tol)
    table = run_oracle(
        directory,
        config,
        overwrite=overwrite,
        progress=not no_progress,
        log=lambda msg: click.echo(msg, err=True),
    )
    click.echo(f"oracle: {directory / ORACLE_FILE} ({time.perf_counter() - t0:.1f} s)", err=True)
    click.echo(format_comparison(comparison_table(table)))
    click.echo(
        "(optimum: median over splits; attained: splits with a minimiser; inf 0: splits "
        "where the support separates the training set; IHT - opt: smallest IHT loss minus "
        "optimum; found: share of IHT runs whose support is optimal; IHT - own inf: median "
        "IHT loss minus the infimum over its own support; s/split: median seconds per split "
        "for the level)"
    )
    unsolved = int(table["n_unconverged"].sum())
    if unsolved:
        click.echo(
            f"iht oracle: {unsolved} support(s) have no certificate (status unconverged)",
            err=True,
        )
    bad = table[table["iht_violation"].fillna(False).astype(bool)]
    if not no_report:
        from ..report.study import write_study_report

        html = write_study_report(directory, print_summary=False)
        click.echo(f"report: {html}", err=True)
    if len(bad):
        click.echo("=" * 72, err=True)
        click.echo(
            f"BUG: {len(bad)} stored IHT run(s) have a training loss below the exact optimum:",
            err=True,
        )
        for r in bad.to_dict("records"):
            click.echo(
                f"  {r['iht_run_id']}: loss {r['iht_loss_float64']:.12g} < optimum "
                f"{r['value']:.12g} (split {r['index']}, s = {r['s']})",
                err=True,
            )
        click.echo("=" * 72, err=True)
        ctx.exit(1)
