"""``iht train``: train one model under a budget of s nonzeros on a data set, certify it, report.

The command is a thin layer: :func:`run_train` resolves the settings (:class:`TrainOptions`),
and the work is done by :mod:`iht.data`, :mod:`iht.models`, :mod:`iht.training`
(:func:`~iht.training.plan_budget`, :func:`~iht.training.fit`), :func:`iht.estimate_l2s` and
:func:`~iht.training.certify_budget`. Its output directory holds::

    config.json        the resolved settings (written before training starts)
    history.parquet    one row per step (also written when training stops on an error)
    model.pt, mask.pt  the state_dict and a bool mask (param != 0) per parameter
    model_sparse.pt    the parameters as torch sparse CSR/COO tensors (iht.export.load_sparse)
    certificate.json   HT-stability under the budget (and epsilon with --dense-reference)
    metrics.json       final train/test loss and accuracy, nonzeros, wall times
    report.html        self-contained report (figures inline as base64 PNGs)
    figures/*.png      loss, accuracy, support changes, nonzeros per layer

:func:`write_train_report` draws the report from the stored files only.
"""

from __future__ import annotations

import io
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from .data import Dataset, load_dataset, n_test_rows, random_split, standardise
from .errors import NonFiniteError
from .export import sparse_payload
from .html_report import PageFigure, escape, figure_html, figure_png, html_page, write_figures
from .lipschitz import DEFAULT_N_SAMPLES, estimate_l2s
from .models import ACTIVATIONS, build_model, parse_hidden
from .results import StoreError, _atomic_write_bytes, move_aside
from .training import (
    Budget,
    History,
    budgeted_size,
    certify_budget,
    evaluate,
    fit,
    layers_of,
    plan_budget,
    resolve_sparsity,
)

__all__ = [
    "DEFAULT_STEPS",
    "OUTPUT_FILES",
    "REPORT_FIGURES",
    "TrainOptions",
    "instability_reasons",
    "run_train",
    "train_command",
    "write_train_report",
]

DEFAULT_STEPS = 2000
OUTPUT_FILES = (
    "config.json",
    "history.parquet",
    "model.pt",
    "mask.pt",
    "model_sparse.pt",
    "certificate.json",
    "metrics.json",
    "report.html",
)
REPORT_FIGURES = ("loss", "accuracy", "support", "layers")
_SEED_NAMES = ("data", "init", "support", "monte_carlo", "shuffle")


@dataclass(frozen=True)
class TrainOptions:
    """The settings of one ``iht train`` run, as given (validated by :func:`run_train`)."""

    data: str
    sparsity: str
    target: str | None = None
    test_fraction: float = 0.2
    seed: int = 0
    hidden: str = ""
    activation: str = "relu"
    per_layer: bool = False
    exclude_biases: bool = False
    lr: str = "auto"
    n_monte: int = DEFAULT_N_SAMPLES
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    eval_every: int = 1
    dtype: str = "float32"
    grad_tol: float = 1e-3
    dense_reference: bool = False
    threads: int = 1
    report: bool = True
    out: Path | None = None
    overwrite: bool = False
    progress: bool = True


