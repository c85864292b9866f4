"""The IHT update as a function over flat parameters, and as a ``torch.optim.Optimizer``.

IHT (Alg. 1):  theta <- H_s(theta - lr * grad f(theta)),
GD   (Alg. 2):  theta <- theta - lr * grad f(theta)        (``sparsity=None``).

H_s acts on the concatenation of every parameter of a budget pool, so the s nonzeros are
distributed freely across tensors and layers; the optimizer learns values and mask at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from .errors import NonFiniteError
from .threshold import _mask_unchecked, check_sparsity, flatten, hard_threshold

__all__ = ["IHT", "iht_update"]

_GLOBAL = "global"
_OWN = "own"


def iht_update(theta: Tensor, grad: Tensor, *, lr: float | Tensor, sparsity: int | None) -> Tensor:
    """One IHT step on flat parameters: H_s(theta - lr * grad); plain GD if ``sparsity`` is None.

    Args:
        theta: parameters, shape (..., P); each row is one independent problem.
        grad: gradient of f at ``theta``, same shape.
        lr: step size gamma, a float or a tensor broadcasting against (..., 1).
        sparsity: the budget s, or None for the dense step.

    Returns:
        The new parameters (a new tensor).

    Example:
        >>> iht_update(torch.tensor([1.0, 0.1, -2.0]), torch.tensor([0.5, 0.0, 1.0]), lr=1.0, sparsity=1)
        tensor([ 0.,  0., -3.])
    """
    candidate = theta - lr * grad
    if sparsity is None:
        return candidate
    return hard_threshold(candidate, sparsity)


def _check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"lr must be a positive finite number, got {lr!r}")
    value = float(lr)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"lr must be a positive finite number, got {value}")
    return value


class IHT(Optimizer):
    r"""Iterative Hard Thresholding for any PyTorch model.

    Each ``step()`` performs, over the concatenation theta of all parameters in a pool,

    .. math:: \theta \leftarrow H_s(\theta - \gamma \nabla f(\theta)),

    where H_s keeps the s largest entries in magnitude (ties: smaller flat index wins,
    in parameter order). By default every parameter group shares **one global budget**
    ``sparsity``; a param group that carries its own ``"sparsity"`` key gets a budget of its
    own (per-layer budgets). With ``sparsity=None`` the shared pool takes plain gradient
    steps (Alg. 2), so dense and sparse runs share one code path. After each step every pool
    has at most its budget of nonzeros.

    Parameters whose ``.grad`` is None are left alone: not updated, not thresholded, not
    counted (as in ``torch.optim.SGD``).

    With ``threshold_every=k > 1`` (optimizer-wide) the support is re-selected by H_s only on every k-th step;
    the steps in between are gradient steps restricted to the current support, so the budget
    still holds after every step while the selection costs 1/k as much.

    Args:
        params: parameters or param groups (dicts may set ``lr`` and ``sparsity``).
        lr: the step size gamma > 0, e.g. ``estimate_l2s(...).lr``.
        sparsity: the global budget s (a count, 0 <= s <= P of the pool) or None (dense).
        threshold_every: re-select the support every k steps (k >= 1).

    Raises:
        TypeError, ValueError: bad lr, sparsity or threshold_every; parameters on several
            devices within one pool.
        NonFiniteError: from ``step`` when the loss, a gradient or the update is not finite;
            the parameters are then left unchanged.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> opt = IHT(model.parameters(), lr=0.5, sparsity=5)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float,
        sparsity: int | None = None,
        threshold_every: int = 1,
    ) -> None:
        lr = _check_lr(lr)
        if (
            isinstance(threshold_every, bool)
            or not isinstance(threshold_every, int)
            or threshold_every < 1
        ):
            raise ValueError(f"threshold_every must be an integer >= 1, got {threshold_every!r}")
        defaults = {"lr": lr, "global_sparsity": sparsity, "threshold_every": threshold_every}
        super().__init__(params, defaults)
        if sparsity is not None:
            check_sparsity(sparsity, self._pool_size(), name="sparsity")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; a group with its own ``"sparsity"`` gets a budget of its own."""
        param_group = dict(param_group)
        own = param_group.get("sparsity") is not None
        param_group["pool"] = param_group.get("pool", _OWN if own else _GLOBAL)
        param_group.setdefault("sparsity", None)
        if "lr" in param_group:
            param_group["lr"] = _check_lr(param_group["lr"])
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        params = cast(list[Tensor], group["params"])
        if group["pool"] == _OWN:
            check_sparsity(group["sparsity"], sum(p.numel() for p in params), name="group sparsity")
        devices = {p.device for g in self.param_groups for p in g["params"]}
        if len(devices) > 1:
            raise ValueError(
                f"all parameters must be on one device, got {sorted(str(d) for d in devices)}"
            )

    def _pool_size(self) -> int:
        return sum(
            p.numel() for g in self.param_groups if g["pool"] == _GLOBAL for p in g["params"]
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one IHT (or GD) step; the closure, if given, re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            value = float(loss.detach()) if isinstance(loss, Tensor) else loss
            if value is not None and not math.isfinite(float(value)):
                raise NonFiniteError(f"loss is {float(value)}; parameters left unchanged")

        pools: list[tuple[int | None, list[tuple[Tensor, float]]]] = []
        shared: list[tuple[Tensor, float]] = []
        for group in self.param_groups:
            members = [(p, group["lr"]) for p in group["params"] if p.grad is not None]
            if group["pool"] == _OWN:
                pools.append((group["sparsity"], members))
            else:
                shared.extend(members)
        if self.param_groups:
            pools.append((self.param_groups[0]["global_sparsity"], shared))

        # Check every gradient and update before writing anything, so nothing is lost. The
        # bound |theta - lr g| <= max|theta| + lr max|g| avoids a copy unless it is near overflow.
        for _, members in pools:
            for p, lr in members:
                grad = cast(Tensor, p.grad)
                g_max = float(torch.linalg.vector_norm(grad, ord=math.inf))
                if not math.isfinite(g_max):
                    raise NonFiniteError(
                        f"non-finite gradient in a parameter of shape {tuple(p.shape)}; "
                        "parameters left unchanged"
                    )
                bound = float(torch.linalg.vector_norm(p.detach(), ord=math.inf)) + lr * g_max
                if bound > torch.finfo(p.dtype).max and not bool(
                    torch.isfinite(p - lr * grad).all()
                ):
                    raise NonFiniteError(
                        f"the update overflows (lr = {lr}, max |grad| = {g_max:.3g}); "
                        "parameters left unchanged"
                    )
        # In place, as torch.optim.SGD: no flat copy of the parameters except to select.
        for budget, members in pools:
            if not members:
                continue
            params = [p for p, _ in members]
            for p, lr in members:
                p.add_(cast(Tensor, p.grad), alpha=-lr)
            if budget is not None:
                mask = self._dropped(params, budget)
                offset = 0
                for p in params:
                    n = p.numel()
                    p.masked_fill_(mask[offset : offset + n].view_as(p), 0.0)
                    offset += n
        return loss

    def _dropped(self, params: list[Tensor], budget: int) -> Tensor:
        """The complement of :meth:`_support`, computed once per selection (no copy per step)."""
        kept = self._support(params, budget)
        cache: dict[int, tuple[Tensor, Tensor]] = self.__dict__.setdefault("_dropped_cache", {})
        cached = cache.get(id(params[0]))
        if cached is None or cached[0] is not kept:
            cached = cache[id(params[0])] = (kept, ~kept)
        return cached[1]

    def _support(self, params: list[Tensor], budget: int) -> Tensor:
        """The mask to apply: H_s's choice on re-selection steps, else the stored one.

        ``params`` already hold the gradient step theta - lr * grad.
        """
        size = sum(p.numel() for p in params)
        state = self.state[params[0]]
        count = int(state.get("step", 0))
        # Read from the param groups, not self.defaults: load_state_dict restores the groups
        # (as it restores lr), while defaults keep the value this instance was built with.
        every = int(self.param_groups[0]["threshold_every"])
        stored = state.get("mask")
        if count % every == 0 or stored is None or stored.numel() != size:
            stored = _mask_unchecked(flatten(p.detach() for p in params), budget)
        # load_state_dict casts saved state to the parameter's dtype; a mask stays boolean.
        if stored.dtype != torch.bool:
            stored = stored.to(torch.bool)
        state["step"] = count + 1
        state["mask"] = stored
        return stored
