"""The report of an ``iht train`` run, drawn from its stored files only.

:func:`write_train_report` reads ``config.json``, ``metrics.json``, ``certificate.json`` and
``history.parquet`` (:func:`iht.experiments.train.read_train_run`) and writes
``report.html`` (self-contained, figures inline as base64 PNGs) and ``figures/*.png``: loss,
accuracy, support changes, nonzeros per layer. :func:`summary_lines` is the text the command
prints.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..budget import Budget
from ..certify import instability_reasons
from ..experiments.train import (
    OUTPUT_FILES,
    DataInfo,
    DenseReference,
    ExportCost,
    TrainMetrics,
    TrainRecord,
    TrainResult,
    read_train_run,
)
from ..storage.files import atomic_write_bytes
from .html import PageFigure, escape, figure_html, figure_png, html_page, write_figures

__all__ = ["REPORT_FIGURES", "summary_lines", "write_train_report"]

#: The figures of the report, in order.
REPORT_FIGURES = ("loss", "accuracy", "support", "layers")


def summary_lines(run: TrainResult, report: Path | None, elapsed: float) -> list[str]:
    """What ``iht train`` prints at the end: data, model, budget, step, results, certificate.

    Args:
        run: the finished run (:func:`iht.experiments.train.run_train`).
        report: the report's path, when one was drawn.
        elapsed: seconds since the command started.
    """
    record, metrics, certificate = run.record, run.metrics, run.certificate
    data, model, budget, lr = record.data, record.model, record.budget, record.lr
    outputs = 1 if data.task == "regression" else data.n_classes
    widths = [data.n_features, *model.hidden, outputs]
    shape = "-".join(str(w) for w in widths)
    kind = model.activation if model.hidden else "linear"
    if record.config.model == "cnn":
        shape, kind = (
            f"CNN {data.n_features}-{outputs}",
            f"{model.hidden[0] if model.hidden else 25} channels, {model.activation}",
        )
    if budget.structure in ("group", "group+bias"):
        shared = "whole neurons/channels, per layer: " + ", ".join(
            f"{p.name} {p.sparsity}/{p.units} rows" for p in budget.pools if not p.dense
        )
        shared += "; the output layer dense"
    elif budget.structure != "entry":
        shared = f"{budget.structure} pattern in " + ", ".join(
            p.name for p in budget.pools if not p.dense
        )
        shared += "; other parameters dense"
    elif budget.mode == "per_layer":
        shared = "per layer: " + ", ".join(
            f"{p.name} {p.sparsity}/{p.size}" for p in budget.pools if not p.dense
        )
    else:
        shared = "global"
    if budget.structure == "entry":
        shared += ", biases dense" if budget.exclude_biases else ", biases counted"
    lr_text = (
        f"lr {lr.value:.4g} (auto: 1/L_hat_2s, L_hat_2s = {lr.l2s_estimate:.4g}, "
        f"{lr.n_monte} draws)"
        if lr.l2s_estimate is not None
        else f"lr {lr.value:.4g} ({'given' if lr.source == 'given' else 'the optimizer default'})"
    )
    batch_size = record.training.batch_size
    batch = f", batch size {batch_size}" if batch_size else ""
    lines = [
        f"data {data.name}: {data.n_train} train / {data.n_test} test rows, "
        f"{data.n_features} features, {_target_text(data)}",
        f"model {shape} ({kind}), "
        f"P = {model.n_params}; budget s = {budget.sparsity} of {_budget_units(budget)} "
        f"({shared})",
        f"{lr_text}; {metrics.steps} steps of {record.training.algorithm}{batch} "
        f"in {metrics.time_s.training:.1f} s",
        _results_text(metrics),
        f"nonzeros {metrics.nonzeros} / {metrics.n_params} ({100 * metrics.density:.1f}%)"
        + _kept_rows_text(metrics),
        *_export_text(metrics),
        f"certificate: stable={certificate['stable']}, max|grad| on support "
        f"{certificate['max_grad_on_support']:.2e}, off-support ratio "
        f"{certificate['off_support_ratio']:.3g}, fixed-point residual "
        f"{certificate['residual']:.2e}, tie={certificate['tie']}",
    ]
    if record.training.optimizer != "iht":
        chosen = (
            " and kept the entries of largest Fisher saliency"
            if record.training.selection == "fisher"
            else ""
        )
        lines.append(
            f"  (the certificate tests IHT's fixed point theta = H_s(theta - lr grad f) with lr "
            f"{lr.value:.4g}; this run took {record.training.optimizer} steps{chosen})"
        )
    if not certificate["stable"]:
        lines.append(f"  not HT-stable: {'; '.join(instability_reasons(certificate))}")
    if metrics.dense is not None:
        dense = metrics.dense
        lines.append(
            f"dense reference (no budget, same steps, lr {dense.lr:.4g}): train loss "
            f"{dense.train_loss:.4g}, {_dense_score(dense)}; "
            f"epsilon = {certificate['epsilon']:.3g}"
        )
    directory = run.directory
    extra = ("model_shrunk.pt", "report.html")
    written = [name for name in (*OUTPUT_FILES, *extra) if (directory / name).exists()]
    if (directory / "figures").is_dir():
        written.append("figures/")
    lines.append(f"{elapsed:.1f} s in all; files in {directory}/: {', '.join(written)}")
    if report is not None:
        lines.append(f"report: {report}")
    return lines


def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(7.5, 4.0), layout="constrained")
    return fig, fig.subplots()


def _fig_loss(history: pd.DataFrame, metrics: TrainMetrics) -> tuple[bytes, str]:
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
    # With mini-batches the loss over every row is evaluated every eval_every steps only.
    train = history.dropna(subset=["train_loss"])
    train_loss = train["train_loss"].to_numpy(dtype=float)
    ax.plot(
        train["step"].to_numpy(),
        np.where(train_loss > 0, train_loss, np.nan),
        color="C0",
        lw=1.5,
        label="training loss",
    )
    test = history.dropna(subset=["test_loss"])
    if not test.empty:
        ax.plot(
            test["step"],
            np.where(test["test_loss"] > 0, test["test_loss"], np.nan),
            color="C1",
            lw=1.2,
            label="test loss",
        )
    if metrics.dense is not None:
        ax.axhline(
            metrics.dense.train_loss,
            color="C2",
            ls="--",
            lw=1,
            label="dense GD, final training loss",
        )
    ax.set_yscale("log")
    ax.set_xlabel("step k")
    regression = metrics.task == "regression"
    ax.set_ylabel(f"{'MSE, standardised target' if regression else 'cross-entropy'} (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    caption = (
        f"Loss at theta_k. Final: training {metrics.train_loss:.4g}, test {metrics.test_loss:.4g}."
    )
    return figure_png(fig), caption


def _export_text(metrics: TrainMetrics) -> list[str]:
    """The export's cost against the dense file (none for runs stored before it existed)."""
    cost = metrics.export
    if cost is None:
        return []
    return [
        f"export {cost.file}: {cost.bytes:,} bytes, {cost.params:,} parameters stored (dense "
        f"model.pt {cost.dense_bytes:,} bytes, {cost.dense_params:,}; {_size_ratio(cost)})"
    ]