# ----------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------
def _parse_lr(text: str) -> float | None:
    """None for "auto", else a positive finite number."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--lr must be 'auto' or a positive number, got {text!r}")
    return value


def _seeds(seed: int) -> dict[str, int]:
    """Independent seeds for every source of randomness, derived from the master seed."""
    states = np.random.SeedSequence(seed).generate_state(len(_SEED_NAMES))
    return {"seed": seed, **{k: int(v) for k, v in zip(_SEED_NAMES, states, strict=True)}}


def _default_out(data: Dataset, options: TrainOptions) -> Path:
    model = (
        "h" + "-".join(str(w) for w in parse_hidden(options.hidden)) if options.hidden else "linear"
    )
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", data.name) or "data"
    sparsity = re.sub(r"[^A-Za-z0-9.]+", "_", options.sparsity.strip())
    return Path("results") / f"train-{name}-{model}-s{sparsity}-seed{options.seed}"


def _check_out(directory: Path, *, overwrite: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"--out {directory} exists and is not a directory")
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        shown = ", ".join(sorted(p.name for p in directory.iterdir())[:4])
        raise StoreError(
            f"{directory} is not empty (holds {shown}, ...); choose another --out, or add "
            "--overwrite to move its contents aside (nothing is deleted)"
        )


def _write_json(path: Path, value: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(value, indent=2, default=_json_default) + "\n").encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def _write_history(path: Path, history: History) -> None:
    buffer = io.BytesIO()
    history.to_frame().to_parquet(buffer, index=False)
    _atomic_write_bytes(path, buffer.getvalue())


def _write_torch(path: Path, value: Any) -> None:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    _atomic_write_bytes(path, buffer.getvalue())


class _Progress:
    """A tqdm bar over steps, showing the training loss."""

    def __init__(self, total: int, label: str, *, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            desc=label,
            unit="step",
            disable=not enabled,
            dynamic_ncols=True,
            file=sys.stderr,
            leave=False,
        )

    def __call__(self, step: int, history: History) -> None:
        self.bar.update(1)
        if step % 25 == 0:
            self.bar.set_postfix(loss=f"{history.train_loss[-1]:.4g}", refresh=False)

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------
def run_train(options: TrainOptions, *, echo: Callable[[str], None] = click.echo) -> Path:
    """Do one ``iht train`` run; return its output directory (summary printed via ``echo``).

    Raises:
        DataError, ValueError, TypeError, StoreError: bad settings or data (one line each);
            raised before anything is written.
        EstimateError: no learning rate follows from the L_2s estimate.
        NonFiniteError: training met a NaN/inf; ``config.json`` and the history of the
            finished steps are kept in the output directory.
    """
    started = time.perf_counter()
    lr_value = _parse_lr(options.lr)
    if options.dtype not in ("float32", "float64"):
        raise ValueError(f"--dtype must be float32 or float64, got {options.dtype!r}")
    if options.activation not in ACTIVATIONS:
        raise ValueError(
            f"--activation must be one of {', '.join(ACTIVATIONS)}, got {options.activation!r}"
        )
    if options.steps is not None and options.epochs is not None:
        raise ValueError("give --steps or --epochs, not both")
    for name, value in (
        ("--steps", options.steps),
        ("--epochs", options.epochs),
        ("--batch-size", options.batch_size),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value}")
    hidden = parse_hidden(options.hidden)
    dtype = torch.float64 if options.dtype == "float64" else torch.float32
    seeds = _seeds(options.seed)

    data = load_dataset(options.data, target=options.target)
    n = len(data.y)
    n_test = n_test_rows(n, options.test_fraction)
    train_idx, test_idx = random_split(n, n - n_test, seed=seeds["data"])
    features = torch.tensor(standardise(data.X, train_idx), dtype=dtype)
    labels = torch.tensor(data.y, dtype=torch.long)
    X, y = features[train_idx], labels[train_idx]
    X_test, y_test = features[test_idx], labels[test_idx]
    n_train = len(train_idx)

    # Parameters are drawn later from the init seed; fork_rng leaves the global RNG untouched
    # by the construction's own (discarded) draws.
    with torch.random.fork_rng(devices=[]):
        model = build_model(data.n_features, data.n_classes, hidden, activation=options.activation)
    model = model.to(dtype)
    total = budgeted_size(model, exclude_biases=options.exclude_biases)
    sparsity = resolve_sparsity(options.sparsity, total)
    budget = plan_budget(
        model, sparsity, per_layer=options.per_layer, exclude_biases=options.exclude_biases
    )
    starved = [pool.name for pool in budget.pools if not pool.dense and pool.sparsity == 0]
    if starved:
        echo(
            f"warning: layer(s) {', '.join(starved)} get a budget of 0 (s = {sparsity} is too "
            "small to share per layer): they will stay zero"
        )
    batch = options.batch_size if options.batch_size is not None else n_train
    steps_per_epoch = math.ceil(n_train / batch)
    steps = (
        options.epochs * steps_per_epoch
        if options.epochs is not None
        else (options.steps if options.steps is not None else DEFAULT_STEPS)
    )
    directory = options.out or _default_out(data, options)
    _check_out(directory, overwrite=options.overwrite)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        return _train(
            options,
            data,
            budget,
            model,
            hidden=hidden,
            lr_value=lr_value,
            seeds=seeds,
            train=(X, y),
            test=(X_test, y_test),
            steps=steps,
            steps_per_epoch=steps_per_epoch,
            directory=directory,
            started=started,
            echo=echo,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    options: TrainOptions,
    data: Dataset,
    budget: Budget,
    model: nn.Sequential,
    *,
    hidden: tuple[int, ...],
    lr_value: float | None,
    seeds: dict[str, int],
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    steps: int,
    steps_per_epoch: int,
    directory: Path,
    started: float,
    echo: Callable[[str], None],
) -> Path:
    from .init import reset_parameters_

    X, y = train
    n_train = len(y)

    def loss_fn(m: nn.Module) -> Tensor:
        return nn.functional.cross_entropy(m(X), y)

    reset_parameters_(model, generator=torch.Generator().manual_seed(seeds["init"]))
    dense_init = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())

    lr_start = time.perf_counter()
    estimate = None
    if lr_value is None:
        # The iterates have at most s + (dense parameters) nonzeros, so that is the sparsity
        # the estimate draws its supports with (= s under the paper's global budget).
        estimate = estimate_l2s(
            model,
            loss_fn,
            sparsity=budget.max_nonzeros,
            n_samples=options.n_monte,
            generator=torch.Generator().manual_seed(seeds["monte_carlo"]),
        )
        lr = estimate.lr
    else:
        lr = lr_value
    lr_time = time.perf_counter() - lr_start

    mini_batch = options.batch_size is not None and options.batch_size < n_train
    algorithm = "SIHT (mini-batch IHT)" if mini_batch else "IHT (full batch)"
    config = {
        "command": "iht train",
        "versions": {"iht": _version(), "torch": torch.__version__},
        "data": {
            "source": options.data,
            "name": data.name,
            "target": options.target,
            "n_rows": len(data.y),
            "n_features": data.n_features,
            "n_classes": data.n_classes,
            "class_names": list(data.class_names),
            "test_fraction": options.test_fraction,
            "n_train": n_train,
            "n_test": len(test[1]),
            "standardise": "z-score with the training rows' mean and population std",
        },
        "model": {
            "hidden": list(hidden),
            "activation": options.activation,
            "dtype": options.dtype,
            "n_params": n_params,
            "layers": [
                {
                    "name": name,
                    "params": [n for n, _ in own],
                    "size": sum(p.numel() for _, p in own),
                }
                for name, own in layers_of(model)
            ],
        },
        "budget": {
            "sparsity_given": options.sparsity,
            "budgeted_params": budget.budgeted,
            "rounding": "a fraction f gives round-half-up(f * budgeted_params), at least 1; "
            "per-layer shares by largest remainders",
            **budget.to_dict(),
        },
        "lr": {
            "given": options.lr,
            "value": lr,
            "l2s_estimate": None if estimate is None else estimate.estimate,
            "n_monte": options.n_monte if estimate is not None else None,
            "estimated_with_sparsity": budget.max_nonzeros if estimate is not None else None,
        },
        "training": {
            "algorithm": algorithm,
            "steps": steps,
            "epochs": options.epochs,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": options.batch_size,
            "eval_every": options.eval_every,
            "threads": options.threads,
            "grad_tol": options.grad_tol,
            "dense_reference": options.dense_reference,
        },
        "seeds": seeds,
        "out": str(directory),
    }

    directory.mkdir(parents=True, exist_ok=True)
    moved = move_aside(directory) if options.overwrite else None
    if moved is not None:
        echo(f"moved the earlier contents of {directory} to {moved}")
    _write_json(directory / "config.json", config)

    budget.sparse_init_(model, generator=torch.Generator().manual_seed(seeds["support"]))
    history = History()
    # Built before the clock starts: torch's first optimizer imports torch._dynamo (~1 s).
    optimizer = budget.optimizer(model, lr=lr)
    progress = _Progress(steps, algorithm.split(" ")[0], enabled=options.progress)
    train_start = time.perf_counter()
    try:
        fit(
            model,
            X,
            y,
            optimizer=optimizer,
            steps=steps,
            batch_size=options.batch_size,
            generator=torch.Generator().manual_seed(seeds["shuffle"]),
            on_step=progress,
            test=test,
            eval_every=options.eval_every,
            history=history,
        )
    except (NonFiniteError, KeyboardInterrupt) as exc:
        progress.close()
        _write_history(directory / "history.parquet", history)
        if isinstance(exc, NonFiniteError):
            raise NonFiniteError(
                f"{exc}; the {len(history)} finished steps are in {directory / 'history.parquet'}"
            ) from exc
        raise
    progress.close()
    train_time = time.perf_counter() - train_start

    dense: dict[str, Any] | None = None
    dense_time = 0.0
    if options.dense_reference:
        dense_start = time.perf_counter()
        dense = _dense_reference(
            model,
            dense_init,
            options,
            lr_value,
            loss_fn,
            train=train,
            test=test,
            steps=steps,
            seeds=seeds,
        )
        dense_time = time.perf_counter() - dense_start

    certificate = certify_budget(
        model,
        loss_fn,
        lr=lr,
        budget=budget,
        grad_tol=options.grad_tol,
        dense_loss=None if dense is None else dense["train_loss"],
    )
    train_loss, train_accuracy = evaluate(model, X, y)
    test_loss, test_accuracy = evaluate(model, test[0], test[1])
    pool_budget = {p.name: p.sparsity for p in budget.pools if budget.mode == "per_layer"}
    dense_params = {n for pool in budget.pools if pool.dense for n in pool.params}
    layers: list[dict[str, Any]] = [
        {
            "name": name,
            "kind": _describe_layer(model, name),
            "size": sum(p.numel() for _, p in own),
            "nonzeros": sum(int((p != 0).sum()) for _, p in own),
            "budgeted_size": sum(p.numel() for n, p in own if n not in dense_params),
            "budgeted_nonzeros": sum(int((p != 0).sum()) for n, p in own if n not in dense_params),
            "budget": pool_budget.get(name),
        }
        for name, own in layers_of(model)
    ]
    nonzeros = sum(int(layer["nonzeros"]) for layer in layers)
    metrics: dict[str, Any] = {
        "status": "finished",
        "steps": len(history),
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "nonzeros": nonzeros,
        "budgeted_nonzeros": sum(
            budget.nonzeros(model)[p.name] for p in budget.pools if not p.dense
        ),
        "n_params": n_params,
        "sparsity": budget.sparsity,
        "density": nonzeros / n_params,
        "layers": layers,
        "lr": lr,
        "dense": dense,
        "time_s": {
            "lr_estimate": lr_time,
            "training": train_time,
            "dense_reference": dense_time if options.dense_reference else None,
            "total": math.nan,  # set just before metrics.json is written
        },
    }
    _write_history(directory / "history.parquet", history)
    _write_torch(directory / "model.pt", model.state_dict())
    _write_torch(
        directory / "mask.pt", {name: (p.detach() != 0) for name, p in model.named_parameters()}
    )
    _write_torch(directory / "model_sparse.pt", sparse_payload(model))
    _write_json(directory / "certificate.json", certificate)
    metrics["time_s"]["total"] = time.perf_counter() - started
    _write_json(directory / "metrics.json", metrics)
    report = write_train_report(directory) if options.report else None

    elapsed = time.perf_counter() - started
    for line in _summary(config, metrics, certificate, directory, report, elapsed):
        echo(line)
    return directory


def _describe_layer(model: nn.Module, name: str) -> str:
    """E.g. "Linear 64->10" for an ``nn.Linear``, else the module's class name."""
    module = model if name == "(root)" else model.get_submodule(name)
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}->{module.out_features}"
    return type(module).__name__


