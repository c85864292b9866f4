r"""Monte Carlo estimate of the restricted gradient Lipschitz constant L_2s (Sec. III-F).

For i = 1..n (PAPER_NOTES.md, "Monte Carlo estimate of L_2s"):

1. theta ~ the model's default initialisation;
2. theta_i = theta restricted to a uniformly random support of size s;
3. alpha = min_{j in supp(theta_i)} |theta_i[j]|;
4. theta~_i = H_s(theta_i + alpha z), z ~ N(0, I_P)  [reconstructed: keeps theta~_i s-sparse,
   so theta_i - theta~_i is at most 2s-sparse, as L_2s needs];
5. L_i = ||grad f(theta_i) - grad f(theta~_i)|| / ||theta_i - theta~_i||;

and L_hat_2s = max_i L_i, learning rate 1 / L_hat_2s. For the dense network s = P.

Every L_i is a ratio of the sufficient condition (6) at an admissible pair, so L_hat_2s is a
lower bound of the true constant that grows (weakly) with n.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .errors import EstimateError, InvalidValueError
from .evaluation import evaluating
from .init import reset_parameters_
from .sharded import is_sharded, local_part, shard_segments
from .threshold import check_sparsity, flatten, top_s_mask, unflatten_

if TYPE_CHECKING:
    from .budget import Budget

__all__ = [
    "DEFAULT_N_SAMPLES",
    "L2sEstimate",
    "draw_pairs",
    "estimate_l2s",
    "estimate_l2s_fn",
    "lipschitz_ratios",
    "perturbation_pairs",
    "ratios_to_estimate",
]

#: Default number of Monte Carlo draws n_monte (the paper gives none). On IRIS the estimate
#: at n = 100 is within a few percent of its value at n = 1000 (see tests/test_lipschitz.py
#: and ``benchmarks/l2s_samples.py``), and costs 200 gradients, nothing next to training.
DEFAULT_N_SAMPLES = 100

GradFn = Callable[[Tensor], Tensor]
InitFn = Callable[[int, "torch.Generator | None"], Tensor]


@dataclass(frozen=True)
class L2sEstimate:
    """The result of :func:`estimate_l2s`.

    Attributes:
        estimate: L_hat_2s = max_i L_i.
        lr: the learning rate 1 / L_hat_2s.
        ratios: every sampled L_i, shape (n_samples,), in draw order.
        sparsity: the s used (P for the dense network).
        seconds_per_draw: wall time of one draw (two gradients), when measured.
    """

    estimate: float
    lr: float
    ratios: Tensor
    sparsity: int
    seconds_per_draw: float = math.nan

    def running_max(self) -> Tensor:
        """The estimate after 1, 2, ..., n draws: how it grows with the sample count."""
        return torch.cummax(self.ratios, dim=0).values

    def spread(self) -> dict[str, float]:
        """Quantiles of the sampled ratios (``q50``, ``q90``, ``q99``) and their max.

        The estimate is the max of a heavy-tailed sample on deep networks: when ``max`` is
        far above ``q90``, 1 / max is a cautious step, and 1 / q90 or a tuned step may train
        faster (the README discusses when).
        """
        r = self.ratios.double()
        q = torch.quantile(r, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
        return {"q50": float(q[0]), "q90": float(q[1]), "q99": float(q[2]), "max": float(r.max())}


def perturbation_pairs(theta: Tensor, keys: Tensor, z: Tensor, s: int) -> tuple[Tensor, Tensor]:
    """Steps 2-4 for a batch of draws: the sparse point and its s-sparse perturbation.

    Args:
        theta: dense draws, shape (..., P).
        keys: uniform(0, 1) keys, same shape; the support is the s entries of smallest key,
            i.e. a uniformly random s-subset.
        z: standard normal noise, same shape.
        s: support size, 1 <= s <= P.

    Returns:
        (theta_i, theta~_i), both of shape (..., P) and at most s-sparse.
    """
    size = theta.shape[-1]
    if s >= size:
        sparse = theta
    else:
        support = torch.zeros_like(theta, dtype=torch.bool)
        support.scatter_(-1, keys.argsort(dim=-1)[..., :s], True)
        sparse = torch.where(support, theta, torch.zeros_like(theta))
    moved = sparse + _perturbation_scale(sparse) * z
    perturbed = moved if s >= size else torch.where(top_s_mask(moved, s), moved, 0.0)
    return sparse, perturbed


def _perturbation_scale(sparse: Tensor) -> Tensor:
    """alpha of each draw, shape (..., 1): the smallest nonzero magnitude of theta_i."""
    magnitude = sparse.abs()
    alpha = torch.where(magnitude > 0, magnitude, torch.full_like(magnitude, math.inf))
    alpha = alpha.min(dim=-1, keepdim=True).values
    # A support that drew only zeros (e.g. zero-initialised biases) has no smallest nonzero
    # entry; perturb it at unit scale so the draw still yields a ratio.
    return torch.where(torch.isfinite(alpha), alpha, torch.ones_like(alpha))


def _check_n_samples(n_samples: object) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise InvalidValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")


def estimate_l2s_fn(
    grad_fn: GradFn,
    init_fn: InitFn,
    *,
    sparsity: int | None,
    size: int,
    n_samples: int = DEFAULT_N_SAMPLES,
    generator: torch.Generator | None = None,
) -> L2sEstimate:
    """Estimate L_2s of a function of a flat parameter vector.

    Args:
        grad_fn: maps parameters of shape (n, P) to the gradients of f, shape (n, P).
        init_fn: ``init_fn(n, generator)`` draws n dense parameter vectors, shape (n, P).
        sparsity: s (1 <= s <= P), or None for the dense network (s = P).
        size: P, the number of parameters.
        n_samples: number of Monte Carlo draws n >= 1.
        generator: the randomness. Draws happen in this order: the n initialisations, then
            (n, P) uniform support keys, then (n, P) normal perturbations.

    Raises:
        ValueError: bad sparsity or n_samples.
        EstimateError: every ratio is 0 (f does not depend on theta) or one is not finite.
    """
    s = size if sparsity is None else check_sparsity(sparsity, size)
    if s < 1:
        raise InvalidValueError(f"sparsity must be in 1..{size} to estimate L_2s, got {s}")
    _check_n_samples(n_samples)
    sparse, perturbed = draw_pairs(
        init_fn, sparsity=s, size=size, n_samples=n_samples, generator=generator
    )
    return ratios_to_estimate(lipschitz_ratios(grad_fn, sparse, perturbed), s)


def draw_pairs(
    init_fn: InitFn, *, sparsity: int, size: int, n_samples: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Steps 1-4 for n draws: (theta_i, theta~_i), each (n, P).

    The generator is consumed in a fixed order: the n initialisations, then (n, P) uniform
    support keys, then (n, P) normal perturbations, all in the dtype ``init_fn`` returns.
    """
    theta = init_fn(n_samples, generator)
    if theta.shape != (n_samples, size):
        raise InvalidValueError(
            f"init_fn returned shape {tuple(theta.shape)}, expected ({n_samples}, {size})"
        )
    keys = torch.rand(theta.shape, generator=generator, dtype=theta.dtype).to(theta.device)
    z = torch.randn(theta.shape, generator=generator, dtype=theta.dtype).to(theta.device)
    return perturbation_pairs(theta, keys, z, sparsity)


