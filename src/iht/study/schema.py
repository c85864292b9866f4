"""The stored row of one study run, defined once: its fields, types and meaning.

Both ways of computing runs (:func:`iht.study.chunks.run_chunk`, many at once, and
:func:`iht.study.faithful.run_one_faithful`, one at a time) build a :class:`RunRow`; the store
writes rows with the Arrow schema of its fields (:func:`iht.study.store.run_schema`), so every
part has the same columns, of the same types, in the same order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["RunRow"]


@dataclass(frozen=True)
class RunRow:
    """One run of the study, as stored (one Parquet row).

    Parameters are flat in ``nn.Linear(4, 3).parameters()`` order: W (3 x 4, row-major) then b.
    """

    run_id: str  # "dense-00012", "s05-00012" or "showcase"
    kind: str  # "dense", "iht" or "showcase"
    sparsity: int  # s (P = 15 for dense runs)
    index: int  # the run's index i within its level; split i is shared across levels
    data_seed: int
    init_seed: int
    support_seed: int
    mc_seed: int
    train_idx: list[int]  # the training points of the run's split, sorted
    l_hat: float  # L_hat_2s, the Monte Carlo estimate
    lr: float  # 1 / l_hat
    steps: int  # updates applied
    reached_tol: bool  # the training loss reached tol
    nonzeros: int
    support: list[int]  # flat indices of the final nonzeros
    theta_init: list[float]
    theta_final: list[float]
    grad_final: list[float]  # grad f at theta_final
    train_loss: float
    test_loss: float
    train_acc: float
    test_acc: float
    max_grad_on_support: float
    max_grad_off_support: float
    off_support_ratio: float
    residual: float  # ||theta - H_s(theta - lr grad f(theta))||
    tie: bool  # H_s was set-valued at the final point
    stable: bool  # HT-stable within grad_tol
    dense_train_loss: float  # f of the dense run on the same split (NaN when not stored)
    epsilon: float  # train_loss - dense_train_loss

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
