r"""Certificates for a point found by IHT: HT-stability and epsilon-optimality.

HT-stable stationary point (Damadi-Shen, eq. 8), with S = supp(theta*) and gamma the step:

    theta* = H_s(theta* - gamma grad f(theta*))  with a unique H_s value, i.e.
    grad_i f(theta*) = 0                              for i in S,
    gamma |grad_i f(theta*)| < min_{j in S} |theta*_j|  for i not in S
    (and grad f(theta*) = 0 when |S| < s).

Numerically a gradient is never exactly 0, so ``stable`` uses a tolerance ``grad_tol`` on the
gradient and reports every figure for the reader to judge. Beck and Eldar (2013) call the
same condition L-stationarity with L = 1 / gamma.

epsilon-optimality (eq. 3): f(theta_s) <= f(theta_dense) + epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from .budget import Budget
from .errors import InvalidValueError
from .evaluation import evaluating
from .sharded import is_sharded, local_part, shard_segments
from .structured import Structure, parse_structure
from .threshold import boundary_tie, check_sparsity, flatten, top_s_mask

__all__ = [
    "DEFAULT_GRAD_TOL",
    "Certificate",
    "certify",
    "certify_budget",
    "certify_point",
    "constant_output_loss",
    "instability_reasons",
    "stability_figures",
    "structured_figures",
]

#: Default tolerance on |grad f| for calling a gradient zero.
DEFAULT_GRAD_TOL = 1e-3


@dataclass(frozen=True)
class Certificate:
    """What :func:`certify` found at a point.

    Attributes:
        sparsity: the budget s (P for a dense point).
        lr: the step gamma the stability is judged with.
        nonzeros: |S|.
        max_grad_on_support: max_{i in S} |grad_i f|.
        max_grad_off_support: max_{i not in S} |grad_i f| (0 if S is everything).
        off_support_ratio: max_{i not in S} gamma |grad_i f| / min_{j in S} |theta_j|;
            below 1 means no off-support entry can enter the support (inf if S is empty).
        residual: the fixed-point residual ||theta - H_s(theta - gamma grad f)||.
        tie: H_s(theta - gamma grad f) is set-valued (the s-th and (s+1)-th magnitudes tie).
        stable: the point is HT-stable within ``grad_tol``.
        grad_tol: the tolerance used for "gradient is zero".
        loss, dense_loss, epsilon: f(theta), the dense reference f(theta_dense) and
            epsilon = loss - dense_loss when given.
        epsilon_optimal: epsilon <= epsilon_tol when both were given.
        tensor_nonzeros: nonzeros of every parameter by name (:func:`certify` only).
        degenerate: why the point is degenerate (a weight layer with no nonzeros that cuts
            every path from the input, an output that does not depend on the input); such a
            point is never ``stable``.
    """

    sparsity: int
    lr: float
    nonzeros: int
    max_grad_on_support: float
    max_grad_off_support: float
    off_support_ratio: float
    residual: float
    tie: bool
    stable: bool
    grad_tol: float
    loss: float | None = None
    dense_loss: float | None = None
    epsilon: float | None = None
    epsilon_optimal: bool | None = None
    tensor_nonzeros: dict[str, int] = field(default_factory=dict)
    degenerate: tuple[str, ...] = ()


def stability_figures(
    theta: Tensor,
    grad: Tensor,
    *,
    lr: float | Tensor,
    sparsity: int,
    grad_tol: float = DEFAULT_GRAD_TOL,
) -> dict[str, Tensor]:
    """The HT-stability figures for a batch of points, shape (..., P) -> (...) each.

    Returns a dict of tensors: ``nonzeros``, ``max_grad_on_support``, ``max_grad_off_support``,
    ``off_support_ratio``, ``residual``, ``tie``, ``stable``.
    """
    support = theta != 0
    zero = torch.zeros((), dtype=theta.dtype, device=theta.device)
    mag_grad = grad.abs()
    on = torch.where(support, mag_grad, zero).amax(dim=-1)
    off = torch.where(support, zero, mag_grad).amax(dim=-1)
    min_support = torch.where(support, theta.abs(), torch.full_like(theta, math.inf)).amin(dim=-1)
    # gamma per row: a float, or a tensor of shape (...) or (..., 1).
    lr_col = torch.as_tensor(lr, dtype=theta.dtype, device=theta.device)
    if lr_col.dim() > 0:
        lr_col = lr_col.reshape(*theta.shape[:-1], 1)
    ratio = (
        lr_col.squeeze(-1) * off / min_support if lr_col.dim() > 0 else lr_col * off / min_support
    )
    # An empty support has no smallest entry: nothing protects it, the ratio is infinite.
    ratio = torch.where(support.any(dim=-1), ratio, torch.full_like(ratio, math.inf))
    candidate = theta - lr_col * grad
    stepped = torch.where(top_s_mask(candidate, sparsity), candidate, zero)
    residual = (theta - stepped).norm(dim=-1)
    tie = boundary_tie(candidate, sparsity)
    nonzeros = support.sum(dim=-1)
    full = nonzeros >= sparsity
    # An empty full support means s = 0: H_0 maps everything to 0, so theta = 0 is a fixed
    # point with a unique value (the condition's min over S is +inf), though the ratio is inf.
    stable_full = (~tie) & ((ratio < 1) | (nonzeros == 0)) & (on <= grad_tol)
    stable_partial = mag_grad.amax(dim=-1) <= grad_tol
    # More than s nonzeros is never a fixed point of H_s, whatever the gradient.
    stable = torch.where(full, stable_full, stable_partial) & (nonzeros <= sparsity)
    return {
        "nonzeros": nonzeros,
        "max_grad_on_support": on,
        "max_grad_off_support": off,
        "off_support_ratio": ratio,
        "residual": residual,
        "tie": tie,
        "stable": stable,
    }


def structured_figures(
    tensors: list[Tensor],
    grads: list[Tensor],
    *,
    lr: float,
    structure: Structure,
    sparsity: int,
    grad_tol: float = DEFAULT_GRAD_TOL,
) -> dict[str, Any]:
    r"""The HT-stability figures of a pool with a structured budget (:mod:`iht.structured`).

    The map tested is theta -> P(theta - gamma grad f), P the structure's exact projection.
    Its support is a set of rows (groups: a kept row's zero entries are still free) or of
    entries (N:M). theta is a fixed point with a unique P-value when:

    - groups (s rows): grad f = 0 on every kept row, and with s rows kept
      gamma max_{dropped g} ||grad_g f|| < min_{kept g} ||theta_g|| (``off_support_ratio``),
      no tie between the s-th and (s+1)-th row norms of the candidate; with fewer than s rows
      kept, grad f = 0 everywhere;
    - N:M: grad f = 0 on the support; in every block of M holding N nonzeros,
      gamma max_{off} |grad_i f| < min_{kept} |theta_j| (the largest over blocks is the
      ratio) and no tie at the N-th magnitude; in a block with fewer, grad f = 0 on it.

    ``residual`` is ||theta - P(theta - gamma grad f)|| over the pool.
    """
    group = structure.kind == "group"

    def rows(t: Tensor) -> Tensor:
        if group:
            if not t.dim():
                return t.detach().reshape(1, 1)
            return t.detach().reshape(t.shape[0] // structure.block, -1)  # a group per block
        width = structure.m
        return t.detach().reshape(-1, width)  # blocks of M (rows are multiples of M)

    if structure.bias:  # one layer's (weight, bias): a row and its bias entry are a group
        theta = structure.rows([t.detach() for t in tensors])
        grad = structure.rows([g.detach() for g in grads])
        theta = theta.reshape(theta.shape[0] // structure.block, -1)
        grad = grad.reshape(grad.shape[0] // structure.block, -1)
        return _group_figures(theta, grad, lr, sparsity, grad_tol, tensors, grads, structure)
    if group:
        theta = torch.cat([rows(t) for t in tensors])
        grad = torch.cat([rows(g) for g in grads])
        return _group_figures(theta, grad, lr, sparsity, grad_tol, tensors, grads, structure)
    blocks = torch.cat([rows(t) for t in tensors])
    gblocks = torch.cat([rows(g) for g in grads])
    return _nm_figures(blocks, gblocks, lr, structure, grad_tol, tensors, grads)


def _group_figures(
    theta: Tensor,
    grad: Tensor,
    lr: float,
    s: int,
    grad_tol: float,
    tensors: list[Tensor],
    grads: list[Tensor],
    structure: Structure,
) -> dict[str, Any]:
    kept = (theta != 0).any(dim=1)
    n_kept = int(kept.sum())
    mag = grad.abs()
    on = float(mag[kept].max()) if n_kept and mag[kept].numel() else 0.0
    off = float(mag[~kept].max()) if bool((~kept).any()) else 0.0
    row_grad = grad.norm(dim=1)
    row_theta = theta.norm(dim=1)
    if n_kept:
        dropped = float(row_grad[~kept].max()) if bool((~kept).any()) else 0.0
        ratio = lr * dropped / float(row_theta[kept].min())
    else:
        ratio = math.inf
    candidate = theta - lr * grad
    norms = candidate.norm(dim=1)
    tie = False
    if 0 < s < norms.numel():
        top = torch.topk(norms, s + 1, sorted=True).values
        tie = bool(top[s - 1] == top[s]) and bool(top[s] > 0)
    residual = _structured_residual(tensors, grads, lr, structure, s)
    if structure.entries:
        # rows and entries: the map keeps theta's support exactly (no sort-based ratio here;
        # the projection is the dynamic program, and equal-value optima are not flagged)
        candidates = [t.detach() - lr * g for t, g in zip(tensors, grads, strict=True)]
        chosen = structure.mask(candidates, s)
        support = torch.cat([t.detach().reshape(-1) != 0 for t in tensors])
        full = n_kept >= s or int(support.sum()) >= structure.entries
        if full:
            stable = on <= grad_tol and bool(torch.equal(chosen, support))
        else:
            stable = float(mag.max()) <= grad_tol
        tie = False
    elif n_kept >= s:
        stable = (not tie) and (ratio < 1 or n_kept == 0) and on <= grad_tol
    else:
        stable = float(mag.max()) <= grad_tol
    stable = stable and n_kept <= s
    return {
        "nonzeros": int((theta != 0).sum()),
        "kept_groups": n_kept,
        "max_grad_on_support": on,
        "max_grad_off_support": off,
        "off_support_ratio": ratio,
        "residual": residual,
        "tie": tie,
        "stable": bool(stable),
    }


def _nm_figures(
    blocks: Tensor,
    gblocks: Tensor,
    lr: float,
    structure: Structure,
    grad_tol: float,
    tensors: list[Tensor],
    grads: list[Tensor],
) -> dict[str, Any]:
    n = structure.n
    support = blocks != 0
    count = support.sum(dim=1)
    mag = gblocks.abs()
    zero = torch.zeros((), dtype=mag.dtype, device=mag.device)
    on = float(torch.where(support, mag, zero).max()) if blocks.numel() else 0.0
    off_each = torch.where(support, zero, mag).amax(dim=1)
    full = count >= n
    inf = torch.full_like(blocks, math.inf)
    min_kept = torch.where(support, blocks.abs(), inf).amin(dim=1)
    ratios = lr * off_each / min_kept
    ratio = float(ratios[full].max()) if bool(full.any()) else 0.0
    candidate = (blocks - lr * gblocks).abs()
    tie = False
    if n < structure.m:
        top = torch.topk(candidate, n + 1, dim=1, sorted=True).values
        tie = bool(((top[:, n - 1] == top[:, n]) & (top[:, n] > 0)).any())
    partial_ok = bool((off_each[~full] <= grad_tol).all())
    stable = (
        not tie
        and on <= grad_tol
        and bool((ratios[full] < 1).all())
        and partial_ok
        and bool((count <= n).all())
    )
    return {
        "nonzeros": int(support.sum()),
        "max_grad_on_support": on,
        "max_grad_off_support": float(off_each.max()) if off_each.numel() else 0.0,
        "off_support_ratio": ratio,
        "residual": _structured_residual(tensors, grads, lr, structure, 0),
        "tie": tie,
        "stable": bool(stable),
    }


def _structured_residual(
    tensors: list[Tensor], grads: list[Tensor], lr: float, structure: Structure, s: int
) -> float:
    """||theta - P(theta - gamma grad)|| with the structure's projection P."""
    candidates = [t.detach() - lr * g for t, g in zip(tensors, grads, strict=True)]
    budget = s if structure.kind == "group" else structure.implied(candidates)
    mask = structure.mask(candidates, budget)
    flat = torch.cat([c.reshape(-1) for c in candidates])
    stepped = torch.where(mask, flat, torch.zeros((), dtype=flat.dtype, device=flat.device))
    theta = torch.cat([t.detach().reshape(-1) for t in tensors])
    return float((theta - stepped).norm())


def certify_point(
    theta: Tensor,
    grad: Tensor,
    *,
    lr: float,
    sparsity: int | None,
    grad_tol: float = DEFAULT_GRAD_TOL,
    loss: float | None = None,
    dense_loss: float | None = None,
    epsilon_tol: float | None = None,
) -> Certificate:
    """Certify one flat point theta (shape (P,)) given grad f(theta).

    Args:
        theta, grad: the point and the gradient of f there.
        lr: the step gamma of the IHT map.
        sparsity: s, or None for a dense point (s = P).
        grad_tol: |grad| at or below this counts as zero.
        loss, dense_loss: f(theta) and the dense reference loss, for epsilon.
        epsilon_tol: the epsilon of eq. (3) to check against.
    """
    if theta.dim() != 1 or theta.shape != grad.shape:
        raise InvalidValueError(
            f"theta and grad must be flat and of one shape, got {tuple(theta.shape)} and {tuple(grad.shape)}"
        )
    s = theta.numel() if sparsity is None else check_sparsity(sparsity, theta.numel())
    figures = stability_figures(theta.detach(), grad.detach(), lr=lr, sparsity=s, grad_tol=grad_tol)
    epsilon = None if loss is None or dense_loss is None else float(loss) - float(dense_loss)
    return Certificate(
        sparsity=s,
        lr=float(lr),
        nonzeros=int(figures["nonzeros"]),
        max_grad_on_support=float(figures["max_grad_on_support"]),
        max_grad_off_support=float(figures["max_grad_off_support"]),
        off_support_ratio=float(figures["off_support_ratio"]),
        residual=float(figures["residual"]),
        tie=bool(figures["tie"]),
        stable=bool(figures["stable"]),
        grad_tol=grad_tol,
        loss=None if loss is None else float(loss),
        dense_loss=None if dense_loss is None else float(dense_loss),
        epsilon=epsilon,
        epsilon_optimal=None if epsilon is None or epsilon_tol is None else epsilon <= epsilon_tol,
    )


def certify(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    *,
    lr: float,
    sparsity: int | None,
    grad_tol: float = DEFAULT_GRAD_TOL,
    dense_loss: float | None = None,
    epsilon_tol: float | None = None,
    inputs: Tensor | None = None,
    constant_loss: float | None = None,
) -> Certificate:
    """Certify a model's current parameters: HT-stability and, given a dense loss, epsilon.

    The test is the paper's fixed point theta = H_s(theta - lr grad f(theta)) with the lr
    given, whatever optimizer trained the model (with momentum or Adam it is still this map
    that is tested). The loss is evaluated in eval mode (dropout off, batch norm on its
    running statistics); the model's modes and buffers are restored afterwards. A degenerate
    point (see :func:`degeneracy`) is never stable.

    Args:
        model: the trained model; theta is its parameters flattened in order.
        loss_fn: ``loss_fn(model)`` returns the full training loss f.
        lr: the step gamma IHT used.
        sparsity: the budget s, or None for a dense model.
        grad_tol: |grad| at or below this counts as zero.
        dense_loss: f(theta_dense) of a dense model trained on the same data.
        epsilon_tol: check f(theta) <= dense_loss + epsilon_tol.
        inputs: training inputs, to check that the output depends on them.
        constant_loss: the training loss of the best input-independent prediction
            (:func:`constant_output_loss` of the labels, for cross-entropy): a point no better
            than it is degenerate.

    Example:
        >>> cert = certify(model, loss_fn, lr=opt_lr, sparsity=5, dense_loss=0.04)  # doctest: +SKIP
        >>> cert.stable, cert.epsilon  # doctest: +SKIP
    """
    check_lr_positive(lr)
    params = [p for p in model.parameters() if p.requires_grad]
    if is_sharded(params):  # FSDP2: figures by reductions over the shards, nothing gathered
        cert = _certify_sharded(model, params, loss_fn, lr, sparsity, grad_tol, dense_loss)
        reasons = degeneracy(model, inputs, loss=cert.loss, constant_loss=constant_loss)
        return replace(
            cert,
            epsilon_optimal=None
            if cert.epsilon is None or epsilon_tol is None
            else cert.epsilon <= epsilon_tol,
            tensor_nonzeros=tensor_nonzeros(model),
            degenerate=reasons,
            stable=cert.stable and not reasons,
        )
    with evaluating(model):
        loss = loss_fn(model)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    grad = flatten(
        torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
    )
    theta = flatten(p.detach() for p in params)
    cert = certify_point(
        theta,
        grad,
        lr=lr,
        sparsity=sparsity,
        grad_tol=grad_tol,
        loss=float(loss.detach()),
        dense_loss=dense_loss,
        epsilon_tol=epsilon_tol,
    )
    reasons = degeneracy(model, inputs, loss=cert.loss, constant_loss=constant_loss)
    return replace(
        cert,
        tensor_nonzeros=tensor_nonzeros(model),
        degenerate=reasons,
        stable=cert.stable and not reasons,
    )


def _sharded_grads(
    model: nn.Module, params: Sequence[Tensor], loss_fn: Callable[[nn.Module], Tensor]
) -> tuple[float, list[Tensor]]:
    """f and the local shards of grad f for DTensor (FSDP2) parameters, from
    ``loss.backward()`` (FSDP2 reduce-scatters the gradient into the shards; autograd.grad
    would bypass it); the parameters' ``.grad`` are restored afterwards."""
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        with evaluating(model):
            loss = loss_fn(model)
            loss.backward()
        grads = [
            torch.zeros_like(local_part(p)) if p.grad is None else local_part(p.grad).clone()
            for p in params
        ]
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    return float(loss.detach()), grads


def _sharded_figures(
    params: Sequence[Tensor], grads: Sequence[Tensor], lr: float, s: int, grad_tol: float
) -> dict[str, Any]:
    """:func:`stability_figures` of one pool of DTensor parameters (``grads``: their local
    shards): every figure a reduction (SUM, MAX, MIN) of per-shard figures, H_s of the
    candidate the sharded selection (:func:`iht.distributed.sharded_threshold_masks`); no
    rank holds the whole vector."""
    import torch.distributed as dist

    from .distributed import sharded_threshold_masks

    offsets, group = shard_segments(params)
    thetas = [local_part(p).detach().reshape(-1) for p in params]
    theta = torch.cat(thetas)
    grad = torch.cat([g.reshape(-1) for g in grads])
    total = sum(p.numel() for p in params)
    support = theta != 0
    mag = grad.abs()
    zero = torch.zeros((), dtype=theta.dtype, device=theta.device)
    inf = torch.full((), math.inf, dtype=theta.dtype, device=theta.device)

    def reduce(value: Tensor, op: Any) -> float:
        value = value.reshape(1).to(torch.float64)
        dist.all_reduce(value, op=op, group=group)
        return float(value[0])

    def largest(x: Tensor) -> Tensor:
        return x.amax() if x.numel() else zero

    def smallest_of(x: Tensor) -> Tensor:
        return x.amin() if x.numel() else inf

    max_op, min_op, sum_op = dist.ReduceOp.MAX, dist.ReduceOp.MIN, dist.ReduceOp.SUM
    nonzeros = int(reduce(support.sum(), sum_op))
    on = reduce(largest(torch.where(support, mag, zero)), max_op)
    off = reduce(largest(torch.where(support, zero, mag)), max_op)
    smallest = reduce(smallest_of(torch.where(support, theta.abs(), inf)), min_op)
    all_grad = reduce(largest(mag), max_op)
    candidate = theta - lr * grad
    sizes = [t.numel() for t in thetas]

    def kept(budget: int) -> Tensor:
        parts = candidate.split(sizes)
        masks = sharded_threshold_masks(
            [(c, o) for c, o in zip(parts, offsets, strict=True)], budget, group=group
        )
        return torch.cat([m.reshape(-1) for m in masks])

    keep = kept(s)
    stepped = torch.where(keep, candidate, zero)
    residual = math.sqrt(reduce(((theta - stepped) ** 2).sum(), sum_op))
    tie = False
    if 0 < s < total:
        more = kept(s + 1) & ~keep  # the (s+1)-th entry
        level = reduce(smallest_of(torch.where(keep, candidate.abs(), inf)), min_op)
        next_level = reduce(largest(torch.where(more, candidate.abs(), zero)), max_op)
        tie = level == next_level and next_level > 0
    ratio = math.inf if nonzeros == 0 else lr * off / smallest
    if nonzeros >= s:
        stable = (not tie) and (ratio < 1 or nonzeros == 0) and on <= grad_tol
    else:
        stable = all_grad <= grad_tol
    return {
        "sparsity": s,
        "lr": float(lr),
        "nonzeros": nonzeros,
        "max_grad_on_support": on,
        "max_grad_off_support": off,
        "off_support_ratio": ratio,
        "residual": residual,
        "tie": tie,
        "stable": bool(stable and nonzeros <= s),
        "grad_tol": grad_tol,
    }


def _certify_sharded(
    model: nn.Module,
    params: Sequence[Tensor],
    loss_fn: Callable[[nn.Module], Tensor],
    lr: float,
    sparsity: int | None,
    grad_tol: float,
    dense_loss: float | None,
) -> Certificate:
    """:func:`certify_point` for DTensor (FSDP2) parameters (see :func:`_sharded_figures`)."""
    loss, grads = _sharded_grads(model, params, loss_fn)
    total = sum(p.numel() for p in params)
    s = total if sparsity is None else check_sparsity(sparsity, total)
    figures = _sharded_figures(params, grads, lr, s, grad_tol)
    epsilon = None if dense_loss is None else loss - float(dense_loss)
    return Certificate(
        **figures,
        loss=loss,
        dense_loss=None if dense_loss is None else float(dense_loss),
        epsilon=epsilon,
        epsilon_optimal=None,
    )


def check_lr_positive(lr: object) -> None:
    """Refuse a step that is not a positive finite number (the map has no fixed point then)."""
    value = float(lr) if isinstance(lr, int | float | Tensor) and not isinstance(lr, bool) else None
    if value is None or not math.isfinite(value) or value <= 0:
        raise InvalidValueError(f"lr must be a positive finite number, got {lr!r}")


def constant_output_loss(labels: Tensor, n_classes: int | None = None) -> float:
    """The cross-entropy of the best prediction that ignores the input: the entropy
    -sum_c p_c log p_c of the label frequencies p (ln 10 = 2.3026 for 10 balanced classes).

    Raises:
        InvalidValueError: no labels, or labels that are not class indices.
    """
    if labels.numel() == 0 or labels.is_floating_point() or bool((labels < 0).any()):
        raise InvalidValueError("labels must be a non-empty tensor of class indices >= 0")
    counts = torch.bincount(labels.flatten(), minlength=n_classes or 0).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def tensor_nonzeros(model: nn.Module) -> dict[str, int]:
    """Nonzeros of every trainable parameter, by name."""
    return {n: _count_nonzero(p) for n, p in model.named_parameters() if p.requires_grad}


def _count_nonzero(p: Tensor) -> int:
    """Nonzeros of a tensor; of a DTensor, its shards' counts summed over its mesh."""
    if not is_sharded([p]):
        return int(p.count_nonzero())
    import torch.distributed as dist

    count = local_part(p).count_nonzero().reshape(1).to(torch.int64)
    dist.all_reduce(count, group=p.device_mesh.get_group())  # type: ignore[attr-defined]
    return int(count[0])


def degeneracy(
    model: nn.Module,
    inputs: Tensor | None = None,
    *,
    loss: float | None = None,
    constant_loss: float | None = None,
) -> tuple[str, ...]:
    """Why the network is degenerate (empty when it is not).

    - In an ``nn.Sequential``, a Linear or Conv layer whose weight has no nonzeros cuts every
      path from the input to the output: the network computes a constant.
    - With ``inputs``: the outputs of all inputs are equal (to 1e-9 of their scale): the
      network does not depend on its input on that data, whatever its structure.
    - With ``loss`` and ``constant_loss`` (the training loss of the best prediction that
      ignores the input, :func:`constant_output_loss`): f(theta) >= 0.99 constant_loss. Such a
      point can be an exact fixed point of the IHT map (a collapsed network: nearly every
      ReLU dead, the output almost constant), but it has learnt nothing.

    Evaluated in eval mode; the model is left as it was.
    """
    reasons = []
    if loss is not None and constant_loss is not None and loss >= 0.99 * constant_loss:
        reasons.append(
            f"the training loss {loss:.4g} is no better than the {constant_loss:.4g} of the best "
            "constant output (the network ignores its input)"
        )
    if isinstance(model, nn.Sequential):
        for i, layer in enumerate(model):
            weight = getattr(layer, "weight", None)
            weighted = isinstance(layer, nn.Linear | nn.modules.conv._ConvNd)
            if weighted and isinstance(weight, Tensor) and _count_nonzero(weight) == 0:
                reasons.append(
                    f"layer {i} ({type(layer).__name__}) has no nonzero weight: it cuts every "
                    "path from the input to the output"
                )
    if inputs is not None and len(inputs) > 1:
        with evaluating(model), torch.no_grad():
            out = model(inputs)
        spread = float((out - out[:1]).abs().amax())
        if spread <= 1e-9 * max(float(out.abs().amax()), 1.0):
            reasons.append(
                f"the output does not depend on the input: all {len(inputs)} training rows "
                "give the same output"
            )
    return tuple(reasons)


def certify_budget(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    *,
    lr: float,
    budget: Budget,
    grad_tol: float = DEFAULT_GRAD_TOL,
    dense_loss: float | None = None,
    inputs: Tensor | None = None,
    constant_loss: float | None = None,
) -> dict[str, Any]:
    """HT-stability of the model's point under ``budget`` (and epsilon given a dense loss).

    With one pool this is exactly :func:`iht.certify`'s :class:`~iht.Certificate` as a dict.
    With several pools (per-layer budgets, dense biases) each pool is certified with its
    own budget (:func:`iht.certify_point`: the IHT map acts on each pool separately) and
    listed under ``"pools"``; the top level combines them: ``stable`` and ``tie`` over all
    pools, the largest ``max_grad_on_support``, ``max_grad_off_support`` and
    ``off_support_ratio``, the residual of the whole vector (root of the sum of squares),
    ``nonzeros`` and ``sparsity`` summed over the budgeted pools, and, as :func:`certify`,
    ``tensor_nonzeros`` and ``degenerate`` (with ``inputs``, the constant-output check; with
    ``constant_loss``, the no-better-than-constant check).
    """
    if len(budget.pools) == 1 and budget.structure == "entry":
        cert = certify(
            model,
            loss_fn,
            lr=lr,
            sparsity=budget.sparsity,
            grad_tol=grad_tol,
            dense_loss=dense_loss,
            inputs=inputs,
            constant_loss=constant_loss,
        )
        return asdict(cert)
    check_lr_positive(lr)
    named = dict(model.named_parameters())
    params = [named[n] for pool in budget.pools for n in pool.params]
    names = [n for pool in budget.pools for n in pool.params]
    sharded = is_sharded(params)
    if sharded:
        loss_value, local_grads = _sharded_grads(model, params, loss_fn)
        grads: dict[str, Tensor | None] = dict(zip(names, local_grads, strict=True))
    else:
        with evaluating(model):
            loss = loss_fn(model)
            grads = dict(
                zip(names, torch.autograd.grad(loss, params, allow_unused=True), strict=True)
            )
        loss_value = float(loss.detach())

    def grad_of(name: str) -> Tensor:
        g = grads[name]
        return torch.zeros_like(named[name]) if g is None else g

    pools = []
    for pool in budget.pools:
        if sharded:
            if pool.structure != "entry" or pool.min_per_tensor:
                raise InvalidValueError(
                    "certificates of structured or per-tensor-minimum budgets on sharded "
                    "(DTensor) parameters are not available yet"
                )
            tensors = [named[n] for n in pool.params]
            figures_d = _sharded_figures(
                tensors,
                [cast(Tensor, grads[n]) for n in pool.params],
                lr,
                pool.sparsity,
                grad_tol,
            )
            pools.append({"name": pool.name, "dense": pool.dense, **figures_d})
            continue
        structure = None if pool.dense else parse_structure(pool.structure)
        if structure is not None:
            figures_s = structured_figures(
                [named[n] for n in pool.params],
                [grad_of(n) for n in pool.params],
                lr=lr,
                structure=structure,
                sparsity=pool.sparsity,
                grad_tol=grad_tol,
            )
            pools.append(
                {
                    "name": pool.name,
                    "dense": False,
                    "structure": pool.structure,
                    "sparsity": pool.sparsity,
                    "lr": float(lr),
                    "grad_tol": grad_tol,
                    **figures_s,
                }
            )
            continue
        theta = flatten(named[n].detach() for n in pool.params)
        grad = flatten(grad_of(n) for n in pool.params)
        figures = asdict(
            certify_point(theta, grad, lr=lr, sparsity=pool.sparsity, grad_tol=grad_tol)
        )
        for key in (
            "loss",
            "dense_loss",
            "epsilon",
            "epsilon_optimal",
            "tensor_nonzeros",
            "degenerate",
        ):
            del figures[key]  # whole-model quantities: given once, at the top level
        pools.append({"name": pool.name, "dense": pool.dense, **figures})
    budgeted = [p for p in pools if not p["dense"]]
    epsilon = None if dense_loss is None else loss_value - dense_loss
    reasons = degeneracy(model, inputs, loss=loss_value, constant_loss=constant_loss)
    return {
        "sparsity": budget.sparsity,
        "structure": budget.structure,
        "lr": float(lr),
        "nonzeros": sum(int(p["nonzeros"]) for p in budgeted),
        "max_grad_on_support": max(float(p["max_grad_on_support"]) for p in pools),
        "max_grad_off_support": max(float(p["max_grad_off_support"]) for p in pools),
        "off_support_ratio": max(float(p["off_support_ratio"]) for p in pools),
        "residual": math.sqrt(sum(float(p["residual"]) ** 2 for p in pools)),
        "tie": any(bool(p["tie"]) for p in pools),
        "stable": all(bool(p["stable"]) for p in pools) and not reasons,
        "grad_tol": grad_tol,
        "loss": loss_value,
        "dense_loss": dense_loss,
        "epsilon": epsilon,
        "epsilon_optimal": None,
        "tensor_nonzeros": tensor_nonzeros(model),
        "degenerate": list(reasons),
        "pools": pools,
    }


def instability_reasons(certificate: Mapping[str, Any]) -> list[str]:
    """Why a certificate says "not HT-stable", in words (empty when it is stable).

    Args:
        certificate: a :class:`Certificate` as a dict (``dataclasses.asdict``) or the dict of
            :func:`certify_budget`.
    """
    if certificate["stable"]:
        return []
    reasons = list(certificate.get("degenerate") or ())
    tol = certificate["grad_tol"]
    if certificate["max_grad_on_support"] > tol:
        reasons.append(
            f"max|grad| on the support {certificate['max_grad_on_support']:.2e} > grad_tol "
            f"{tol:.0e} (not stationary yet: more steps, or a larger --grad-tol)"
        )
    if certificate["off_support_ratio"] >= 1:
        reasons.append(
            f"off-support ratio {certificate['off_support_ratio']:.3g} >= 1 (an entry outside "
            "the support would enter it)"
        )
    if certificate["tie"]:
        reasons.append("a tie at the threshold (H_s is set-valued there)")
    if not reasons:
        reasons.append(
            f"fewer nonzeros than the budget and a gradient above grad_tol {tol:.0e} off the support"
        )
    return reasons