def budget_pairs(
    theta: Tensor, keys: Tensor, z: Tensor, masks: Callable[[Tensor, bool], Tensor]
) -> tuple[Tensor, Tensor]:
    """Steps 3-4 for a budget of any shape: theta_i kept on a uniformly random point of the
    budget's supports (``masks(keys, True)``), then perturbed by alpha z and projected back
    onto the budget's set (``masks(moved, False)``: its own projection, groups or N:M)."""
    sparse = torch.where(masks(keys, True), theta, torch.zeros_like(theta))
    moved = sparse + _perturbation_scale(sparse) * z
    return sparse, torch.where(masks(moved, False), moved, torch.zeros_like(moved))


def lipschitz_ratios(grad_fn: GradFn, sparse: Tensor, perturbed: Tensor) -> Tensor:
    """Step 5: L_i = ||grad f(theta_i) - grad f(theta~_i)|| / ||theta_i - theta~_i||, shape (n,)."""
    return (grad_fn(sparse) - grad_fn(perturbed)).norm(dim=-1) / (sparse - perturbed).norm(dim=-1)


def ratios_to_estimate(ratios: Tensor, s: int) -> L2sEstimate:
    """Step 6: L_hat_2s = max_i L_i, checked to be positive and finite."""
    if not bool(torch.isfinite(ratios).all()):
        raise EstimateError(
            f"L_2s estimate is not finite ({int((~torch.isfinite(ratios)).sum())} of "
            f"{ratios.numel()} ratios are NaN or infinite); check the loss and the initialisation"
        )
    estimate = float(ratios.max())
    if estimate <= 0:
        raise EstimateError(
            "L_2s estimate is 0: the gradient does not change with the parameters "
            "(does the loss depend on them?); no learning rate follows"
        )
    return L2sEstimate(
        estimate=estimate, lr=1.0 / estimate, ratios=ratios.detach().cpu(), sparsity=s
    )


