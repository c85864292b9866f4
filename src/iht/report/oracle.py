"""The report's figure of the exact optimum against IHT (``oracle.png``), and its text table.

Reads ``DIR/oracle.parquet`` (written by ``iht oracle``, :mod:`iht.study.oracle`) and the
stored runs; the figure always compares with the IHT runs stored now
(:func:`iht.study.oracle.refresh_iht`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..errors import StoreError
from ..oracle import SEPARABLE
from ..study.config import StudyConfig
from ..study.oracle import ORACLE_FILE, comparison_table, read_oracle, refresh_iht
from .html import PageFigure, figure_png
from .plots import IHT_EDGE, IHT_FACE, log_y, new_figure, s_axis

__all__ = ["format_comparison", "oracle_figure"]


def format_comparison(comp: pd.DataFrame) -> str:
    """A fixed-width text rendering of :func:`comparison_table` for the terminal."""
    header = (
        f"{'s':>3} {'splits':>6} {'optimum (median)':>16} {'attained':>8} {'inf 0':>5} "
        f"{'IHT loss (median)':>17} {'IHT - opt (min)':>15} {'found opt. support':>18} "
        f"{'IHT - own inf':>13} {'s/split':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in comp.to_dict("records"):
        attained = f"{r['attained']}/{r['splits']}"
        lines.append(
            f"{r['s']:>3} {r['splits']:>6} {r['optimum_median']:>16.6f} "
            f"{attained:>8} {r['separable']:>5} {r['iht_median']:>17.6f} "
            f"{r['gap_min']:>15.2e} {r['found_share']:>18.0%} {r['own_gap_median']:>13.2e} "
            f"{r['seconds']:>8.2f}"
        )
    return "\n".join(lines)


def oracle_figure(directory: str | Path, frame: pd.DataFrame, config: StudyConfig) -> PageFigure:
    """The report figure ``oracle``: the optimum against IHT on the same splits.

    Left: per s, the optimum of each split (filled: attained; open: an infimum that no
    network attains; at the floor: infimum 0, separable) over the box of the stored IHT
    runs' training loss on those splits (log scale). Right: the share of those IHT runs
    whose final support is an optimal support. Returns a :class:`iht.report.html.PageFigure`.
    """
    title = "The exact optimum vs IHT on the same splits"
    try:
        table = read_oracle(Path(directory) / ORACLE_FILE)
    except StoreError as exc:
        return PageFigure("oracle", title, None, f"{exc}. The figure is skipped.")
    study_seeds = dict(
        zip(frame["index"].astype(int), frame["data_seed"].astype(int), strict=False)
    )
    stale = [
        int(i)
        for i, seed in zip(table["index"], table["data_seed"], strict=True)
        if study_seeds.get(int(i), int(seed)) != int(seed)
    ]
    if stale:
        return PageFigure(
            "oracle",
            title,
            None,
            f"{ORACLE_FILE} was computed for another study (split {stale[0]} has another data "
            "seed); run `iht oracle DIR --overwrite` again. The figure is skipped.",
        )
    table = refresh_iht(table, frame)
    comp = comparison_table(table)
    levels = [int(s) for s in comp["s"]]
    fig, (left, right) = new_figure(2, width=13.0)

    losses = [
        table.loc[(table["s"] == s) & table["iht_run_id"].notna(), "iht_train_loss"]
        .astype(float)
        .to_numpy()
        for s in levels
    ]
    shown = [(s, v[v > 0]) for s, v in zip(levels, losses, strict=True) if len(v[v > 0])]
    if shown:
        left.boxplot(
            [v for _, v in shown],
            positions=[float(s) for s, _ in shown],
            widths=0.6,
            patch_artist=True,
            boxprops={"facecolor": IHT_FACE, "edgecolor": IHT_EDGE},
            whiskerprops={"color": IHT_EDGE},
            capprops={"color": IHT_EDGE},
            medianprops={"color": "black", "linewidth": 1.5},
            flierprops={"marker": ".", "markersize": 3, "alpha": 0.5},
        )
    positive = table.loc[table["value"] > 0, "value"].astype(float)
    all_pos = np.concatenate([positive.to_numpy(), *[v[v > 0] for v in losses]])
    floor = float(all_pos.min()) / 3 if len(all_pos) else 1e-3
    n_splits = int(table["index"].nunique())
    offsets = np.linspace(-0.22, 0.22, max(n_splits, 1))
    index_pos = {int(i): k for k, i in enumerate(sorted(table["index"].unique()))}
    for row in table.to_dict("records"):
        x = float(row["s"]) + float(offsets[index_pos[int(row["index"])]])
        value = float(row["value"])
        if row["status"] == SEPARABLE or value <= 0:
            left.plot(x, floor, marker="v", color="crimson", markersize=6, linestyle="none")
        elif bool(row["attained"]):
            left.plot(x, value, marker="o", color="darkgreen", markersize=4.5, linestyle="none")
        else:
            left.plot(
                x,
                value,
                marker="o",
                markerfacecolor="none",
                markeredgecolor="darkgreen",
                markersize=5,
                linestyle="none",
            )
    log_y(left)
    left.axhline(config.tol, color="crimson", linestyle=":", linewidth=1.5)
    left.set_ylim(bottom=floor / 1.5)
    handles: list[Any] = [
        Patch(facecolor=IHT_FACE, edgecolor=IHT_EDGE, label="IHT runs on these splits"),
        Line2D([], [], marker="o", color="darkgreen", linestyle="none", label="optimum, attained"),
        Line2D(
            [],
            [],
            marker="o",
            markerfacecolor="none",
            markeredgecolor="darkgreen",
            linestyle="none",
            label="optimum, infimum not attained",
        ),
        Line2D(
            [],
            [],
            marker="v",
            color="crimson",
            linestyle="none",
            label="infimum 0 (separable), drawn at the floor",
        ),
        Line2D([], [], color="crimson", linestyle=":", label=f"tol = {config.tol:g}"),
    ]
    left.legend(handles=handles, loc="best", fontsize=8)
    left.set_ylabel("training loss (cross-entropy, log scale)")
    left.set_title(f"Optimum of every split (markers) and IHT's loss (boxes), {n_splits} splits")
    s_axis(left, levels, dense=False)

    shares = comp["found_share"].to_numpy(dtype=np.float64)
    right.bar(
        [float(s) for s in levels],
        np.nan_to_num(shares),
        width=0.6,
        color=IHT_FACE,
        edgecolor=IHT_EDGE,
    )
    for s, f in zip(levels, shares, strict=True):
        if math.isfinite(f):
            right.text(float(s), f + 0.015, f"{f:.0%}", ha="center", va="bottom", fontsize=7.5)
    right.plot(
        [float(s) for s in levels],
        comp["optimal_share"].to_numpy(dtype=np.float64),
        marker="_",
        markersize=22,
        markeredgewidth=2,
        color="black",
        linestyle="none",
        label="share of all supports that are optimal (chance)",
    )
    right.legend(loc="upper left", fontsize=8)
    right.set_ylim(0, 1.15)
    right.set_ylabel("share of IHT runs on an optimal support")
    right.set_title("IHT runs whose final support is optimal")
    s_axis(right, levels, dense=False)

    caption = _oracle_caption(comp, config, n_splits)
    return PageFigure("oracle", title, figure_png(fig), caption)


def _oracle_caption(comp: pd.DataFrame, config: StudyConfig, n_splits: int) -> str:
    def by_s(column: str, spec: str) -> str:
        return ", ".join(
            f"s={int(r['s'])}: {format(r[column], spec)}" for r in comp.to_dict("records")
        )

    tol = config.tol
    text = (
        f"For the first {n_splits} data splits of the study (split i is shared by the IHT "
        "runs i of every level) the exact optimum of min f(θ) s.t. ‖θ‖₀ ≤ s, found by "
        "minimising the convex training loss on every one of the C(15, s) supports with a "
        "certificate for each (`iht oracle`). Left: the optimum of each split (markers; "
        "filled = attained, open = an infimum no network attains because a direction in the "
        "support separates part of the training set, triangles at the floor = infimum 0, the "
        "support separates all of it) and the final training loss of the IHT run on the same "
        f"split (boxes). Median optimum: {by_s('optimum_median', '.4g')}. Attained on "
        f"{by_s('attained', 'd')} of {n_splits} splits; infimum 0 (separable) on "
        f"{by_s('separable', 'd')}. Median IHT loss: "
        f"{by_s('iht_median', '.4g')}. Right: share of those IHT runs whose final support "
        f"is an optimal support: {by_s('found_share', '.0%')} (black dashes: the share of "
        "all supports that are optimal, i.e. a random support's chance; where the optimum is "
        "0 many supports tie)."
    )
    below = comp[comp["optimum_max"] < tol]
    if len(below):
        text += (
            f" IHT stops at training loss ≤ tol = {tol:g}: from s = {int(below['s'].min())} "
            f"the optimum of every split is below tol (median "
            f"{float(below['optimum_median'].median()):.4g}), so IHT's loss sits at tol there "
            "by its stopping rule, not because it could not go lower; a gap to the optimum "
            "at these levels measures the stopping rule."
        )
    violations = int(comp["violations"].sum())
    if violations:
        text += (
            f" WARNING: {violations} IHT run(s) have a training loss below the optimum: "
            "a bug in the oracle or in the stored runs."
        )
    else:
        text += (
            f" No IHT run is below the optimum (smallest gap {float(comp['gap_min'].min()):.2e})."
        )
    return text
