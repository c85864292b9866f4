"""Tables of a stored IRIS study: per-level summary, Table I, and the helpers the report shares.

Everything here reads the stored runs (``ResultStore(dir).load()``) and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..study.config import DENSE, IHT, N_CLASSES, N_FEATURES, P

__all__ = [
    "FRACTIONS",
    "METRICS",
    "by_level",
    "cell",
    "finite_values",
    "fmt",
    "format_summary",
    "iht_levels",
    "level_groups",
    "level_iqr",
    "level_medians",
    "param_name",
    "spearman",
    "spread",
    "study_runs",
    "summary_table",
    "support_table",
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


def study_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The dense and IHT runs (the showcase run is one extra run, not part of any level)."""
    return frame[frame["kind"].isin([DENSE, IHT])]


def iht_levels(runs: pd.DataFrame) -> list[int]:
    """The stored IHT levels s, sorted."""
    return sorted(int(s) for s in runs.loc[runs["kind"] == IHT, "sparsity"].unique())


def level_groups(runs: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """("dense", dense runs) first when there are any, then (str(s), runs at s) by s."""
    dense = runs[runs["kind"] == DENSE]
    if len(dense):
        yield DENSE, dense
    iht = runs[runs["kind"] == IHT]
    for s in iht_levels(runs):
        yield str(s), iht[iht["sparsity"] == s]


def finite_values(runs: pd.DataFrame, column: str) -> np.ndarray[Any, np.dtype[np.float64]]:
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
    for label, group in level_groups(study_runs(frame)):
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


def fmt(value: float, spec: str = ".4g") -> str:
    """``value`` formatted by ``spec``, or an en dash when it is not finite."""
    return "–" if not math.isfinite(value) else format(value, spec)


def cell(table: pd.DataFrame, level: Any, column: str) -> float:
    """One number of a summary table, as a float."""
    value: Any = table.at[level, column]
    return float(value)


def spread(table: pd.DataFrame, level: Any, metric: str, spec: str) -> str:
    """``median [q25, q75]`` of a metric at a level of a summary table."""
    return (
        f"{fmt(cell(table, level, f'{metric}_median'), spec)} "
        f"[{fmt(cell(table, level, f'{metric}_q25'), spec)}, "
        f"{fmt(cell(table, level, f'{metric}_q75'), spec)}]"
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
        cells = [str(level), str(int(cell(table, level, "runs")))]
        for _, metric, spec, quartiles in _TEXT_COLUMNS:
            if quartiles:
                cells.append(spread(table, level, metric, spec))
            else:
                cells.append(fmt(cell(table, level, f"{metric}_median"), spec))
        cells.append(fmt(cell(table, level, "frac_stable"), ".2f"))
        cells.append(fmt(cell(table, level, "frac_reached_tol"), ".2f"))
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


def param_name(k: int) -> str:
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
            top = " ".join(param_name(k) for k in counts.index[0])
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


def level_medians(runs: pd.DataFrame, column: str) -> pd.Series:
    """Median of ``column`` over the IHT runs of each stored level, indexed by s."""
    iht = runs[runs["kind"] == IHT]
    return iht.groupby("sparsity")[column].median().sort_index()


def level_iqr(runs: pd.DataFrame, column: str) -> pd.Series:
    """Interquartile range (q75 - q25) of ``column`` over the IHT runs of each level, by s."""
    iht = runs[runs["kind"] == IHT]
    grouped = iht.groupby("sparsity")[column]
    return (grouped.quantile(0.75) - grouped.quantile(0.25)).sort_index()


def by_level(series: pd.Series, spec: str = ".4g") -> str:
    """A per-level series as text: ``s=1: a, s=2: b, ...``."""
    pairs = zip(series.index.tolist(), series.tolist(), strict=True)
    return ", ".join(f"s={int(s)}: {fmt(float(v), spec)}" for s, v in pairs)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    rx = pd.Series(list(x)).rank().to_numpy(dtype=np.float64)
    ry = pd.Series(list(y)).rank().to_numpy(dtype=np.float64)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])