@dataclass(frozen=True)
class _LocalInit:
    """How to draw one parameter's local shard from its layer's default initialisation."""

    kind: str  # "uniform" (+-value), "constant" (value) or "normal"
    value: float
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def draw(self, gen: torch.Generator) -> Tensor:
        if self.kind == "uniform":
            u = torch.rand(self.shape, generator=gen, dtype=self.dtype)
            return ((u * 2 - 1) * self.value).to(self.device)
        if self.kind == "constant":
            return torch.full(self.shape, self.value, dtype=self.dtype, device=self.device)
        return torch.randn(self.shape, generator=gen, dtype=self.dtype).to(self.device)


def _default_inits(model: nn.Module, params: Sequence[Tensor]) -> list[_LocalInit]:
    """For each (DTensor) parameter, how to draw its *local shard* from the default
    initialisation of its layer: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for Linear and Conv weights
    and biases (PyTorch's kaiming_uniform(a=sqrt 5) and bias rule), ones / zeros for norm
    layers' weights / biases, N(0, 1) for Embedding.

    Raises:
        InvalidValueError: a parameter of another kind of layer.
    """
    owner: dict[int, tuple[nn.Module, str]] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            owner[id(param)] = (module, name)
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    inits = []
    for p in params:
        module, name = owner[id(p)]
        local = local_part(p)
        where = (tuple(local.shape), local.dtype, local.device)
        if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
            fan_in = math.prod(module.weight.shape[1:])
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            inits.append(_LocalInit("uniform", bound, *where))
        elif isinstance(module, norms):
            inits.append(_LocalInit("constant", 1.0 if name == "weight" else 0.0, *where))
        elif isinstance(module, nn.Embedding):
            inits.append(_LocalInit("normal", 0.0, *where))
        else:
            raise InvalidValueError(
                f"estimate_l2s on sharded parameters draws the default initialisation of "
                f"Linear, Conv, norm and Embedding layers; {type(module).__name__}.{name} is "
                "none of them"
            )
    return inits


