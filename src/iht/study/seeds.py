"""Every seed of the IRIS study, derived from one master seed.

Seeds derive through ``numpy.random.SeedSequence``, so any run can be re-created alone:

- data seed of run i: SeedSequence(seed, spawn_key=(1, i)); shared by the dense run i and
  the IHT runs i of every level **[our choice]**: each IHT run has a dense run on the same
  split, which is what epsilon = f(theta_s) - f(theta_dense) on the same split needs;
- init, support and Monte Carlo seeds of run i at level s (s = 0 for dense):
  SeedSequence(seed, spawn_key=(2, s, i));
- the "showcase" run (the paper's init seed 21 and support seed 84): its Monte Carlo seed is
  SeedSequence(seed, spawn_key=(3, s)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .config import DENSE, SHOWCASE, StudyConfig

__all__ = ["RunSpec", "generator", "run_seeds"]


@dataclass(frozen=True)
class RunSpec:
    """One run's identity and seeds."""

    kind: str  # "dense", "iht" or "showcase"
    sparsity: int  # P for dense runs
    index: int
    data_seed: int
    init_seed: int
    support_seed: int
    mc_seed: int

    def identity(self) -> dict[str, Any]:
        """The fields of a :class:`~iht.study.schema.RunRow` that name the run and its seeds."""
        return {
            "run_id": self.run_id,
            "kind": self.kind,
            "sparsity": self.sparsity,
            "index": self.index,
            "data_seed": self.data_seed,
            "init_seed": self.init_seed,
            "support_seed": self.support_seed,
            "mc_seed": self.mc_seed,
        }

    @property
    def run_id(self) -> str:
        if self.kind == DENSE:
            return f"dense-{self.index:05d}"
        if self.kind == SHOWCASE:
            return "showcase"
        return f"s{self.sparsity:02d}-{self.index:05d}"


def _seeds(master: int, key: tuple[int, ...], n: int) -> list[int]:
    return [int(v) for v in np.random.SeedSequence(master, spawn_key=key).generate_state(n)]


def run_seeds(config: StudyConfig, kind: str, sparsity: int, index: int) -> RunSpec:
    """The seeds of one run, derived from the master seed (see the module docstring)."""
    (data_seed,) = _seeds(config.seed, (1, index), 1)
    level = 0 if kind == DENSE else sparsity
    init_seed, support_seed, mc_seed = _seeds(config.seed, (2, level, index), 3)
    if kind == SHOWCASE:
        init_seed, support_seed = config.showcase_init_seed, config.showcase_support_seed
        (mc_seed,) = _seeds(config.seed, (3, sparsity), 1)
    return RunSpec(kind, sparsity, index, data_seed, init_seed, support_seed, mc_seed)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (every draw of a run takes one of its own)."""
    return torch.Generator().manual_seed(seed)
