"""The study report: summary table, figures and a self-contained HTML page, from stored results.

Everything here reads a results directory (see :mod:`iht.results`) and nothing else: no run is
trained again, so a report of a 15,000-run study takes seconds and can be redrawn at will.

Files written by :func:`write_report` into the study directory ``DIR``::

    DIR/figures/*.png    one PNG per figure (``oracle.png`` too when ``iht oracle`` has
                         stored DIR/oracle.parquet, see :mod:`iht.oracle`)
    DIR/summary.csv      :func:`summary_table` (one row per level)
    DIR/report.html      one file: inline CSS, the PNGs embedded as base64 data URIs

The report works on a partial study (missing levels are gaps on the s axis and are listed),
without the showcase run (its figure is skipped with a note), and without dense runs (no
reference box). The "Paper claims" section evaluates each claim of the paper against the stored
numbers with a stated rule (:func:`evaluate_claims`); no verdict is written in advance.

Example::

    >>> from iht.report import write_report
    >>> html_path = write_report("results/quick")           # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .html_report import (
    PAGE_CSS,
    TABLE_CSS,
    PageFigure,
    escape,
    figure_html,
    figure_png,
    html_page,
    html_table,
    write_figures,
)
from .results import ResultStore, StoreError
from .results import _atomic_write_bytes as atomic_write
from .study import DENSE, IHT, N_CLASSES, N_FEATURES, SHOWCASE, P, StudyConfig

__all__ = [
    "FIGURE_NAMES",
    "Claim",
    "Verdict",
    "evaluate_claims",
    "format_summary",
    "summary_table",
    "support_table",
    "write_report",
]

#: Columns summarised per level by median and quartiles, in table order.
METRICS: tuple[str, ...] = (
    "lr",
    "steps",
    "train_loss",
    "test_loss",
    "train_acc",
    "test_acc",
    "epsilon",
)
#: Boolean columns summarised per level by the fraction of runs where they hold.
FRACTIONS: dict[str, str] = {
    "frac_reached_tol": "reached_tol",
    "frac_stable": "stable",
    "frac_tie": "tie",
}
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

Verdict = Literal["agree", "partly", "disagree", "n/a"]

_IHT_FACE, _IHT_EDGE = "#c6dbef", "#2171b5"
_DENSE_FACE, _DENSE_EDGE = "#fdd0a2", "#d94801"
_S_LABEL = "sparsity level s (nonzero parameters, biases included)"
_FEATURES = ("sepal length", "sepal width", "petal length", "petal width")
_CLASSES = ("setosa", "versicolor", "virginica")


# ----------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------
def _study_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The dense and IHT runs (the showcase run is one extra run, not part of any level)."""
    return frame[frame["kind"].isin([DENSE, IHT])]


def _iht_levels(runs: pd.DataFrame) -> list[int]:
    return sorted(int(s) for s in runs.loc[runs["kind"] == IHT, "sparsity"].unique())