def instability_reasons(certificate: dict[str, Any]) -> list[str]:
    """Why a certificate says "not HT-stable", in words (empty when it is stable)."""
    if certificate["stable"]:
        return []
    reasons = []
    tol = certificate["grad_tol"]
    if certificate["max_grad_on_support"] > tol:
        reasons.append(
            f"max|grad| on the support {certificate['max_grad_on_support']:.2e} > grad_tol "
            f"{tol:.0e} (not stationary yet: more steps, or a larger --grad-tol)"
        )
    if certificate["off_support_ratio"] >= 1:
        reasons.append(
            f"off-support ratio {certificate['off_support_ratio']:.3g} >= 1 (an entry outside "
            "the support would enter it)"
        )
    if certificate["tie"]:
        reasons.append("a tie at the threshold (H_s is set-valued there)")
    if not reasons:
        reasons.append(
            f"fewer nonzeros than the budget and a gradient above grad_tol {tol:.0e} off the support"
        )
    return reasons


def _dense_reference(
    model: nn.Module,
    dense_init: dict[str, Tensor],
    options: TrainOptions,
    lr_value: float | None,
    loss_fn: Callable[[nn.Module], Tensor],
    *,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    steps: int,
    seeds: dict[str, int],
) -> dict[str, Any]:
    """The same model from the same (dense) initialisation, trained by GD (Alg. 2)."""
    import copy

    from .optim import IHT

    dense_model = copy.deepcopy(model)
    dense_model.load_state_dict(dense_init)
    estimate = None
    if lr_value is None:
        estimate = estimate_l2s(
            dense_model,
            loss_fn,
            sparsity=None,
            n_samples=options.n_monte,
            generator=torch.Generator().manual_seed(seeds["monte_carlo"]),
        )
    lr = estimate.lr if estimate is not None else float(lr_value or 0)
    progress = _Progress(steps, "dense GD", enabled=options.progress)
    try:
        fit(
            dense_model,
            train[0],
            train[1],
            optimizer=IHT(dense_model.parameters(), lr=lr, sparsity=None),
            steps=steps,
            batch_size=options.batch_size,
            generator=torch.Generator().manual_seed(seeds["shuffle"]),
            on_step=progress,
        )
    except NonFiniteError as exc:
        raise NonFiniteError(f"dense reference: {exc}") from exc
    finally:
        progress.close()
    train_loss, train_accuracy = evaluate(dense_model, *train)
    test_loss, test_accuracy = evaluate(dense_model, *test)
    return {
        "lr": lr,
        "l2s_estimate": None if estimate is None else estimate.estimate,
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
    }


