"""The IHT update as functions over parameters, and as a ``torch.optim.Optimizer``.

IHT (Alg. 1):  theta <- H_s(theta - lr * grad f(theta)),
GD   (Alg. 2):  theta <- theta - lr * grad f(theta)        (``sparsity=None``).

H_s acts on the concatenation of every parameter of a budget pool, so the s nonzeros are
distributed freely across tensors and layers; the optimizer learns values and mask at once.

Three levels, as ``torch.optim.SGD`` has ``sgd()`` under it:

- :func:`iht_update`: one step on a flat tensor (..., P), returning the new point;
- :func:`iht_step`: one step of several pools of parameter tensors, in place, with each pool's
  :class:`PoolState` (support, step count, the compiled step's warm start); it dispatches to
  the torch kernel (the reference) or the compiled kernel of :mod:`iht._kernels.iht_step`;
- :class:`IHT`: the optimizer; ``step()`` gathers the pools, their step sizes and states and
  calls :func:`iht_step`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from .errors import InvalidTypeError, InvalidValueError, NonFiniteError
from .sharded import is_sharded, sharded_plan
from .structured import Structure, parse_structure
from .threshold import (
    check_sparsity,
    flatten,
    hard_threshold,
    refuse_repeated,
    split_like,
    top_s_mask,
    top_s_mask_with_minimum,
)

__all__ = [
    "COMPILED_MIN_SIZE",
    "IHT",
    "KERNELS",
    "ParamPool",
    "PoolState",
    "StepPool",
    "check_lr",
    "iht_step",
    "iht_update",
    "param_pools",
    "project_",
    "reselects",
]

_GLOBAL = "global"
_OWN = "own"
#: The kernels :func:`iht_step` can take (see :class:`IHT`'s ``kernel``).
KERNELS = ("auto", "compiled", "torch")

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

    Raises:
        ValueError: the update holds NaN (its order is undefined), or ``sparsity`` < 0.

    Example:
        >>> iht_update(torch.tensor([1.0, 0.1, -2.0]), torch.tensor([0.5, 0.0, 1.0]), lr=1.0, sparsity=1)
        tensor([ 0.,  0., -3.])
    """
    candidate = theta - lr * grad
    if sparsity is None:
        return candidate
    return hard_threshold(candidate, sparsity)


@dataclass
class PoolState:
    """What one budget pool carries from step to step (stored per pool by :class:`IHT`).

    Attributes:
        step: steps this pool has taken; the support is re-selected when
            ``step % threshold_every == 0``.
        mask: the pool's flat support (bool, the pool's size) after its last step; between
            re-selections the step is a gradient step restricted to it. The compiled step
            rewrites it in place (clone it to keep an old support).
        threshold: t, the s-th largest |x| of the last compiled selection (its warm start).
        bracket_width: the compiled step's relative bracket half-width for the next step.
        sparsity: the budget ``mask`` was selected with (a new budget re-selects).
    """

    step: int = 0
    mask: Tensor | None = None
    threshold: float | None = None
    bracket_width: float | None = None
    sparsity: int | None = None
    # ~mask, kept until the mask changes (keyed on its identity and version counter).
    dropped_cache: tuple[Tensor, int, Tensor] | None = field(
        default=None, repr=False, compare=False
    )

    def dropped(self) -> Tensor:
        """~mask, computed once per selection (not once per step).

        Keyed on the mask's identity and version counter: the compiled step (and anyone
        editing the mask) changes the mask in place.
        """
        mask = cast(Tensor, self.mask)
        cached = self.dropped_cache
        if cached is None or cached[0] is not mask or cached[1] != mask._version:
            cached = self.dropped_cache = (mask, mask._version, ~mask)
        return cached[2]

    def to_dict(self) -> dict[str, Any]:
        """The state as plain values and tensors (what :meth:`IHT.state_dict` stores)."""
        return {
            "step": self.step,
            "mask": self.mask,
            "threshold": self.threshold,
            "bracket_width": self.bracket_width,
            "sparsity": self.sparsity,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, device: torch.device | None = None) -> PoolState:
        """Inverse of :meth:`to_dict`; the mask is moved to ``device`` and kept boolean."""
        mask = data.get("mask")
        if mask is not None:
            # A copy: the compiled step rewrites the mask in place, and a state dict holds the
            # live tensors of the optimizer it came from.
            mask = torch.as_tensor(mask).to(device=device, dtype=torch.bool, copy=True)
        threshold, width = data.get("threshold"), data.get("bracket_width")
        sparsity = data.get("sparsity")
        return cls(
            step=int(data.get("step", 0)),
            mask=mask,
            threshold=None if threshold is None else float(threshold),
            bracket_width=None if width is None else float(width),
            sparsity=None if sparsity is None else int(sparsity),
        )


