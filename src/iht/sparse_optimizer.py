r"""IHT over any torch optimizer: the base optimizer's step, then the projection onto the budget.

With a base optimizer's update :math:`\theta \mapsto U(\theta)` (SGD with momentum or Nesterov,
Adam, AdamW, ...), every step of :class:`SparseOptimizer` is

.. math:: \theta \leftarrow H_s(U(\theta)),

H_s over each budget pool exactly as :class:`iht.IHT` takes it (one global budget, or a
param group's own ``"sparsity"``; ties to the smaller flat index; ``threshold_every``; the
compiled kernels for large CPU pools). With ``torch.optim.SGD`` without momentum, U is the
gradient step and this is IHT itself, bit for bit.

The base optimizer's state (momentum buffers, Adam's moments) holds a value per coordinate.
With ``state="zero"`` (the default) it is zeroed on every coordinate outside the support
after each projection, so a pruned weight can come back only through its gradient, never
through momentum alone (AC/DC and RigL do the same at mask changes). ``state="keep"`` leaves
it as the base optimizer wrote it.

A :class:`~iht.schedules.Schedule` sets the budget of each step (dense warm-up, a cubic
decay to s, AC/DC phases); the projection is exact at every step, and a dense step of a
schedule projects nothing.

**Selection.** ``selection="magnitude"`` (the default) projects in the Euclidean norm: H_s
keeps the s largest :math:`|\theta_i|`, the paper's map. ``selection="fisher"`` projects in
the norm of the diagonal empirical Fisher :math:`F` (a running mean of squared gradients),

.. math:: P^F_s(z) = \arg\min_{\|x\|_0 \le s} \sum_i F_i (x_i - z_i)^2,

which keeps the s largest :math:`F_i z_i^2`: the entries whose removal costs the most under
the quadratic model :math:`f(z + \delta) \approx f(z) + g^\top\delta + \tfrac12 \delta^\top
\mathrm{diag}(F)\,\delta` (Optimal Brain Damage's saliency, LeCun et al. 1990). It is the
projection of a preconditioned step in its own metric, and it is still exact: the best point of
the s-sparse set in that norm. F is the base optimizer's own second moment when it keeps one
(``exp_avg_sq`` of Adam, AdamW, NAdam, RAdam; ``square_avg`` of RMSprop), else a running mean
kept by the wrapper (:data:`FISHER_BETA`); a moment of another shape (factored, projected) is
not taken for F. Where the tensors of a pool began their running means at different steps, each
F is bias-corrected by 1 / (1 - beta2^steps) (otherwise the common factor changes nothing and is
not applied). Scores are computed in at least float32. An entry with no gradient signal (F = 0,
e.g. behind a dead ReLU) scores 0 and goes first; on deep nets this keeps a budget from
starving a layer (measured in the README).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from .errors import InvalidTypeError, InvalidValueError, NonFiniteError
from .optim import (
    COMPILED_MIN_SIZE,
    IHT,
    KERNELS,
    ParamPool,
    PoolState,
    StepPool,
    param_pools,
    project_,
    reselects,
)
from .schedules import Constant, Schedule
from .sharded import is_sharded, local_part
from .threshold import (
    check_sparsity,
    flatten,
    refuse_repeated,
    split_like,
    top_s_mask,
    top_s_mask_with_minimum,
    weighted_top_s_mask,
)

__all__ = ["FISHER_BETA", "SELECTIONS", "STATE_POLICIES", "SparseOptimizer"]

#: What happens to the base optimizer's state off the support.
STATE_POLICIES = ("zero", "keep")
#: How the support is chosen: the Euclidean projection H_s, or the diagonal-Fisher one.
SELECTIONS = ("magnitude", "fisher")
#: The decay of the wrapper's own running mean of squared gradients (Adam's beta2), used
#: when the base optimizer keeps no second moment.
FISHER_BETA = 0.999
# A base optimizer's per-coordinate running mean of squared gradients, by state key.
_SECOND_MOMENTS = ("exp_avg_sq", "square_avg")


class SparseOptimizer(Optimizer):
    r"""Wrap any ``torch.optim.Optimizer`` so that its iterate stays on a budget of s nonzeros.

    ``step()`` runs the base optimizer's step and then projects every budget pool onto its
    budget (see the module docstring). The wrapper shares the base optimizer's
    ``param_groups``, ``defaults`` and ``state``, so learning-rate schedulers work on it as on
    the base optimizer (``OneCycleLR`` included, whose momentum cycling needs the base's
    momentum or betas).

    Args:
        optimizer: the base optimizer (not an :class:`iht.IHT`, which projects already). A
            param group with its own ``"sparsity"`` key is a pool with its own budget.
        sparsity: the global budget s of the other groups, or None for no global budget.
        threshold_every: re-select the support every k steps of a pool; in between, the
            step's result is restricted to the current support.
        kernel: ``"auto"``, ``"compiled"`` or ``"torch"``, as for :class:`iht.IHT`.
        state: ``"zero"`` (the base optimizer's state is zeroed off the support) or ``"keep"``.
        schedule: the budget of each step (:mod:`iht.schedules`); default: s from the start.
        selection: ``"magnitude"`` (H_s, the s largest |theta_i|) or ``"fisher"`` (the s
            largest F_i theta_i^2, the projection in the diagonal Fisher norm; entry budgets
            only, not on sharded parameters). See the module docstring.

    Raises:
        TypeError, ValueError: a bad optimizer, budget, ``threshold_every``, kernel or state.
        NonFiniteError: from ``step``, when a gradient is not finite (nothing is changed) or
            the base optimizer's update is not finite (the parameters are then the base's
            update, not projected).

    Example:
        >>> base = torch.optim.AdamW(model.parameters(), lr=1e-2)      # doctest: +SKIP
        >>> opt = SparseOptimizer(base, sparsity=521, schedule=Cubic(1000, 4000))  # doctest: +SKIP
        >>> loss.backward(); opt.step(); opt.zero_grad()               # doctest: +SKIP
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        sparsity: int | None,
        threshold_every: int = 1,
        kernel: str = "auto",
        state: str = "zero",
        schedule: Schedule | None = None,
        selection: str = "magnitude",
    ) -> None:
        # Optimizer.__init__ is not called: the groups, defaults and state are the base's.
        if not isinstance(optimizer, Optimizer):
            raise InvalidTypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if isinstance(optimizer, IHT | SparseOptimizer):
            raise InvalidTypeError(
                f"optimizer must be a plain torch optimizer, not {type(optimizer).__name__} "
                "(it projects already)"
            )
        if kernel not in KERNELS:
            raise InvalidValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        if state not in STATE_POLICIES:
            raise InvalidValueError(
                f"state must be one of {', '.join(STATE_POLICIES)}, got {state!r}"
            )
        if selection not in SELECTIONS:
            raise InvalidValueError(
                f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}"
            )
        if (
            isinstance(threshold_every, bool)
            or not isinstance(threshold_every, int)
            or threshold_every < 1
        ):
            raise InvalidValueError(
                f"threshold_every must be an integer >= 1, got {threshold_every!r}"
            )
        self.optimizer = optimizer
        self.sparsity = sparsity
        self.threshold_every = threshold_every
        self.kernel = kernel
        self.state_policy = state
        self.schedule: Schedule = schedule if schedule is not None else Constant()
        self.selection = selection
        #: The running mean of squared gradients of parameters whose base optimizer keeps
        #: none (``selection="fisher"`` only), by parameter.
        self.fisher: dict[Tensor, Tensor] = {}
        #: Gradients each of those running means has taken (for their bias correction).
        self.fisher_steps: dict[Tensor, int] = {}
        self._scratch: dict[str, Tensor] = {}  # each pool's score buffer (Fisher selection)
        self.pool_states: dict[str, PoolState] = {}
        #: Steps taken: the schedule's clock.
        self.steps_taken = 0
        self._check_budgets()

    # -- what the base optimizer holds, shared -------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = groups

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, defaults: dict[str, Any]) -> None:
        self.optimizer.defaults = defaults

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, state: Any) -> None:
        self.optimizer.state = state

    def __repr__(self) -> str:
        return (
            f"SparseOptimizer({self.optimizer!r}, sparsity={self.sparsity}, "
            f"schedule={self.schedule!r}, state={self.state_policy!r}, "
            f"selection={self.selection!r})"
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (its own ``"sparsity"`` makes it its own pool)."""
        self.optimizer.add_param_group(param_group)
        self._check_budgets()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _check_budgets(self) -> None:
        # At construction and add_param_group, not every step: the groups are fixed between.
        refuse_repeated(p for group in self.param_groups for p in group["params"])
        for pool in param_pools(self.param_groups, self.sparsity):
            if pool.sparsity is not None:
                name = "sparsity" if pool.key == "global" else f"sparsity of {pool.key}"
                check_sparsity(pool.sparsity, pool.units, name=name)
            if self.selection == "fisher" and pool.structure is not None:
                raise InvalidValueError(
                    f"selection='fisher' takes budgets of entries; pool {pool.key} has "
                    "structure "
                    f"{pool.structure.kind!r} (use selection='magnitude')"
                )

    # -- the step -------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """The base optimizer's step, then the projection of every pool onto this step's budget."""
        pools = param_pools(self.param_groups, self.sparsity)
        if closure is None:
            _check_gradients((p for pool in pools for p in pool.params), self.kernel)
            loss = self.optimizer.step()
        else:
            loss = self.optimizer.step(closure)
            value = float(loss.detach()) if isinstance(loss, Tensor) else loss
            if value is not None and not math.isfinite(float(value)):
                raise NonFiniteError(f"loss is {float(value)}; the update was not projected")
        with torch.no_grad():
            if self.selection == "fisher":
                self._accumulate_fisher(pools)
            self._project(pools)
        self.steps_taken += 1
        return loss

    def _project(self, pools: list[ParamPool]) -> None:
        projected: list[StepPool] = []
        keys: list[str] = []
        for pool in pools:
            if pool.sparsity is None or not pool.params:
                continue
            budget = self.schedule.budget(self.steps_taken, pool.sparsity, pool.units)
            pool_state = self.pool_states.setdefault(pool.key, PoolState())
            if budget is None:  # a dense step: nothing projected; the next sparse step selects
                pool_state.mask = None
                continue
            check_sparsity(budget, pool.units, name=f"the schedule's budget of pool {pool.key}")
            if pool.structure is not None and pool.structure.kind == "nm":
                budget = pool.sparsity  # an N:M pattern applies whole at every sparse step
            projected.append(
                StepPool(pool.params, [], [], budget, pool_state, pool.minimum, pool.structure)
            )
            keys.append(pool.key)
        try:
            if self.selection == "fisher":
                self._project_fisher(projected, keys)
            else:
                project_(projected, threshold_every=self.threshold_every, kernel=self.kernel)
        except NonFiniteError as exc:
            raise NonFiniteError(
                f"the base optimizer's update is not finite ({exc}); it was not projected"
            ) from None
        if self.state_policy == "zero":
            for done in projected:
                self._zero_state_off_support(done.params, done.state)

    def _large(self, size: int) -> bool:
        """Whether a pool of ``size`` entries takes the compiled passes: as for the projection,
        they pay off from COMPILED_MIN_SIZE entries (below it, launching numba's threads costs
        more than the pass; 10x at 15k entries)."""
        return self.kernel == "compiled" or (self.kernel == "auto" and size >= COMPILED_MIN_SIZE)

    # -- the Fisher selection ---------------------------------------------------------------
    def _base_moment(self, p: Tensor) -> Tensor | None:
        """The base optimizer's running mean of squared gradients of ``p``, if it keeps one of
        ``p``'s shape (a factored or projected moment is not one)."""
        state = self.optimizer.state.get(p, {})
        for key in _SECOND_MOMENTS:
            value = state.get(key)
            if isinstance(value, Tensor) and value.shape == p.shape:
                return value
        return None

    def second_moment(self, p: Tensor) -> Tensor | None:
        """F for ``p`` (not bias-corrected): its base optimizer's second moment, else the
        wrapper's running mean (None before ``p`` has had a gradient)."""
        base = self._base_moment(p)
        return base if base is not None else self.fisher.get(p)

    def _moment_age(self, p: Tensor, groups: dict[int, dict[str, Any]]) -> tuple[float, Any] | None:
        """(beta2, steps) of ``p``'s F, whose bias is the factor 1 - beta2**steps; None when
        it is not known (RMSprop's ``square_avg`` is not corrected by RMSprop either)."""
        if self._base_moment(p) is not None:
            state = self.optimizer.state.get(p, {})
            betas = groups[id(p)].get("betas")
            if "exp_avg_sq" in state and "step" in state and betas is not None:
                return float(betas[1]), state["step"]
            return None
        if p in self.fisher:
            return FISHER_BETA, self.fisher_steps.get(p, 0)
        return None

    def _corrections(self, params: list[Tensor]) -> list[float] | None:
        """1 / (1 - beta2**steps) of every tensor's F, or None when they are all equal (the
        common case: the ranking is then the same uncorrected) or not known. A tensor whose
        gradients began later has a smaller uncorrected F, so across tensors it must count."""
        groups = {id(q): g for g in self.param_groups for q in g["params"]}
        ages = [self._moment_age(p, groups) for p in params]
        if not ages or any(a is None for a in ages):
            return None
        known = [a for a in ages if a is not None]
        steps = torch.stack(  # one read for the pool
            [torch.as_tensor(n, dtype=torch.float64).reshape(()).cpu() for _, n in known]
        ).tolist()
        factors = [
            1.0 / (1.0 - beta**n) if n > 0 and beta < 1 else 1.0
            for (beta, _), n in zip(known, steps, strict=True)
        ]
        return None if len(set(factors)) <= 1 else factors

    def _accumulate_fisher(self, pools: list[ParamPool]) -> None:
        """F <- beta F + (1 - beta) g^2 for the parameters whose base keeps no second moment."""
        for pool in pools:
            if pool.sparsity is None:
                continue
            for p in pool.params:
                if p.grad is None or self._base_moment(p) is not None:
                    continue
                if p not in self.fisher:
                    self.fisher[p] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                self.fisher[p].mul_(FISHER_BETA).addcmul_(p.grad, p.grad, value=1 - FISHER_BETA)
                self.fisher_steps[p] = self.fisher_steps.get(p, 0) + 1

    def _project_fisher(self, pools: list[StepPool], keys: list[str]) -> None:
        """theta <- P^F_s(theta) for every pool, in place: the s largest F_i theta_i^2 kept
        (re-selected every ``threshold_every`` steps; the stored support in between). Every
        pool is selected and checked before any is written."""
        selected: list[tuple[StepPool, Tensor | None, bool]] = []
        for pool, key in zip(pools, keys, strict=True):
            params, budget, state = pool.params, pool.sparsity, pool.state
            if is_sharded(params):
                raise InvalidValueError(
                    "selection='fisher' does not take sharded (DTensor) parameters; "
                    "use selection='magnitude'"
                )
            assert budget is not None  # a dense step of the schedule is not projected
            size = sum(p.numel() for p in params)
            compiled = self._large(size) and _compiled_applies(params)
            mask = None
            if reselects(state, self.threshold_every, size, budget):
                scores = self._scores_buffer(key, params)
                mask = self._fisher_mask(params, scores, budget, pool.minimum, compiled=compiled)
            elif not _all_finite(params, compiled=compiled):  # the stored support, checked
                raise NonFiniteError("a parameter is not finite")
            selected.append((pool, mask, compiled))
        for pool, mask, compiled in selected:
            params, state = pool.params, pool.state
            if mask is not None:
                state.mask, state.threshold, state.sparsity = mask, None, pool.sparsity
            if compiled:
                from ._kernels import iht_step as kernels

                offsets = itertools.accumulate((p.numel() for p in params[:-1]), initial=0)
                kept = cast(Tensor, state.mask)
                kernels.zero_off_mask_(list(zip(offsets, params, strict=True)), kept)
            else:
                for p, dropped in zip(params, split_like(state.dropped(), params), strict=True):
                    p.masked_fill_(dropped, 0.0)
            state.step += 1

    def _scores_buffer(self, key: str, params: list[Tensor]) -> Tensor:
        """A pool's flat scratch buffer for the scores, kept between steps (a new 40 MB buffer
        every step of a 10M pool costs its page faults: ~10 ms here)."""
        # at least float32: float16 or bfloat16 squares underflow (and rank by index)
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in params), torch.float32)
        size, device = sum(p.numel() for p in params), params[0].device
        buffer = self._scratch.get(key)
        if (
            buffer is None
            or buffer.numel() != size
            or buffer.dtype != dtype
            or buffer.device != device
        ):
            buffer = self._scratch[key] = torch.empty(size, dtype=dtype, device=device)
        return buffer

    def _fisher_mask(
        self,
        params: list[Tensor],
        scores: Tensor,
        budget: int,
        minimum: list[int] | None,
        *,
        compiled: bool,
    ) -> Tensor:
        """The kept set of P^F_s: the ``budget`` largest F_i theta_i^2 of the pool.

        The scores are written once into one buffer (theta^2 then times F: two passes, no
        flat copies of theta and F) and selected in place by the compiled threshold when
        ``compiled``; where they overflow, or theta is not finite, the reference
        :func:`iht.threshold.weighted_top_s_mask` (sqrt(F) |theta|) decides.
        """
        corrections = self._corrections(params)
        at = 0
        unweighted = []
        for i, p in enumerate(params):
            part = scores[at : at + p.numel()].view(p.shape)
            at += p.numel()
            weight = self.second_moment(p)
            if weight is None:
                part.zero_()
                unweighted.append(p)
                continue
            if p.dtype == scores.dtype:
                torch.mul(p.detach(), p.detach(), out=part)
            else:  # squared in the buffer's precision: float16's theta^2 underflows
                part.copy_(p.detach())
                part.mul_(part)
            part.mul_(weight)
            if corrections is not None:
                part.mul_(corrections[i])
        if not _all_finite(unweighted, compiled=False):  # scored 0: theta not read above
            raise NonFiniteError("a parameter is not finite")
        sizes = [p.numel() for p in params]
        if not _all_finite([scores], compiled=compiled):
            theta = flatten(p.detach().to(scores.dtype) for p in params)
            if not _all_finite([theta], compiled=False):
                raise NonFiniteError("a parameter is not finite")
            weights = flatten(
                torch.zeros_like(p, dtype=scores.dtype)
                if (f := self.second_moment(p)) is None
                else f.to(scores.dtype) * (1.0 if corrections is None else corrections[i])
                for i, p in enumerate(params)
            )
            return weighted_top_s_mask(theta, weights, budget, sizes=sizes, minimum=minimum)
        if minimum:
            return top_s_mask_with_minimum(scores, budget, sizes, minimum)
        if compiled and 0 < budget < scores.numel():
            from ._kernels import iht_step as kernels

            keep = kernels.threshold_flat_(scores, budget)  # the buffer is ours: in place
            if keep is not None:
                return keep
        return top_s_mask(scores, budget)

    def _zero_state_off_support(self, params: list[Tensor], pool_state: PoolState) -> None:
        """Zero every per-coordinate state tensor of the base optimizer outside the support
        (and the wrapper's own running mean of squared gradients)."""
        mask = pool_state.mask
        if mask is None or (self.kernel == "torch" and bool(mask.all())):
            return
        states: list[tuple[int, Tensor, Tensor]] = []  # (offset in the pool, state, parameter)
        offset = 0
        for p in params:
            if p in self.fisher:
                states.append((offset, self.fisher[p], p))
            for name, value in self.optimizer.state.get(p, {}).items():
                if (
                    name != "step"
                    and isinstance(value, Tensor)
                    and value.shape == p.shape
                    and value.is_floating_point()
                ):
                    # sharded (DTensor) state: its local shard matches the local mask
                    states.append((offset, local_part(value), local_part(p)))
            offset += local_part(p).numel()
        if not states:
            return
        tensors = [value for _, value, _ in states]
        if self._large(mask.numel()) and _compiled_applies(tensors, mask):
            from ._kernels import iht_step as kernels

            # One parallel pass per tensor: torch's masked_fill_ is 6x slower here (10M entries).
            kernels.zero_off_mask_([(offset, value) for offset, value, _ in states], mask)
            return
        dropped = pool_state.dropped()
        for offset, value, p in states:
            value.masked_fill_(dropped[offset : offset + p.numel()].view(p.shape), 0.0)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict, each pool's :class:`~iht.PoolState`, the clock,
        and the wrapper's own running means of squared gradients (by parameter index)."""
        order = {p: i for i, p in enumerate(self._params())}
        return {
            "optimizer": self.optimizer.state_dict(),
            "pools": {key: pool.to_dict() for key, pool in self.pool_states.items()},
            "steps_taken": self.steps_taken,
            "fisher": {order[p]: f for p, f in self.fisher.items()},
            "fisher_steps": {order[p]: n for p, n in self.fisher_steps.items()},
        }

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output: a resumed run continues bit for bit. Everything
        is checked before anything is changed."""
        if not isinstance(state_dict, dict) or "optimizer" not in state_dict:
            raise InvalidValueError(
                "not a SparseOptimizer state dict (it has no 'optimizer' entry); "
                "load a base optimizer's state dict into the base optimizer"
            )
        params = self._params()
        fisher, steps = _checked_fisher(state_dict, params)
        self.optimizer.load_state_dict(state_dict["optimizer"])
        device = next((p.device for g in self.param_groups for p in g["params"]), None)
        self.pool_states = {
            key: PoolState.from_dict(value, device=device)
            for key, value in state_dict.get("pools", {}).items()
        }
        self.steps_taken = int(state_dict.get("steps_taken", 0))
        self.fisher = {
            params[i]: f.to(device=params[i].device, dtype=params[i].dtype, copy=True)
            for i, f in fisher.items()
        }
        self.fisher_steps = {params[i]: n for i, n in steps.items()}


def _index(i: object, size: int) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size


def _checked_fisher(
    state_dict: dict[str, Any], params: list[Tensor]
) -> tuple[dict[int, Tensor], dict[int, int]]:
    """A state dict's running means of squared gradients (and their step counts), refused
    unless each is a finite, nonnegative floating tensor of its parameter's shape."""
    fisher = state_dict.get("fisher", {})
    steps = state_dict.get("fisher_steps", {})
    good = (
        isinstance(fisher, dict)
        and isinstance(steps, dict)
        and all(
            _index(i, len(params))
            and isinstance(f, Tensor)
            and f.is_floating_point()
            and f.shape == params[i].shape
            and bool(torch.isfinite(f).all())
            and bool((f >= 0).all())
            for i, f in fisher.items()
        )
        and all(
            i in fisher and isinstance(n, int) and not isinstance(n, bool) and n >= 0
            for i, n in steps.items()
        )
    )
    if not good:
        raise InvalidValueError(
            "the state dict's 'fisher' entry does not match this optimizer's parameters "
            "(finite, nonnegative tensors of their parameters' shapes, by parameter index)"
        )
    return fisher, steps


