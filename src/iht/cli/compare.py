"""``iht compare``: IHT and the pruning methods people know, at the same budgets, side by side."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import InvalidValueError
from ..experiments.config import DTYPES, METHODS, OPTIMIZERS, CompareConfig, parse_methods
from ..models import MODELS
from ..schedules import SCHEDULES
from .options import (
    activation_option,
    config_option,
    data_option,
    default_of,
    hidden_option,
    lr_option,
    n_monte_option,
    no_progress_option,
    no_report_option,
    out_option,
    overwrite_option,
    selection_option,
    target_option,
    test_fraction_option,
    threads_option,
)

__all__ = ["compare_command"]


def _methods(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    try:
        return parse_methods(value)
    except InvalidValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command("compare")
@data_option(default_of(CompareConfig, "data"))
@target_option
@click.option(
    "--sparsity",
    default="",
    help="Budgets s: counts (3,5,8), ranges (1-5), fractions (0.1) or percentages (10%) of P, "
    "biases counted; with --structure neuron or channel, of the hidden layers' rows. "
    "Required but with an N:M structure.",
)
@config_option(
    CompareConfig,
    "structure",
    str,
    "The budget's shape: entry, neuron or channel (whole hidden neurons / channels with "
    "their biases; methods dense, oneshot, gmp, iht), or an N:M pattern such as 2:4 (dense, "
    "oneshot, iht).",
)
@hidden_option()
@activation_option(CompareConfig)
@click.option(
    "--methods",
    default=",".join(METHODS),
    show_default=True,
    callback=_methods,
    help="Methods to run, comma-separated.",
)
@config_option(CompareConfig, "steps", click.IntRange(min=2), "Gradient evaluations per method.")
@config_option(CompareConfig, "seeds", click.IntRange(min=1), "Seeds 0..N-1 (split + init each).")
@lr_option(
    CompareConfig,
    "One step size for every method, or 'auto': 1/L_hat (dense) and 1/L_hat_2s (IHT).",
)
@click.option(
    "--l1",
    type=click.FloatRange(min=0),
    default=default_of(CompareConfig, "l1"),
    show_default=True,
    help="lambda of the L1 method.",
)
@n_monte_option(CompareConfig)
@test_fraction_option(CompareConfig)
@click.option(
    "--optimizer",
    type=click.Choice(["gd", *OPTIMIZERS[1:]]),
    default=default_of(CompareConfig, "optimizer"),
    show_default=True,
    help="Every method's base optimizer: gd (plain gradient steps, 1/L_hat and 1/L_hat_2s "
    "unless --lr), sgd, momentum, adam, adamw (one --lr for every method; default 0.05 for "
    "momentum, 0.01 for adam and adamw).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Rows per step; every method sees the same batches.  [default: full batch]",
)
@click.option(
    "--model",
    type=click.Choice(MODELS),
    default=default_of(CompareConfig, "model"),
    show_default=True,
    help="mlp (linear without --hidden) or cnn (mnist1d, digits).",
)
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    help="IHT's budget schedule.  [default: constant for gd and sgd, cubic otherwise]",
)
@selection_option
@config_option(CompareConfig, "dtype", click.Choice(DTYPES), "The models' precision.")
@click.option(
    "--validation",
    "validation_fraction",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    help="Score on a validation split of this share of the training rows (to choose "
    "hyperparameters); the test rows are not used.",
)
@threads_option(CompareConfig)
@out_option("results/compare-DATA")
@overwrite_option("Move an earlier comparison in --out aside (to DIR/replaced-TIMESTAMP/).")
@no_report_option
@no_progress_option
def compare_command(
    out: Path | None, overwrite: bool, no_report: bool, no_progress: bool, **settings: object
) -> None:
    """Compare dense training, one-shot pruning, gradual pruning, L1, RigL and IHT at budgets s.

    Every method gets the same base optimizer, the same number of steps on the same batches,
    split and initialisation; prints a table (median [min, max] over seeds) and writes
    results.parquet, config.json and compare.html to --out.
    """
    from ..data import load_dataset
    from ..errors import StoreError
    from ..experiments.compare import compare_levels, model_size, read_comparison, run_compare
    from ..report.compare import format_table, summarise, write_compare_report
    from ..storage.files import check_output_dir

    config = CompareConfig(**settings)  # type: ignore[arg-type]
    dataset = load_dataset(config.data, target=config.target)
    directory = out or Path("results") / f"compare-{Path(config.data).stem}"
    stored = None
    if not overwrite and (directory / "config.json").exists():
        # The same comparison saved already (its report not drawn: stopped, disk full):
        # draw the report of what is stored instead of refusing or computing it again.
        try:
            stored = read_comparison(directory)
        except StoreError:
            stored = None
        if stored is not None and (
            stored.record.config != config
            # a record of before --selection existed ran magnitude, whatever the default now
            or stored.record.iht_selection != config.iht_selection
        ):
            stored = None
    if stored is not None:
        click.echo(
            f"compare: {directory} holds this comparison already; drawing its report", err=True
        )
        click.echo(format_table(summarise(stored.frame)))
        if not no_report:
            click.echo(f"report: {write_compare_report(directory)}", err=True)
        return
    from ..experiments.compare import PARTIAL, holds_only_partial
    from ..storage.files import lock_directory, make_dir, move_aside

    partial = directory / PARTIAL
    if overwrite:
        check_output_dir(directory, overwrite=True)
        if directory.is_dir():
            move_aside(directory)  # the earlier comparison (or its seeds), kept aside
    elif not holds_only_partial(directory):
        check_output_dir(directory, overwrite=False)  # before any training
    size = model_size(config, dataset)
    levels = compare_levels(config, dataset)
    click.echo(
        f"compare: {dataset.name}, P = {size}, s = {', '.join(map(str, levels))}, "
        f"methods {', '.join(config.methods)}, {config.steps} steps, {config.seeds} seed(s) "
        f"-> {directory}",
        err=True,
    )
    start = time.perf_counter()
    # Each finished seed is stored in DIR/partial/ as it ends: a stopped comparison resumes.
    make_dir(directory)
    lock = lock_directory(directory)  # one writer at a time, until the results are saved
    try:
        result = run_compare(
            config,
            dataset=dataset,
            progress=not no_progress,
            partial=partial,
            log=lambda message: click.echo(message, err=True),
        )
        result.save(directory)
    finally:
        if lock is not None:
            lock.close()
    click.echo(format_table(summarise(result.frame)))
    if not no_report:
        html = write_compare_report(directory)
        click.echo(f"report: {html} ({time.perf_counter() - start:.1f} s)", err=True)