@dataclass
class StepPool:
    """One budget pool as :func:`iht_step` sees it.

    Attributes:
        params: every tensor of the pool.
        grads: the gradient of each (usually ``p.grad``). A tensor whose gradient is None
            takes no gradient step (x = theta there), but H_s acts on it with the others: its
            nonzeros count against the pool's budget like any others. With every gradient
            None the step is the projection theta <- H_s(theta).
        lrs: the step size of each tensor.
        sparsity: the budget s of the pool, or None for a dense (GD) pool.
        state: the pool's :class:`PoolState`, updated in place.
        minimum: the least nonzeros each tensor keeps (None: no minimum); the projection is
            then :func:`~iht.threshold.top_s_mask_with_minimum`, exact, on the torch path.
        structure: the budget's shape (None: entries): groups (``sparsity`` counts rows) or
            an N:M pattern (:class:`~iht.structured.Structure`), projected exactly, on the
            torch path.
    """

    params: list[Tensor]
    grads: list[Tensor | None]
    lrs: list[float]
    sparsity: int | None
    state: PoolState
    minimum: list[int] | None = None
    structure: Structure | None = None


def _check_dense_gradients(pools: Sequence[StepPool]) -> None:
    """Sparse gradients (``nn.Embedding(sparse=True)``) have no entrywise update here."""
    for pool in pools:
        for p, g in zip(pool.params, pool.grads, strict=True):
            if g is not None and g.layout != torch.strided:
                raise InvalidValueError(
                    f"a parameter of shape {tuple(p.shape)} has a {g.layout} gradient; IHT needs "
                    "dense gradients (build nn.Embedding with sparse=False)"
                )


def iht_step(pools: Sequence[StepPool], *, threshold_every: int = 1, kernel: str = "auto") -> None:
    r"""One IHT step of every pool, in place: :math:`\theta_P \leftarrow H_{s_P}(\theta_P - \gamma g_P)`.

    The budget of a pool holds over the concatenation of its tensors (ties: the smaller flat
    index in pool order). Every pool's update is read and checked before any is written: when
    one is not finite, nothing changes. On steps where ``state.step % threshold_every != 0``
    (and the budget is the one of the last selection) the support is not re-selected: the
    step is a gradient step restricted to ``state.mask``.

    Args:
        pools: the pools (see :class:`StepPool`).
        threshold_every: re-select the support every this many steps of a pool.
        kernel: ``"torch"`` (the reference), ``"compiled"`` (the compiled CPU step wherever it
            applies) or ``"auto"`` (the compiled step for pools of :data:`COMPILED_MIN_SIZE`
            entries or more).

    Raises:
        NonFiniteError: a gradient or the update of some pool is NaN or infinite (named).
    """
    _check_dense_gradients(pools)
    writes = [_plan(pool, threshold_every, kernel) for pool in pools]
    for write in writes:
        write()


def project_(pools: Sequence[StepPool], *, threshold_every: int = 1, kernel: str = "auto") -> None:
    """theta <- H_s(theta) for every pool, in place: :func:`iht_step` without a gradient.

    What an optimizer wrapper applies after its base optimizer's step (``pool.grads`` and
    ``pool.lrs`` are ignored). The support is re-selected as in :func:`iht_step`.

    Raises:
        NonFiniteError: a pool holds NaN or infinite entries (nothing is written).
    """
    iht_step(
        [
            StepPool(
                p.params,
                [None] * len(p.params),
                [0.0] * len(p.params),
                p.sparsity,
                p.state,
                p.minimum,
                p.structure,
            )
            for p in pools
        ],
        threshold_every=threshold_every,
        kernel=kernel,
    )


