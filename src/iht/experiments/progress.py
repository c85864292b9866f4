"""Progress bars of the experiments (on stderr, off unless asked)."""

from __future__ import annotations

import math
import sys

from tqdm import tqdm

from ..training import History

__all__ = ["StepProgress", "run_bar"]


class StepProgress:
    """A bar over training steps showing the training loss; an ``on_step`` of :func:`iht.fit`."""

    def __init__(self, total: int, label: str, *, enabled: bool) -> None:
        self.bar = tqdm(
            total=total,
            desc=label,
            unit="step",
            disable=not enabled,
            dynamic_ncols=True,
            file=sys.stderr,
            leave=False,
        )
        self.stale = False

    def __call__(self, step: int, history: History) -> None:
        self.bar.update(1)
        loss = history.train_loss[-1]
        # Between evaluation steps (--eval-every) the training loss is not computed (NaN): the
        # bar keeps the last one that was, and shows the next one as soon as it is.
        if math.isnan(loss):
            self.stale = True
        elif step % 25 == 0 or self.stale:
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            self.stale = False

    def close(self) -> None:
        self.bar.close()


def run_bar(total: int, label: str, *, enabled: bool) -> tqdm:  # type: ignore[type-arg]
    """A bar over runs, with runs/s and the time left."""
    return tqdm(
        total=total,
        unit="run",
        disable=not enabled,
        dynamic_ncols=True,
        desc=label,
        bar_format="{l_bar}{bar}| {n:.0f}/{total} runs [{elapsed}<{remaining}, {rate_fmt}]",
    )
