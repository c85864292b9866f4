"""The figures of the study report, each drawn from the stored runs with its caption."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..study.config import DENSE, IHT, N_CLASSES, N_FEATURES, SHOWCASE, StudyConfig
from .html import PageFigure, figure_png
from .plots import (
    DENSE_EDGE,
    DENSE_FACE,
    IHT_EDGE,
    IHT_FACE,
    dense_position,
    log_y,
    new_figure,
    s_axis,
)
from .study_tables import (
    by_level,
    finite_values,
    fmt,
    iht_levels,
    level_iqr,
    level_medians,
    param_name,
    spearman,
    study_runs,
)

__all__ = ["FIGURE_NAMES", "study_figures"]

#: Every PNG the report may write (the showcase one only when the showcase run is stored).
FIGURE_NAMES: tuple[str, ...] = (
    "learning_rate",
    "train_loss",
    "test_loss",
    "accuracy",
    "showcase",
    "stability",
    "epsilon",
    "steps",
)


_FEATURES = ("sepal length", "sepal width", "petal length", "petal width")
_CLASSES = ("setosa", "versicolor", "virginica")


def _boxes(
    ax: Axes,
    runs: pd.DataFrame,
    column: str,
    *,
    dense: bool = True,
    transform: Callable[
        [np.ndarray[Any, np.dtype[np.float64]]], np.ndarray[Any, np.dtype[np.float64]]
    ]
    | None = None,
) -> list[Any]:
    """Box plots of ``column`` per stored IHT level, a dense reference box and median line.

    Returns the legend handles. ``transform`` filters the values (e.g. positive only for a
    log axis).
    """

    def values(sub: pd.DataFrame) -> np.ndarray[Any, np.dtype[np.float64]]:
        v = finite_values(sub, column)
        return transform(v) if transform is not None else v

    iht = runs[runs["kind"] == IHT]
    levels = [s for s in iht_levels(runs) if len(values(iht[iht["sparsity"] == s]))]
    style: dict[str, Any] = {
        "widths": 0.6,
        "patch_artist": True,
        "showfliers": True,
        "flierprops": {"marker": ".", "markersize": 3, "alpha": 0.5},
        "medianprops": {"color": "black", "linewidth": 1.5},
    }
    handles: list[Any] = []
    if levels:
        ax.boxplot(
            [values(iht[iht["sparsity"] == s]) for s in levels],
            positions=[float(s) for s in levels],
            boxprops={"facecolor": IHT_FACE, "edgecolor": IHT_EDGE},
            whiskerprops={"color": IHT_EDGE},
            capprops={"color": IHT_EDGE},
            **style,
        )
        handles.append(Patch(facecolor=IHT_FACE, edgecolor=IHT_EDGE, label="IHT runs at s"))
    dense_values = values(runs[runs["kind"] == DENSE]) if dense else np.array([])
    has_dense = len(dense_values) > 0
    if has_dense:
        ax.boxplot(
            [dense_values],
            positions=[dense_position(levels)],
            boxprops={"facecolor": DENSE_FACE, "edgecolor": DENSE_EDGE},
            whiskerprops={"color": DENSE_EDGE},
            capprops={"color": DENSE_EDGE},
            **style,
        )
        handles.append(Patch(facecolor=DENSE_FACE, edgecolor=DENSE_EDGE, label="dense (GD) runs"))
        median = float(np.median(dense_values))
        handles.append(
            ax.axhline(
                median,
                color=DENSE_EDGE,
                linestyle="--",
                linewidth=1.2,
                label=f"dense median = {median:.4g}",
            )
        )
    s_axis(ax, levels, dense=has_dense)
    return handles


def _median_at(runs: pd.DataFrame, column: str, s: int | None) -> float:
    """Median of ``column`` at level s (None: dense); NaN when that level is not stored."""
    sub = (
        runs[runs["kind"] == DENSE]
        if s is None
        else runs[(runs["kind"] == IHT) & (runs["sparsity"] == s)]
    )
    values = finite_values(sub, column)
    return float(np.median(values)) if len(values) else float("nan")


def _levels_text(runs: pd.DataFrame, column: str, spec: str = ".4g") -> str:
    """Medians as 's=1: a, s=5: b, s=14: c, dense: d' (lowest level, level nearest 5, highest)."""
    levels = iht_levels(runs)
    picks: list[int] = []
    if levels:
        picks = sorted({levels[0], min(levels, key=lambda s: abs(s - 5)), levels[-1]})
    parts = [f"s={s}: {fmt(_median_at(runs, column, s), spec)}" for s in picks]
    dense = _median_at(runs, column, None)
    if math.isfinite(dense):
        parts.append(f"dense: {fmt(dense, spec)}")
    return ", ".join(parts) if parts else "no runs"


def _fig_learning_rate(runs: pd.DataFrame, config: StudyConfig) -> PageFigure:
    fig, (ax,) = new_figure()
    handles = _boxes(ax, runs, "lr")
    ax.set_ylabel("learning rate γ = 1 / L̂₂ₛ")
    ax.set_title("Estimated learning rate per run")
    ax.legend(handles=handles, loc="best", fontsize=8)
    med = level_medians(runs, "lr")
    rho = (
        spearman([float(s) for s in med.index], [float(v) for v in med])
        if len(med) >= 3
        else float("nan")
    )
    caption = (
        "Each run estimates its own restricted smoothness constant L̂₂ₛ by Monte Carlo "
        f"(n_monte = {config.n_monte} sampled pairs, maximum ratio) at its start and uses "
        "γ = 1/L̂₂ₛ; boxes show the distribution over runs at each s (whiskers 1.5 IQR), the "
        "dense box uses s = P = 15. Median learning rate: "
        f"{_levels_text(runs, 'lr', '.3f')}. Spearman rank correlation of s with the median: "
        f"{fmt(rho, '+.2f')}."
    )
    return PageFigure("learning_rate", "Learning rate vs s", figure_png(fig), caption)


def _positive(v: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    return v[v > 0]


def _fig_loss(runs: pd.DataFrame, config: StudyConfig, column: str) -> PageFigure:
    train = column == "train_loss"
    fig, (ax,) = new_figure()
    handles = _boxes(ax, runs, column, transform=_positive)
    log_y(ax)
    which = "training" if train else "test"
    if train and config.tol > 0:
        handles.append(
            ax.axhline(
                config.tol,
                color="crimson",
                linestyle=":",
                linewidth=1.5,
                label=f"tolerance tol = {config.tol:g}",
            )
        )
    ax.set_ylabel(f"{which} loss (cross-entropy, log scale)")
    ax.set_title(f"Final {which} loss per run")
    ax.legend(handles=handles, loc="best", fontsize=8)
    if train:
        caption = (
            "Full-batch training cross-entropy at the end of each run (log scale). A run stops "
            f"when its loss reaches tol = {config.tol:g} (dotted line) or after max_steps = "
            f"{config.max_steps} steps. Median: {_levels_text(runs, column)}."
        )
        high = level_medians(runs, column)
        high = high[high.index >= 11]
        if len(high):
            caption += f" Medians for s >= 11: {by_level(high)}."
    else:
        caption = (
            f"Cross-entropy on each run's {150 - config.n_train} held-out test points at the end "
            f"of training (log scale). Median: {_levels_text(runs, column)}."
        )
    return PageFigure(column, f"{which.capitalize()} loss vs s", figure_png(fig), caption)


def _fig_accuracy(runs: pd.DataFrame, config: StudyConfig) -> PageFigure:
    fig, axes = new_figure(2, width=13.0)
    for ax, column, which in zip(
        axes, ("train_acc", "test_acc"), ("training", "test"), strict=True
    ):
        handles = _boxes(ax, runs, column)
        ax.set_ylabel(f"{which} accuracy")
        ax.set_title(f"Final {which} accuracy per run")
        ax.legend(handles=handles, loc="lower right", fontsize=8)
    low = min(float(axes[0].get_ylim()[0]), float(axes[1].get_ylim()[0]))
    for ax in axes:
        ax.set_ylim(low, 1.02)
    iqr = level_iqr(runs, "test_acc")
    caption = (
        "Fraction of correctly classified points, on the training split (left) and on the "
        f"{150 - config.n_train} test points (right), at the end of each run. Median test "
        f"accuracy: {_levels_text(runs, 'test_acc', '.3f')}; median training accuracy: "
        f"{_levels_text(runs, 'train_acc', '.3f')}."
    )
    if len(iqr):
        caption += f" Test-accuracy IQR by level: {by_level(iqr, '.3f')}."
    return PageFigure("accuracy", "Training and test accuracy vs s", figure_png(fig), caption)


def _as_grid(flat: Sequence[float]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Flat theta (W row-major, then b) -> (classes, features + 1): row i = W[i, :], b[i]."""
    theta = np.asarray(flat, dtype=np.float64)
    n_weights = N_CLASSES * N_FEATURES
    weights = theta[:n_weights].reshape(N_CLASSES, N_FEATURES)
    return np.column_stack([weights, theta[n_weights:]])