def _version() -> str:
    from . import __version__

    return __version__


def _summary(
    config: dict[str, Any],
    metrics: dict[str, Any],
    certificate: dict[str, Any],
    directory: Path,
    report: Path | None,
    elapsed: float,
) -> list[str]:
    data, model, budget = config["data"], config["model"], config["budget"]
    lr, training = config["lr"], config["training"]
    widths = [data["n_features"], *model["hidden"], data["n_classes"]]
    shape = "-".join(str(w) for w in widths)
    if budget["mode"] == "per_layer":
        shared = "per layer: " + ", ".join(
            f"{p['name']} {p['sparsity']}/{p['size']}" for p in budget["pools"] if not p["dense"]
        )
    else:
        shared = "global"
    shared += ", biases dense" if budget["exclude_biases"] else ", biases counted"
    lr_text = (
        f"lr {lr['value']:.4g} (auto: 1/L_hat_2s, L_hat_2s = {lr['l2s_estimate']:.4g}, "
        f"{lr['n_monte']} draws)"
        if lr["l2s_estimate"] is not None
        else f"lr {lr['value']:.4g} (given)"
    )
    batch = f", batch size {training['batch_size']}" if training["batch_size"] else ""
    lines = [
        f"data {data['name']}: {data['n_train']} train / {data['n_test']} test rows, "
        f"{data['n_features']} features, {data['n_classes']} classes",
        f"model {shape} ({model['activation'] if model['hidden'] else 'linear'}), "
        f"P = {model['n_params']}; budget s = {budget['sparsity']} of {budget['budgeted_params']} ({shared})",
        f"{lr_text}; {metrics['steps']} steps of {training['algorithm']}{batch} "
        f"in {metrics['time_s']['training']:.1f} s",
        f"train loss {metrics['train_loss']:.4g}, accuracy {metrics['train_accuracy']:.3f} | "
        f"test loss {metrics['test_loss']:.4g}, test accuracy {metrics['test_accuracy']:.3f}",
        f"nonzeros {metrics['nonzeros']} / {metrics['n_params']} ({100 * metrics['density']:.1f}%)",
        f"certificate: stable={certificate['stable']}, max|grad| on support "
        f"{certificate['max_grad_on_support']:.2e}, off-support ratio "
        f"{certificate['off_support_ratio']:.3g}, fixed-point residual "
        f"{certificate['residual']:.2e}, tie={certificate['tie']}",
    ]
    if not certificate["stable"]:
        lines.append(f"  not HT-stable: {'; '.join(instability_reasons(certificate))}")
    if metrics["dense"] is not None:
        dense = metrics["dense"]
        lines.append(
            f"dense reference (no budget, same steps, lr {dense['lr']:.4g}): train loss {dense['train_loss']:.4g}, "
            f"test accuracy {dense['test_accuracy']:.3f}; epsilon = {certificate['epsilon']:.3g}"
        )
    written = [name for name in OUTPUT_FILES if (directory / name).exists()]
    if (directory / "figures").is_dir():
        written.append("figures/")
    lines.append(f"{elapsed:.1f} s in all; files in {directory}/: {', '.join(written)}")
    if report is not None:
        lines.append(f"report: {report}")
    return lines


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------
def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(7.5, 4.0), layout="constrained")
    return fig, fig.subplots()