def _groups(runs: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """("dense", dense runs) first when there are any, then (str(s), runs at s) by s."""
    dense = runs[runs["kind"] == DENSE]
    if len(dense):
        yield DENSE, dense
    iht = runs[runs["kind"] == IHT]
    for s in _iht_levels(runs):
        yield str(s), iht[iht["sparsity"] == s]


def _values(runs: pd.DataFrame, column: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A column as finite floats (NaN, e.g. epsilon without its dense run, dropped)."""
    values = runs[column].to_numpy(dtype=np.float64)
    finite: np.ndarray[Any, np.dtype[np.float64]] = values[np.isfinite(values)]
    return finite


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per level: the distribution of each metric over the runs at that level.

    Rows are indexed by ``level``: ``"dense"`` first (when dense runs are stored), then
    ``"1"``, ``"2"``, ... for the stored IHT levels in increasing order; the showcase run is
    excluded. Columns: ``sparsity`` (P = 15 for dense), ``runs``, then for each of
    ``lr, steps, train_loss, test_loss, train_acc, test_acc, epsilon`` the columns
    ``<name>_median``, ``<name>_q25``, ``<name>_q75`` (pandas' linear-interpolation quantiles,
    NaN values skipped), then ``frac_reached_tol``, ``frac_stable`` and ``frac_tie``.

    Args:
        frame: the stored runs, as returned by ``ResultStore(dir).load()``.

    Returns:
        The table (empty, with these columns, when there is no dense or IHT run).

    Example:
        >>> table = summary_table(ResultStore("results/quick").load())  # doctest: +SKIP
        >>> table.loc["5", "test_acc_median"]                            # doctest: +SKIP
    """
    columns = ["sparsity", "runs"]
    for metric in METRICS:
        columns += [f"{metric}_median", f"{metric}_q25", f"{metric}_q75"]
    columns += list(FRACTIONS)
    rows: list[dict[str, float | int]] = []
    labels: list[str] = []
    for label, group in _groups(_study_runs(frame)):
        row: dict[str, float | int] = {
            "sparsity": int(group["sparsity"].iloc[0]),
            "runs": len(group),
        }
        for metric in METRICS:
            values = group[metric].astype(np.float64)
            row[f"{metric}_median"] = float(values.median())
            row[f"{metric}_q25"] = float(values.quantile(0.25))
            row[f"{metric}_q75"] = float(values.quantile(0.75))
        for name, column in FRACTIONS.items():
            row[name] = float(group[column].astype(bool).mean())
        rows.append(row)
        labels.append(label)
    return pd.DataFrame(rows, index=pd.Index(labels, name="level"), columns=columns)


def _fmt(value: float, spec: str = ".4g") -> str:
    return "–" if not math.isfinite(value) else format(value, spec)


def _cell(table: pd.DataFrame, level: Any, column: str) -> float:
    value: Any = table.at[level, column]
    return float(value)


def _spread(table: pd.DataFrame, level: Any, metric: str, spec: str) -> str:
    return (
        f"{_fmt(_cell(table, level, f'{metric}_median'), spec)} "
        f"[{_fmt(_cell(table, level, f'{metric}_q25'), spec)}, "
        f"{_fmt(_cell(table, level, f'{metric}_q75'), spec)}]"
    )


# (header, metric, format, with quartiles) for the terminal table.
_TEXT_COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("lr", "lr", ".3f", False),
    ("steps", "steps", ".0f", False),
    ("train loss", "train_loss", ".4f", True),
    ("test loss", "test_loss", ".4f", True),
    ("test acc", "test_acc", ".3f", True),
    ("epsilon", "epsilon", ".1e", False),
)


def format_summary(table: pd.DataFrame) -> str:
    """A compact fixed-width text rendering of :func:`summary_table` for the terminal.

    Losses and test accuracy as ``median [q25, q75]``; lr, steps and epsilon as medians;
    ``stable`` and ``at tol`` as fractions of runs.

    Example:
        >>> print(format_summary(summary_table(frame)))                # doctest: +SKIP
        level  runs     lr  steps  train loss                 ...
    """
    headers = ["level", "runs"] + [c[0] for c in _TEXT_COLUMNS] + ["stable", "at tol"]
    lines: list[list[str]] = []
    for level in table.index:
        cells = [str(level), str(int(_cell(table, level, "runs")))]
        for _, metric, spec, quartiles in _TEXT_COLUMNS:
            if quartiles:
                cells.append(_spread(table, level, metric, spec))
            else:
                cells.append(_fmt(_cell(table, level, f"{metric}_median"), spec))
        cells.append(_fmt(_cell(table, level, "frac_stable"), ".2f"))
        cells.append(_fmt(_cell(table, level, "frac_reached_tol"), ".2f"))
        lines.append(cells)
    widths = [max([len(h), *(len(row[i]) for row in lines)]) for i, h in enumerate(headers)]

    def render(cells: Sequence[str]) -> str:
        # The level column reads best left-aligned; numbers right-aligned.
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    out = [render(headers), render(["-" * w for w in widths])]
    out += [render(row) for row in lines]
    out.append("(median [q25, q75] over runs; stable / at tol: fraction of runs)")
    return "\n".join(out)


def _param_name(k: int) -> str:
    """Flat index -> parameter name: W[row, col] (row-major 3x4) then b[row]."""
    n_weights = N_CLASSES * N_FEATURES
    return (
        f"W{k // N_FEATURES + 1}{k % N_FEATURES + 1}" if k < n_weights else f"b{k - n_weights + 1}"
    )


def support_table(frame: pd.DataFrame, levels: Sequence[int] = tuple(range(1, P))) -> pd.DataFrame:
    """Table I: the number of possible supports C(P, s), and what the stored runs found.

    Args:
        frame: the stored runs.
        levels: the levels to list (all of 1..P-1 by default, stored or not).

    Returns:
        One row per s with columns ``s``, ``possible_supports`` (``math.comb(P, s)``),
        ``runs`` (stored IHT runs at s), ``distinct_final_supports`` (0 when no run is stored),
        ``most_frequent_support`` (parameter names, e.g. ``W13 W14 b1``; ``W_ij`` is the weight
        from feature j to class i) and ``most_frequent_share`` (its fraction of the runs).
    """
    iht = frame[frame["kind"] == IHT]
    rows = []
    for s in levels:
        supports = [tuple(int(k) for k in sup) for sup in iht.loc[iht["sparsity"] == s, "support"]]
        counts = pd.Series(supports, dtype=object).value_counts() if supports else None
        top, share = "", float("nan")
        if counts is not None and len(counts):
            top = " ".join(_param_name(k) for k in counts.index[0])
            share = float(counts.iloc[0]) / len(supports)
        rows.append(
            {
                "s": s,
                "possible_supports": math.comb(P, s),
                "runs": len(supports),
                "distinct_final_supports": len(set(supports)),
                "most_frequent_support": top,
                "most_frequent_share": share,
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------
# Claims
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """One claim of the paper, the stored numbers that bear on it, and a computed verdict.

    Attributes:
        claim: the claim, in the words of PAPER_NOTES.md.
        evidence: the numbers behind the verdict.
        verdict: ``agree``, ``partly`` or ``disagree`` by ``rule``; ``n/a`` when the stored
            levels cannot test the claim (e.g. a partial study).
        rule: how the verdict follows from the evidence.
    """

    claim: str
    evidence: str
    verdict: Verdict
    rule: str


def _medians(runs: pd.DataFrame, column: str) -> pd.Series:
    """Median of ``column`` over the IHT runs of each stored level, indexed by s."""
    iht = runs[runs["kind"] == IHT]
    return iht.groupby("sparsity")[column].median().sort_index()


def _iqr(runs: pd.DataFrame, column: str) -> pd.Series:
    iht = runs[runs["kind"] == IHT]
    grouped = iht.groupby("sparsity")[column]
    return (grouped.quantile(0.75) - grouped.quantile(0.25)).sort_index()


def _combine(parts: Sequence[bool | None]) -> Verdict:
    """All parts hold: agree; some hold (or some cannot be checked): partly; none: disagree."""
    known = [p for p in parts if p is not None]
    if not known:
        return "n/a"
    if all(known) and len(known) == len(parts):
        return "agree"
    return "partly" if any(known) else "disagree"


def _by_level(series: pd.Series, spec: str = ".4g") -> str:
    pairs = zip(series.index.tolist(), series.tolist(), strict=True)
    return ", ".join(f"s={int(s)}: {_fmt(float(v), spec)}" for s, v in pairs)


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    rx = pd.Series(list(x)).rank().to_numpy(dtype=np.float64)
    ry = pd.Series(list(y)).rank().to_numpy(dtype=np.float64)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _claim_learning_rate(runs: pd.DataFrame) -> Claim:
    med = _medians(runs, "lr")
    rule = (
        "Spearman rank correlation rho between s and the median learning rate per level: "
        "agree if rho >= 0.8, partly if 0 < rho < 0.8, disagree if rho <= 0 "
        "(n/a with fewer than 3 levels)."
    )
    claim = "The estimated learning rate 1/L_hat_2s grows with s (Sec. III, figure of lr vs s)."
    if len(med) < 3:
        return Claim(claim, f"only {len(med)} level(s) stored", "n/a", rule)
    rho = _spearman([float(s) for s in med.index], [float(v) for v in med])
    verdict: Verdict = (
        "n/a"
        if math.isnan(rho)
        else ("agree" if rho >= 0.8 else "partly" if rho > 0 else "disagree")
    )
    evidence = f"median lr by level: {_by_level(med)}; rho = {_fmt(rho, '+.2f')}"
    return Claim(claim, evidence, verdict, rule)


def _claim_train_loss(runs: pd.DataFrame, config: StudyConfig) -> Claim:
    tol = config.tol
    med = _medians(runs, "train_loss")
    high = med[med.index >= 11]
    claim = (
        f"Training loss settles near {tol:g} (the stopping rule) and stops changing beyond s = 11."
    )
    rule = (
        "Over the levels s >= 11: (a) 'near the tolerance': every median within 20% of tol "
        f"(|median - {tol:g}| <= {0.2 * tol:.3g}); (b) 'stops changing': max - min of the medians "
        f"<= 10% of tol ({0.1 * tol:.3g}). Both: agree; one: partly; neither: disagree."
    )
    if high.empty:
        return Claim(claim, "no level s >= 11 is stored", "n/a", rule)
    near = bool((np.abs(high.to_numpy() - tol) <= 0.2 * tol).all())
    flat: bool | None = None
    spread = float("nan")
    if len(high) >= 2:
        spread = float(high.max() - high.min())
        flat = spread <= 0.1 * tol
    reached = runs[(runs["kind"] == IHT) & (runs["sparsity"] >= 11)]["reached_tol"].mean()
    evidence = (
        f"median training loss {_by_level(high)}; spread (max - min) = {_fmt(spread, '.3g')}; "
        f"{float(reached):.0%} of these runs reached tol within max_steps = {config.max_steps}"
    )
    if len(med[med.index < 11]):
        evidence += f"; below s = 11: {_by_level(med[med.index < 11])}"
    return Claim(claim, evidence, _combine([near, flat]), rule)


def _claim_test_loss(runs: pd.DataFrame) -> Claim:
    med = _medians(runs, "test_loss")
    high = med[med.index >= 5]
    claim = "Test loss is flat from s = 5."
    rule = (
        "Over the levels s >= 5, r = (max - min of the medians) / (median of the medians): "
        "agree if r <= 0.25, partly if r <= 0.5, disagree otherwise (n/a with < 2 such levels)."
    )
    if len(high) < 2:
        return Claim(claim, f"{len(high)} level(s) s >= 5 stored", "n/a", rule)
    level = float(high.median())
    r = float(high.max() - high.min()) / level if level > 0 else float("inf")
    verdict: Verdict = "agree" if r <= 0.25 else "partly" if r <= 0.5 else "disagree"
    evidence = f"median test loss {_by_level(high)}; r = {_fmt(r, '.2f')}"
    low = med[med.index < 5]
    if len(low):
        evidence += f"; below s = 5: {_by_level(low)}"
    return Claim(claim, evidence, verdict, rule)


def _claim_test_acc(runs: pd.DataFrame, config: StudyConfig) -> Claim:
    n_test = 150 - config.n_train
    point = 1.0 / n_test
    med = _medians(runs, "test_acc")
    iqr = _iqr(runs, "test_acc")
    claim = "Test accuracy is almost constant beyond s = 5 and more stable beyond s = 10."
    rule = (
        "(a) 'almost constant': over s >= 5 the medians span at most two test points "
        f"(max - min <= 2/{n_test} = {2 * point:.3f}); (b) 'more stable': the mean IQR (q75 - q25) "
        "over s >= 10 is smaller than over 5 <= s < 10. Both: agree; one (or one not checkable): "
        "partly; neither: disagree."
    )
    high = med[med.index >= 5]
    constant: bool | None = None
    evidence = []
    if len(high) >= 2:
        span = float(high.max() - high.min())
        constant = span <= 2 * point + 1e-12
        evidence.append(
            f"median test accuracy {_by_level(high, '.3f')}; span = {span:.3f} "
            f"({span / point:.1f} test points)"
        )
    else:
        evidence.append(f"{len(high)} level(s) s >= 5 stored")
    mid, top = iqr[(iqr.index >= 5) & (iqr.index < 10)], iqr[iqr.index >= 10]
    stabler: bool | None = None
    if len(mid) and len(top):
        stabler = float(top.mean()) < float(mid.mean())
        evidence.append(
            f"mean IQR for 5 <= s < 10: {float(mid.mean()):.3f}, "
            f"for s >= 10: {float(top.mean()):.3f}"
        )
    else:
        evidence.append("IQR comparison needs levels on both sides of s = 10")
    return Claim(claim, "; ".join(evidence), _combine([constant, stabler]), rule)


def _claim_stable(runs: pd.DataFrame, config: StudyConfig) -> Claim:
    iht = runs[runs["kind"] == IHT]
    claim = "The trained points are HT-stable (gradient almost zero)."
    rule = (
        "f = fraction of IHT runs whose trained point passes the HT-stability test "
        f"(unique H_s value, max |grad_i f| on the support <= grad_tol = {config.grad_tol:g}, "
        "off-support ratio < 1): agree if f >= 0.9, partly if f >= 0.5, disagree otherwise."
    )
    if iht.empty:
        return Claim(claim, "no IHT run stored", "n/a", rule)
    frac = float(iht["stable"].astype(bool).mean())
    per_level = iht.groupby("sparsity")["stable"].mean()
    by_s, fracs = per_level.index.tolist(), per_level.to_numpy(dtype=np.float64)
    worst, best = int(np.argmin(fracs)), int(np.argmax(fracs))
    ratio_ok = float((iht["off_support_ratio"] < 1).mean())
    grad_ok = float((iht["max_grad_on_support"] <= config.grad_tol).mean())
    ties = float(iht["tie"].astype(bool).mean())
    evidence = (
        f"{frac:.1%} of {len(iht)} IHT runs stable (lowest level: "
        f"{fracs[worst]:.0%} at s={int(by_s[worst])}, highest: {fracs[best]:.0%} "
        f"at s={int(by_s[best])}); off-support ratio < 1 in {ratio_ok:.1%}; "
        f"max |grad| on the support <= grad_tol in {grad_ok:.1%} (median "
        f"{float(iht['max_grad_on_support'].median()):.2e}); boundary ties in {ties:.1%}; "
        f"{float(iht['reached_tol'].mean()):.1%} stopped by reaching the loss tolerance (the "
        "stopping rule does not wait for a stationary point)"
    )
    verdict: Verdict = "agree" if frac >= 0.9 else "partly" if frac >= 0.5 else "disagree"
    return Claim(claim, evidence, verdict, rule)


def evaluate_claims(frame: pd.DataFrame, config: StudyConfig) -> list[Claim]:
    """Check each claim of the paper against the stored runs, by a stated rule.

    The claims (PAPER_NOTES.md): the learning rate grows with s; training loss settles near
    the tolerance and stops changing beyond s = 11; test loss is flat from s = 5; test
    accuracy is almost constant beyond s = 5 and more stable beyond s = 10; the trained points
    are HT-stable. "Beyond s = k" is read as s >= k. Every verdict is computed from per-level
    medians / IQRs of the IHT runs (the showcase run excluded); each :class:`Claim` carries
    the numbers and the rule.

    Args:
        frame: the stored runs (``ResultStore(dir).load()``).
        config: the study's config (tolerance, grad_tol, test-set size).

    Returns:
        One :class:`Claim` per claim, in the order above.
    """
    runs = _study_runs(frame)
    return [
        _claim_learning_rate(runs),
        _claim_train_loss(runs, config),
        _claim_test_loss(runs),
        _claim_test_acc(runs, config),
        _claim_stable(runs, config),
    ]


# ----------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------
def _new_figure(
    ncols: int = 1, *, width: float = 8.0, height: float = 4.6
) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)
    return fig, list(axes[0])


def _dense_position(levels: Sequence[int]) -> float:
    return (max(levels) if levels else 0) + 1.5


def _s_axis(ax: Axes, levels: Sequence[int], *, dense: bool) -> None:
    """x axis at the s values themselves (missing levels show as gaps), dense at the right."""
    ticks = [float(s) for s in levels]
    labels = [str(s) for s in levels]
    if dense:
        ticks.append(_dense_position(levels))
        labels.append(DENSE)
    ax.set_xticks(ticks, labels)
    ax.set_xlim(min(ticks, default=0.0) - 0.8, max(ticks, default=1.0) + 0.8)
    ax.set_xlabel(_S_LABEL)
    ax.grid(axis="y", alpha=0.3)


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
        v = _values(sub, column)
        return transform(v) if transform is not None else v

    iht = runs[runs["kind"] == IHT]
    levels = [s for s in _iht_levels(runs) if len(values(iht[iht["sparsity"] == s]))]
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
            boxprops={"facecolor": _IHT_FACE, "edgecolor": _IHT_EDGE},
            whiskerprops={"color": _IHT_EDGE},
            capprops={"color": _IHT_EDGE},
            **style,
        )
        handles.append(Patch(facecolor=_IHT_FACE, edgecolor=_IHT_EDGE, label="IHT runs at s"))
    dense_values = values(runs[runs["kind"] == DENSE]) if dense else np.array([])
    has_dense = len(dense_values) > 0
    if has_dense:
        ax.boxplot(
            [dense_values],
            positions=[_dense_position(levels)],
            boxprops={"facecolor": _DENSE_FACE, "edgecolor": _DENSE_EDGE},
            whiskerprops={"color": _DENSE_EDGE},
            capprops={"color": _DENSE_EDGE},
            **style,
        )
        handles.append(Patch(facecolor=_DENSE_FACE, edgecolor=_DENSE_EDGE, label="dense (GD) runs"))
        median = float(np.median(dense_values))
        handles.append(
            ax.axhline(
                median,
                color=_DENSE_EDGE,
                linestyle="--",
                linewidth=1.2,
                label=f"dense median = {median:.4g}",
            )
        )
    _s_axis(ax, levels, dense=has_dense)
    return handles


def _median_at(runs: pd.DataFrame, column: str, s: int | None) -> float:
    """Median of ``column`` at level s (None: dense); NaN when that level is not stored."""
    sub = (
        runs[runs["kind"] == DENSE]
        if s is None
        else runs[(runs["kind"] == IHT) & (runs["sparsity"] == s)]
    )
    values = _values(sub, column)
    return float(np.median(values)) if len(values) else float("nan")


def _levels_text(runs: pd.DataFrame, column: str, spec: str = ".4g") -> str:
    """Medians as 's=1: a, s=5: b, s=14: c, dense: d' (lowest level, level nearest 5, highest)."""
    levels = _iht_levels(runs)
    picks: list[int] = []
    if levels:
        picks = sorted({levels[0], min(levels, key=lambda s: abs(s - 5)), levels[-1]})
    parts = [f"s={s}: {_fmt(_median_at(runs, column, s), spec)}" for s in picks]
    dense = _median_at(runs, column, None)
    if math.isfinite(dense):
        parts.append(f"dense: {_fmt(dense, spec)}")
    return ", ".join(parts) if parts else "no runs"


def _fig_learning_rate(runs: pd.DataFrame, config: StudyConfig) -> PageFigure:
    fig, (ax,) = _new_figure()
    handles = _boxes(ax, runs, "lr")
    ax.set_ylabel("learning rate γ = 1 / L̂₂ₛ")
    ax.set_title("Estimated learning rate per run")
    ax.legend(handles=handles, loc="best", fontsize=8)
    med = _medians(runs, "lr")
    rho = (
        _spearman([float(s) for s in med.index], [float(v) for v in med])
        if len(med) >= 3
        else float("nan")
    )
    caption = (
        "Each run estimates its own restricted smoothness constant L̂₂ₛ by Monte Carlo "
        f"(n_monte = {config.n_monte} sampled pairs, maximum ratio) at its start and uses "
        "γ = 1/L̂₂ₛ; boxes show the distribution over runs at each s (whiskers 1.5 IQR), the "
        "dense box uses s = P = 15. Median learning rate: "
        f"{_levels_text(runs, 'lr', '.3f')}. Spearman rank correlation of s with the median: "
        f"{_fmt(rho, '+.2f')}."
    )
    return PageFigure("learning_rate", "Learning rate vs s", figure_png(fig), caption)


def _positive(v: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    return v[v > 0]


def _log_y(ax: Axes) -> None:
    """Log y axis with plain tick labels at 1, 2, 5 x 10^k (0.05, 0.1, 0.2, not 5x10^-2)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _fig_loss(runs: pd.DataFrame, config: StudyConfig, column: str) -> PageFigure:
    train = column == "train_loss"
    fig, (ax,) = _new_figure()
    handles = _boxes(ax, runs, column, transform=_positive)
    _log_y(ax)
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
        high = _medians(runs, column)
        high = high[high.index >= 11]
        if len(high):
            caption += f" Medians for s >= 11: {_by_level(high)}."
    else:
        caption = (
            f"Cross-entropy on each run's {150 - config.n_train} held-out test points at the end "
            f"of training (log scale). Median: {_levels_text(runs, column)}."
        )
    return PageFigure(column, f"{which.capitalize()} loss vs s", figure_png(fig), caption)


def _fig_accuracy(runs: pd.DataFrame, config: StudyConfig) -> PageFigure:
    fig, axes = _new_figure(2, width=13.0)
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
    iqr = _iqr(runs, "test_acc")
    caption = (
        "Fraction of correctly classified points, on the training split (left) and on the "
        f"{150 - config.n_train} test points (right), at the end of each run. Median test "
        f"accuracy: {_levels_text(runs, 'test_acc', '.3f')}; median training accuracy: "
        f"{_levels_text(runs, 'train_acc', '.3f')}."
    )
    if len(iqr):
        caption += f" Test-accuracy IQR by level: {_by_level(iqr, '.3f')}."
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
    fig, axes = _new_figure(3, width=16.0, height=4.4)
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
        f"(support {' '.join(_param_name(k) for k in init_support)}); middle: after training "
        f"(support {' '.join(_param_name(k) for k in support)}, {kept} of {len(init_support)} "
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
    levels = _iht_levels(runs)
    iht = runs[runs["kind"] == IHT]
    fractions = {
        s: float(iht.loc[iht["sparsity"] == s, column].astype(bool).mean()) for s in levels
    }
    positions = [float(s) for s in levels]
    heights = list(fractions.values())
    ax.bar(
        positions, heights, width=0.6, color=_IHT_FACE, edgecolor=_IHT_EDGE, label="IHT runs at s"
    )
    dense = runs[runs["kind"] == DENSE]
    if len(dense):
        dense_frac = float(dense[column].astype(bool).mean())
        ax.bar(
            [_dense_position(levels)],
            [dense_frac],
            width=0.6,
            color=_DENSE_FACE,
            edgecolor=_DENSE_EDGE,
            label="dense (GD) runs",
        )
        positions.append(_dense_position(levels))
        heights.append(dense_frac)
    for x, f in zip(positions, heights, strict=True):
        ax.text(x, f + 0.015, f"{f:.2f}", ha="center", va="bottom", fontsize=7.5)
    # Headroom above 1 for the bar labels and the legend, which must not cover a full bar.
    ax.set_ylim(0, 1.3)
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper center", ncols=2, fontsize=8)
    _s_axis(ax, levels, dense=len(dense) > 0)
    return fractions


def _fig_stability(runs: pd.DataFrame, config: StudyConfig) -> PageFigure:
    fig, (left, right) = _new_figure(2, width=13.0)
    iht = runs[runs["kind"] == IHT]
    _fraction_bars(
        left, runs, "stable", ylabel="fraction of runs HT-stable", title="HT-stable trained points"
    )

    # Dense runs have no off-support entries (ratio 0); empty supports give inf: neither can
    # be drawn on a log axis, both are counted in the caption.
    ratios = iht["off_support_ratio"].to_numpy(dtype=np.float64)
    dropped = int((~(np.isfinite(ratios) & (ratios > 0))).sum())
    handles = _boxes(right, runs, "off_support_ratio", dense=False, transform=_positive)
    _log_y(right)
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
        f"support). Over all IHT runs: {_fmt(frac, '.1%')} stable, {_fmt(ratio_ok, '.1%')} with "
        f"ratio < 1, {_fmt(grad_ok, '.1%')} with the on-support gradient below grad_tol."
    )
    if dropped:
        caption += f" {dropped} IHT run(s) with a ratio of 0 or infinity are not drawn."
    return PageFigure("stability", "HT-stability vs s", figure_png(fig), caption)


def _fig_epsilon(runs: pd.DataFrame, config: StudyConfig) -> PageFigure:
    fig, (ax,) = _new_figure()
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
    fig, (left, right) = _new_figure(2, width=13.0)
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


def _figures(frame: pd.DataFrame, config: StudyConfig) -> list[PageFigure]:
    runs = _study_runs(frame)
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


# ----------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------
_CSS = (
    PAGE_CSS
    + """h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
"""
    + TABLE_CSS
    + """figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.92em; color: #333; max-width: 1100px; }
.note { background: #fff7e0; border-left: 4px solid #e6a100; padding: 0.5em 0.8em; }
.verdict { font-weight: bold; padding: 0.1em 0.5em; border-radius: 3px; }
.agree { background: #d9f2d9; color: #1b5e20; } .partly { background: #fff2cc; color: #7a5d00; }
.disagree { background: #f8d7da; color: #842029; } .na { background: #e9ecef; color: #495057; }
code { font-size: 0.95em; }
"""
)


def _completeness(runs: pd.DataFrame, config: StudyConfig) -> list[str]:
    """Notes on levels missing or incomplete with respect to the config."""
    notes = []
    stored = set(_iht_levels(runs))
    missing = [s for s in config.levels if s not in stored]
    if missing:
        notes.append(f"IHT levels not stored: {', '.join(map(str, missing))} (partial study).")
    counts = runs[runs["kind"] == IHT].groupby("sparsity").size()
    short = [
        f"s={int(s)}: {int(n)}"
        for s, n in zip(counts.index.tolist(), counts.tolist(), strict=True)
        if int(n) < config.runs
    ]
    if short:
        notes.append(f"Levels with fewer than {config.runs} runs: {', '.join(short)}.")
    n_dense = int((runs["kind"] == DENSE).sum())
    if n_dense < config.runs:
        notes.append(f"Dense runs stored: {n_dense} of {config.runs}.")
    return notes


def _render_html(
    directory: Path,
    frame: pd.DataFrame,
    config: StudyConfig,
    table: pd.DataFrame,
    figures: Sequence[PageFigure],
    claims: Sequence[Claim],
) -> str:
    runs = _study_runs(frame)
    notes = _completeness(runs, config)
    notes += [f"{f.title}: {f.caption}" for f in figures if f.png is None]
    levels = _iht_levels(runs)
    n_dense = int((runs["kind"] == DENSE).sum())
    parts = [
        "<h1>Learning a sparse neural network using IHT: study report</h1>",
        f"<p>Results directory <code>{escape(directory)}</code>: {n_dense} dense (GD) runs and "
        f"{int((runs['kind'] == IHT).sum())} IHT runs at {len(levels)} sparsity level(s) "
        f"({escape(', '.join(map(str, levels)) or 'none')}), a single linear layer "
        f"{N_FEATURES} → {N_CLASSES} (P = {P} parameters, biases included) on IRIS. Every "
        "number and figure below is read from the stored runs; nothing is retrained.</p>",
    ]
    if notes:
        parts.append(
            '<div class="note"><ul>'
            + "".join(f"<li>{escape(n)}</li>" for n in notes)
            + "</ul></div>"
        )

    parts.append("<h2>Configuration</h2>")
    config_items = json.loads(config.to_json())
    parts.append(
        html_table(
            ["setting", "value"],
            [
                [escape(k), escape(v if not isinstance(v, list) else ", ".join(map(str, v)))]
                for k, v in sorted(config_items.items())
            ],
            text_cols=(0, 1),
        )
    )

    parts.append("<h2>Table I: number of supports</h2>")
    support = support_table(frame)
    parts.append(
        f"<p>The number of possible supports C({P}, s) of an s-sparse parameter vector, and "
        "how many distinct supports the stored IHT runs ended on. W<sub>ij</sub> is the weight "
        "from feature j to class i, b<sub>i</sub> the bias of class i.</p>"
    )
    rows = []
    for rec in support.to_dict("records"):
        stored = int(rec["runs"]) > 0
        rows.append(
            [
                str(rec["s"]),
                f"{int(rec['possible_supports']):,}",
                str(rec["runs"]) if stored else "–",
                str(rec["distinct_final_supports"]) if stored else "–",
                escape(rec["most_frequent_support"]) if stored else "–",
                _fmt(float(rec["most_frequent_share"]), ".0%") if stored else "–",
            ]
        )
    parts.append(
        html_table(
            [
                "s",
                f"C({P}, s)",
                "runs stored",
                "distinct final supports",
                "most frequent final support",
                "its share",
            ],
            rows,
            text_cols=(4,),
        )
    )

    parts.append("<h2>Figures</h2>")
    parts.append(
        "<p>Box plots: the box spans the quartiles, the black line is the median, whiskers reach "
        "1.5 IQR, dots are the runs beyond. The orange box at the right is the dense (GD) "
        "reference and the dashed line its median.</p>"
    )
    for fig in figures:
        parts.append(f'<h3 id="{fig.name}">{escape(fig.title)}</h3>')
        if fig.png is None:
            parts.append(f'<p class="note">{escape(fig.caption)}</p>')
            continue
        parts.append(figure_html(fig.png, fig.title, fig.caption))

    parts.append("<h2>Paper claims</h2>")
    parts.append(
        "<p>Each claim of the paper is checked against the stored runs by the rule shown; the "
        'verdict is computed, not written in advance. "Beyond s = k" is read as s ≥ k.</p>'
    )
    claim_rows = []
    for c in claims:
        css = "na" if c.verdict == "n/a" else c.verdict
        claim_rows.append(
            [
                escape(c.claim),
                escape(c.evidence),
                escape(c.rule),
                f'<span class="verdict {css}">{escape(c.verdict)}</span>',
            ]
        )
    parts.append(
        html_table(["claim", "evidence", "rule", "verdict"], claim_rows, text_cols=(0, 1, 2))
    )

    parts.append("<h2>Summary table</h2>")
    parts.append(
        "<p>Median [q25, q75] over the runs of each level (showcase run excluded); the full "
        "table, with every quartile as its own column, is <code>summary.csv</code>.</p>"
    )
    summary_cols = [
        ("lr", ".3f"),
        ("steps", ".0f"),
        ("train_loss", ".4f"),
        ("test_loss", ".4f"),
        ("train_acc", ".3f"),
        ("test_acc", ".3f"),
        ("epsilon", ".2e"),
    ]
    rows = []
    for level in table.index:
        row = [escape(level), str(int(_cell(table, level, "runs")))]
        row += [escape(_spread(table, level, m, spec)) for m, spec in summary_cols]
        row += [_fmt(_cell(table, level, f), ".2f") for f in FRACTIONS]
        rows.append(row)
    parts.append(
        html_table(
            ["level", "runs", *(m for m, _ in summary_cols), "reached tol", "stable", "tie"],
            rows,
        )
    )
    return html_page("IHT study report", _CSS, parts)


def write_report(directory: str | os.PathLike[str], *, print_summary: bool = True) -> Path:
    """Draw the figures, the summary table and the HTML report of a stored study.

    Reads only ``directory`` (its ``config.json`` and ``parts/``) and writes
    ``DIR/figures/<name>.png`` (see :data:`FIGURE_NAMES`), ``DIR/summary.csv`` and
    ``DIR/report.html`` (self-contained: inline CSS, figures as base64 data URIs). Earlier
    report files are replaced; a figure that is skipped (no showcase run) has its old PNG
    removed, so the directory always matches the page.

    Args:
        directory: the results directory of :func:`iht.runner.run_study`.
        print_summary: print :func:`format_summary` to stdout.

    Returns:
        The path of ``report.html``.

    Raises:
        StoreError: the directory holds no stored runs, no dense or IHT run, or no valid
            ``config.json``.

    Example:
        >>> write_report("results/quick", print_summary=False)           # doctest: +SKIP
        PosixPath('results/quick/report.html')
    """
    store = ResultStore(directory)
    frame = store.load()  # StoreError when no part is stored
    if not store.config_path.exists():
        raise StoreError(
            f"{store.directory} holds runs but no config.json; it is not a complete store"
        )
    config = store.read_config()
    if _study_runs(frame).empty:
        raise StoreError(f"{store.directory} holds no dense or IHT runs (only the showcase run)")

    table = summary_table(frame)
    figures = _figures(frame, config)
    # The exact optimum on a few splits, when `iht oracle` has stored it (DIR/oracle.parquet).
    oracle_png = store.directory / "figures" / "oracle.png"
    if (store.directory / "oracle.parquet").exists():
        from .oracle import oracle_figure

        figures.append(oracle_figure(store.directory, frame, config))
    else:
        oracle_png.unlink(missing_ok=True)  # an earlier oracle figure would not match the page
    claims = evaluate_claims(frame, config)

    write_figures(store.directory / "figures", figures)
    atomic_write(store.directory / "summary.csv", table.to_csv().encode())
    html_path = store.directory / "report.html"
    page = _render_html(store.directory, frame, config, table, figures, claims)
    atomic_write(html_path, page.encode("utf-8"))
    if print_summary:
        print(format_summary(table))
    return html_path
