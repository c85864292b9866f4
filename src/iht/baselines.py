r"""The sparsification methods IHT is compared with, as full-batch training loops.

Each loop trains a model in place on a loss closure ``loss_fn(model)`` (the full training
loss f, one evaluation per gradient step), with plain gradient steps of size ``lr``:

- :func:`gradient_descent_`: GD (Alg. 2); with ``l1`` > 0, proximal gradient on
  f(theta) + l1 ||theta||_1 (ISTA: a gradient step, then soft thresholding by lr * l1); with
  ``masks``, every step is followed by the masks (masked fine-tuning);
- :func:`prune_global_`: one-shot global magnitude pruning with
  ``torch.nn.utils.prune.global_unstructured`` over every weight **and bias**;
- :func:`magnitude_masks`: the masks of H_s over all parameters (keep the s largest);
- :func:`gmp_train_`: gradual magnitude pruning (Zhu & Gupta 2017) on the cubic schedule of
  :func:`gmp_sparsity` at the steps of a :class:`GmpPlan`, then the final mask fixed;
- :func:`iht_train_`: IHT itself, for the same loop shape.

``iht compare`` (:mod:`iht.experiments.compare`) runs them side by side with equal budgets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import prune

from .errors import InvalidValueError
from .optim import IHT
from .threshold import flatten, split_like, threshold_mask

__all__ = [
    "GmpPlan",
    "LossClosure",
    "gmp_plan",
    "gmp_sparsity",
    "gmp_train_",
    "gradient_descent_",
    "iht_train_",
    "magnitude_masks",
    "nonzeros",
    "parameter_slots",
    "prune_global_",
]

#: The full training loss as a function of the model (evaluated once per gradient step).
LossClosure = Callable[[nn.Module], Tensor]


@dataclass(frozen=True)
class GmpPlan:
    """When GMP prunes: at steps t0, t0 + dt, ..., t0 + n dt (0-based step indices)."""

    t0: int
    dt: int
    n: int

    @property
    def end(self) -> int:
        """The step at which the final sparsity is reached."""
        return self.t0 + self.n * self.dt

    def prunes_at(self, t: int) -> bool:
        return self.t0 <= t <= self.end and (t - self.t0) % self.dt == 0


def gmp_plan(steps: int, *, start: float = 1 / 6, end: float = 2 / 3, events: int = 100) -> GmpPlan:
    """The pruning steps of GMP over ``steps`` training steps.

    t0 = floor(steps * start); the last pruning step t0 + n dt is at most
    floor(steps * end) (and at most steps - 1, so the final mask is always applied);
    dt = ceil((that - t0) / events), so there are about ``events`` pruning events.

    Example:
        >>> gmp_plan(2000)
        GmpPlan(t0=333, dt=10, n=100)
    """
    if steps < 1:
        raise InvalidValueError(f"steps must be >= 1, got {steps}")
    t0 = min(int(steps * start), steps - 1)
    stop = max(min(int(steps * end), steps - 1), t0)
    dt = max(1, math.ceil((stop - t0) / events))
    return GmpPlan(t0=t0, dt=dt, n=(stop - t0) // dt)


def gmp_sparsity(t: int, *, initial: float, final: float, t0: int, dt: int, n: int) -> float:
    r"""The fraction of pruned parameters at step t (Zhu & Gupta 2017, eq. 1).

    .. math:: s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3

    at the pruning steps t = t0 + k dt (k = 0..n); constant in between (the mask only changes
    at pruning steps), ``initial`` before t0 and ``final`` from t0 + n dt on. With n = 0 the
    single pruning event at t0 goes straight to ``final``.

    Example:
        >>> gmp_sparsity(5, initial=0.0, final=0.8, t0=0, dt=1, n=10)
        0.7
    """
    if t < t0:
        return initial
    if n <= 0:
        return final
    k = min((t - t0) // dt, n)
    if k == 0:  # exact end points, whatever the rounding of the formula
        return initial
    if k == n:
        return final
    return final + (initial - final) * (1 - k / n) ** 3


def _kept(sparsity: float, size: int, s: int) -> int:
    """Entries kept at a pruned fraction: P - round(fraction * P), within s..P."""
    return min(size, max(s, size - round(sparsity * size)))


def parameter_slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, name) of every trainable parameter, in ``model.parameters()`` order."""
    return [
        (module, name)
        for module in model.modules()
        for name, p in module.named_parameters(recurse=False)
        if p.requires_grad
    ]