def _size_ratio(cost: ExportCost) -> str:
    if cost.bytes <= cost.dense_bytes:
        return f"{cost.dense_bytes / max(cost.bytes, 1):.2f}x smaller"
    return f"{cost.bytes / cost.dense_bytes:.2f}x larger: sparse storage does not pay here"


def _kept_rows_text(metrics: TrainMetrics) -> str:
    """E.g. "; kept rows: 0 16/64, 2 12/32" for a neuron/channel budget, else ""."""
    kept = [layer for layer in metrics.layers if layer.rows is not None]
    if not kept:
        return ""
    return "; kept rows: " + ", ".join(f"{x.name} {x.kept_rows}/{x.rows}" for x in kept)


def _budget_units(budget: Budget) -> str:
    """What s is out of: entries, or rows for a neuron/channel budget."""
    if budget.structure in ("group", "group+bias"):
        return f"{sum(p.units for p in budget.pools if not p.dense)} rows"
    return str(budget.budgeted)


def _target_text(data: DataInfo) -> str:
    """E.g. "10 classes", or "a numeric target (mean 152.1, std 77.1)"."""
    if data.task == "regression":
        return f"a numeric target (mean {data.target_mean:.4g}, std {data.target_std:.4g})"
    return f"{data.n_classes} classes"