def _estimate_sharded(
    model: nn.Module,
    params: Sequence[Tensor],
    loss_fn: Callable[[nn.Module], Tensor],
    sparsity: int | None,
    n_samples: int,
    generator: torch.Generator | None,
) -> L2sEstimate:
    """The Monte Carlo estimate on DTensor (FSDP2) parameters, without gathering them.

    Each rank draws its own shards of theta_i (the layers' default initialisation), of the
    uniform support keys and of the normal perturbation, from a generator seeded by
    ``generator`` and its rank; the support (the s largest keys: a uniformly random support)
    and the projection of the perturbed point are the sharded selection; alpha is a MIN, the
    two norms of the ratio are SUMs over the ranks. Every rank gets the same ratios. The
    numbers are of the same distribution as the one-process estimate, not the same draws.
    """
    import torch.distributed as dist

    from .distributed import sharded_threshold_masks

    _check_n_samples(n_samples)
    offsets, group = shard_segments(params)
    total = sum(p.numel() for p in params)
    s = total if sparsity is None else check_sparsity(sparsity, total)
    if s < 1:
        raise InvalidValueError(f"sparsity must be in 1..{total} to estimate L_2s, got {s}")
    inits = _default_inits(model, params)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    gen = torch.Generator().manual_seed(seed + dist.get_rank(group))
    locals_ = [local_part(p) for p in params]
    saved = [t.detach().clone() for t in locals_]
    saved_grads = [p.grad for p in params]

    def on_set(parts: list[Tensor], masks: list[Tensor]) -> list[Tensor]:
        return [torch.where(m, x, torch.zeros_like(x)) for x, m in zip(parts, masks, strict=True)]

    def select(parts: list[Tensor]) -> list[Tensor]:
        masks = sharded_threshold_masks(
            [(x.reshape(-1), o) for x, o in zip(parts, offsets, strict=True)], s, group=group
        )
        return [m.reshape(x.shape) for m, x in zip(masks, parts, strict=True)]

    def grads_at(parts: list[Tensor]) -> list[Tensor]:
        with torch.no_grad():
            for t, x in zip(locals_, parts, strict=True):
                t.copy_(x)
        for p in params:
            p.grad = None
        loss_fn(model).backward()
        return [
            torch.zeros_like(t) if p.grad is None else local_part(p.grad).clone()
            for p, t in zip(params, locals_, strict=True)
        ]

    def total_of(value: Tensor, op: Any) -> float:
        value = value.reshape(1).to(torch.float64)
        dist.all_reduce(value, op=op, group=group)
        return float(value[0])

    started = time.perf_counter()
    ratios = []
    try:
        with evaluating(model):
            for _ in range(n_samples):
                theta = [init.draw(gen) for init in inits]
                keys = [
                    torch.rand(t.shape, generator=gen, dtype=t.dtype).to(t.device) for t in theta
                ]
                z = [torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device) for t in theta]
                sparse = on_set(theta, select(keys))
                smallest = [
                    torch.where(x != 0, x.abs(), torch.full_like(x, math.inf)).amin()
                    if x.numel()
                    else torch.tensor(math.inf, dtype=x.dtype)
                    for x in sparse
                ]
                alpha = total_of(torch.stack(smallest).amin(), dist.ReduceOp.MIN)
                alpha = alpha if math.isfinite(alpha) else 1.0
                moved = [x + alpha * d for x, d in zip(sparse, z, strict=True)]
                perturbed = on_set(moved, select(moved))
                g1, g2 = grads_at(sparse), grads_at(perturbed)
                num = sum(float((a - b).pow(2).sum()) for a, b in zip(g1, g2, strict=True))
                den = sum(
                    float((a - b).pow(2).sum()) for a, b in zip(sparse, perturbed, strict=True)
                )
                num_all = total_of(torch.tensor(num), dist.ReduceOp.SUM)
                den_all = total_of(torch.tensor(den), dist.ReduceOp.SUM)
                ratios.append(math.sqrt(num_all) / math.sqrt(den_all))
    finally:
        with torch.no_grad():
            for t, value in zip(locals_, saved, strict=True):
                t.copy_(value)
        for p, g in zip(params, saved_grads, strict=True):
            p.grad = g
    found = ratios_to_estimate(torch.tensor(ratios, dtype=torch.float64), s)
    return dataclasses.replace(found, seconds_per_draw=(time.perf_counter() - started) / n_samples)


def _estimate_for_budget(
    grad_fn: GradFn,
    init_fn: InitFn,
    model: nn.Module,
    budget: Budget,
    n_samples: int,
    generator: torch.Generator | None,
) -> L2sEstimate:
    """:func:`estimate_l2s_fn`'s steps with the supports of ``budget``'s shape (the same
    order of draws: initialisations, uniform keys, normal perturbations)."""
    _check_n_samples(n_samples)
    theta = init_fn(n_samples, generator)
    keys = torch.rand(theta.shape, generator=generator, dtype=theta.dtype).to(theta.device)
    z = torch.randn(theta.shape, generator=generator, dtype=theta.dtype).to(theta.device)
    sparse, perturbed = budget_pairs(
        theta, keys, z, lambda scores, random: budget.masks(model, scores, random=random)
    )
    return ratios_to_estimate(lipschitz_ratios(grad_fn, sparse, perturbed), budget.max_nonzeros)