def _plan(pool: StepPool, every: int, kernel: str) -> Callable[[], None]:
    """Check one pool's update (read only) and return the function that writes it."""
    params, grads, lrs, budget, state = pool.params, pool.grads, pool.lrs, pool.sparsity, pool.state
    if is_sharded(params):  # FSDP2's DTensors: select across ranks, never gather
        return sharded_plan(pool, every, reselects)
    size = sum(p.numel() for p in params)
    if (
        budget is None
        or not 0 < budget < size
        or kernel == "torch"
        or pool.minimum
        or pool.structure is not None
    ):
        return _plan_torch(pool, every)
    if kernel == "auto" and size < COMPILED_MIN_SIZE:
        return _plan_torch(pool, every)
    from ._kernels import iht_step as kernels

    if not kernels.eligible(params, grads):
        return _plan_torch(pool, every)
    if not reselects(state, every, size, budget):
        if kernels.nonfinite_count(params, grads, lrs):
            _raise_nonfinite(params, grads, lrs)
        mask = cast(Tensor, state.mask)

        def write_masked() -> None:
            kernels.masked_step_(params, grads, lrs, mask)
            state.step += 1

        return write_masked
    plan = kernels.plan_step(
        params,
        grads,
        lrs,
        budget,
        previous=state.threshold,
        width=kernels.START_WIDTH if state.bracket_width is None else state.bracket_width,
    )
    if plan is None:  # a mass of ties at the boundary: the torch path ranks them
        return _plan_torch(pool, every)
    if plan.nonfinite:
        _raise_nonfinite(params, grads, lrs)

    def write() -> None:
        # The stored mask is overwritten in place (clone it to keep an old support).
        state.mask = kernels.write_step_(params, grads, lrs, plan, out=state.mask)
        state.threshold = plan.threshold
        state.bracket_width = plan.width
        state.sparsity = budget
        state.step += 1

    return write


def reselects(state: PoolState, every: int, size: int, budget: int) -> bool:
    """Whether this step re-selects the support (else the stored mask is applied): every
    ``every`` steps, and whenever there is no mask for this pool or the budget changed."""
    return (
        state.step % every == 0
        or state.mask is None
        or state.mask.numel() != size
        or state.sparsity != budget
    )


def _plan_torch(pool: StepPool, every: int) -> Callable[[], None]:
    """The reference step: in place, as torch.optim.SGD; no flat copy except to select."""
    params, grads, lrs, budget, state = pool.params, pool.grads, pool.lrs, pool.sparsity, pool.state
    _check_finite(params, grads, lrs)

    def write() -> None:
        for p, g, lr in zip(params, grads, lrs, strict=True):
            if g is not None:
                p.add_(g, alpha=-lr)
        if budget is not None:
            size = sum(p.numel() for p in params)
            if reselects(state, every, size, budget):
                # params now hold theta - lr * grad (theta where there is no gradient)
                flat = flatten(p.detach() for p in params)
                if pool.structure is not None:
                    state.mask = pool.structure.mask([p.detach() for p in params], budget)
                elif pool.minimum:
                    sizes = [p.numel() for p in params]
                    state.mask = top_s_mask_with_minimum(flat, budget, sizes, pool.minimum)
                else:
                    state.mask = top_s_mask(flat, budget)
                state.threshold = None  # a compiled step's warm start no longer applies
                state.sparsity = budget
            for p, dropped in zip(params, split_like(state.dropped(), params), strict=True):
                p.masked_fill_(dropped, 0.0)
        state.step += 1

    return write


def _check_finite(
    params: Sequence[Tensor], grads: Sequence[Tensor | None], lrs: Sequence[float]
) -> None:
    """Raise NonFiniteError, naming the cause, if theta - lr * grad is not finite.

    One device sync for the whole pool (the max-norms of every tensor read back together);
    none on the ``meta`` device, which holds no values to check.
    """
    if not params or params[0].device.type == "meta":
        return
    # The bound |theta - lr g| <= max|theta| + lr max|g| avoids a copy unless near overflow.
    norms = []
    for p, grad in zip(params, grads, strict=True):
        norms.append(torch.linalg.vector_norm(p.detach(), ord=math.inf).double())
        norms.append(
            torch.zeros((), dtype=torch.float64, device=p.device)
            if grad is None
            else torch.linalg.vector_norm(grad, ord=math.inf).double()
        )
    values = cast(list[float], torch.stack(norms).tolist())
    for i, (p, grad, lr) in enumerate(zip(params, grads, lrs, strict=True)):
        p_max, g_max = values[2 * i], values[2 * i + 1]
        if grad is None:
            if not math.isfinite(p_max):
                raise NonFiniteError(
                    f"a parameter of shape {tuple(p.shape)} is not finite; nothing was changed"
                )
            continue
        if not math.isfinite(g_max):
            raise NonFiniteError(
                f"non-finite gradient in a parameter of shape {tuple(p.shape)}; "
                "parameters left unchanged"
            )
        bound = p_max + lr * g_max
        if bound > torch.finfo(p.dtype).max and not bool(torch.isfinite(p - lr * grad).all()):
            raise NonFiniteError(
                f"the update overflows (lr = {lr}, max |grad| = {g_max:.3g}); "
                "parameters left unchanged"
            )