def _results_text(metrics: TrainMetrics) -> str:
    """The final losses and scores on one line."""
    if metrics.task == "regression":
        return (
            f"train MSE (standardised) {metrics.train_loss:.4g}, R² {metrics.train_r2:.3f}, "
            f"RMSE {metrics.train_rmse:.4g} | test MSE {metrics.test_loss:.4g}, "
            f"R² {metrics.test_r2:.3f}, RMSE {metrics.test_rmse:.4g}"
        )
    return (
        f"train loss {metrics.train_loss:.4g}, accuracy {metrics.train_accuracy:.3f} | "
        f"test loss {metrics.test_loss:.4g}, test accuracy {metrics.test_accuracy:.3f}"
    )


def _dense_score(dense: DenseReference) -> str:
    if dense.test_r2 is not None:
        return f"test R² {dense.test_r2:.3f}"
    return f"test accuracy {dense.test_accuracy:.3f}"


def _fig_accuracy(history: pd.DataFrame, metrics: TrainMetrics) -> tuple[bytes, str]:
    """The score at theta_k: accuracy, or R² for a regression."""
    regression = metrics.task == "regression"
    name, label = ("r2", "R²") if regression else ("accuracy", "accuracy")
    fig, ax = _figure()
    train = history.dropna(subset=[f"train_{name}"])
    ax.plot(train["step"], train[f"train_{name}"], color="C0", label=f"training {label}")
    test = history.dropna(subset=[f"test_{name}"])
    if not test.empty:
        ax.plot(test["step"], test[f"test_{name}"], color="C1", label=f"test {label}")
    if regression:
        low = min(0.0, float(np.nanmin(history[[f"train_{name}", f"test_{name}"]].to_numpy())))
        ax.set_ylim(max(low, -1.0) - 0.02, 1.02)  # a diverging start would hide the end
    else:
        ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step k")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    caption = (
        f"{label[0].upper()}{label[1:]} at theta_k. Final: training "
        f"{metrics.train_score:.3f}, test {metrics.test_score:.3f}."
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


def _fig_layers(metrics: TrainMetrics) -> tuple[bytes, str]:
    fig, ax = _figure()
    layers = metrics.layers
    x = np.arange(len(layers))
    sizes = np.array([layer.size for layer in layers])
    counted = np.array([layer.budgeted_nonzeros for layer in layers])
    outside = np.array([layer.nonzeros - layer.budgeted_nonzeros for layer in layers])
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
    budgets = [layer.budget for layer in layers]
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
    ax.set_xticks(x, [f"{layer.name}\n{layer.kind}" for layer in layers])
    ax.set_xlabel("layer (module)")
    ax.set_ylabel("count")
    ax.legend(loc="upper right")
    caption = (
        f"Final nonzeros per layer: {metrics.nonzeros} of {metrics.n_params} parameters "
        f"in all, {metrics.budgeted_nonzeros} of them under the budget s = {metrics.sparsity}."
    )
    return figure_png(fig), caption