def estimate_l2s(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    *,
    sparsity: int | None,
    n_samples: int = DEFAULT_N_SAMPLES,
    generator: torch.Generator | None = None,
    init_fn: InitFn | None = None,
    budget: Budget | None = None,
) -> L2sEstimate:
    """Estimate L_2s for a model and a loss closure, and the learning rate 1 / L_hat_2s.

    Each draw re-initialises the model with its own default initialisation
    (``reset_parameters`` of its submodules, seeded from ``generator``) unless ``init_fn``
    is given. The loss is evaluated in eval mode (dropout off, batch norm on its running
    statistics: otherwise every gradient is of a different random function and the ratios
    mean nothing); the model's parameters, buffers and modes are restored afterwards.

    Args:
        model: any ``nn.Module``; theta is ``model.parameters()`` flattened in order.
        loss_fn: ``loss_fn(model)`` returns the scalar loss f over the full training data.
        sparsity: s, or None for the dense network.
        n_samples: Monte Carlo draws.
        generator: the randomness (CPU generator).
        init_fn: optional ``init_fn(n, generator) -> (n, P)`` replacing the default draws.
        budget: instead of ``sparsity`` (then None): draw the supports of this budget's
            shape, pool by pool: s random entries of an entry pool, random whole rows of a
            neuron/channel pool, a random N:M pattern (the restricted constant of a
            structured set is over its own supports), and project the perturbed point with
            the budget's own projection.

    Returns:
        An :class:`L2sEstimate` with ``estimate``, ``lr`` and every sampled ratio.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
        >>> est = estimate_l2s(model, lambda m: nn.functional.cross_entropy(m(x), y),
        ...                    sparsity=5, n_samples=10, generator=torch.Generator().manual_seed(0))
        >>> est.lr > 0
        True
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InvalidValueError(f"{type(model).__name__} has no trainable parameters")
    if budget is not None and sparsity is not None:
        raise InvalidValueError("give sparsity or budget, not both")
    if is_sharded(params):
        if budget is not None or init_fn is not None:
            raise InvalidValueError(
                "on sharded (DTensor) parameters estimate_l2s takes an entry sparsity and the "
                "layers' default initialisation (no budget=, no init_fn=)"
            )
        return _estimate_sharded(model, params, loss_fn, sparsity, n_samples, generator)
    saved = [p.detach().clone() for p in params]
    # reset_parameters() also re-draws frozen parameters and resets buffers (BatchNorm
    # statistics), and loss_fn may update buffers; none of them is part of theta, so they are
    # held at the caller's values during the draws and restored afterwards.
    fixed = [t for t in (*model.parameters(), *model.buffers()) if not t.requires_grad]
    fixed_saved = [t.detach().clone() for t in fixed]

    def restore_fixed() -> None:
        with torch.no_grad():
            for t, value in zip(fixed, fixed_saved, strict=True):
                t.copy_(value)

    def default_init(n: int, gen: torch.Generator | None) -> Tensor:
        draws = []
        for _ in range(n):
            reset_parameters_(model, generator=gen)
            draws.append(flatten(p.detach() for p in params).clone())
        restore_fixed()
        return torch.stack(draws)

    def grad_fn(thetas: Tensor) -> Tensor:
        rows = []
        for theta in thetas:
            with torch.no_grad():
                unflatten_(theta, params)
            loss = loss_fn(model)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            rows.append(
                flatten(
                    torch.zeros_like(p) if g is None else g
                    for p, g in zip(params, grads, strict=True)
                )
            )
        return torch.stack(rows)

    started = time.perf_counter()
    try:
        with evaluating(model):
            if budget is None:
                found = estimate_l2s_fn(
                    grad_fn,
                    init_fn or default_init,
                    sparsity=sparsity,
                    size=sum(p.numel() for p in params),
                    n_samples=n_samples,
                    generator=generator,
                )
            else:
                found = _estimate_for_budget(
                    grad_fn, init_fn or default_init, model, budget, n_samples, generator
                )
        return dataclasses.replace(
            found, seconds_per_draw=(time.perf_counter() - started) / n_samples
        )
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved, strict=True):
                p.copy_(value)
        restore_fixed()
