"""The paper's IRIS study: its configuration, presets and fixed sizes.

The study (PAPER_NOTES.md, "The experiment"): a single linear layer 4 -> 3 (P = 15) on IRIS,
``runs`` dense GD runs and ``runs`` IHT runs at each s in ``levels``, each run with its own
random 120/30 split, initialisation, initial support and its own L_hat_2s -> lr = 1/L_hat.
:class:`StudyConfig` holds everything that decides a study's numbers; it is stored as the
study's ``config.json`` and read back checked (:meth:`StudyConfig.from_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..certify import DEFAULT_GRAD_TOL
from ..errors import InvalidValueError
from ..lipschitz import DEFAULT_N_SAMPLES
from ..oracle import check_levels, check_settings
from ..storage.records import from_dict, to_json

__all__ = [
    "BACKENDS",
    "DENSE",
    "DTYPES",
    "ENGINES",
    "IHT",
    "N_CLASSES",
    "N_FEATURES",
    "PRESETS",
    "SHOWCASE",
    "OracleConfig",
    "P",
    "StudyConfig",
    "preset_runs",
]

N_FEATURES, N_CLASSES = 4, 3
P = N_CLASSES * (N_FEATURES + 1)  # 15
#: Points in IRIS.
N_POINTS = 150
DENSE = "dense"
IHT = "iht"
SHOWCASE = "showcase"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
ENGINES = ("numba", "torch")
#: Where chunks are computed (:mod:`iht.study.backends`).
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class StudyConfig:
    """Everything that determines a study's numbers (chunking included).

    Attributes:
        runs: runs per level (dense, and each s).
        levels: the sparsity levels s, each in 1..P-1.
        max_steps: the most steps of a run.
        tol: a run stops at training loss <= tol.
        n_monte: Monte Carlo draws of each run's L_hat_2s.
        seed: the master seed every run's seeds derive from.
        dtype: the engine's precision, ``float64`` or ``float32``.
        engine: ``numba`` (the compiled kernel) or ``torch`` (the stacked torch engine).
        n_train: training points of each run's split (the rest, of 150, are its test set).
        grad_tol: |grad| at or below this counts as zero in the HT-stability test.
        chunk_runs: runs per stored part.
        showcase_init_seed, showcase_support_seed, showcase_sparsity: the one extra run of the
            parameters figure (the paper's seeds 21 and 84, s = 5).
        dataset: ``iris``, the paper's data.
    """

    runs: int = 100
    levels: tuple[int, ...] = tuple(range(1, P))
    max_steps: int = 10_000
    tol: float = 0.05
    n_monte: int = DEFAULT_N_SAMPLES
    seed: int = 0
    dtype: str = "float64"
    engine: str = "numba"
    n_train: int = 120
    grad_tol: float = DEFAULT_GRAD_TOL
    chunk_runs: int = 500
    showcase_init_seed: int = 21
    showcase_support_seed: int = 84
    showcase_sparsity: int = 5
    dataset: str = "iris"

    def __post_init__(self) -> None:
        def fail(name: str, value: object, allowed: str) -> None:
            raise InvalidValueError(f"{name} must be {allowed}, got {value!r}")

        if self.runs < 1:
            fail("runs", self.runs, "an integer >= 1")
        if not self.levels or any(not 1 <= s < P for s in self.levels):
            fail("levels", self.levels, f"sparsity levels in 1..{P - 1}")
        if len(set(self.levels)) != len(self.levels):
            fail("levels", self.levels, "distinct levels")
        if self.max_steps < 1:
            fail("max_steps", self.max_steps, "an integer >= 1")
        if not (self.tol >= 0 and math.isfinite(self.tol)):
            fail("tol", self.tol, "a finite number >= 0")
        if self.n_monte < 1:
            fail("n_monte", self.n_monte, "an integer >= 1")
        if self.seed < 0:
            fail("seed", self.seed, "an integer >= 0")
        if self.engine not in ENGINES:
            fail("engine", self.engine, f"one of {', '.join(ENGINES)}")
        if self.dtype not in DTYPES:
            fail("dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        if not 1 < self.n_train < N_POINTS:
            fail("n_train", self.n_train, f"in 2..{N_POINTS - 1} (IRIS has {N_POINTS} points)")
        if not (self.grad_tol >= 0 and math.isfinite(self.grad_tol)):
            fail("grad_tol", self.grad_tol, "a finite number >= 0")
        if self.chunk_runs < 1:
            fail("chunk_runs", self.chunk_runs, "an integer >= 1")
        if not 1 <= self.showcase_sparsity < P:
            fail("showcase_sparsity", self.showcase_sparsity, f"in 1..{P - 1}")
        if self.dataset != "iris":
            fail("dataset", self.dataset, "'iris' (the paper's study)")

    def to_json(self) -> str:
        """The config as the study's ``config.json`` (sorted keys)."""
        return to_json(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        """Read a stored config, checking every field's type.

        Raises:
            InvalidValueError: an unknown field, a value of the wrong type or out of range.
        """
        return from_dict(cls, data, where="study config")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def replace(self, **changes: Any) -> StudyConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


#: ``paper``: the paper's full study. ``quick``: the same structure, fewer runs per level.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"runs": StudyConfig.runs},
    "paper": {"runs": 1000},
}


def preset_runs() -> str:
    """The runs per level of each preset, for help texts: ``quick 100, paper 1000``."""
    return ", ".join(f"{name} {values['runs']}" for name, values in PRESETS.items())


@dataclass(frozen=True)
class OracleConfig:
    """The settings of ``iht oracle``.

    Attributes:
        splits: solve the first K data splits of the study (split i is that of runs i).
        levels: the sparsity levels to solve, or None for the study's levels.
        gtol: Newton's stopping test on the gradient norm on the support.
        tie_tol: supports within this of the best loss count as optimal.
        max_iter: most Newton iterations of the first round.
    """

    splits: int = 10
    levels: tuple[int, ...] | None = None
    gtol: float = 1e-9
    tie_tol: float = 1e-9
    max_iter: int = 100

    def __post_init__(self) -> None:
        if self.splits < 1:
            raise InvalidValueError(f"splits must be an integer >= 1, got {self.splits}")
        if self.levels is not None:
            check_levels(self.levels, P - 1)
        check_settings(self.gtol, self.max_iter, 1)
        if not (self.tie_tol >= 0 and math.isfinite(self.tie_tol)):
            raise InvalidValueError(f"tie_tol must be a finite number >= 0, got {self.tie_tol}")