def _fig_loss(history: pd.DataFrame, metrics: dict[str, Any]) -> tuple[bytes, str]:
    fig, ax = _figure()
    step = history["step"].to_numpy()

    def positive(column: str) -> Any:
        values = history[column].to_numpy(dtype=float)
        return np.where(values > 0, values, np.nan)

    minibatch = not np.allclose(
        history["batch_loss"].to_numpy(), history["train_loss"].to_numpy(), equal_nan=True
    )
    if minibatch:
        ax.plot(step, positive("batch_loss"), color="0.75", lw=0.6, label="mini-batch loss")
    ax.plot(step, positive("train_loss"), color="C0", lw=1.5, label="training loss")
    test = history.dropna(subset=["test_loss"])
    if not test.empty:
        ax.plot(
            test["step"],
            np.where(test["test_loss"] > 0, test["test_loss"], np.nan),
            color="C1",
            lw=1.2,
            label="test loss",
        )
    if metrics.get("dense"):
        ax.axhline(
            metrics["dense"]["train_loss"],
            color="C2",
            ls="--",
            lw=1,
            label="dense GD, final training loss",
        )
    ax.set_yscale("log")
    ax.set_xlabel("step k")
    ax.set_ylabel("cross-entropy (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    caption = (
        f"Loss at theta_k. Final: training {metrics['train_loss']:.4g}, test "
        f"{metrics['test_loss']:.4g}."
    )
    return figure_png(fig), caption


