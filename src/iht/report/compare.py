"""The page of an ``iht compare`` run (``compare.html``), drawn from its stored files only.

:func:`summarise` gives median, min and max over seeds per (s, method); :func:`format_table`
renders it for the terminal; :func:`write_compare_report` reads ``results.parquet`` and
``config.json`` (:func:`iht.experiments.compare.read_comparison`) and writes ``compare.html``:
the table and one figure (test accuracy and training loss against s), self-contained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ..experiments.compare import CompareRecord, read_comparison
from ..experiments.config import LABELS, METHODS, SPARSE_METHODS
from ..storage.files import atomic_write_bytes
from .html import PAGE_CSS, TABLE_CSS, escape, figure_png, html_page, html_table, img_tag

__all__ = ["REPORT_FILE", "format_table", "summarise", "write_compare_report"]

#: The page, beside the stored files.
REPORT_FILE = "compare.html"

SUMMARY_METRICS: tuple[str, ...] = ("test_acc", "train_loss", "test_loss", "nonzeros")


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Median, min and max over seeds of each metric, per (s, method); dense once (s = -1).

    Also: runs, lr (median), time = median of seconds + estimate_seconds.
    """
    frame = frame.assign(time=frame["seconds"] + frame["estimate_seconds"])
    dense = frame[frame["method"] == "dense"]
    if not dense.empty:
        # One dense run per seed, repeated in every s's rows: summarise it once.
        dense = dense[dense["sparsity"] == dense["sparsity"].min()].assign(sparsity=-1)
    sparse = frame[frame["method"] != "dense"]
    parts = pd.concat([f for f in (dense, sparse) if not f.empty], ignore_index=True)
    out = []
    for (_, method), group in parts.groupby(["sparsity", "method"], sort=False):
        entry: dict[str, Any] = {
            "sparsity": int(group["sparsity"].iloc[0]),
            "method": method,
            "runs": len(group),
        }
        for metric in SUMMARY_METRICS:
            values = group[metric].astype(float)
            entry[f"{metric}_median"] = float(values.median())
            entry[f"{metric}_min"] = float(values.min())
            entry[f"{metric}_max"] = float(values.max())
        entry["lr"] = float(group["lr"].median())
        entry["time"] = float(group["time"].median())
        out.append(entry)
    table = pd.DataFrame(out)
    order = {m: i for i, m in enumerate(METHODS)}
    table["_order"] = table["method"].map(order)
    return table.sort_values(["sparsity", "_order"], ignore_index=True).drop(columns="_order")


_COLUMNS = (
    ("test acc", "test_acc", ".3f"),
    ("train loss", "train_loss", ".4f"),
    ("test loss", "test_loss", ".4f"),
)


def _range(entry: pd.Series, metric: str, spec: str) -> str:
    return (
        f"{entry[f'{metric}_median']:{spec}} "
        f"[{entry[f'{metric}_min']:{spec}}, {entry[f'{metric}_max']:{spec}}]"
    )


def _table_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["s", "method", "runs"] + [f"{name}" for name, _, _ in _COLUMNS]
    header += ["nonzeros", "lr", "time s"]
    rows = []
    for _, entry in table.iterrows():
        s = "dense" if entry["sparsity"] < 0 else str(int(entry["sparsity"]))
        nnz = (
            f"{entry['nonzeros_median']:.0f}"
            if entry["nonzeros_min"] == entry["nonzeros_max"]
            else f"{entry['nonzeros_median']:.0f} [{entry['nonzeros_min']:.0f}, {entry['nonzeros_max']:.0f}]"
        )
        rows.append(
            [s, str(entry["method"]), str(int(entry["runs"]))]
            + [_range(entry, metric, spec) for _, metric, spec in _COLUMNS]
            + [nnz, f"{entry['lr']:.3g}", f"{entry['time']:.2f}"]
        )
    return header, rows


def format_table(table: pd.DataFrame) -> str:
    """The summary as aligned text: median [min, max] over seeds; dense once at the top."""
    header, rows = _table_rows(table)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 1 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([render(header), *(render(r) for r in rows)])