def write_train_report(directory: str | Path) -> Path:
    """Write ``DIR/report.html`` and ``DIR/figures/*.png`` from the stored files of a run.

    Reads only ``config.json``, ``metrics.json``, ``certificate.json`` and
    ``history.parquet``; the page is self-contained (figures as base64 data URIs).

    Raises:
        StoreError: a file is missing or is not what ``iht train`` writes.
    """
    run = read_train_run(directory)
    with warnings.catch_warnings():
        # Overflow in a log axis transform when a diverging run stored losses near 1e300.
        warnings.simplefilter("ignore", RuntimeWarning)
        figures = [
            PageFigure("loss", "Loss", *_fig_loss(run.history, run.metrics)),
            PageFigure(
                "accuracy",
                "R²" if run.metrics.task == "regression" else "Accuracy",
                *_fig_accuracy(run.history, run.metrics),
            ),
            PageFigure("support", "Support changes", *_fig_support(run.history)),
            PageFigure("layers", "Nonzeros per layer", *_fig_layers(run.metrics)),
        ]
    write_figures(run.directory / "figures", figures)
    page = _render(run.record, run.metrics, run.certificate, figures)
    path = run.directory / "report.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


def _score_rows(metrics: TrainMetrics) -> list[tuple[str, Any]]:
    if metrics.task == "regression":
        return [
            (
                "training MSE (standardised) / R² / RMSE",
                f"{metrics.train_loss:.4g} / {metrics.train_r2:.3f} / {metrics.train_rmse:.4g}",
            ),
            (
                "test MSE (standardised) / R² / RMSE",
                f"{metrics.test_loss:.4g} / {metrics.test_r2:.3f} / {metrics.test_rmse:.4g}",
            ),
        ]
    return [
        ("training loss / accuracy", f"{metrics.train_loss:.4g} / {metrics.train_accuracy:.3f}"),
        ("test loss / accuracy", f"{metrics.test_loss:.4g} / {metrics.test_accuracy:.3f}"),
    ]


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
    record: TrainRecord,
    metrics: TrainMetrics,
    certificate: dict[str, Any],
    figures: list[PageFigure],
) -> str:
    data, model, budget, lr = record.data, record.model, record.budget, record.lr
    config = record.config
    settings = [
        (
            "data",
            f"{data.name} ({data.n_train} train / {data.n_test} test rows, "
            f"{data.n_features} features, {_target_text(data)})",
        ),
        (
            "model",
            f"hidden {list(model.hidden) or 'none (linear)'}, {model.activation}, "
            f"P = {model.n_params}, {model.dtype}",
        ),
        (
            "budget",
            f"s = {budget.sparsity} of {budget.budgeted} budgeted "
            f"({budget.mode.replace('_', '-')}"
            f"{', biases dense' if budget.exclude_biases else ', biases counted'}; "
            f"given {config.sparsity})",
        ),
        (
            "learning rate",
            f"{lr.value:.4g}"
            + (
                f" = 1 / L_hat_2s, L_hat_2s = {lr.l2s_estimate:.4g} ({lr.n_monte} draws)"
                if lr.l2s_estimate is not None
                else " (given)"
            ),
        ),
        (
            "training",
            f"{record.training.algorithm}, {record.training.steps} steps"
            + (f", batch size {record.training.batch_size}" if record.training.batch_size else ""),
        ),
        ("seed", record.seeds.seed),
    ]
    results = [
        *_score_rows(metrics),
        (
            "nonzeros",
            f"{metrics.nonzeros} / {metrics.n_params} ({100 * metrics.density:.1f}%)"
            + _kept_rows_text(metrics),
        ),
        *(
            [("export", _export_text(metrics)[0].removeprefix("export "))]
            if metrics.export is not None
            else []
        ),
        (
            "wall time",
            f"{metrics.time_s.total:.1f} s (training {metrics.time_s.training:.1f} s)",
        ),
    ]
    if metrics.dense is not None:
        dense = metrics.dense
        results.append(
            (
                "dense GD reference",
                f"train loss {dense.train_loss:.4g}, {_dense_score(dense)}, lr {dense.lr:.4g}",
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
        f"iht train: {data.name}",
        style,
        [
            f"<h1>iht train: {escape(data.name)}, s = {budget.sparsity}</h1>",
            f"<h2>Settings</h2>{_table(settings)}",
            f"<h2>Results</h2>{_table(results)}",
            "<h2>Certificate (HT-stability at the final point)</h2>",
            _table(cert_rows),
            "<h2>Figures</h2>",
            *blocks,
        ],
    )