def _fig_accuracy(history: pd.DataFrame, metrics: dict[str, Any]) -> tuple[bytes, str]:
    fig, ax = _figure()
    ax.plot(history["step"], history["train_accuracy"], color="C0", label="training accuracy")
    test = history.dropna(subset=["test_accuracy"])
    if not test.empty:
        ax.plot(test["step"], test["test_accuracy"], color="C1", label="test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step k")
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    caption = (
        f"Accuracy at theta_k. Final: training {metrics['train_accuracy']:.3f}, test "
        f"{metrics['test_accuracy']:.3f}."
    )
    return figure_png(fig), caption


def _fig_support(history: pd.DataFrame) -> tuple[bytes, str]:
    fig, ax = _figure()
    step = history["step"].to_numpy()
    entered = history["entered"].to_numpy()
    left = history["left"].to_numpy()
    # Mirrored spikes: entries that entered above the axis, entries that left below it.
    ax.vlines(
        step[entered > 0], 0, entered[entered > 0], color="C0", lw=1, label="entered the support"
    )
    ax.vlines(step[left > 0], -left[left > 0], 0, color="C3", lw=1, label="left the support")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_yscale("symlog", linthresh=1)
    top = max(1, int(entered.max(initial=0)), int(left.max(initial=0)))
    ax.set_ylim(-top * 1.6, top * 1.6)
    ax.set_xlim(-0.01 * max(1, step.max(initial=0)), max(1, step.max(initial=0)) * 1.01)
    ax.yaxis.set_major_formatter(lambda value, _: f"{abs(value):g}")
    ax.set_xlabel("step k (theta_k -> theta_k+1)")
    ax.set_ylabel("entries (symlog; left below the axis)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    changed = np.flatnonzero((entered > 0) | (left > 0))
    if len(changed):
        last = int(step[changed[-1]])
        caption = (
            f"Support changes per step: {int(entered.sum())} entries entered and "
            f"{int(left.sum())} left in all, in {len(changed)} of {len(step)} steps; the last "
            f"change was at step {last}"
            + (
                f", {int(step[-1]) - last} steps before the end."
                if last < int(step[-1])
                else " (the last step)."
            )
        )
    else:
        caption = "The support never changed: the initial support was kept."
    return figure_png(fig), caption


def _fig_layers(metrics: dict[str, Any]) -> tuple[bytes, str]:
    fig, ax = _figure()
    layers = metrics["layers"]
    x = np.arange(len(layers))
    sizes = np.array([layer["size"] for layer in layers])
    counted = np.array([layer["budgeted_nonzeros"] for layer in layers])
    outside = np.array([layer["nonzeros"] - layer["budgeted_nonzeros"] for layer in layers])
    ax.bar(x, sizes, color="0.88", edgecolor="0.6", label="parameters")
    ax.bar(x, counted, width=0.55, color="C0", label="nonzeros under the budget")
    if outside.any():
        ax.bar(
            x,
            outside,
            width=0.55,
            bottom=counted,
            color="C2",
            alpha=0.6,
            label="dense biases (outside the budget)",
        )
    budgets = [layer["budget"] for layer in layers]
    if any(b is not None for b in budgets):
        ax.scatter(
            x,
            [np.nan if b is None else b for b in budgets],
            marker="_",
            s=900,
            color="C3",
            zorder=3,
            label="layer budget",
        )
    for xi, size, count, extra in zip(x, sizes, counted, outside, strict=True):
        text = f"{count} + {extra} / {size}" if outside.any() else f"{count} / {size}"
        ax.annotate(
            text,
            (xi, max(count + extra, 1)),
            ha="center",
            va="bottom",
            xytext=(0, 3),
            textcoords="offset points",
            fontsize=9,
        )
    if sizes.max() > 50 * max(1, sizes.min()):
        ax.set_yscale("log")
    ax.set_xticks(x, [f"{layer['name']}\n{layer.get('kind', '')}" for layer in layers])
    ax.set_xlabel("layer (module)")
    ax.set_ylabel("count")
    ax.legend(loc="upper right")
    caption = (
        f"Final nonzeros per layer: {metrics['nonzeros']} of {metrics['n_params']} parameters "
        f"in all, {metrics['budgeted_nonzeros']} of them under the budget s = {metrics['sparsity']}."
    )
    return figure_png(fig), caption


def write_train_report(directory: str | Path) -> Path:
    """Write ``DIR/report.html`` and ``DIR/figures/*.png`` from the stored files of a run.

    Reads only ``config.json``, ``metrics.json``, ``certificate.json`` and
    ``history.parquet``; the page is self-contained (figures as base64 data URIs).

    Raises:
        StoreError: a file is missing.
    """
    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text())
        metrics = json.loads((directory / "metrics.json").read_text())
        certificate = json.loads((directory / "certificate.json").read_text())
        history = pd.read_parquet(directory / "history.parquet")
    except FileNotFoundError as exc:
        raise StoreError(
            f"{directory} is not a finished train run: {exc.filename} is missing"
        ) from None
    with warnings.catch_warnings():
        # Overflow in a log axis transform when a diverging run stored losses near 1e300.
        warnings.simplefilter("ignore", RuntimeWarning)
        figures = [
            PageFigure("loss", "Loss", *_fig_loss(history, metrics)),
            PageFigure("accuracy", "Accuracy", *_fig_accuracy(history, metrics)),
            PageFigure("support", "Support changes", *_fig_support(history)),
            PageFigure("layers", "Nonzeros per layer", *_fig_layers(metrics)),
        ]
    write_figures(directory / "figures", figures)
    page = _render(config, metrics, certificate, figures)
    path = directory / "report.html"
    _atomic_write_bytes(path, page.encode("utf-8"))
    return path


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def _render(
    config: dict[str, Any],
    metrics: dict[str, Any],
    certificate: dict[str, Any],
    figures: list[PageFigure],
) -> str:
    data, model, budget = config["data"], config["model"], config["budget"]
    lr, training = config["lr"], config["training"]
    settings = [
        (
            "data",
            f"{data['name']} ({data['n_train']} train / {data['n_test']} test rows, "
            f"{data['n_features']} features, {data['n_classes']} classes)",
        ),
        (
            "model",
            f"hidden {model['hidden'] or 'none (linear)'}, {model['activation']}, "
            f"P = {model['n_params']}, {model['dtype']}",
        ),
        (
            "budget",
            f"s = {budget['sparsity']} of {budget['budgeted_params']} budgeted "
            f"({budget['mode'].replace('_', '-')}"
            f"{', biases dense' if budget['exclude_biases'] else ', biases counted'}; "
            f"given {budget['sparsity_given']})",
        ),
        (
            "learning rate",
            f"{lr['value']:.4g}"
            + (
                f" = 1 / L_hat_2s, L_hat_2s = {lr['l2s_estimate']:.4g} ({lr['n_monte']} draws)"
                if lr["l2s_estimate"] is not None
                else " (given)"
            ),
        ),
        (
            "training",
            f"{training['algorithm']}, {training['steps']} steps"
            + (f", batch size {training['batch_size']}" if training["batch_size"] else ""),
        ),
        ("seed", config["seeds"]["seed"]),
    ]
    results = [
        (
            "training loss / accuracy",
            f"{metrics['train_loss']:.4g} / {metrics['train_accuracy']:.3f}",
        ),
        ("test loss / accuracy", f"{metrics['test_loss']:.4g} / {metrics['test_accuracy']:.3f}"),
        (
            "nonzeros",
            f"{metrics['nonzeros']} / {metrics['n_params']} ({100 * metrics['density']:.1f}%)",
        ),
        (
            "wall time",
            f"{metrics['time_s']['total']:.1f} s (training {metrics['time_s']['training']:.1f} s)",
        ),
    ]
    if metrics.get("dense"):
        dense = metrics["dense"]
        results.append(
            (
                "dense GD reference",
                f"train loss {dense['train_loss']:.4g}, test accuracy "
                f"{dense['test_accuracy']:.3f}, lr {dense['lr']:.4g}",
            )
        )
    verdict = (
        "yes: a fixed point of the IHT map within grad_tol"
        if certificate["stable"]
        else "no: " + "; ".join(instability_reasons(certificate))
    )
    cert_rows: list[tuple[str, Any]] = [("HT-stable", verdict)]
    cert_rows += [
        (
            k,
            certificate.get(k)
            if certificate.get(k) is not None
            else "- (run with --dense-reference)",
        )
        for k in (
            "stable",
            "max_grad_on_support",
            "max_grad_off_support",
            "off_support_ratio",
            "residual",
            "tie",
            "grad_tol",
            "loss",
            "dense_loss",
            "epsilon",
        )
    ]
    blocks = [
        figure_html(fig.png, fig.title, fig.caption, element_id=fig.name, heading=True)
        for fig in figures
        if fig.png is not None
    ]
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{padding:0.2em 0.8em;"
        "border-bottom:1px solid #ddd;text-align:left}th{font-weight:600}img{max-width:100%}"
        "figure{margin:1.5em 0}figcaption{color:#555;font-size:0.9em}"
    )
    return html_page(
        f"iht train: {data['name']}",
        style,
        [
            f"<h1>iht train: {escape(data['name'])}, s = {budget['sparsity']}</h1>",
            f"<h2>Settings</h2>{_table(settings)}",
            f"<h2>Results</h2>{_table(results)}",
            "<h2>Certificate (HT-stability at the final point)</h2>",
            _table(cert_rows),
            "<h2>Figures</h2>",
            *blocks,
        ],
    )