def _figure_png(frame: pd.DataFrame) -> bytes:
    """Test accuracy and training loss against s: median and [min, max] bars per method."""
    table = summarise(frame)
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    levels = sorted(int(s) for s in table["sparsity"] if s > 0)
    log_x = len(levels) > 1 and levels[-1] / levels[0] >= 10
    methods = [m for m in SPARSE_METHODS if m in set(table["method"])]
    colours = {
        "oneshot": "#1f77b4",
        "gmp": "#2ca02c",
        "l1": "#9467bd",
        "rigl": "#ff7f0e",
        "iht": "#d62728",
    }
    for ax, metric, title in zip(
        axes,
        ("test_acc", "train_loss"),
        ("Test accuracy", "Training loss (cross-entropy)"),
        strict=True,
    ):
        dense = table[table["method"] == "dense"]
        if not dense.empty:
            d = dense.iloc[0]
            ax.axhspan(d[f"{metric}_min"], d[f"{metric}_max"], color="0.85", zorder=0)
            ax.axhline(
                d[f"{metric}_median"], color="0.3", ls="--", lw=1.2, label="dense (GD) [min, max]"
            )
        for j, method in enumerate(methods):
            sub = table[table["method"] == method].sort_values("sparsity")
            x = sub["sparsity"].to_numpy(dtype=float)
            # Small horizontal offsets keep the bars of the methods apart.
            shift = (j - (len(methods) - 1) / 2) * 0.025
            x = x * (1 + shift) if log_x else x + shift * max(levels[-1] - levels[0], 1)
            med = sub[f"{metric}_median"].to_numpy(dtype=float)
            err = np.vstack(
                [
                    med - sub[f"{metric}_min"].to_numpy(dtype=float),
                    sub[f"{metric}_max"].to_numpy(dtype=float) - med,
                ]
            )
            ax.errorbar(
                x,
                med,
                yerr=err,
                marker="o",
                ms=4,
                capsize=3,
                lw=1.4,
                color=colours.get(method),
                label=LABELS[method],
            )
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks(levels, [str(s) for s in levels])
        ax.minorticks_off()
        if metric == "train_loss" and (table[f"{metric}_min"] > 0).all():
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel("budget s (nonzero parameters, biases counted)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    return figure_png(fig)


_CSS = PAGE_CSS + TABLE_CSS + "img { max-width: 100%; border: 1px solid #eee; }\n"


def _html(frame: pd.DataFrame, record: CompareRecord) -> str:
    e = escape
    config, plan = record.config, record.gmp_plan
    header, rows = _table_rows(summarise(frame))
    table = html_table(header, [[e(c) for c in r] for r in rows], text_cols=(1,))
    img = img_tag(_figure_png(frame), "test accuracy and training loss against s")
    model = "linear" if not config.hidden else "MLP " + "-".join(map(str, config.hidden))
    lr_rule = (
        f"lr = {config.lr} for every method"
        if config.lr is not None
        else "lr = 1/L_hat of the dense network for dense, one-shot, GMP and L1; "
        "lr = 1/L_hat_2s at each s for IHT (Monte Carlo, "
        f"{config.n_monte} draws)"
    )
    fine = config.steps - record.pretrain_steps
    return html_page(
        "iht compare",
        _CSS,
        [
            f"<h1>Sparse training methods compared on {e(record.dataset)}</h1>",
            f"<p>{e(model)} model, P = {record.n_params} parameters (biases counted); "
            f"{record.n_train} training / {record.n_test} test rows per seed; "
            f"{config.seeds} seeds (each a new split, initialisation and support); "
            f"{config.steps} full-batch gradient evaluations per method; {e(lr_rule)}.</p>",
            "<ul>",
            f"<li>one-shot: {record.pretrain_steps} dense GD steps, global magnitude pruning "
            "of all weights and biases to s (torch.nn.utils.prune, L1Unstructured), "
            f"{fine} masked GD steps.</li>",
            "<li>GMP (Zhu &amp; Gupta 2017): pruned fraction s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))^3, "
            f"s_i = 0, s_f = 1 - s/P, t0 = {plan.t0}, Δt = {plan.dt}, n = {plan.n} "
            f"(final mask at step {plan.end}), then masked GD.</li>",
            f"<li>L1: {record.pretrain_steps} proximal-gradient (ISTA) steps on "
            f"f + λ‖θ‖₁ with λ = {config.l1}, keep the s largest magnitudes, "
            f"{fine} masked GD steps.</li>",
            "<li>IHT: random support of size s on the same initialisation, then IHT steps.</li>",
            "</ul>",
            "<p>Median [min, max] over seeds. Dense does not depend on s (one run per seed). "
            "time = training + step-size estimate, seconds per run (median).</p>",
            table,
            f"<p>{img}</p>",
        ],
    )


def write_compare_report(directory: str | Path) -> Path:
    """Write ``DIR/compare.html`` from the stored ``results.parquet`` and ``config.json``.

    Raises:
        StoreError: a file is missing or is not what ``iht compare`` writes.
    """
    result = read_comparison(directory)
    path = Path(directory) / REPORT_FILE
    atomic_write_bytes(path, _html(result.frame, result.record).encode("utf-8"))
    return path