def _compiled_applies(tensors: list[Tensor], mask: Tensor | None = None) -> bool:
    """The compiled kernels take contiguous CPU float32/float64 tensors (and a CPU mask)."""
    from ._kernels import iht_step as kernels

    return (mask is None or mask.device.type == "cpu") and kernels.eligible(
        tensors, [None] * len(tensors)
    )


def _all_finite(tensors: list[Tensor], *, compiled: bool) -> bool:
    """Whether every entry is finite: one parallel compiled count, or one max-norm per tensor
    read back together (NaN or inf exactly when an entry is); True on ``meta`` (no values)."""
    tensors = [t for t in tensors if t.numel()]  # (max-norms of empty tensors fail)
    if not tensors or tensors[0].device.type == "meta":
        return True
    if compiled:
        from ._kernels import iht_step as kernels

        return kernels.nonfinite_count(tensors, [None] * len(tensors), [0.0] * len(tensors)) == 0
    norms = torch.stack(
        [torch.linalg.vector_norm(t.detach(), ord=math.inf).double() for t in tensors]
    )
    return bool(torch.isfinite(norms).all())


def _check_gradients(params: Iterable[Tensor], kernel: str) -> None:
    """Raise NonFiniteError, naming the tensor, on a NaN or infinite gradient (nothing done).

    One read of each gradient: a compiled parallel count on the CPU (torch's reductions are
    5-10x slower here), else each gradient's max-norm (NaN or inf exactly when an entry is),
    with one device sync for all of them.
    """
    params = list(params)
    for p in params:
        if p.grad is not None and p.grad.layout != torch.strided:
            raise InvalidValueError(
                f"a parameter of shape {tuple(p.shape)} has a {p.grad.layout} gradient; the "
                "projection needs dense gradients (build nn.Embedding with sparse=False)"
            )
    grads = [p.grad for p in params if p.grad is not None and p.grad.numel()]
    if not grads or grads[0].device.type == "meta":  # (meta tensors hold no values)
        return
    large = kernel != "torch" and sum(g.numel() for g in grads) >= COMPILED_MIN_SIZE
    if large and _compiled_applies(grads):
        from ._kernels import iht_step as kernels

        if kernels.nonfinite_count(grads, [None] * len(grads), [0.0] * len(grads)) == 0:
            return
    # in float64: a float64 gradient beyond float32's range is finite, not inf
    norms = torch.stack([torch.linalg.vector_norm(g, ord=math.inf).double() for g in grads])
    finite = torch.isfinite(norms)
    if not bool(finite.all()):
        bad = grads[int((~finite).nonzero()[0])]
        raise NonFiniteError(
            f"non-finite gradient in a parameter of shape {tuple(bad.shape)}; "
            "parameters left unchanged"
        )