def _raise_nonfinite(
    params: Sequence[Tensor], grads: Sequence[Tensor | None], lrs: Sequence[float]
) -> None:
    _check_finite(params, grads, lrs)  # names the cause
    raise NonFiniteError("the update theta - lr * grad is not finite; parameters left unchanged")


@dataclass(frozen=True)
class ParamPool:
    """A budget pool of an optimizer's param groups (see :func:`param_pools`)."""

    key: str
    params: list[Tensor]
    lrs: list[float]
    sparsity: int | None
    minimum: list[int] | None = None
    structure: Structure | None = None

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def units(self) -> int:
        """What the budget counts: entries, or rows for a group structure."""
        return self.size if self.structure is None else self.structure.units(self.params)


def param_pools(
    param_groups: Sequence[dict[str, Any]], global_sparsity: int | None
) -> list[ParamPool]:
    """Every budget pool of an optimizer's param groups.

    A group with its own ``"sparsity"`` is a pool of its own (key ``"group<i>"``); all the
    others share one pool with ``global_sparsity`` (key ``"global"``, last). A group's
    ``"min_nonzeros"`` is the least nonzeros each of its tensors keeps. Frozen tensors (no grad
    required, none given) are in no pool.
    """
    pools: list[ParamPool] = []
    shared: list[Tensor] = []
    shared_lrs: list[float] = []
    shared_min: list[int] = []
    for i, group in enumerate(param_groups):
        params = [p for p in group["params"] if _in_pool(p)]
        lrs = [float(group.get("lr", 0.0))] * len(params)
        minimum = [int(group.get("min_nonzeros") or 0)] * len(params)
        structure = parse_structure(
            group.get("structure"), entries=group.get("entries"), block=group.get("group_rows")
        )
        if structure is not None:
            structure.check(params)
            if structure.kind == "nm":  # the pattern is the budget
                sparsity: int | None = structure.implied(params)
            elif group.get("sparsity") is None:
                raise InvalidValueError(
                    "a group structure needs the group's own sparsity: how many rows "
                    "(neurons, channels) to keep"
                )
            else:
                sparsity = int(group["sparsity"])
            pools.append(ParamPool(f"group{i}", params, lrs, sparsity, None, structure))
        elif group.get("sparsity") is not None:
            pools.append(
                ParamPool(
                    f"group{i}",
                    params,
                    lrs,
                    int(group["sparsity"]),
                    minimum if any(minimum) else None,
                )
            )
        else:
            shared += params
            shared_lrs += lrs
            shared_min += minimum
    if shared:
        pools.append(
            ParamPool(
                _GLOBAL,
                shared,
                shared_lrs,
                global_sparsity,
                shared_min if any(shared_min) else None,
            )
        )
    return pools


def _in_pool(p: Tensor) -> bool:
    """A frozen tensor (no grad required, none given) is in no pool; every other one is."""
    return p.requires_grad or p.grad is not None


