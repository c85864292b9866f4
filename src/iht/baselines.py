r"""The pieces of the sparsification methods IHT is compared with.

- :func:`prune_global_`: one-shot global magnitude pruning with
  ``torch.nn.utils.prune.global_unstructured`` over every weight **and bias**;
- :func:`magnitude_masks`: the masks of H_s over all parameters (keep the s largest);
- :class:`GmpPlan`, :func:`gmp_plan`, :func:`gmp_sparsity`, :func:`kept_count`: gradual
  magnitude pruning's cubic schedule (Zhu & Gupta 2017);
- :func:`rigl_mask`, :func:`rigl_fraction`: RigL's drop-and-grow (Evci et al. 2020).

``iht compare`` (:mod:`iht.experiments.compare`) trains every method in one loop with any
base optimizer, each with its own policy around the step, at equal budgets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from .errors import InvalidValueError
from .threshold import flatten, split_like, threshold_mask

__all__ = [
    "GmpPlan",
    "LossClosure",
    "gmp_plan",
    "gmp_sparsity",
    "kept_count",
    "magnitude_masks",
    "nonzeros",
    "parameter_slots",
    "prune_global_",
    "rigl_fraction",
    "rigl_mask",
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

    def kept(self, t: int, size: int, s: int) -> int:
        """How many of ``size`` units (entries, rows) are kept at step t, pruning from dense to
        s on the cubic schedule (:func:`gmp_sparsity`, :func:`kept_count`)."""
        final = 1 - s / size
        fraction = gmp_sparsity(t, initial=0.0, final=final, t0=self.t0, dt=self.dt, n=self.n)
        return kept_count(fraction, size, s)


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


def kept_count(sparsity: float, size: int, s: int) -> int:
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


def _split_mask(mask: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """A flat bool mask as one float mask per parameter (multiplied in after each step)."""
    return [part.to(p.dtype) for part, p in zip(split_like(mask, params), params, strict=True)]


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


def magnitude_masks(model: nn.Module, s: int) -> list[Tensor]:
    """One float mask per parameter: 1 on the s largest magnitudes over all of them (H_s's
    choice, ties to the smaller flat index), 0 elsewhere."""
    params = list(model.parameters())
    return _split_mask(threshold_mask(flatten(p.detach() for p in params), s), params)


def rigl_fraction(step: int, *, fraction: float, end: int) -> float:
    """RigL's drop-and-grow fraction at ``step``: cosine decay from ``fraction`` to 0 at ``end``."""
    if step >= end:
        return 0.0
    return fraction / 2 * (1 + math.cos(math.pi * step / end))


def rigl_mask(weights: Tensor, grads: Tensor, active: Tensor, k: int) -> Tensor:
    """One RigL connectivity update of a flat pool (Evci et al. 2020), exactly, ties to the
    smaller index: drop the ``k`` active entries of smallest |w|, then grow the ``k`` entries
    of largest |grad| among those inactive before the drop (a dropped entry does not return at
    once). The number of active entries is unchanged.

    Args:
        weights, grads: the pool's flat weights and dense gradient.
        active: its flat bool mask.
        k: how many connections to drop and grow (at most the active and the inactive count).
    """
    on = active.nonzero().squeeze(1)
    off = (~active).nonzero().squeeze(1)
    k = max(0, min(k, on.numel(), off.numel()))
    if k == 0:
        return active.clone()
    new = torch.zeros_like(active)
    new[on[threshold_mask(weights[on], on.numel() - k)]] = True
    new[off[threshold_mask(grads[off], k)]] = True
    return new
