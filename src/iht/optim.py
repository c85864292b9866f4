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

from . import compiled_step
from .errors import NonFiniteError
from .threshold import _mask_unchecked, check_sparsity, flatten, hard_threshold, split_like

__all__ = ["IHT", "iht_update"]

_GLOBAL = "global"
_OWN = "own"
_KERNELS = ("auto", "compiled", "torch")

#: With ``kernel="auto"``, pools of at least this many entries take the compiled step.
COMPILED_MIN_SIZE = 1 << 16


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
        kernel: ``"auto"`` (default) takes the compiled two-pass step of
            :mod:`iht.compiled_step` for CPU pools of float32/float64 tensors with at least
            ``COMPILED_MIN_SIZE`` entries, and the torch step otherwise; ``"compiled"`` takes it
            whenever it applies, whatever the size; ``"torch"`` always takes the torch step
            (the reference). Both give the same result; the compiled one avoids a flat copy and
            a top-k, which matters from about a million parameters.

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
        kernel: str = "auto",
    ) -> None:
        lr = _check_lr(lr)
        if kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(_KERNELS)}, got {kernel!r}")
        if (
            isinstance(threshold_every, bool)
            or not isinstance(threshold_every, int)
            or threshold_every < 1
        ):
            raise ValueError(f"threshold_every must be an integer >= 1, got {threshold_every!r}")
        defaults = {
            "lr": lr,
            "global_sparsity": sparsity,
            "threshold_every": threshold_every,
            "kernel": kernel,
        }
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

        # Read everything before writing anything: a non-finite update in any pool leaves
        # every parameter unchanged.
        actions = [self._plan(budget, members) for budget, members in pools if members]
        for action in actions:
            action()
        return loss

    def _plan(self, budget: int | None, members: list[tuple[Tensor, float]]) -> Callable[[], None]:
        """Check one pool's update (read only) and return the function that writes it."""
        params = [p for p, _ in members]
        lrs = [lr for _, lr in members]
        size = sum(p.numel() for p in params)
        kernel = self.param_groups[0].get("kernel", "auto")
        compiled = (
            budget is not None
            and 0 < budget < size
            and kernel != "torch"
            and (kernel == "compiled" or size >= COMPILED_MIN_SIZE)
            and compiled_step.eligible(params)
        )
        if not compiled:
            self._check_finite(members)
            return lambda: self._torch_step(params, lrs, budget)
        assert budget is not None
        state = self.state[params[0]]
        if not self._reselect(state, size):
            if compiled_step.nonfinite_count(params, lrs):
                self._raise_nonfinite(members)
            mask = state["mask"]

            def write_masked() -> None:
                compiled_step.masked_step_(params, lrs, mask)
                self._count_step(state, mask)

            return write_masked
        previous = state.get("threshold")
        plan = compiled_step.plan_step(
            params,
            lrs,
            budget,
            previous=float(previous) if previous is not None else None,
            width=float(state.get("bracket_width", compiled_step.START_WIDTH)),
        )
        if plan is None:  # a mass of ties at the boundary: the torch path ranks them
            self._check_finite(members)
            return lambda: self._torch_step(params, lrs, budget)
        if plan.nonfinite:
            self._raise_nonfinite(members)

        def write() -> None:
            # The stored mask is overwritten in place (clone it to keep an old support).
            mask = compiled_step.write_step_(params, lrs, plan, out=state.get("mask"))
            state["threshold"] = plan.threshold
            state["bracket_width"] = plan.width
            self._count_step(state, mask)

        return write

    @staticmethod
    def _count_step(state: dict[str, Any], mask: Tensor) -> None:
        state["step"] = int(state.get("step", 0)) + 1
        state["mask"] = mask

    def _reselect(self, state: dict[str, Any], size: int) -> bool:
        """Whether this step re-selects the support (else the stored mask is applied)."""
        # Read from the param groups, not self.defaults: load_state_dict restores the groups
        # (as it restores lr), while defaults keep the value this instance was built with.
        every = int(self.param_groups[0]["threshold_every"])
        stored = state.get("mask")
        if stored is not None and stored.dtype != torch.bool:
            # load_state_dict casts saved state to the parameter's dtype; a mask stays boolean.
            state["mask"] = stored = stored.to(torch.bool)
        return int(state.get("step", 0)) % every == 0 or stored is None or stored.numel() != size

    def _check_finite(self, members: list[tuple[Tensor, float]]) -> None:
        """Raise NonFiniteError, naming the cause, if theta - lr * grad is not finite."""
        # The bound |theta - lr g| <= max|theta| + lr max|g| avoids a copy unless near overflow.
        for p, lr in members:
            grad = cast(Tensor, p.grad)
            g_max = float(torch.linalg.vector_norm(grad, ord=math.inf))
            if not math.isfinite(g_max):
                raise NonFiniteError(
                    f"non-finite gradient in a parameter of shape {tuple(p.shape)}; "
                    "parameters left unchanged"
                )
            bound = float(torch.linalg.vector_norm(p.detach(), ord=math.inf)) + lr * g_max
            if bound > torch.finfo(p.dtype).max and not bool(torch.isfinite(p - lr * grad).all()):
                raise NonFiniteError(
                    f"the update overflows (lr = {lr}, max |grad| = {g_max:.3g}); "
                    "parameters left unchanged"
                )

    def _raise_nonfinite(self, members: list[tuple[Tensor, float]]) -> None:
        self._check_finite(members)  # names the cause
        raise NonFiniteError(
            "the update theta - lr * grad is not finite; parameters left unchanged"
        )

    def _torch_step(self, params: list[Tensor], lrs: list[float], budget: int | None) -> None:
        """The reference step: in place, as torch.optim.SGD; no flat copy except to select."""
        for p, lr in zip(params, lrs, strict=True):
            p.add_(cast(Tensor, p.grad), alpha=-lr)
        if budget is None:
            return
        for p, dropped in zip(
            params, split_like(self._dropped(params, budget), params), strict=True
        ):
            p.masked_fill_(dropped, 0.0)

    def _dropped(self, params: list[Tensor], budget: int) -> Tensor:
        """The complement of :meth:`_support`, computed once per selection (no copy per step).

        The cache is keyed on the mask's version counter too: the compiled step (and anyone
        editing ``state["mask"]``) changes the mask in place.
        """
        kept = self._support(params, budget)
        cache: dict[int, tuple[Tensor, int, Tensor]] = self.__dict__.setdefault(
            "_dropped_cache", {}
        )
        cached = cache.get(id(params[0]))
        if cached is None or cached[0] is not kept or cached[1] != kept._version:
            cached = cache[id(params[0])] = (kept, kept._version, ~kept)
        return cached[2]

    def _support(self, params: list[Tensor], budget: int) -> Tensor:
        """The mask to apply: H_s's choice on re-selection steps, else the stored one.

        ``params`` already hold the gradient step theta - lr * grad.
        """
        size = sum(p.numel() for p in params)
        state = self.state[params[0]]
        if self._reselect(state, size):
            state["mask"] = _mask_unchecked(flatten(p.detach() for p in params), budget)
            state.pop("threshold", None)  # a compiled step's warm start no longer applies
        stored = state["mask"]
        self._count_step(state, stored)
        return stored
