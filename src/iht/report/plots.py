"""Pieces every report figure shares: the figure, the s axis, log axes, the study's colours."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

__all__ = [
    "DENSE_EDGE",
    "DENSE_FACE",
    "IHT_EDGE",
    "IHT_FACE",
    "S_LABEL",
    "dense_position",
    "log_y",
    "new_figure",
    "s_axis",
]

IHT_FACE, IHT_EDGE = "#c6dbef", "#2171b5"
DENSE_FACE, DENSE_EDGE = "#fdd0a2", "#d94801"
S_LABEL = "sparsity level s (nonzero parameters, biases included)"


def new_figure(
    ncols: int = 1, *, width: float = 8.0, height: float = 4.6
) -> tuple[Figure, list[Axes]]:
    """A figure of ``ncols`` axes side by side, laid out by matplotlib's constrained layout."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)
    return fig, list(axes[0])


def dense_position(levels: Sequence[int]) -> float:
    """Where the dense reference sits on an s axis: right of the largest level."""
    return (max(levels) if levels else 0) + 1.5


def s_axis(ax: Axes, levels: Sequence[int], *, dense: bool) -> None:
    """x axis at the s values themselves (missing levels show as gaps), dense at the right."""
    ticks = [float(s) for s in levels]
    labels = [str(s) for s in levels]
    if dense:
        ticks.append(dense_position(levels))
        labels.append("dense")
    ax.set_xticks(ticks, labels)
    ax.set_xlim(min(ticks, default=0.0) - 0.8, max(ticks, default=1.0) + 0.8)
    ax.set_xlabel(S_LABEL)
    ax.grid(axis="y", alpha=0.3)


def log_y(ax: Axes) -> None:
    """Log y axis with plain tick labels at 1, 2, 5 x 10^k (0.05, 0.1, 0.2, not 5x10^-2)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
