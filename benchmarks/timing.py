"""Timing shared by the benchmarks (scripts in this folder import it as ``timing``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeats: int = 10) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn``, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(
    variants: dict[str, Callable[[], float]],
    *,
    rounds: int,
    steps: int,
    before_step: Callable[[], None] = lambda: None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per step of each variant, per round, the variants taking turns step by step.

    ``variants[name]()`` runs one step and returns the seconds of the part timed alone (e.g.
    ``opt.step()``); its whole call is timed too. Taking turns, the variants see the same
    background load on a shared machine. ``before_step`` runs before each turn (a new batch).

    Returns:
        (whole, alone): for each name, the mean seconds per step of every round.
    """
    for run in variants.values():  # warm-up (and compiled kernels' first call)
        run()
    whole: dict[str, list[float]] = {name: [] for name in variants}
    alone: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        spent = dict.fromkeys(variants, 0.0)
        spent_alone = dict.fromkeys(variants, 0.0)
        for _ in range(steps):
            before_step()
            for name, run in variants.items():
                start = time.perf_counter()
                spent_alone[name] += run()
                spent[name] += time.perf_counter() - start
        for name in variants:
            whole[name].append(spent[name] / steps)
            alone[name].append(spent_alone[name] / steps)
    return whole, alone