def nonzeros(model: nn.Module) -> int:
    """Nonzero entries over every parameter of ``model``."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def gradient_descent_(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    *,
    lr: float,
    steps: int,
    masks: Sequence[Tensor] | None = None,
    l1: float = 0.0,
) -> None:
    """``steps`` GD steps; then soft thresholding by lr * l1 (ISTA) and the masks, if any."""
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr, foreach=True)
    shrink = lr * l1
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        opt.step()
        if shrink > 0 or masks is not None:
            with torch.no_grad():
                for i, p in enumerate(params):
                    if shrink > 0:
                        p.copy_(F.softshrink(p, shrink))
                    if masks is not None:
                        p.mul_(masks[i])


def _split_mask(mask: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """A flat bool mask as one float mask per parameter (multiplied in after each step)."""
    return [part.to(p.dtype) for part, p in zip(split_like(mask, params), params, strict=True)]


def gmp_train_(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    *,
    lr: float,
    steps: int,
    s: int,
    plan: GmpPlan,
) -> None:
    """GD with the cubic pruning schedule of :func:`gmp_sparsity`, then the mask fixed."""
    params = list(model.parameters())
    size = sum(p.numel() for p in params)
    final = 1 - s / size
    opt = torch.optim.SGD(params, lr=lr, foreach=True)
    keep = torch.ones(size, dtype=torch.bool)
    masks: list[Tensor] | None = None
    for t in range(steps):
        if plan.prunes_at(t):
            k = _kept(
                gmp_sparsity(t, initial=0.0, final=final, t0=plan.t0, dt=plan.dt, n=plan.n), size, s
            )
            with torch.no_grad():
                # Pruned entries are exactly 0, so the k largest magnitudes lie among the
                # unpruned ones; "& keep" makes sure a pruned entry never returns.
                keep = keep & threshold_mask(flatten(p.detach() for p in params), k)
                masks = _split_mask(keep, params)
                for p, m in zip(params, masks, strict=True):
                    p.mul_(m)
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        opt.step()
        if masks is not None:
            with torch.no_grad():
                for p, m in zip(params, masks, strict=True):
                    p.mul_(m)


def prune_global_(model: nn.Module, s: int) -> list[tuple[nn.Module, str]]:
    """One-shot global magnitude pruning of every weight and bias to s entries, with prune's hooks.

    Calls ``prune.global_unstructured(slots, pruning_method=prune.L1Unstructured,
    amount=P - s)`` over every trainable parameter (biases included). The model keeps
    ``*_orig`` parameters and ``*_mask`` buffers until ``prune.remove`` is called on each slot
    returned. Among equal magnitudes the choice is ``torch.topk``'s.

    Returns:
        The (module, name) pairs pruned, in ``model.parameters()`` order before pruning.
    """
    slots = parameter_slots(model)
    size = sum(getattr(m, n).numel() for m, n in slots)
    prune.global_unstructured(slots, pruning_method=prune.L1Unstructured, amount=size - s)
    return slots


def iht_train_(
    model: nn.Module, loss_fn: Callable[[nn.Module], Tensor], *, lr: float, steps: int, s: int
) -> None:
    """``steps`` full-batch :class:`iht.IHT` steps with one global budget s."""
    opt = IHT(model.parameters(), lr=lr, sparsity=s)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        opt.step()


def magnitude_masks(model: nn.Module, s: int) -> list[Tensor]:
    """One float mask per parameter: 1 on the s largest magnitudes over all of them (H_s's
    choice, ties to the smaller flat index), 0 elsewhere."""
    params = list(model.parameters())
    return _split_mask(threshold_mask(flatten(p.detach() for p in params), s), params)
