r"""Schedules of the budget: how many nonzeros a pool may hold at step t.

A schedule maps (step t, the pool's final budget s, the pool's size P) to the budget of that
step, or to None for a dense step (no projection). :class:`iht.SparseOptimizer` asks its
schedule at every step and projects exactly onto that budget, so the budget of the step holds
after every step, and once the schedule has ended it is s at every step.

- :class:`Constant`: s from the first step. On a trained dense model this is "prune, then
  train sparse": the first step's projection is one-shot magnitude pruning.
- :class:`DenseWarmup`: dense for ``steps`` steps, then s.
- :class:`Cubic`: the gradual schedule of Zhu & Gupta (2017): the density falls from
  ``initial_density`` to s/P between ``start`` and ``end`` as

  .. math:: d_t = d_f + (d_i - d_f)\left(1 - \frac{t - t_0}{t_1 - t_0}\right)^3,

  and every step in between projects exactly onto round(d_t P) (never below s).
- :class:`ACDC`: alternating compressed / decompressed training (Peste et al. 2021): dense
  for ``warmup`` steps, then sparse and dense phases of ``phase`` steps each, and sparse from
  ``final`` on (the run should end in that last sparse phase).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from .errors import InvalidValueError

__all__ = ["ACDC", "SCHEDULES", "Constant", "Cubic", "DenseWarmup", "Schedule", "schedule_named"]

#: The schedules by name, with their phases as shares of a run of n steps (:func:`schedule_named`).
SCHEDULES = ("constant", "warmup", "cubic", "acdc")


class Schedule(Protocol):
    """The budget of step t, or None for a dense step."""

    def budget(self, step: int, final: int, size: int) -> int | None:
        """The budget at 0-based ``step`` of a pool of ``size`` entries whose budget is ``final``."""
        ...


def _check_steps(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class Constant:
    """The final budget s at every step."""

    def budget(self, step: int, final: int, size: int) -> int | None:
        return final


@dataclass(frozen=True)
class DenseWarmup:
    """Dense (no projection) for the first ``steps`` steps, then the final budget s."""

    steps: int

    def __post_init__(self) -> None:
        _check_steps("steps", self.steps)

    def budget(self, step: int, final: int, size: int) -> int | None:
        return None if step < self.steps else final


@dataclass(frozen=True)
class Cubic:
    """Zhu & Gupta's cubic decay of the density from ``initial_density`` to s/P.

    Before ``start`` the budget is round(initial_density * P) (dense when the density is 1:
    no projection at all); from ``end`` on it is s; in between, every step projects onto
    max(s, round(d_t P)) with d_t the cubic of the module docstring.
    """

    start: int
    end: int
    initial_density: float = 1.0

    def __post_init__(self) -> None:
        _check_steps("start", self.start)
        _check_steps("end", self.end, self.start + 1)
        if not 0 < self.initial_density <= 1:
            raise InvalidValueError(
                f"initial_density must be in (0, 1], got {self.initial_density!r}"
            )

    def density(self, step: int, final_density: float) -> float:
        """d_t, the density of the step (before rounding)."""
        if step <= self.start:
            return self.initial_density
        if step >= self.end:
            return final_density
        left = 1.0 - (step - self.start) / (self.end - self.start)
        return final_density + (self.initial_density - final_density) * left**3

    def budget(self, step: int, final: int, size: int) -> int | None:
        if step < self.start and self.initial_density == 1.0:
            return None
        count = math.floor(self.density(step, final / size) * size + 0.5)
        return min(size, max(final, count))


@dataclass(frozen=True)
class ACDC:
    """Dense warm-up, then sparse and dense phases of ``phase`` steps, sparse from ``final`` on.

    Steps ``warmup + 2k phase .. warmup + (2k + 1) phase - 1`` are sparse, the next ``phase``
    steps dense, until ``final``; every step from ``final`` on is sparse.
    """

    warmup: int
    phase: int
    final: int

    def __post_init__(self) -> None:
        _check_steps("warmup", self.warmup)
        _check_steps("phase", self.phase, 1)
        _check_steps("final", self.final, self.warmup)

    def budget(self, step: int, final: int, size: int) -> int | None:
        if step >= self.final:
            return final
        if step < self.warmup:
            return None
        return final if ((step - self.warmup) // self.phase) % 2 == 0 else None


def schedule_named(name: str, steps: int) -> Schedule:
    """A schedule for a run of ``steps`` steps by name, its phases as shares of the run.

    - ``constant``: the budget from the first step;
    - ``warmup``: dense for the first 1/6 of the run;
    - ``cubic``: from dense at 1/6 of the run to s at 2/3 (Zhu & Gupta; then s to the end);
    - ``acdc``: dense for the first 1/10, then sparse and dense phases of 1/20 each, sparse
      for the last 1/5 (AC/DC's proportions).
    """
    if name == "constant":
        return Constant()
    if name == "warmup":
        return DenseWarmup(steps // 6)
    if name == "cubic":
        start = steps // 6
        return Cubic(start, max(start + 1, (2 * steps) // 3))
    if name == "acdc":
        warmup = steps // 10
        return ACDC(warmup=warmup, phase=max(1, steps // 20), final=max(warmup, steps - steps // 5))
    raise InvalidValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")
