r"""Training any model under a budget: budgets per pool, the (mini-batch) IHT loop, its history.

The loop :func:`fit` repeats, for k = 0, 1, ..., steps - 1,

.. math:: \theta^{k+1} = H_s(\theta^k - \gamma \nabla f_{B_k}(\theta^k)),

through an :class:`iht.IHT` optimizer (so every budget the optimizer holds is kept after every
step). ``f_B`` is the mean loss over the rows B_k: all training rows (full-batch IHT, Alg. 1),
or a mini-batch (SIHT, the same update on a mini-batch gradient): every epoch the rows are
reshuffled with the caller's generator and cut into consecutive batches of ``batch_size``
rows (the last one may be smaller). The rows of a batch are taken **in dataset order**
(sorted indices): the gradient of a batch then depends on which rows it holds, not on the
order they were drawn in, and a batch holding every row is the full batch bit for bit, so
``batch_size >= n`` reproduces full-batch IHT exactly.

A :class:`Budget` says how the s nonzeros are shared (:func:`plan_budget`):

* ``global`` (default, the paper's convention): one budget s over every parameter, biases
  included;
* ``per_layer``: every layer (a module holding parameters directly, e.g. an ``nn.Linear``:
  weight + bias) gets its own budget, proportional to its size, summing to s;
* ``exclude_biases``: biases are kept dense and outside the budget (s counts weights only).

Dense parameters live in a param group whose own ``"sparsity"`` equals its size: H_s with
s >= size keeps everything, so they take plain gradient steps inside the same optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from .certify import DEFAULT_GRAD_TOL, certify, certify_point
from .errors import NonFiniteError
from .init import sparse_init_
from .optim import IHT
from .threshold import flatten

__all__ = [
    "Budget",
    "History",
    "Pool",
    "apportion",
    "budgeted_size",
    "certify_budget",
    "evaluate",
    "fit",
    "layers_of",
    "plan_budget",
    "resolve_sparsity",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------------------
# Layers and budgets
# ----------------------------------------------------------------------------------------
def layers_of(model: nn.Module) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """The model's layers: every module that holds trainable parameters directly.

    Returns ``[(layer_name, [(parameter_name, parameter), ...]), ...]`` in
    ``model.parameters()`` order (a module's own parameters are contiguous in that order);
    parameter names are the full dotted names (``"0.weight"``). Parameters held by the root
    module itself form the layer ``"(root)"``.
    """
    layers = []
    for module_name, module in model.named_modules():
        own = [
            (f"{module_name}.{name}" if module_name else name, p)
            for name, p in module.named_parameters(recurse=False)
            if p.requires_grad
        ]
        if own:
            layers.append((module_name or "(root)", own))
    return layers


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


def budgeted_size(model: nn.Module, *, exclude_biases: bool = False) -> int:
    """How many parameters the budget covers: all of them, or all but the biases."""
    return sum(
        p.numel()
        for _, params in layers_of(model)
        for name, p in params
        if not (exclude_biases and _is_bias(name))
    )


def resolve_sparsity(value: str | int | float, total: int) -> int:
    """The budget s as a count, from a count (integer >= 1) or a fraction in (0, 1) of ``total``.

    A fraction f gives round(f * total) rounded half up, and at least 1. The text ``"1"``
    is the count 1 (not 100%); ``"1.0"`` and other non-integers >= 1 are refused.

    Raises:
        ValueError: not a number, a count outside 1..total, a fraction outside (0, 1).
    """
    text = str(value).strip()
    try:
        count = int(text)
    except ValueError:
        count = None
    if count is not None:
        if not 1 <= count <= total:
            raise ValueError(
                f"sparsity {count} is out of range: a count must be in 1..{total} "
                f"(the budgeted parameters), or give a fraction in (0, 1) like 0.1"
            )
        return count
    try:
        fraction = float(text)
    except ValueError:
        fraction = math.nan
    if not 0 < fraction < 1:
        raise ValueError(
            f"sparsity must be a count of nonzeros (an integer in 1..{total}) or a fraction "
            f"in (0, 1) like 0.1, got {text!r}"
        )
    return max(1, min(total, math.floor(fraction * total + 0.5)))


def apportion(total: int, sizes: Sequence[int]) -> list[int]:
    """Split ``total`` into integer shares proportional to ``sizes`` that sum to ``total``.

    Largest remainders (Hamilton's method): each share is floor(total * size / sum(sizes)),
    then the units left over go one each to the largest fractional parts (ties: the earlier
    entry). No share exceeds its size when total <= sum(sizes). A share can be 0 when
    ``total`` is small.
    """
    whole = sum(sizes)
    if whole <= 0:
        raise ValueError("apportion needs sizes with a positive sum")
    if not 0 <= total <= whole:
        raise ValueError(f"total must be in 0..{whole}, got {total}")
    # Integer arithmetic: total * size = quotient * whole + remainder, exactly.
    shares = [total * size // whole for size in sizes]
    remainders = [total * size % whole for size in sizes]
    order = sorted(range(len(sizes)), key=lambda i: (-remainders[i], i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


@dataclass(frozen=True)
class Pool:
    """A set of parameters sharing one budget (H_s acts on their concatenation).

    ``sparsity`` equals ``size`` for a dense pool (``dense=True``).
    """

    name: str
    params: tuple[str, ...]
    size: int
    sparsity: int
    dense: bool = False


@dataclass(frozen=True)
class Budget:
    """How a budget of s nonzeros is shared among a model's parameters."""

    mode: str  # "global" or "per_layer"
    sparsity: int  # s, the total budget (dense pools not counted)
    exclude_biases: bool
    pools: tuple[Pool, ...]

    @property
    def budgeted(self) -> int:
        """Number of parameters under the budget."""
        return sum(p.size for p in self.pools if not p.dense)

    @property
    def max_nonzeros(self) -> int:
        """The most nonzeros an iterate can have: s plus every dense parameter."""
        return self.sparsity + sum(p.size for p in self.pools if p.dense)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def param_groups(self, model: nn.Module) -> tuple[list[dict[str, Any]], int | None]:
        """IHT param groups and the optimizer's global sparsity for this budget."""
        named = dict(model.named_parameters())
        if self.mode == "global":
            groups: list[dict[str, Any]] = []
            for pool in self.pools:
                group: dict[str, Any] = {"params": [named[n] for n in pool.params]}
                if pool.dense:
                    group["sparsity"] = pool.size
                groups.append(group)
            return groups, self.sparsity
        return [
            {"params": [named[n] for n in pool.params], "sparsity": pool.sparsity}
            for pool in self.pools
        ], None

    def optimizer(self, model: nn.Module, *, lr: float) -> IHT:
        """An :class:`iht.IHT` enforcing this budget."""
        groups, sparsity = self.param_groups(model)
        return IHT(groups, lr=lr, sparsity=sparsity)

    @torch.no_grad()
    def sparse_init_(self, model: nn.Module, *, generator: torch.Generator | None) -> None:
        """Keep a uniformly random support of each pool's budget (dense pools untouched)."""
        named = dict(model.named_parameters())
        for pool in self.pools:
            if not pool.dense:
                sparse_init_([named[n] for n in pool.params], pool.sparsity, generator=generator)

    def nonzeros(self, model: nn.Module) -> dict[str, int]:
        """Nonzeros of every pool, by pool name."""
        named = dict(model.named_parameters())
        return {
            pool.name: sum(int((named[n] != 0).sum()) for n in pool.params) for pool in self.pools
        }


def plan_budget(
    model: nn.Module, sparsity: int, *, per_layer: bool = False, exclude_biases: bool = False
) -> Budget:
    """Share a budget of ``sparsity`` nonzeros among the model's parameters.

    Args:
        model: the model; its layers are :func:`layers_of`.
        sparsity: s, an integer in 1..:func:`budgeted_size` (see :func:`resolve_sparsity`).
        per_layer: give every layer its own budget proportional to its budgeted size
            (:func:`apportion`, summing to s); otherwise one global budget.
        exclude_biases: keep biases dense and outside the budget.

    Returns:
        A :class:`Budget`: the pools in parameter order, biases last in their dense pool.

    Raises:
        ValueError: ``sparsity`` outside 1..budgeted size, or nothing to budget.
    """
    layers = layers_of(model)
    budgeted = [
        (layer, [(n, p) for n, p in params if not (exclude_biases and _is_bias(n))])
        for layer, params in layers
    ]
    budgeted = [(layer, params) for layer, params in budgeted if params]
    total = sum(p.numel() for _, params in budgeted for _, p in params)
    if total == 0:
        raise ValueError(f"{type(model).__name__} has no parameters to put under a budget")
    if isinstance(sparsity, bool) or not isinstance(sparsity, int) or not 1 <= sparsity <= total:
        raise ValueError(f"sparsity must be an integer in 1..{total}, got {sparsity!r}")
    pools: list[Pool] = []
    if per_layer:
        sizes = [sum(p.numel() for _, p in params) for _, params in budgeted]
        for (layer, params), size, share in zip(
            budgeted, sizes, apportion(sparsity, sizes), strict=True
        ):
            pools.append(Pool(layer, tuple(n for n, _ in params), size, share))
    else:
        names = tuple(n for _, params in budgeted for n, _ in params)
        pools.append(Pool("all" if not exclude_biases else "weights", names, total, sparsity))
    if exclude_biases:
        biases = [(n, p) for _, params in layers for n, p in params if _is_bias(n)]
        if biases:
            size = sum(p.numel() for _, p in biases)
            pools.append(Pool("biases", tuple(n for n, _ in biases), size, size, dense=True))
    return Budget(
        mode="per_layer" if per_layer else "global",
        sparsity=sparsity,
        exclude_biases=exclude_biases,
        pools=tuple(pools),
    )


# ----------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------
@dataclass
class History:
    """What :func:`fit` recorded, one entry per step k = 0, 1, ...

    Row k holds: ``train_loss`` and ``train_accuracy`` over all training rows at theta^k
    (the point whose gradient makes step k); ``batch_loss``, the loss of step k's batch
    (equal to ``train_loss`` in full-batch training); ``entered`` / ``left``, how many
    entries joined / left the support (the nonzeros) from theta^k to theta^{k+1};
    ``nonzeros`` and ``layer_nonzeros[layer]``, the nonzeros of theta^{k+1}; ``test_loss``
    and ``test_accuracy`` at theta^k on steps where they were evaluated (NaN elsewhere).
    """

    layers: tuple[str, ...] = ()
    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    entered: list[int] = field(default_factory=list)
    left: list[int] = field(default_factory=list)
    nonzeros: list[int] = field(default_factory=list)
    layer_nonzeros: dict[str, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.step)

    def to_frame(self) -> pd.DataFrame:
        """One row per step; per-layer nonzeros in columns ``nonzeros.<layer>``."""
        columns: dict[str, Any] = {
            "step": pd.Series(self.step, dtype="int64"),
            "train_loss": pd.Series(self.train_loss, dtype="float64"),
            "train_accuracy": pd.Series(self.train_accuracy, dtype="float64"),
            "batch_loss": pd.Series(self.batch_loss, dtype="float64"),
            "test_loss": pd.Series(self.test_loss, dtype="float64"),
            "test_accuracy": pd.Series(self.test_accuracy, dtype="float64"),
            "entered": pd.Series(self.entered, dtype="int64"),
            "left": pd.Series(self.left, dtype="int64"),
            "nonzeros": pd.Series(self.nonzeros, dtype="int64"),
        }
        for layer in self.layers:
            columns[f"nonzeros.{layer}"] = pd.Series(
                self.layer_nonzeros.get(layer, []), dtype="int64"
            )
        return pd.DataFrame(columns)


@torch.no_grad()
def evaluate(
    model: nn.Module, X: Tensor, y: Tensor, *, loss_fn: LossFn = nn.functional.cross_entropy
) -> tuple[float, float]:
    """(mean loss, accuracy) of a classifier on (X, y)."""
    out = model(X)
    return float(loss_fn(out, y)), _accuracy(out, y)


def _accuracy(out: Tensor, y: Tensor) -> float:
    return float((out.argmax(dim=-1) == y).to(torch.float64).mean())


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
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
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
    loss_fn: LossFn = nn.functional.cross_entropy,
    history: History | None = None,
) -> History:
    r"""Train ``model`` for ``steps`` updates of ``optimizer`` and record every step.

    With an :class:`iht.IHT` optimizer each step is
    theta^{k+1} = H_s(theta^k - gamma grad f_{B_k}(theta^k)); B_k is every row
    (``batch_size=None``) or a mini-batch of a fresh shuffle each epoch (see the module
    docstring: with ``batch_size >= len(X)`` the result equals full-batch training exactly).
    The model's train/eval mode is left as it is.

    Args:
        model: any classifier ``model(X) -> logits``.
        X, y: training rows and integer labels.
        optimizer: e.g. ``Budget.optimizer(model, lr=...)`` or ``iht.IHT(...)``.
        steps: number of updates (>= 0).
        batch_size: rows per mini-batch; None for full-batch training.
        generator: the shuffling randomness (required with ``batch_size``).
        on_step: called as ``on_step(k, history)`` after step k is recorded.
        test: (X_test, y_test), evaluated at theta^k every ``eval_every`` steps and at the
            last step.
        eval_every: test evaluation period (>= 1).
        loss_fn: ``loss_fn(logits, y)`` -> mean loss (cross-entropy by default).
        history: a :class:`History` to append to (the caller keeps what was recorded even
            when training stops with an error); a new one by default.

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
        >>> hist.to_frame().tail(1)                                          # doctest: +SKIP
    """
    _check_count(steps, "steps", minimum=0)
    _check_count(eval_every, "eval_every", minimum=1)
    if batch_size is not None:
        _check_count(batch_size, "batch_size", minimum=1)
        if generator is None:
            raise ValueError("mini-batch training needs a generator to shuffle the rows")
    n = X.shape[0]
    if n < 1 or y.shape[:1] != (n,):
        raise ValueError(
            f"X and y must hold the same number (>= 1) of rows, got {tuple(X.shape)} and {tuple(y.shape)}"
        )
    layers = layers_of(model)
    params = [p for _, own in layers for _, p in own]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    offsets, start = [], 0
    for _, own in layers:
        size = sum(p.numel() for _, p in own)
        offsets.append((start, start + size))
        start += size
    if history is None:
        history = History(layers=tuple(name for name, _ in layers))
    if not history.layers:
        history.layers = tuple(name for name, _ in layers)
    for name in history.layers:
        history.layer_nonzeros.setdefault(name, [])

    batches = _batches(n, batch_size, generator)
    first = history.step[-1] + 1 if history.step else 0
    for k in range(first, first + steps):
        rows = next(batches)
        full = rows is None or rows.numel() == n
        xb, yb = (X, y) if rows is None else (X[rows], y[rows])
        optimizer.zero_grad(set_to_none=True)
        out = model(xb)
        loss = loss_fn(out, yb)
        batch_loss = float(loss.detach())
        if not math.isfinite(batch_loss):
            raise NonFiniteError(
                f"training stopped at step {k}: the loss is {batch_loss}; parameters left unchanged"
            )
        if full:
            train_loss, train_accuracy = batch_loss, _accuracy(out.detach(), yb)
        else:
            train_loss, train_accuracy = evaluate(model, X, y, loss_fn=loss_fn)
        if test is not None and ((k - first) % eval_every == 0 or k == first + steps - 1):
            test_loss, test_accuracy = evaluate(model, test[0], test[1], loss_fn=loss_fn)
        else:
            test_loss = test_accuracy = math.nan
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
            history.train_accuracy.append(train_accuracy)
            history.batch_loss.append(batch_loss)
            history.test_loss.append(test_loss)
            history.test_accuracy.append(test_accuracy)
            history.entered.append(int((after & ~before).sum()))
            history.left.append(int((before & ~after).sum()))
            history.nonzeros.append(int(after.sum()))
            for (name, _), (lo, hi) in zip(layers, offsets, strict=True):
                if name in history.layer_nonzeros:
                    history.layer_nonzeros[name].append(int(after[lo:hi].sum()))
        if on_step is not None:
            on_step(k, history)
    return history


# ----------------------------------------------------------------------------------------
# Certificates under a budget
# ----------------------------------------------------------------------------------------
def certify_budget(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    *,
    lr: float,
    budget: Budget,
    grad_tol: float = DEFAULT_GRAD_TOL,
    dense_loss: float | None = None,
) -> dict[str, Any]:
    """HT-stability of the model's point under ``budget`` (and epsilon given a dense loss).

    With one pool this is exactly :func:`iht.certify`'s :class:`~iht.Certificate` as a dict.
    With several pools (per-layer budgets, dense biases) each pool is certified with its
    own budget (:func:`iht.certify_point`: the IHT map acts on each pool separately) and
    listed under ``"pools"``; the top level combines them: ``stable`` and ``tie`` over all
    pools, the largest ``max_grad_on_support``, ``max_grad_off_support`` and
    ``off_support_ratio``, the residual of the whole vector (root of the sum of squares),
    ``nonzeros`` and ``sparsity`` summed over the budgeted pools.
    """
    if len(budget.pools) == 1:
        cert = certify(
            model,
            loss_fn,
            lr=lr,
            sparsity=budget.sparsity,
            grad_tol=grad_tol,
            dense_loss=dense_loss,
        )
        return asdict(cert)
    named = dict(model.named_parameters())
    params = [named[n] for pool in budget.pools for n in pool.params]
    loss = loss_fn(model)
    grads = dict(
        zip(
            (n for pool in budget.pools for n in pool.params),
            torch.autograd.grad(loss, params, allow_unused=True),
            strict=True,
        )
    )
    loss_value = float(loss.detach())
    pools = []
    for pool in budget.pools:
        theta = flatten(named[n].detach() for n in pool.params)
        grad = flatten(
            torch.zeros_like(named[n]) if grads[n] is None else grads[n] for n in pool.params
        )
        figures = asdict(
            certify_point(theta, grad, lr=lr, sparsity=pool.sparsity, grad_tol=grad_tol)
        )
        for key in ("loss", "dense_loss", "epsilon", "epsilon_optimal"):
            del figures[key]  # whole-model quantities: given once, at the top level
        pools.append({"name": pool.name, "dense": pool.dense, **figures})
    budgeted = [p for p in pools if not p["dense"]]
    epsilon = None if dense_loss is None else loss_value - dense_loss
    return {
        "sparsity": budget.sparsity,
        "lr": float(lr),
        "nonzeros": sum(int(p["nonzeros"]) for p in budgeted),
        "max_grad_on_support": max(float(p["max_grad_on_support"]) for p in pools),
        "max_grad_off_support": max(float(p["max_grad_off_support"]) for p in pools),
        "off_support_ratio": max(float(p["off_support_ratio"]) for p in pools),
        "residual": math.sqrt(sum(float(p["residual"]) ** 2 for p in pools)),
        "tie": any(bool(p["tie"]) for p in pools),
        "stable": all(bool(p["stable"]) for p in pools),
        "grad_tol": grad_tol,
        "loss": loss_value,
        "dense_loss": dense_loss,
        "epsilon": epsilon,
        "epsilon_optimal": None,
        "pools": pools,
    }
