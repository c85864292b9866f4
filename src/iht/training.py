r"""Training any model under a budget: the (mini-batch) IHT loop and its history.

The loop :func:`fit` repeats, for k = 0, 1, ..., steps - 1,

.. math:: \theta^{k+1} = H_s(\theta^k - \gamma \nabla f_{B_k}(\theta^k)),

through an :class:`iht.IHT` optimizer (so every budget the optimizer holds is kept after every
step; see :mod:`iht.budget` for budgets shared per layer). ``f_B`` is the mean loss over the
rows B_k: all training rows (full-batch IHT, Alg. 1), or a mini-batch (SIHT, the same update on
a mini-batch gradient): every epoch the rows are reshuffled with the caller's generator and
cut into consecutive batches of ``batch_size`` rows (the last one may be smaller). The rows of
a batch are taken **in dataset order** (sorted indices): the gradient of a batch then depends
on which rows it holds, not on the order they were drawn in, and a batch holding every row is
the full batch bit for bit, so ``batch_size >= n`` reproduces full-batch IHT exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from .budget import layers_of
from .errors import InvalidValueError, NonFiniteError
from .tasks import CLASSIFICATION, Task
from .threshold import flatten

__all__ = ["History", "LossFn", "evaluate", "fit"]

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class History:
    """What :func:`fit` recorded, one entry per step k = 0, 1, ...

    Row k holds: ``train_loss`` and ``train_score`` over all training rows at theta^k
    (the point whose gradient makes step k; with mini-batches only on evaluation steps, NaN
    elsewhere); ``batch_loss``, the loss of step k's batch
    (equal to ``train_loss`` in full-batch training); ``entered`` / ``left``, how many
    entries joined / left the support (the nonzeros) from theta^k to theta^{k+1};
    ``nonzeros`` and ``layer_nonzeros[layer]``, the nonzeros of theta^{k+1}; ``test_loss``
    and ``test_score`` at theta^k on steps where they were evaluated (NaN elsewhere).
    The score is the task's (:attr:`iht.tasks.Task.score_name`): accuracy, or R^2 for
    regression; the stored columns are named after it (``train_accuracy`` or ``train_r2``).
    """

    layers: tuple[str, ...] = ()
    score: str = "accuracy"
    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_score: list[float] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_score: list[float] = field(default_factory=list)
    entered: list[int] = field(default_factory=list)
    left: list[int] = field(default_factory=list)
    nonzeros: list[int] = field(default_factory=list)
    layer_nonzeros: dict[str, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.step)

    def columns(self) -> dict[str, NDArray[Any]]:
        """One array per column, one entry per step (int64 counts, float64 metrics); per-layer
        nonzeros in columns ``nonzeros.<layer>``. ``pandas.DataFrame(history.columns())`` is the
        table ``iht train`` stores as ``history.parquet``."""
        ints, floats = np.int64, np.float64
        columns: dict[str, NDArray[Any]] = {
            "step": np.asarray(self.step, dtype=ints),
            "train_loss": np.asarray(self.train_loss, dtype=floats),
            f"train_{self.score}": np.asarray(self.train_score, dtype=floats),
            "batch_loss": np.asarray(self.batch_loss, dtype=floats),
            "test_loss": np.asarray(self.test_loss, dtype=floats),
            f"test_{self.score}": np.asarray(self.test_score, dtype=floats),
            "entered": np.asarray(self.entered, dtype=ints),
            "left": np.asarray(self.left, dtype=ints),
            "nonzeros": np.asarray(self.nonzeros, dtype=ints),
        }
        for layer in self.layers:
            columns[f"nonzeros.{layer}"] = np.asarray(
                self.layer_nonzeros.get(layer, []), dtype=ints
            )
        return columns

    @classmethod
    def from_columns(
        cls, layers: tuple[str, ...], columns: dict[str, Any], *, score: str = "accuracy"
    ) -> History:
        """The history :meth:`columns` describes (e.g. read back from a checkpoint).

        Raises:
            InvalidValueError: a column is missing or the columns differ in length.
        """
        names = [f.name for f in fields(cls) if f.name not in ("layers", "score", "layer_nonzeros")]
        stored = {"train_score": f"train_{score}", "test_score": f"test_{score}"}
        wanted = [*(stored.get(n, n) for n in names), *(f"nonzeros.{layer}" for layer in layers)]
        missing = [name for name in wanted if name not in columns]
        lengths = {len(columns[name]) for name in wanted if name in columns}
        if missing or len(lengths) > 1:
            raise InvalidValueError(
                f"not a training history (missing {missing}, column lengths {sorted(lengths)})"
            )
        history = cls(layers=tuple(layers), score=score)
        for name in names:
            kind = int if name in ("step", "entered", "left", "nonzeros") else float
            setattr(history, name, [kind(v) for v in columns[stored.get(name, name)]])
        history.layer_nonzeros = {
            layer: [int(v) for v in columns[f"nonzeros.{layer}"]] for layer in layers
        }
        return history


@torch.no_grad()
def evaluate(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn | None = None,
    task: Task = CLASSIFICATION,
) -> tuple[float, float]:
    """(mean loss, score) of ``model`` on (X, y): the task's loss (or ``loss_fn``) and its
    score (accuracy of a classifier, R^2 of a regression)."""
    out = model(X)
    return float((loss_fn or task.loss)(out, y)), task.score(out, y)


def _batches(
    n: int, batch_size: int | None, generator: torch.Generator | None
) -> Iterator[Tensor | None]:
    """Row indices of each step's batch; None means every row (full batch)."""
    if batch_size is None:
        while True:
            yield None
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            # Dataset order inside a batch: see the module docstring.
            yield order[start : start + batch_size].sort().values


