"""What a model predicts: class labels (cross-entropy, accuracy) or a number (MSE, R^2).

A :class:`Task` gives the training loss, the score a run reports and the loss of the best
constant prediction (the certificate's test for a collapsed network):

- classification: f = cross-entropy of the logits, score = accuracy, best constant loss =
  the entropy of the label frequencies;
- regression: f = mean squared error of the single output against the (standardised)
  target, score = R^2 = 1 - SS_res / SS_tot, best constant loss = the target's variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import InvalidValueError

__all__ = ["TASKS", "Task", "task_named"]

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class Task:
    """A prediction task: ``classification`` or ``regression``."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise InvalidValueError(f"task must be one of {', '.join(TASKS)}, got {self.name!r}")

    @property
    def regression(self) -> bool:
        return self.name == "regression"

    @property
    def score_name(self) -> str:
        """The reported score: ``accuracy`` or ``r2``."""
        return "r2" if self.regression else "accuracy"

    @property
    def score_label(self) -> str:
        """The score as a report writes it."""
        return "R²" if self.regression else "accuracy"

    def n_outputs(self, n_classes: int) -> int:
        """The model's output width: one logit per class, or one number."""
        return 1 if self.regression else n_classes

    def targets(self, y: object, dtype: torch.dtype) -> Tensor:
        """The target tensor: int64 labels, or floating values of the model's dtype."""
        return torch.as_tensor(y, dtype=dtype if self.regression else torch.long)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy of logits (n, C), or mean squared error of outputs (n, 1)."""
        if self.regression:
            return nn.functional.mse_loss(out.reshape(y.shape), y)
        return nn.functional.cross_entropy(out, y)

    def score(self, out: Tensor, y: Tensor) -> float:
        """Accuracy, or R^2 = 1 - sum (y - f)^2 / sum (y - mean y)^2 (NaN when y is constant)."""
        if self.regression:
            pred = out.detach().reshape(y.shape).double()
            target = y.double()
            total = float(((target - target.mean()) ** 2).sum())
            residual = float(((target - pred) ** 2).sum())
            return 1.0 - residual / total if total > 0 else float("nan")
        return float((out.argmax(dim=-1) == y).to(torch.float64).mean())

    def constant_loss(self, y: Tensor) -> float:
        """The smallest loss a prediction that ignores the input reaches on targets ``y``:
        the entropy of the label frequencies, or the (population) variance of the target."""
        if self.regression:
            return float(y.double().var(unbiased=False))
        counts = torch.bincount(y.flatten()).double()
        p = counts[counts > 0] / counts.sum()
        return float(-(p * p.log()).sum())


CLASSIFICATION = Task("classification")
REGRESSION = Task("regression")


def task_named(name: str) -> Task:
    """The :class:`Task` called ``name`` (one of :data:`TASKS`)."""
    return Task(name)
