"""The study report: summary table, figures and a self-contained HTML page, from stored results.

Everything here reads a results directory (see :mod:`iht.study.store`) and nothing else: no run
is trained again, so a report of a 15,000-run study takes seconds and can be redrawn at will.

Files written by :func:`write_study_report` into the study directory ``DIR``::

    DIR/figures/*.png    one PNG per figure (``oracle.png`` too when ``iht oracle`` has
                         stored DIR/oracle.parquet, see :mod:`iht.study.oracle`)
    DIR/summary.csv      :func:`iht.report.study_tables.summary_table` (one row per level)
    DIR/report.html      one file: inline CSS, the PNGs embedded as base64 data URIs

The report works on a partial study (missing levels are gaps on the s axis and are listed),
without the showcase run (its figure is skipped with a note), and without dense runs (no
reference box). The "Paper claims" section evaluates each claim of the paper against the stored
numbers with a stated rule (:func:`iht.report.claims.evaluate_claims`); no verdict is written
in advance.

Example::

    >>> from iht.report.study import write_study_report
    >>> html_path = write_study_report("results/quick")       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import StoreError
from ..storage.files import atomic_write_bytes
from ..study.config import DENSE, IHT, N_CLASSES, N_FEATURES, P, StudyConfig
from ..study.store import ResultStore
from .claims import Claim, evaluate_claims
from .html import (
    PAGE_CSS,
    TABLE_CSS,
    PageFigure,
    escape,
    figure_html,
    html_page,
    html_table,
    write_figures,
)
from .oracle import oracle_figure
from .study_figures import study_figures
from .study_tables import (
    FRACTIONS,
    cell,
    fmt,
    format_summary,
    iht_levels,
    spread,
    study_runs,
    summary_table,
    support_table,
)

__all__ = ["write_study_report"]


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
    stored = set(iht_levels(runs))
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
    runs = study_runs(frame)
    notes = _completeness(runs, config)
    notes += [f"{f.title}: {f.caption}" for f in figures if f.png is None]
    levels = iht_levels(runs)
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
                fmt(float(rec["most_frequent_share"]), ".0%") if stored else "–",
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
        row = [escape(level), str(int(cell(table, level, "runs")))]
        row += [escape(spread(table, level, m, spec)) for m, spec in summary_cols]
        row += [fmt(cell(table, level, f), ".2f") for f in FRACTIONS]
        rows.append(row)
    parts.append(
        html_table(
            ["level", "runs", *(m for m, _ in summary_cols), "reached tol", "stable", "tie"],
            rows,
        )
    )
    return html_page("IHT study report", _CSS, parts)


def write_study_report(directory: str | os.PathLike[str], *, print_summary: bool = True) -> Path:
    """Draw the figures, the summary table and the HTML report of a stored study.

    Reads only ``directory`` (its ``config.json`` and ``parts/``) and writes
    ``DIR/figures/<name>.png`` (see :data:`~iht.report.study_figures.FIGURE_NAMES`),
    ``DIR/summary.csv`` and
    ``DIR/report.html`` (self-contained: inline CSS, figures as base64 data URIs). Earlier
    report files are replaced; a figure that is skipped (no showcase run) has its old PNG
    removed, so the directory always matches the page.

    Args:
        directory: the results directory of :func:`iht.study.runner.run_study`.
        print_summary: print :func:`~iht.report.study_tables.format_summary` to stdout.

    Returns:
        The path of ``report.html``.

    Raises:
        StoreError: the directory holds no stored runs, no dense or IHT run, or no valid
            ``config.json``.

    Example:
        >>> write_study_report("results/quick", print_summary=False)     # doctest: +SKIP
        PosixPath('results/quick/report.html')
    """
    store = ResultStore(directory)
    frame = store.load()  # StoreError when no part is stored
    if not store.config_path.exists():
        raise StoreError(
            f"{store.directory} holds runs but no config.json; it is not a complete store"
        )
    config = store.read_config()
    if study_runs(frame).empty:
        raise StoreError(f"{store.directory} holds no dense or IHT runs (only the showcase run)")

    table = summary_table(frame)
    figures = study_figures(frame, config)
    # The exact optimum on a few splits, when `iht oracle` has stored it (DIR/oracle.parquet).
    oracle_png = store.directory / "figures" / "oracle.png"
    if (store.directory / "oracle.parquet").exists():
        figures.append(oracle_figure(store.directory, frame, config))
    else:
        oracle_png.unlink(missing_ok=True)  # an earlier oracle figure would not match the page
    claims = evaluate_claims(frame, config)

    write_figures(store.directory / "figures", figures)
    atomic_write_bytes(store.directory / "summary.csv", table.to_csv().encode())
    html_path = store.directory / "report.html"
    page = _render_html(store.directory, frame, config, table, figures, claims)
    atomic_write_bytes(html_path, page.encode("utf-8"))
    if print_summary:
        print(format_summary(table))
    return html_path
