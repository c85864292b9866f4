"""``iht train``: one model under a budget of s nonzeros on a data set, certified and reported."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..experiments.config import DEFAULT_STEPS, DTYPES, OPTIMIZERS, TrainConfig, recipe
from ..models import MODELS
from ..schedules import SCHEDULES
from ..tasks import TASKS
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
    seed_option,
    selection_option,
    target_option,
    test_fraction_option,
    threads_option,
)

__all__ = ["train_command"]


@click.command("train")
@data_option(None)
@target_option
@click.option(
    "--task",
    type=click.Choice(TASKS),
    help="classification (cross-entropy, accuracy) or regression (MSE of the standardised "
    "target, R^2 and RMSE).  [default: the data set's own; a CSV target of many distinct "
    "numbers needs it]",
)
@test_fraction_option(TrainConfig)
@seed_option(
    TrainConfig, "Master seed of the split, initialisation, support, L_2s draws, shuffling."
)
@hidden_option()
@activation_option(TrainConfig)
@click.option(
    "--sparsity",
    help="Budget s: a count of nonzeros (100), a fraction (0.1) or a percentage (10%) of the "
    "budgeted parameters (rounded half up, at least 1); with --structure neuron or channel, "
    "of the hidden layers' rows. Required but with an N:M structure.",
)
@config_option(
    TrainConfig,
    "structure",
    str,
    "The budget's shape: entry (the s largest entries), neuron or channel (whole output "
    "neurons / channels of the hidden layers with their biases; the output layer dense), or an N:M "
    "pattern such as 2:4 (N of every M consecutive inputs of each weight row whose length "
    "is a multiple of M).",
)
@click.option(
    "--per-layer",
    is_flag=True,
    help="Give every layer its own budget, proportional to its size (sum = s).",
)
@click.option(
    "--exclude-biases",
    is_flag=True,
    help="Keep biases dense and outside the budget (default: biases are counted).",
)
@lr_option(
    TrainConfig,
    "Step size: 'auto' (1 / L_hat_2s from the Monte Carlo estimate for iht and sgd; 0.05 for "
    "momentum, 0.01 for adam and adamw) or a number.",
)
@n_monte_option(TrainConfig)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    help=f"Number of IHT steps.  [default: {DEFAULT_STEPS}; 6000 for --model cnn]",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    help="Instead of --steps: passes over the training rows (steps = epochs x "
    "ceil(n_train / batch size)).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Mini-batch IHT (SIHT) with this many rows per step, reshuffled every "
    "epoch.  [default: full batch; 100 for --model cnn]",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=1),
    help="Evaluate the test rows (and, with mini-batches, the loss over every training row) "
    "every k steps.  [default: 1; 100 for --model cnn]",
)
@config_option(TrainConfig, "dtype", click.Choice(DTYPES), "The precision of the model.")
@config_option(
    TrainConfig,
    "grad_tol",
    click.FloatRange(min=0),
    "|grad| at or below this counts as zero in the certificate.",
)
@click.option(
    "--dense-reference",
    is_flag=True,
    help="Also train the same model densely with GD for the same steps; report epsilon.",
)
@click.option(
    "--model",
    type=click.Choice(MODELS),
    default=default_of(TrainConfig, "model"),
    show_default=True,
    help="mlp (linear when --hidden is empty) or cnn (for signals and images: mnist1d, digits; "
    "--hidden C sets its channels, default 25).",
)
@click.option(
    "--optimizer",
    type=click.Choice(OPTIMIZERS),
    help="iht (the paper's step), or sgd, momentum, adam, adamw followed by the projection onto "
    "the budget.  [default: iht; adam for --model cnn]",
)
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    help="How the budget is reached: constant (from the start), warmup (dense for 1/6 of the "
    "steps), cubic (dense to s from 1/6 to 2/3 of the steps), acdc (dense and sparse phases, "
    "ending sparse).  [default: constant for iht and sgd, cubic otherwise]",
)
@selection_option
@threads_option(TrainConfig)
@out_option("results/train-DATA-MODEL-sSPARSITY-seedSEED")
@overwrite_option(
    "Reuse a non-empty --out: its contents are moved to replaced-TIMESTAMP/ inside it."
)
@no_report_option
@no_progress_option
def train_command(
    out: Path | None, overwrite: bool, no_report: bool, no_progress: bool, **settings: object
) -> None:
    """Train a model under a budget of s nonzeros with IHT; certify it and write a report.

    \b
    Examples:
      iht train --data digits --hidden 64 --sparsity 0.1
      iht train --data iris --sparsity 5
      iht train --data flowers.csv --target species --sparsity 10% --batch-size 32
      iht train --data diabetes --hidden 32 --sparsity 0.2
      iht train --data digits --hidden 64 --structure neuron --sparsity 25%
      iht train --data digits --hidden 64 --structure 2:4
    """
    from ..errors import StoreError
    from ..experiments.train import default_out, read_train_run, run_train
    from ..report.train import summary_lines, write_train_report

    started = time.perf_counter()
    config = TrainConfig(**settings)  # type: ignore[arg-type]
    directory = out or default_out(config)
    stored = None
    if not overwrite and (directory / "metrics.json").exists():
        # This very run finished already (its report not drawn: stopped, disk full): draw it.
        try:
            stored = read_train_run(directory)
        except StoreError:
            stored = None
        if stored is not None and (
            stored.record.config != config
            # a run of before --selection existed ran magnitude, whatever the default now
            or stored.record.training.selection != recipe(config).selection
        ):
            stored = None
    if stored is not None:
        click.echo(f"{directory} holds this run already; drawing its report")
        run = stored
    else:
        run = run_train(
            config, out=out, overwrite=overwrite, progress=not no_progress, log=click.echo
        )
    report = None if no_report else write_train_report(run.directory)
    for line in summary_lines(run, report, time.perf_counter() - started):
        click.echo(line)