def _heatmap(
    fig: Figure,
    ax: Axes,
    grid: np.ndarray[Any, np.dtype[np.float64]],
    *,
    spec: str,
    outline: np.ndarray[Any, np.dtype[np.bool_]],
    title: str,
) -> None:
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")
    bound = float(np.abs(grid).max()) or 1.0
    image = ax.imshow(np.ma.masked_equal(grid, 0.0), cmap=cmap, vmin=-bound, vmax=bound)
    fig.colorbar(image, ax=ax, shrink=0.8)
    rows, cols = grid.shape
    for i in range(rows):
        for j in range(cols):
            value = grid[i, j]
            if value == 0.0:
                # Exact zeros: grey cell, a faint "0" (not a colour that could read as small).
                ax.text(j, i, "0", ha="center", va="center", color="#8c8c8c", fontsize=9)
            else:
                dark = abs(value) > 0.6 * bound
                ax.text(
                    j,
                    i,
                    format(value, spec),
                    ha="center",
                    va="center",
                    fontsize=8.5,
                    color="white" if dark else "black",
                )
            if outline[i, j]:
                ax.add_patch(
                    Rectangle(
                        (j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.2
                    )
                )
    ax.set_xticks(range(cols), [*_FEATURES, "bias"], rotation=30, ha="right")
    ax.set_yticks(range(rows), list(_CLASSES))
    ax.set_title(title, fontsize=10)


def _fig_showcase(frame: pd.DataFrame, config: StudyConfig) -> PageFigure:
    title = "The showcase run: parameters before and after training"
    rows = frame[frame["kind"] == SHOWCASE]
    if rows.empty:
        return PageFigure(
            "showcase",
            title,
            None,
            "The showcase run is not stored in this directory (an interrupted study "
            "stores it last); this figure is skipped.",
        )
    run = rows.iloc[0]
    s = int(run["sparsity"])
    init, final, grad = (_as_grid(run[c]) for c in ("theta_init", "theta_final", "grad_final"))
    final_support = final != 0
    fig, axes = new_figure(3, width=16.0, height=4.4)
    _heatmap(
        fig,
        axes[0],
        init,
        spec=".2f",
        outline=init != 0,
        title="θ⁰ at initialisation (outlined: initial support)",
    )
    _heatmap(
        fig,
        axes[1],
        final,
        spec=".2f",
        outline=final_support,
        title=f"θ after {int(run['steps'])} IHT steps (outlined: support)",
    )
    _heatmap(
        fig,
        axes[2],
        grad,
        spec=".1e",
        outline=final_support,
        title="∇f at the trained point (outlined: support)",
    )
    fig.suptitle(
        f"Showcase IHT run: s = {s}, init seed {int(run['init_seed'])}, support seed "
        f"{int(run['support_seed'])}, data seed {int(run['data_seed'])}; grey cells are exact zeros"
    )
    init_support = [int(k) for k in np.flatnonzero(np.asarray(run["theta_init"]) != 0)]
    support = [int(k) for k in run["support"]]
    kept = len(set(init_support) & set(support))
    caption = (
        f"One IHT run at s = {s} with the paper's seeds (init seed {int(run['init_seed'])}, "
        f"support seed {int(run['support_seed'])}); rows are the {N_CLASSES} output classes, "
        f"columns the {N_FEATURES} input weights and the bias. Left: the sparse initialisation "
        f"(support {' '.join(param_name(k) for k in init_support)}); middle: after training "
        f"(support {' '.join(param_name(k) for k in support)}, {kept} of {len(init_support)} "
        f"initial entries kept); right: the gradient at the trained point. Train loss "
        f"{float(run['train_loss']):.4f} (dense on the same split "
        f"{float(run['dense_train_loss']):.4f}), "
        f"test accuracy {float(run['test_acc']):.3f}, {int(run['steps'])} steps "
        f"({'reached' if bool(run['reached_tol']) else 'did not reach'} tol = {config.tol:g}); "
        f"max |∇f| on the support {float(run['max_grad_on_support']):.2e}, off-support ratio "
        f"{float(run['off_support_ratio']):.3g}; "
        f"HT-stable: {'yes' if bool(run['stable']) else 'no'}."
    )
    return PageFigure("showcase", title, figure_png(fig), caption)


def _fraction_bars(
    ax: Axes, runs: pd.DataFrame, column: str, *, ylabel: str, title: str
) -> dict[int, float]:
    """Bars of the fraction of runs where boolean ``column`` holds, per level and dense.

    Returns the IHT fractions by level (for captions).
    """
    levels = iht_levels(runs)
    iht = runs[runs["kind"] == IHT]
    fractions = {
        s: float(iht.loc[iht["sparsity"] == s, column].astype(bool).mean()) for s in levels
    }
    positions = [float(s) for s in levels]
    heights = list(fractions.values())
    ax.bar(positions, heights, width=0.6, color=IHT_FACE, edgecolor=IHT_EDGE, label="IHT runs at s")
    dense = runs[runs["kind"] == DENSE]
    if len(dense):
        dense_frac = float(dense[column].astype(bool).mean())
        ax.bar(
            [dense_position(levels)],
            [dense_frac],
            width=0.6,
            color=DENSE_FACE,
            edgecolor=DENSE_EDGE,
            label="dense (GD) runs",
        )
        positions.append(dense_position(levels))
        heights.append(dense_frac)
    for x, f in zip(positions, heights, strict=True):
        ax.text(x, f + 0.015, f"{f:.2f}", ha="center", va="bottom", fontsize=7.5)
    # Headroom above 1 for the bar labels and the legend, which must not cover a full bar.
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper center", ncols=2, fontsize=8)
    s_axis(ax, levels, dense=len(dense) > 0)
    return fractions


def _fig_stability(runs: pd.DataFrame, config: StudyConfig) -> PageFigure:
    fig, (left, right) = new_figure(2, width=13.0)
    iht = runs[runs["kind"] == IHT]
    _fraction_bars(
        left, runs, "stable", ylabel="fraction of runs HT-stable", title="HT-stable trained points"
    )

    # Dense runs have no off-support entries (ratio 0); empty supports give inf: neither can
    # be drawn on a log axis, both are counted in the caption.
    ratios = iht["off_support_ratio"].to_numpy(dtype=np.float64)
    dropped = int((~(np.isfinite(ratios) & (ratios > 0))).sum())
    handles = _boxes(right, runs, "off_support_ratio", dense=False, transform=_positive)
    log_y(right)
    handles.append(
        right.axhline(
            1.0,
            color="crimson",
            linestyle=":",
            linewidth=1.5,
            label="stability threshold (ratio < 1)",
        )
    )
    right.set_ylabel(
        r"$\max_{i\notin S}\,\gamma|\nabla_i f|\ /\ \min_{j\in S}|\theta_j|$  (log scale)"
    )
    right.set_title("Off-support ratio (dense runs have no off-support entries)")
    right.legend(handles=handles, loc="best", fontsize=8)
    frac = float(iht["stable"].astype(bool).mean()) if len(iht) else float("nan")
    ratio_ok = float((iht["off_support_ratio"] < 1).mean()) if len(iht) else float("nan")
    grad_ok = (
        float((iht["max_grad_on_support"] <= config.grad_tol).mean()) if len(iht) else float("nan")
    )
    caption = (
        "Left: fraction of runs whose trained point passes the HT-stability test: a unique "
        f"H_s value (no tie), max |∂f/∂θᵢ| on the support <= grad_tol = {config.grad_tol:g}, "
        "and off-support ratio < 1. Right: the off-support ratio max over i outside the support "
        "of γ|∂f/∂θᵢ| divided by the smallest kept |θⱼ| (< 1: one more IHT step keeps the "
        f"support). Over all IHT runs: {fmt(frac, '.1%')} stable, {fmt(ratio_ok, '.1%')} with "
        f"ratio < 1, {fmt(grad_ok, '.1%')} with the on-support gradient below grad_tol."
    )
    if dropped:
        caption += f" {dropped} IHT run(s) with a ratio of 0 or infinity are not drawn."
    return PageFigure("stability", "HT-stability vs s", figure_png(fig), caption)


def _fig_epsilon(runs: pd.DataFrame, config: StudyConfig) -> PageFigure:
    fig, (ax,) = new_figure()
    handles = _boxes(ax, runs, "epsilon")
    linthresh = 1e-3
    ax.set_yscale("symlog", linthresh=linthresh)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 2 if high > linthresh else high)  # room above the s = 1 box
    ax.set_ylabel(f"ε = f(θ_s) − f(θ_dense)  (symlog, linear within ±{linthresh:g})")
    ax.set_title("ε-optimality gap to the dense run on the same split")
    ax.legend(handles=handles, loc="best", fontsize=8)
    missing = int(runs.loc[runs["kind"] == IHT, "epsilon"].isna().sum())
    caption = (
        "For each IHT run, ε = f(θ_s) − f(θ_dense): its final training loss minus that of the "
        "dense GD run trained on the same 120/30 split, so θ_s is ε-optimal relative to the dense "
        "solution (eq. 3). The dense box is 0 by definition. Both runs stop at the loss tolerance "
        f"tol = {config.tol:g}, so ε near 0 means both reached it. Median ε: "
        f"{_levels_text(runs, 'epsilon', '.3g')}."
    )
    if missing:
        caption += f" {missing} IHT run(s) have no stored dense run on their split (not drawn)."
    return PageFigure("epsilon", "ε-optimality vs s", figure_png(fig), caption)


