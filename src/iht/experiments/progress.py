"""Progress bars of the experiments (on stderr, off unless asked)."""

from __future__ import annotations

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

    def __call__(self, step: int, history: History) -> None:
        self.bar.update(1)
        if step % 25 == 0:
            self.bar.set_postfix(loss=f"{history.train_loss[-1]:.4g}", refresh=False)

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