def check_lr(lr: object) -> float:
    """``lr`` as a positive finite float, or a one-line error naming it.

    A one-element tensor is taken as torch optimizers take it (its value, read once).
    """
    if isinstance(lr, Tensor) and lr.numel() == 1 and lr.is_floating_point():
        lr = float(lr)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise InvalidTypeError(f"lr must be a positive finite number, got {lr!r}")
    value = float(lr)
    if not math.isfinite(value) or value <= 0:
        raise InvalidValueError(f"lr must be a positive finite number, got {value}")
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

    A parameter whose ``.grad`` is None on a step takes no gradient step (as in
    ``torch.optim.SGD``), but it stays in its pool: H_s still acts on it with the others (as
    if its gradient were 0), so its nonzeros count against the budget, which holds on every
    step. A frozen parameter (``requires_grad=False`` and no ``.grad``) is in no pool: never
    moved, never counted.

    With ``threshold_every=k > 1`` (optimizer-wide) the support is re-selected by H_s only on
    every k-th step of a pool; the steps in between are gradient steps restricted to the
    current support, so the budget still holds after every step while the selection costs
    1/k as much.

    Each pool's :class:`PoolState` is in :attr:`pool_states` (keys ``"global"`` and
    ``"group<i>"`` for a group with its own budget) and in ``state_dict()["pools"]``.

    Args:
        params: parameters or param groups (dicts may set ``lr`` and ``sparsity``).
        lr: the step size gamma > 0, e.g. ``estimate_l2s(...).lr``.
        sparsity: the global budget s (a count, 0 <= s <= P of the pool) or None (dense).
        threshold_every: re-select the support every k steps (k >= 1).
        kernel: ``"auto"`` (default) takes the compiled two-pass step of
            :mod:`iht._kernels.iht_step` for CPU pools of float32/float64 tensors with at least
            :data:`COMPILED_MIN_SIZE` entries, and the torch step otherwise; ``"compiled"``
            takes it whenever it applies, whatever the size; ``"torch"`` always takes the
            torch step (the reference). Both give the same result; the compiled one avoids a
            flat copy and a top-k, which matters from about a million parameters.

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
        lr = check_lr(lr)
        if kernel not in KERNELS:
            raise InvalidValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        if (
            isinstance(threshold_every, bool)
            or not isinstance(threshold_every, int)
            or threshold_every < 1
        ):
            raise InvalidValueError(
                f"threshold_every must be an integer >= 1, got {threshold_every!r}"
            )
        defaults = {
            "lr": lr,
            "global_sparsity": sparsity,
            "threshold_every": threshold_every,
            "kernel": kernel,
        }
        self.pool_states: dict[str, PoolState] = {}
        super().__init__(params, defaults)
        if sparsity is not None:
            check_sparsity(sparsity, self._global_size(), name="sparsity")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; a group with its own ``"sparsity"`` gets a budget of its own."""
        param_group = dict(param_group)
        structure = parse_structure(  # refused here if unknown
            param_group.get("structure"),
            entries=param_group.get("entries"),
            block=param_group.get("group_rows"),
        )
        own = param_group.get("sparsity") is not None or structure is not None
        param_group["pool"] = param_group.get("pool", _OWN if own else _GLOBAL)
        param_group.setdefault("sparsity", None)
        if "lr" in param_group:
            param_group["lr"] = check_lr(param_group["lr"])
        super().add_param_group(param_group)
        refuse_repeated(p for g in self.param_groups for p in g["params"])
        group = self.param_groups[-1]
        params = cast(list[Tensor], group["params"])
        if group["pool"] == _OWN:
            pooled = [p for p in params if _in_pool(p)]
            if structure is None:
                check_sparsity(
                    group["sparsity"], sum(p.numel() for p in pooled), name="group sparsity"
                )
            else:
                structure.check(pooled)
                if structure.kind == "group":
                    if group["sparsity"] is None:
                        raise InvalidValueError(
                            "a group structure needs the group's own sparsity: how many rows "
                            "(neurons, channels) to keep"
                        )
                    check_sparsity(
                        group["sparsity"], structure.units(pooled), name="group sparsity (rows)"
                    )
        devices = {p.device for g in self.param_groups for p in g["params"]}
        if len(devices) > 1:
            raise InvalidValueError(
                f"all parameters must be on one device, got {sorted(str(d) for d in devices)}"
            )

    def _global_size(self) -> int:
        return sum(
            p.numel()
            for g in self.param_groups
            if g["pool"] == _GLOBAL
            for p in g["params"]
            if _in_pool(p)
        )

    def _pools(self) -> list[ParamPool]:
        return param_pools(self.param_groups, self.param_groups[0]["global_sparsity"])

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
        # Read from the param groups, not self.defaults: load_state_dict restores the groups
        # (as it restores lr), while defaults keep the value this instance was built with.
        first = self.param_groups[0] if self.param_groups else self.defaults
        pools = []
        for pool in self._pools():
            grads = [p.grad for p in pool.params]
            if any(g is not None for g in grads):  # a pool without any gradient is not stepped
                state = self.pool_states.setdefault(pool.key, PoolState())
                pools.append(
                    StepPool(
                        pool.params,
                        grads,
                        pool.lrs,
                        pool.sparsity,
                        state,
                        pool.minimum,
                        pool.structure,
                    )
                )
        iht_step(
            pools,
            threshold_every=int(first["threshold_every"]),
            kernel=str(first.get("kernel", "auto")),
        )
        return loss

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state, plus ``"pools"``: each pool's :class:`PoolState`."""
        state = super().state_dict()
        state["pools"] = {key: pool.to_dict() for key, pool in self.pool_states.items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output, the pools' supports and step counts included."""
        state_dict = dict(state_dict)
        pools = state_dict.pop("pools", {})
        super().load_state_dict(state_dict)
        device = next((p.device for g in self.param_groups for p in g["params"]), None)
        self.pool_states = {
            key: PoolState.from_dict(value, device=device) for key, value in pools.items()
        }