def _check_count(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def fit(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    steps: int,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, History], None] | None = None,
    test: tuple[Tensor, Tensor] | None = None,
    eval_every: int = 1,
    loss_fn: LossFn | None = None,
    task: Task = CLASSIFICATION,
    history: History | None = None,
    skip_batches: int = 0,
) -> History:
    r"""Train ``model`` for ``steps`` updates of ``optimizer`` and record every step.

    With an :class:`iht.IHT` optimizer each step is
    theta^{k+1} = H_s(theta^k - gamma grad f_{B_k}(theta^k)); B_k is every row
    (``batch_size=None``) or a mini-batch of a fresh shuffle each epoch (see the module
    docstring: with ``batch_size >= len(X)`` the result equals full-batch training exactly).
    The model's train/eval mode is left as it is.

    Args:
        model: a classifier ``model(X) -> logits`` or, for a regression ``task``, a model
            with one output.
        X, y: training rows and their integer labels (or numeric targets).
        optimizer: e.g. ``Budget.optimizer(model, lr=...)`` or ``iht.IHT(...)``.
        steps: number of updates (>= 0).
        batch_size: rows per mini-batch; None for full-batch training.
        generator: the shuffling randomness (required with ``batch_size``).
        on_step: called as ``on_step(k, history)`` after step k is recorded.
        test: (X_test, y_test), evaluated at theta^k every ``eval_every`` steps and at the
            last step.
        eval_every: evaluation period (>= 1) of the test rows and, with mini-batches, of the
            loss over every training row (NaN in between; full batch: every step, for free).
        loss_fn: ``loss_fn(out, y)`` -> mean loss (default: the task's, cross-entropy or MSE).
        task: what is predicted (:mod:`iht.tasks`): it gives the loss and the recorded score.
        history: a :class:`History` to append to (the caller keeps what was recorded even
            when training stops with an error); a new one by default. Steps are numbered on
            from its last one, and evaluation steps stay those of k % eval_every == 0.
        skip_batches: batches of the first epoch to pass over before the first step: resuming
            a run stopped mid-epoch, with ``generator`` in the state it had at that epoch's
            start, continues on the very batches the uninterrupted run takes.

    Returns:
        The :class:`History`.

    Raises:
        ValueError: bad steps, batch_size, eval_every, shapes, or no generator for
            mini-batches.
        NonFiniteError: the loss, a gradient or an update is NaN or infinite; the parameters
            are those of the last finished step, ``history`` holds every finished step.

    Example:
        >>> budget = plan_budget(model, 50)                                  # doctest: +SKIP
        >>> opt = budget.optimizer(model, lr=0.5)                            # doctest: +SKIP
        >>> hist = fit(model, X, y, optimizer=opt, steps=100)                # doctest: +SKIP
        >>> pandas.DataFrame(hist.columns()).tail(1)                         # doctest: +SKIP
    """
    _check_count(steps, "steps", minimum=0)
    _check_count(eval_every, "eval_every", minimum=1)
    if batch_size is not None:
        _check_count(batch_size, "batch_size", minimum=1)
        if generator is None:
            raise InvalidValueError("mini-batch training needs a generator to shuffle the rows")
    n = X.shape[0]
    if n < 1 or y.shape[:1] != (n,):
        raise InvalidValueError(
            f"X and y must hold the same number (>= 1) of rows, got {tuple(X.shape)} and {tuple(y.shape)}"
        )
    layers = layers_of(model)
    params = [p for _, own in layers for _, p in own]
    if not params:
        raise InvalidValueError(f"{type(model).__name__} has no trainable parameters")
    offsets, start = [], 0
    for _, own in layers:
        size = sum(p.numel() for _, p in own)
        offsets.append((start, start + size))
        start += size
    loss_of = loss_fn or task.loss
    if history is None:
        history = History(layers=tuple(name for name, _ in layers), score=task.score_name)
    if history.score != task.score_name:
        raise InvalidValueError(
            f"the history records {history.score}, the task ({task.name}) scores {task.score_name}"
        )
    if not history.layers:
        history.layers = tuple(name for name, _ in layers)
    for name in history.layers:
        history.layer_nonzeros.setdefault(name, [])

    _check_count(skip_batches, "skip_batches", minimum=0)
    batches = _batches(n, batch_size, generator)
    for _ in range(skip_batches):
        next(batches)
    first = history.step[-1] + 1 if history.step else 0
    for k in range(first, first + steps):
        rows = next(batches)
        full = rows is None or rows.numel() == n
        xb, yb = (X, y) if rows is None else (X[rows], y[rows])
        optimizer.zero_grad(set_to_none=True)
        out = model(xb)
        loss = loss_of(out, yb)
        batch_loss = float(loss.detach())
        if not math.isfinite(batch_loss):
            raise NonFiniteError(
                f"training stopped at step {k}: the loss is {batch_loss}; parameters left unchanged"
            )
        evaluated = k % eval_every == 0 or k == first + steps - 1
        if full:
            train_loss, train_score = batch_loss, task.score(out.detach(), yb)
        elif evaluated:  # a pass over every training row: only on evaluation steps
            train_loss, train_score = evaluate(model, X, y, loss_fn=loss_of, task=task)
        else:
            train_loss = train_score = math.nan
        if test is not None and evaluated:
            test_loss, test_score = evaluate(model, test[0], test[1], loss_fn=loss_of, task=task)
        else:
            test_loss = test_score = math.nan
        with torch.no_grad():
            before = flatten(p.detach() for p in params) != 0
        loss.backward()
        try:
            optimizer.step()
        except NonFiniteError as exc:
            raise NonFiniteError(f"training stopped at step {k}: {exc}") from exc
        with torch.no_grad():
            after = flatten(p.detach() for p in params) != 0
            history.step.append(k)
            history.train_loss.append(train_loss)
            history.train_score.append(train_score)
            history.batch_loss.append(batch_loss)
            history.test_loss.append(test_loss)
            history.test_score.append(test_score)
            history.entered.append(int((after & ~before).sum()))
            history.left.append(int((before & ~after).sum()))
            history.nonzeros.append(int(after.sum()))
            for (name, _), (lo, hi) in zip(layers, offsets, strict=True):
                if name in history.layer_nonzeros:
                    history.layer_nonzeros[name].append(int(after[lo:hi].sum()))
        if on_step is not None:
            on_step(k, history)
    return history