def _fig_steps(runs: pd.DataFrame, config: StudyConfig) -> PageFigure:
    fig, (left, right) = new_figure(2, width=13.0)
    handles = _boxes(left, runs, "steps")
    handles.append(
        left.axhline(
            config.max_steps,
            color="crimson",
            linestyle=":",
            linewidth=1.5,
            label=f"max_steps = {config.max_steps}",
        )
    )
    left.set_ylabel("steps taken")
    left.set_title("Steps taken per run")
    left.legend(handles=handles, loc="best", fontsize=8)
    reached = _fraction_bars(
        right,
        runs,
        "reached_tol",
        ylabel=f"fraction that reached tol = {config.tol:g}",
        title="Runs that met the stopping rule",
    )
    dense = runs[runs["kind"] == DENSE]
    caption = (
        f"Left: steps taken by each run (the cap max_steps = {config.max_steps} dotted). Right: "
        f"fraction of runs whose training loss reached tol = {config.tol:g} before the cap. "
        f"Median steps: {_levels_text(runs, 'steps', '.0f')}."
    )
    if reached:
        caption += " Reached tol: " + ", ".join(f"s={s}: {f:.0%}" for s, f in reached.items())
        if len(dense):
            caption += f", dense: {float(dense['reached_tol'].mean()):.0%}"
        caption += "."
    return PageFigure("steps", "Steps and stopping vs s", figure_png(fig), caption)


def study_figures(frame: pd.DataFrame, config: StudyConfig) -> list[PageFigure]:
    """Every figure of :data:`FIGURE_NAMES`, in order (a skipped one has ``png`` None)."""
    runs = study_runs(frame)
    return [
        _fig_learning_rate(runs, config),
        _fig_loss(runs, config, "train_loss"),
        _fig_loss(runs, config, "test_loss"),
        _fig_accuracy(runs, config),
        _fig_showcase(frame, config),
        _fig_stability(runs, config),
        _fig_epsilon(runs, config),
        _fig_steps(runs, config),
    ]