# ----------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------
@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data",
    required=True,
    help="A built-in data set (iris, wine, breast_cancer, digits) or a CSV file "
    "(header row, numeric features, with --target).",
)
@click.option("--target", help="The class-label column of a CSV file (strings or integers).")
@click.option(
    "--test-fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="Share of rows held out for testing, in (0, 1).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Master seed of the split, initialisation, support, L_2s draws, shuffling.",
)
@click.option(
    "--hidden", default="", help="Hidden layer widths, e.g. 64,32.  [default: none (linear)]"
)
@click.option(
    "--activation", type=click.Choice(list(ACTIVATIONS)), default="relu", show_default=True
)
@click.option(
    "--sparsity",
    required=True,
    help="Budget s: a count of nonzeros (integer >= 1) or a fraction in (0, 1) of the "
    "budgeted parameters (rounded half up, at least 1).",
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
@click.option(
    "--lr",
    default="auto",
    show_default=True,
    help="Step size: 'auto' (1 / L_hat_2s from the Monte Carlo estimate) or a number.",
)
@click.option(
    "--n-monte",
    type=click.IntRange(min=1),
    default=DEFAULT_N_SAMPLES,
    show_default=True,
    help="Monte Carlo draws for L_hat_2s (with --lr auto).",
)
@click.option("--steps", type=int, help=f"Number of IHT steps.  [default: {DEFAULT_STEPS}]")
@click.option(
    "--epochs",
    type=int,
    help="Instead of --steps: passes over the training rows (steps = epochs x "
    "ceil(n_train / batch size)).",
)
@click.option(
    "--batch-size",
    type=int,
    help="Mini-batch IHT (SIHT) with this many rows per step, reshuffled every "
    "epoch.  [default: full batch]",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Evaluate the test rows every k steps.",
)
@click.option(
    "--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True
)
@click.option(
    "--grad-tol",
    type=click.FloatRange(min=0),
    default=1e-3,
    show_default=True,
    help="|grad| at or below this counts as zero in the certificate.",
)
@click.option(
    "--dense-reference",
    is_flag=True,
    help="Also train the same model densely with GD for the same steps; report epsilon.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Torch CPU threads (one is fastest for small models, even more so on a busy machine).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory.  [default: results/train-DATA-MODEL-sSPARSITY-seedSEED]",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Reuse a non-empty --out: its contents are moved to replaced-TIMESTAMP/ inside it.",
)
@click.option("--no-report", is_flag=True, help="Do not draw report.html and the figures.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def train_command(no_progress: bool, no_report: bool, **settings: Any) -> None:
    """Train a model under a budget of s nonzeros with IHT; certify it and write a report.

    \b
    Examples:
      iht train --data digits --hidden 64 --sparsity 0.1
      iht train --data iris --sparsity 5
      iht train --data flowers.csv --target species --sparsity 0.2 --batch-size 32
    """
    run_train(TrainOptions(progress=not no_progress, report=not no_report, **settings))
