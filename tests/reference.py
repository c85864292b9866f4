"""Slow, obvious reference implementations the fast code is tested against.

Everything here loops in pure Python over plain floats, so it shares no code path with
``iht``: H_s by sorting (magnitude descending, then index ascending), the IHT update as a
loop over a list of tensors, the exact restricted constants of a quadratic by enumerating
supports, and a planted sparse least-squares problem.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# --------------------------------------------------------------------------- H_s


def keep_indices(values: Sequence[float], s: int) -> list[int]:
    """Indices H_s keeps in one row: sort by (-|v|, index) and take the first s."""
    order = sorted(range(len(values)), key=lambda i: (-abs(values[i]), i))
    return sorted(order[: max(0, min(s, len(values)))])


def hard_threshold_row(values: Sequence[float], s: int) -> list[float]:
    """H_s of one row, ties to the smaller index."""
    kept = set(keep_indices(values, s))
    return [v if i in kept else 0.0 for i, v in enumerate(values)]


def _rows(x: Tensor) -> list[list[float]]:
    # float16/bfloat16 -> Python float is exact, so the order of the values is unchanged.
    return [list(map(float, row)) for row in x.reshape(-1, x.shape[-1]).tolist()]


def hard_threshold(x: Tensor, s: int) -> Tensor:
    """H_s over the last dimension, one row at a time; same shape, dtype and device as x."""
    rows = [hard_threshold_row(row, s) for row in _rows(x)]
    return torch.tensor(rows, dtype=x.dtype, device=x.device).reshape(x.shape)


def threshold_mask(x: Tensor, s: int) -> Tensor:
    """The kept entries of H_s as a bool mask, one row at a time."""
    masks = []
    for row in _rows(x):
        kept = set(keep_indices(row, s))
        masks.append([i in kept for i in range(len(row))])
    return torch.tensor(masks, dtype=torch.bool).reshape(x.shape)


def best_support_with_minimum(
    values: Sequence[float], s: int, sizes: Sequence[int], minimum: Sequence[int]
) -> tuple[float, list[tuple[int, ...]]]:
    """By brute force: the largest sum of squares over the supports S with |S| <= s and at
    least min(m_t, size_t) indices in every segment t, and every support reaching it."""
    bounds = [0, *itertools.accumulate(sizes)]
    best, argbest = -1.0, []
    for k in range(len(values) + 1):
        if k > s:
            break
        for support in itertools.combinations(range(len(values)), k):
            counts = [
                sum(1 for i in support if lo <= i < hi) for lo, hi in itertools.pairwise(bounds)
            ]
            if any(c < min(m, n) for c, m, n in zip(counts, minimum, sizes, strict=True)):
                continue
            value = sum(values[i] ** 2 for i in support)
            if value > best + 1e-12:
                best, argbest = value, [support]
            elif abs(value - best) <= 1e-12:
                argbest.append(support)
    return best, argbest


def boundary_tie_row(values: Sequence[float], s: int) -> bool:
    """The s-th and (s+1)-th largest magnitudes are equal and nonzero."""
    if s <= 0 or s >= len(values):
        return False
    mags = sorted((abs(v) for v in values), reverse=True)
    return mags[s - 1] == mags[s] and mags[s] > 0


def boundary_tie(x: Tensor, s: int) -> Tensor:
    ties = [boundary_tie_row(row, s) for row in _rows(x)]
    return torch.tensor(ties, dtype=torch.bool).reshape(x.shape[:-1])


# --------------------------------------------------------------------------- IHT update


@dataclass
class Pool:
    """One budget pool of the reference optimizer: flat lists of floats, a budget, a mask."""

    values: list[list[float]]  # one list per tensor, row-major
    lrs: list[float]  # the step size of each tensor
    budget: int | None
    every: int = 1
    step: int = 0
    mask: list[bool] | None = None


def iht_step(pool: Pool, grads: Sequence[Sequence[float]]) -> None:
    """theta <- H_s(theta - lr * grad) over the concatenation of a pool's tensors, in place.

    With ``every = k > 1`` the support is re-selected only on steps 0, k, 2k, ...; in
    between the candidate is restricted to the stored support.
    """
    candidate: list[float] = []
    for values, grad, lr in zip(pool.values, grads, pool.lrs, strict=True):
        candidate.extend(v - lr * g for v, g in zip(values, grad, strict=True))
    if pool.budget is not None:
        if pool.step % pool.every == 0 or pool.mask is None:
            kept = set(keep_indices(candidate, pool.budget))
            pool.mask = [i in kept for i in range(len(candidate))]
        candidate = [c if m else 0.0 for c, m in zip(candidate, pool.mask, strict=True)]
        pool.step += 1
    offset = 0
    for values in pool.values:
        values[:] = candidate[offset : offset + len(values)]
        offset += len(values)


def as_lists(tensors: Sequence[Tensor]) -> list[list[float]]:
    return [[float(v) for v in t.detach().reshape(-1).tolist()] for t in tensors]


def count_nonzeros(values: Sequence[Sequence[float]]) -> int:
    return sum(1 for row in values for v in row if v != 0.0)


# --------------------------------------------------------------------------- quadratics


def restricted_constants(A: Tensor, k: int) -> tuple[float, float]:
    """Exact constants of f(theta) = 0.5 ||A theta - b||^2 over k-sparse differences.

    Returns (L_enum, rss): L_enum = max_{|S| <= k} ||A^T A[:, S]||_2, the best constant of
    ||grad f(x) - grad f(y)|| <= L ||x - y|| for x - y supported on S; and
    rss = max_{|S| <= k} lambda_max(A[:, S]^T A[:, S]), the restricted smoothness modulus.
    Both grow with S, so only |S| = min(k, P) is enumerated.
    """
    gram = A.T @ A
    size = A.shape[1]
    l_enum = 0.0
    rss = 0.0
    for support in itertools.combinations(range(size), min(k, size)):
        cols = list(support)
        l_enum = max(l_enum, float(torch.linalg.matrix_norm(gram[:, cols], ord=2)))
        rss = max(rss, float(torch.linalg.eigvalsh(gram[cols][:, cols]).max()))
    return l_enum, rss


@dataclass(frozen=True)
class Planted:
    """f(theta) = 0.5 ||A theta - b||^2 / m with b = A theta_true, theta_true s-sparse."""

    A: Tensor
    b: Tensor
    theta_true: Tensor
    sparsity: int

    @property
    def size(self) -> int:
        return int(self.A.shape[1])

    def loss(self, theta: Tensor) -> Tensor:
        r = theta @ self.A.T - self.b
        return 0.5 * (r * r).sum(dim=-1) / self.A.shape[0]

    def grad(self, theta: Tensor) -> Tensor:
        """Closed form A^T (A theta - b) / m, for theta of shape (..., P)."""
        return (theta @ self.A.T - self.b) @ self.A / self.A.shape[0]


def planted_least_squares(
    *, seed: int = 0, size: int = 40, sparsity: int = 5, m: int = 120
) -> Planted:
    """Gaussian measurements of an s-sparse vector whose nonzeros are bounded away from 0."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(m, size, generator=gen, dtype=torch.float64)
    support = torch.randperm(size, generator=gen)[:sparsity]
    signs = torch.where(torch.rand(sparsity, generator=gen) < 0.5, -1.0, 1.0).double()
    theta = torch.zeros(size, dtype=torch.float64)
    theta[support] = signs * (1.0 + torch.rand(sparsity, generator=gen, dtype=torch.float64))
    return Planted(A=A, b=A @ theta, theta_true=theta, sparsity=sparsity)


def binomial_bound(n: int, p: float, z: float) -> float:
    """z standard deviations of a Binomial(n, p) count."""
    return z * math.sqrt(n * p * (1 - p))


# --------------------------------------------------------------------------- certificates


def certificate_row(
    theta: Sequence[float], grad: Sequence[float], lr: float, s: int, grad_tol: float
) -> dict[str, float | int | bool]:
    """HT-stability figures of one point, straight from the definitions (eq. 8)."""
    support = [i for i, t in enumerate(theta) if t != 0]
    off = [i for i in range(len(theta)) if theta[i] == 0]
    on_max = max((abs(grad[i]) for i in support), default=0.0)
    off_max = max((abs(grad[i]) for i in off), default=0.0)
    ratio = lr * off_max / min(abs(theta[i]) for i in support) if support else math.inf
    candidate = [t - lr * g for t, g in zip(theta, grad, strict=True)]
    stepped = hard_threshold_row(candidate, s)
    residual = math.sqrt(sum((t - h) ** 2 for t, h in zip(theta, stepped, strict=True)))
    tie = boundary_tie_row(candidate, s)
    if len(support) > s:
        stable = False  # not s-sparse: cannot be a fixed point of H_s
    elif len(support) < s:
        stable = all(abs(g) <= grad_tol for g in grad)
    else:
        # s = 0 and theta = 0: H_0 is the constant 0, a fixed point with a unique value.
        stable = (not tie) and (ratio < 1 or not support) and on_max <= grad_tol
    return {
        "nonzeros": len(support),
        "max_grad_on_support": on_max,
        "max_grad_off_support": off_max,
        "off_support_ratio": ratio,
        "residual": residual,
        "tie": tie,
        "stable": stable,
    }


# --------------------------------------------------------------------------- structured H_s


def best_groups(rows: Sequence[Sequence[float]], s: int) -> tuple[float, list[tuple[int, ...]]]:
    """By brute force: the largest kept sum of squares over every choice of s rows (groups),
    and every choice reaching it."""
    norms = [sum(v * v for v in row) for row in rows]
    best, argbest = -1.0, []
    for chosen in itertools.combinations(range(len(rows)), s):
        value = sum(norms[g] for g in chosen)
        if value > best:
            best, argbest = value, [chosen]
        elif value == best:
            argbest.append(chosen)
    return best, argbest


def best_nm(values: Sequence[float], n: int, m: int) -> list[list[tuple[int, ...]]]:
    """By brute force, block by block: every choice of n entries of each block of m that keeps
    the largest sum of squares (the closest N:M point keeps one of them in every block)."""
    out = []
    for start in range(0, len(values), m):
        block = values[start : start + m]
        best, argbest = -1.0, []
        for chosen in itertools.combinations(range(m), n):
            value = sum(block[i] * block[i] for i in chosen)
            if value > best:
                best, argbest = value, [chosen]
            elif value == best:
                argbest.append(chosen)
        out.append(argbest)
    return out


def best_group_entries(rows: Sequence[Sequence[float]], groups: int, s: int) -> float:
    """By brute force: the largest kept sum of squares over every set of at most s entries
    lying in at most ``groups`` rows."""
    cells = [(r, c) for r, row in enumerate(rows) for c in range(len(row))]
    best = 0.0
    for k in range(1, min(s, len(cells)) + 1):
        for chosen in itertools.combinations(cells, k):
            if len({r for r, _ in chosen}) <= groups:
                best = max(best, sum(rows[r][c] ** 2 for r, c in chosen))
    return best
