"""Compiled IHT step for large CPU pools: the update and an exact H_s in two passes.

For a pool of parameter tensors theta (float32 or float64, contiguous, on the CPU) this computes

.. math:: \\theta \\leftarrow H_s(x), \\qquad x = \\theta - \\gamma \\nabla f(\\theta),

with no flat copy, no sort, and nothing written before the whole update is known to be finite.
With t the s-th largest |x_i|, H_s keeps every |x_i| > t and, among |x_i| = t, the smaller
flat indices (as :func:`iht.hard_threshold`).

1. **Read pass (plan).** A bracket [lo, hi) that should hold t. One vectorised pass counts,
   per block of :data:`BLOCK` entries, the |x_i| >= hi and the |x_i| in [lo, hi), and the
   non-finite x_i. If s falls inside the bracket (#{>= hi} < s <= #{>= lo}), the few entries
   of the bracket are collected from the blocks that hold any, and an exact selection among
   them gives t and the tied entries H_s drops. Brackets, cheapest first:

   - *warm*: around the previous step's t, when it moved little (full-batch IHT);
   - *sample*: quantiles of a strided sample of |x| (mini-batches move t by 10-20% a step);
     on pools of :data:`FINE_MIN_SIZE` entries or more the pass counts 8 sub-brackets of it,
     and only the one holding t is collected;
   - *histogram*: the top 15 bits of |x|'s IEEE-754 pattern (monotone in |x| for non-negative
     floats) give the bin holding t, an exact bracket.
2. **Write pass.** theta_i <- x_i where |x_i| >= t, 0 elsewhere, and the dropped ties are zeroed.
   The same mask is written out for :class:`iht.IHT`'s ``threshold_every``.

A tensor of the pool without a gradient is read as it is (x_i = theta_i): it is not moved, but
its entries compete for the budget like every other.

x_i is computed by the same compiled expression in every pass, without fast-math (no
contraction into a fused multiply-add in one loop and not another), so all passes see the
same bits. The reference is the torch kernel of :func:`iht.optim.iht_step` (``kernel="torch"``);
tests/test_iht_step_kernel.py checks that both give the same parameters and mask in float64.

When the bracket holds too many entries to collect (a mass of exact ties, typically s at or
above the number of nonzeros of x), :func:`plan_step` returns None and the caller takes the
torch path.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload
from numpy.typing import NDArray
from torch import Tensor
from torch.autograd.graph import increment_version

_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = [
    "BLOCK",
    "FINE_MIN_SIZE",
    "MAX_CANDIDATES",
    "SAMPLE_SIZE",
    "START_WIDTH",
    "WARM_MAX_WIDTH",
    "Grads",
    "Plan",
    "eligible",
    "kth_largest_magnitude",
    "masked_step_",
    "nonfinite_count",
    "plan_step",
    "threshold_flat_",
    "write_step_",
    "zero_off_mask_",
]

#: Entries per block of the read pass; only blocks holding bracket entries are re-read.
BLOCK = 128
#: Histogram bins: 15 bits of the magnitude key (the sign bit is 0 in |x|).
N_BINS = 1 << 15
#: Most bracket entries collected before the torch path is used instead.
MAX_CANDIDATES = 1 << 21
#: Bracket half-width (relative to t) on the first warm step, and its limits.
START_WIDTH, _MIN_WIDTH, _MAX_WIDTH = 2.0**-8, 2.0**-24, 0.5
#: Bracket entries aimed at: enough to absorb t's drift, few enough to re-read cheaply.
_TARGET_BAND = 1024
#: Widest warm bracket (relative half-width); beyond it a sample of |x| brackets t instead.
WARM_MAX_WIDTH = 0.01
#: Entries in that sample.
SAMPLE_SIZE = 1 << 16
#: Pools at least this large count 8 sub-brackets of the sampled bracket in one pass, so
#: that only the one holding t is collected (the sampled bracket holds ~0.7% of P).
FINE_MIN_SIZE = 1 << 20

# Per dtype: integer view, shift from the 31/63 magnitude bits down to 15, first inf/NaN bin.
_KEY = {
    torch.float32: (np.int32, 16, 0x7F800000 >> 16),
    torch.float64: (np.int64, 48, 0x7FF0000000000000 >> 48),
}


@intrinsic
def _bits(typingctx, x):  # type: ignore[no-untyped-def]
    """The IEEE-754 bit pattern of a float as a signed integer of the same width."""
    if not isinstance(x, types.Float):
        return None
    sig = (types.int32 if x.bitwidth == 32 else types.int64)(x)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(x.bitwidth))

    return sig, codegen


def _bin(x):  # type: ignore[no-untyped-def]
    """Histogram bin of |x|: the top 15 bits of its IEEE-754 pattern (numba only)."""
    raise NotImplementedError


@overload(_bin, inline="always")
def _bin_impl(x):  # type: ignore[no-untyped-def]
    if x == types.float32:
        return lambda x: (np.int64(_bits(x)) & 0x7FFFFFFF) >> 16  # type: ignore[call-arg]
    if x == types.float64:
        return lambda x: (np.int64(_bits(x)) & 0x7FFFFFFFFFFFFFFF) >> 48  # type: ignore[call-arg]
    return None


def _update(theta, grad, lr, i):  # type: ignore[no-untyped-def]
    """x_i = theta_i - lr * grad_i, or theta_i when there is no gradient (numba only)."""
    raise NotImplementedError


@overload(_update, inline="always")
def _update_impl(theta, grad, lr, i):  # type: ignore[no-untyped-def]
    if isinstance(grad, types.NoneType):
        return lambda theta, grad, lr, i: theta[i]
    return lambda theta, grad, lr, i: theta[i] - lr * grad[i]


def _part(grad, start, stop):  # type: ignore[no-untyped-def]
    """grad[start:stop], or None when there is no gradient (numba only)."""
    raise NotImplementedError


@overload(_part, inline="always")
def _part_impl(grad, start, stop):  # type: ignore[no-untyped-def]
    if isinstance(grad, types.NoneType):
        return lambda grad, start, stop: None
    return lambda grad, start, stop: grad[start:stop]


@njit(parallel=True, cache=True)
def _histogram(theta, grad, lr, hist):  # type: ignore[no-untyped-def]
    """hist[c, bin(theta_i - lr g_i)] += 1 for the entries i of chunk c."""
    n = theta.shape[0]
    chunks = hist.shape[0]
    for c in prange(chunks):
        for i in range(n * c // chunks, n * (c + 1) // chunks):
            hist[c, _bin(_update(theta, grad, lr, i))] += 1


@njit(inline="always")
def _count_block(theta, grad, lr, lo, hi):  # type: ignore[no-untyped-def]
    """(#{lo <= |x| < hi}, #{|x| >= hi}, #{x not finite}) over one block."""
    k_band = np.int32(0)
    k_above = np.int32(0)
    k_bad = np.int32(0)
    for j in range(theta.shape[0]):
        a = abs(_update(theta, grad, lr, j))
        k_above += np.int32(a >= hi)
        k_band += np.int32((a >= lo) & (a < hi))
        k_bad += np.int32(not (a < np.inf))
    return k_band, k_above, k_bad


@njit(parallel=True, cache=True)
def _bracket_counts(theta, grad, lr, lo, hi, band):  # type: ignore[no-untyped-def]
    """band[b] = #{i in block b: lo <= |x_i| < hi}.

    Returns (#{lo <= |x_i| < hi}, #{|x_i| >= hi}, #{x_i not finite}).
    """
    n = theta.shape[0]
    inside = np.int64(0)
    above = np.int64(0)
    bad = np.int64(0)
    for b in prange(band.shape[0]):
        start = b * BLOCK
        stop = min(n, start + BLOCK)
        if stop - start == BLOCK:  # a full block: a constant trip count vectorises best
            k_band, k_above, k_bad = _count_block(
                theta[start : start + BLOCK], _part(grad, start, start + BLOCK), lr, lo, hi
            )
        else:
            k_band, k_above, k_bad = _count_block(
                theta[start:stop], _part(grad, start, stop), lr, lo, hi
            )
        band[b] = k_band
        inside += k_band
        above += k_above
        bad += k_bad
    return inside, above, bad


@njit(inline="always")
def _count_block9(theta, grad, lr, e0, e1, e2, e3, e4, e5, e6, e7, e8):  # type: ignore[no-untyped-def]
    """#{|x| >= e_k} for k = 0..8, and #{x not finite}, over one block (unrolled: registers)."""
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = bad = np.int32(0)
    for j in range(theta.shape[0]):
        a = abs(_update(theta, grad, lr, j))
        c0 += np.int32(a >= e0)
        c1 += np.int32(a >= e1)
        c2 += np.int32(a >= e2)
        c3 += np.int32(a >= e3)
        c4 += np.int32(a >= e4)
        c5 += np.int32(a >= e5)
        c6 += np.int32(a >= e6)
        c7 += np.int32(a >= e7)
        c8 += np.int32(a >= e8)
        bad += np.int32(not (a < np.inf))
    return c0, c1, c2, c3, c4, c5, c6, c7, c8, bad


@njit(parallel=True, cache=True)
def _fine_counts(theta, grad, lr, edges, counts):  # type: ignore[no-untyped-def]
    """counts[b, k] = #{i in block b: |x_i| >= edges[k]}, k = 0..8.

    Eight sub-brackets in one pass: only the one holding t is collected afterwards. Returns
    the nine totals #{|x_i| >= edges[k]} and #{x_i not finite}.
    """
    n = theta.shape[0]
    e0, e1, e2, e3, e4 = edges[0], edges[1], edges[2], edges[3], edges[4]
    e5, e6, e7, e8 = edges[5], edges[6], edges[7], edges[8]
    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = t8 = bad = np.int64(0)
    for b in prange(counts.shape[0]):
        start = b * BLOCK
        stop = min(n, start + BLOCK)
        if stop - start == BLOCK:
            r = _count_block9(
                theta[start : start + BLOCK],
                _part(grad, start, start + BLOCK),
                lr,
                e0,
                e1,
                e2,
                e3,
                e4,
                e5,
                e6,
                e7,
                e8,
            )
        else:
            r = _count_block9(
                theta[start:stop], _part(grad, start, stop), lr, e0, e1, e2, e3, e4, e5, e6, e7, e8
            )
        for k in range(9):
            counts[b, k] = r[k]
        t0 += r[0]
        t1 += r[1]
        t2 += r[2]
        t3 += r[3]
        t4 += r[4]
        t5 += r[5]
        t6 += r[6]
        t7 += r[7]
        t8 += r[8]
        bad += r[9]
    return t0, t1, t2, t3, t4, t5, t6, t7, t8, bad


@njit(parallel=True, cache=True)
def _collect(theta, grad, lr, lo, hi, band, start, base, mag, index):  # type: ignore[no-untyped-def]
    """Store (|x_i|, base + i) for lo <= |x_i| < hi at slots start, start + 1, ... in index order.

    Only blocks with band[b] > 0 are read; block b writes from the slot after the blocks
    before it, so blocks run in parallel and never write into each other's slots.
    """
    n = theta.shape[0]
    first = np.empty(band.shape[0], dtype=np.int64)
    for b in range(band.shape[0]):
        first[b] = start
        start += band[b]
    for b in prange(band.shape[0]):
        if band[b] > 0:
            k = first[b]
            end = k + band[b]
            for i in range(b * BLOCK, min(n, b * BLOCK + BLOCK)):
                # Branch-free: store every entry at slot k, keep it (k + 1) only if in the
                # bracket; stop at the block's last bracket entry, before the next block's slots.
                a = abs(_update(theta, grad, lr, i))
                mag[k] = a
                index[k] = base + i
                k += np.int64((a >= lo) & (a < hi))
                if k == end:
                    break
    return start


@njit(parallel=True, cache=True)
def _sample(theta, grad, lr, stride):  # type: ignore[no-untyped-def]
    """|x_i| at i = 0, stride, 2 stride, ..."""
    out = np.empty((theta.shape[0] + stride - 1) // stride, dtype=theta.dtype)
    for j in prange(out.shape[0]):
        out[j] = abs(_update(theta, grad, lr, j * stride))
    return out


@njit(parallel=True, cache=True)
def _write(theta, grad, lr, t, zero, keep):  # type: ignore[no-untyped-def]
    """theta_i <- x_i if |x_i| >= t else 0; keep_i <- |x_i| >= t."""
    for i in prange(theta.shape[0]):
        x = _update(theta, grad, lr, i)
        kept = abs(x) >= t
        theta[i] = x if kept else zero
        keep[i] = kept


@njit(parallel=True, cache=True)
def _count_nonfinite(theta, grad, lr):  # type: ignore[no-untyped-def]
    bad = np.int64(0)
    for i in prange(theta.shape[0]):
        bad += np.int32(not (abs(_update(theta, grad, lr, i)) < np.inf))
    return bad


@njit(parallel=True, cache=True)
def _masked_write(theta, grad, lr, zero, keep):  # type: ignore[no-untyped-def]
    """theta_i <- x_i on the mask, 0 off it."""
    for i in prange(theta.shape[0]):
        x = _update(theta, grad, lr, i)
        theta[i] = x if keep[i] else zero


@njit(parallel=True, cache=True)
def _zero_off(keep, arr):  # type: ignore[no-untyped-def]
    """arr_i <- arr_i where keep_i, else 0 (a select: an inf or NaN off the mask becomes 0 too)."""
    zero = arr.dtype.type(0)
    for i in prange(arr.shape[0]):
        arr[i] = arr[i] if keep[i] else zero


def _torch_threads(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn``'s kernels on as many threads as torch uses (``torch.set_num_threads``, as
    ``iht train --threads`` sets it), then restore numba's own setting for this thread."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        before = numba.get_num_threads()
        most = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
        numba.set_num_threads(max(1, min(torch.get_num_threads(), most)))
        try:
            return fn(*args, **kwargs)
        finally:
            numba.set_num_threads(before)

    return wrapper


def eligible(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> bool:
    """Whether the compiled step applies: CPU, one float32/float64 dtype, contiguous tensors and
    gradients alike (a tensor without a gradient, None, is read as it is: x_i = theta_i)."""
    if not params:
        return False
    dtype = params[0].dtype
    if dtype not in _KEY:
        return False
    for p, g in zip(params, grads, strict=True):
        if p.device.type != "cpu" or p.dtype != dtype or not p.is_contiguous():
            return False
        if g is not None and (
            g.layout != torch.strided
            or g.dtype != dtype
            or g.device.type != "cpu"
            or not g.is_contiguous()
        ):
            return False
    return True


def _flat(t: Tensor) -> NDArray[np.floating]:
    return t.detach().reshape(-1).numpy()


def _typed(value: float, dtype: torch.dtype) -> np.floating:
    """A scalar in the parameters' precision (the step is taken in that precision)."""
    return np.float32(value) if dtype == torch.float32 else np.float64(value)


#: (theta, grad or None, lr) per tensor of a pool, as flat NumPy views.
_Operands = list[tuple[NDArray[np.floating], NDArray[np.floating] | None, np.floating]]


#: The gradient of each tensor of a pool (None: no gradient step for that tensor).
Grads = Sequence[Tensor | None]


def _operands(params: Sequence[Tensor], grads: Grads, lrs: Sequence[float]) -> _Operands:
    """(theta, grad or None, lr) of each tensor as flat NumPy views and a scalar of their dtype."""
    dtype = params[0].dtype
    return [
        (_flat(p), None if g is None else _flat(g), _typed(lr, dtype))
        for p, g, lr in zip(params, grads, lrs, strict=True)
    ]


@dataclass(frozen=True)
class Plan:
    """What the read pass decided: keep |x_i| >= threshold, except the flat indices in ``drop``.

    ``nonfinite`` > 0 means the update is not finite and nothing may be written. ``width`` is
    the bracket half-width (relative) to try on the next step; ``bracket`` names the bracket
    that held t: ``"warm"`` (around the previous t), ``"sample"`` or ``"histogram"``.
    """

    threshold: float
    drop: NDArray[np.int64]
    nonfinite: int
    width: float
    bracket: str


def _bracket(
    operands: _Operands, lo: np.floating, hi: np.floating
) -> tuple[int, int, int, list[NDArray[np.int32]]]:
    """(#{lo <= |x| < hi}, #{|x| >= hi}, #non-finite, per-tensor block counts of [lo, hi))."""
    inside, above, bad, bands = 0, 0, 0, []
    for theta, grad, lr in operands:
        band = np.empty(-(-theta.shape[0] // BLOCK), dtype=np.int32)
        counts = _bracket_counts(theta, grad, lr, lo, hi, band)
        inside, above, bad = inside + int(counts[0]), above + int(counts[1]), bad + int(counts[2])
        bands.append(band)
    return inside, above, bad, bands


def _fine_bracket(
    operands: _Operands, edges: NDArray[np.floating], budget: int
) -> tuple[np.floating, np.floating, int, int, int, list[NDArray[np.int32]]]:
    """Count 8 sub-brackets of [edges[0], edges[8]) in one pass; keep the one holding t.

    Returns (lo, hi, #{lo <= |x| < hi}, #{|x| >= hi}, #non-finite, per-tensor block counts of
    [lo, hi)); when t is outside [edges[0], edges[8]) the whole range is returned, so that
    the caller's check fails and it moves on.
    """
    per_tensor, totals = [], np.zeros(10, dtype=np.int64)
    for theta, grad, lr in operands:
        counts = np.empty((-(-theta.shape[0] // BLOCK), 9), dtype=np.int32)
        totals += _fine_counts(theta, grad, lr, edges, counts)
        per_tensor.append(counts)
    totals, bad = totals[:9], int(totals[9])
    lo_k, hi_k = 0, 8
    if totals[8] < budget <= totals[0]:
        # totals[k] = #{|x| >= edges[k]} falls with k; t is in [edges[k], edges[k + 1]) for
        # the last k with totals[k] >= s.
        lo_k = int(np.searchsorted(-totals, -budget, side="right")) - 1
        hi_k = lo_k + 1
    bands = [np.ascontiguousarray(c[:, lo_k] - c[:, hi_k]) for c in per_tensor]
    inside = int(totals[lo_k] - totals[hi_k])
    return edges[lo_k], edges[hi_k], inside, int(totals[hi_k]), bad, bands


def _histogram_bracket(
    operands: _Operands, dtype: torch.dtype, budget: int
) -> tuple[np.floating, np.floating, int]:
    """The exact bracket [lo, hi): the histogram bin holding the s-th largest |x|.

    Returns (lo, hi, #non-finite); lo = hi = 0 when there are non-finite entries.
    """
    int_type, shift, first_nonfinite = _KEY[dtype]
    hist = np.zeros((numba.get_num_threads(), N_BINS), dtype=np.int64)
    for theta, grad, lr in operands:
        _histogram(theta, grad, lr, hist)
    total = hist.sum(axis=0)
    bad = int(total[first_nonfinite:].sum())
    if bad:
        return _typed(0.0, dtype), _typed(0.0, dtype), bad
    from_top = np.cumsum(total[::-1])
    b = N_BINS - 1 - int(np.searchsorted(from_top, budget))
    edges = (np.array([b, b + 1], dtype=np.int64) << shift).astype(int_type)
    lo, hi = edges.view(np.float32 if dtype == torch.float32 else np.float64)
    return lo, hi, 0


@_torch_threads
def plan_step(
    params: Sequence[Tensor],
    grads: Grads,
    lrs: Sequence[float],
    budget: int,
    previous: float | None = None,
    width: float = START_WIDTH,
) -> Plan | None:
    """The read pass of theta <- H_s(theta - lr * grad) over a pool; nothing is written.

    Args:
        params: the pool's tensors (see :func:`eligible`).
        grads: their gradients (None: x = theta for that tensor; all None: H_s of theta).
        lrs: the step size of each tensor.
        budget: s, with 0 < s < P.
        previous: the threshold t of the previous selection, if any (a warm start).
        width: the bracket's relative half-width around ``previous``.

    Returns:
        The :class:`Plan`, or None when the boundary holds too many tied entries to collect.
    """
    return _plan(_operands(params, grads, lrs), params[0].dtype, budget, previous, width)


@_torch_threads
def kth_largest_magnitude(x: Tensor, s: int) -> float | None:
    """The s-th largest |x_i| of a flat CPU float32/float64 vector, exactly (0 < s < len(x)).

    The read passes of :func:`plan_step` without a gradient: a histogram pass, a counting
    pass and a re-read of the few blocks holding the histogram bin of the answer. Returns None
    when that bin holds too many tied entries, or x holds inf or NaN (the caller then uses
    ``topk``).
    """
    if x.dtype not in _KEY or x.device.type != "cpu" or not x.is_contiguous() or x.dim() != 1:
        raise ValueError("kth_largest_magnitude needs a contiguous 1-D CPU float32/float64 tensor")
    plan = _plan([(_flat(x), None, _typed(0.0, x.dtype))], x.dtype, s, None, START_WIDTH)
    # inf entries (NaN is refused upstream) take the torch path: the bins stop at the largest finite.
    return None if plan is None or plan.nonfinite else plan.threshold


def _plan(
    operands: _Operands, dtype: torch.dtype, budget: int, previous: float | None, width: float
) -> Plan | None:
    """Find t and the dropped ties, trying brackets from the cheapest to the surest."""
    for source, counted in _counted_brackets(operands, dtype, budget, previous, width):
        lo, hi, inside, above, bad, bands = counted
        if bad:
            return Plan(0.0, np.empty(0, np.int64), bad, width, source)
        if above < budget <= above + inside and inside <= MAX_CANDIDATES:
            break
    else:
        return None  # the histogram bin of t alone holds more than MAX_CANDIDATES entries
    mag = np.empty(inside, dtype=np.float32 if dtype == torch.float32 else np.float64)
    index = np.empty(inside, dtype=np.int64)
    k, base = 0, 0
    for (theta, grad, lr), band in zip(operands, bands, strict=True):
        k = int(_collect(theta, grad, lr, lo, hi, band, k, base, mag, index))
        base += theta.shape[0]
    need = budget - above  # 1 <= need <= k: how many bracket entries H_s keeps
    t = np.partition(mag, k - need)[k - need]
    tied = np.flatnonzero(mag == t)  # in flat index order, as collected
    drop = index[tied[need - int(np.count_nonzero(mag > t)) :]]
    next_width = _next_width(width, source, float(t), previous, k)
    return Plan(float(t), drop, 0, next_width, source)


_Counted = tuple[np.floating, np.floating, int, int, int, list[NDArray[np.int32]]]


def _counted_brackets(
    operands: _Operands, dtype: torch.dtype, budget: int, previous: float | None, width: float
) -> Iterator[tuple[str, _Counted]]:
    """Brackets for t, cheapest first, each counted by one read pass.

    Yields (name, (lo, hi, #{lo <= |x| < hi}, #{|x| >= hi}, #non-finite, block counts)).
    """
    total = sum(theta.shape[0] for theta, _, _ in operands)
    if previous is not None and 0 < previous < math.inf and width <= WARM_MAX_WIDTH:
        lo, hi = _typed(previous * (1.0 - width), dtype), _typed(previous * (1.0 + width), dtype)
        yield "warm", (lo, hi, *_bracket(operands, lo, hi))
    edges = _sample_edges(operands, budget, total)
    if total >= FINE_MIN_SIZE:  # split the sampled bracket into 8 in the same pass
        yield "sample", _fine_bracket(operands, edges, budget)
    else:
        yield "sample", (edges[0], edges[8], *_bracket(operands, edges[0], edges[8]))
    lo, hi, bad = _histogram_bracket(operands, dtype, budget)
    if bad:
        yield "histogram", (lo, hi, 0, 0, bad, [])
    else:
        yield "histogram", (lo, hi, *_bracket(operands, lo, hi))


def _sample_edges(operands: _Operands, budget: int, total: int) -> NDArray[np.floating]:
    """Nine ascending edges around t from a strided sample of |x|.

    With m sampled entries, t's rank among them has a standard deviation of about
    sqrt(m q (1 - q)), q = s / P; the outer edges lie 3 of them (plus 2) either side, so they
    miss t with probability about 0.3% (the histogram then decides), and the inner edges split
    the sampled ranks between them evenly.
    """
    stride = max(4, total // SAMPLE_SIZE)  # small pools: a quarter of the entries is plenty
    sample = np.concatenate([_sample(theta, grad, lr, stride) for theta, grad, lr in operands])
    m = sample.shape[0]
    q = budget / total
    rank = q * m  # t's expected rank from the top among the sampled entries
    spread = 3.0 * math.sqrt(m * q * (1.0 - q)) + 2.0
    top = max(1.0, rank - spread)  # ranks from the top, 1-based
    bottom = min(float(m), rank + spread)
    ranks = np.rint(np.linspace(bottom, top, 9)).astype(np.int64)  # ascending values
    positions = m - ranks
    ordered = np.partition(sample, np.unique(positions))
    edges = ordered[positions]
    if rank + spread >= m:
        edges[0] = 0  # t may be below every sampled entry
    if rank - spread < 1:
        edges[8] = np.inf  # or above every one
    # A bracket of equal edges still holds t when t equals them.
    edges[8] = max(edges[8], np.nextafter(edges[0], sample.dtype.type(np.inf)))
    return np.maximum.accumulate(edges)


def _next_width(width: float, source: str, t: float, previous: float | None, inside: int) -> float:
    """Bracket half-width for the next step: wide enough for t's drift, narrow enough to be cheap.

    After a warm bracket the width is scaled towards :data:`_TARGET_BAND` entries (the count
    grows about linearly with it, at most 4x per step); after a miss it is widened 4x. Either
    way it stays at least 4x the relative move of t since the previous step, so when t jumps
    around (mini-batches) the width exceeds :data:`WARM_MAX_WIDTH` and the sample is used.
    """
    if source == "warm":
        width *= min(4.0, max(0.25, _TARGET_BAND / max(inside, 1)))
    elif previous is not None and previous > 0:
        width *= 4.0
    if previous is not None and previous > 0 and t > 0:
        width = max(width, 4.0 * abs(t / previous - 1.0))
    return min(max(width, _MIN_WIDTH), _MAX_WIDTH)


@_torch_threads
def write_step_(
    params: Sequence[Tensor],
    grads: Grads,
    lrs: Sequence[float],
    plan: Plan,
    out: Tensor | None = None,
) -> Tensor:
    """The write pass: theta <- H_s(theta - lr * grad) in place; returns the flat kept mask.

    ``out``, a flat bool tensor of the pool's size, receives the mask if given (reusing one
    buffer saves the page faults of a fresh allocation at every step).
    """
    keep = _write_plan(_operands(params, grads, lrs), params[0].dtype, plan, out)
    _mark_written([*params, keep])
    return keep


@_torch_threads
def threshold_flat_(x: Tensor, s: int) -> Tensor | None:
    """H_s on a flat CPU float32/float64 vector, in place (0 < s < len(x)); returns the mask.

    The same passes as the IHT step, without a gradient: about four passes over x in all,
    against a full ``topk``. Returns None, having written nothing, when x holds inf or NaN or
    the boundary holds too many tied entries (the caller then takes the torch path).
    """
    if x.dtype not in _KEY or x.device.type != "cpu" or not x.is_contiguous() or x.dim() != 1:
        raise ValueError("threshold_flat_ needs a contiguous 1-D CPU float32/float64 tensor")
    operands: _Operands = [(_flat(x), None, _typed(0.0, x.dtype))]
    plan = _plan(operands, x.dtype, s, None, START_WIDTH)
    if plan is None or plan.nonfinite:
        return None
    keep = _write_plan(operands, x.dtype, plan, None)
    _mark_written([x])
    return keep


def _write_plan(operands: _Operands, dtype: torch.dtype, plan: Plan, out: Tensor | None) -> Tensor:
    size = int(_starts(operands)[-1])
    if out is not None and out.dtype == torch.bool and out.shape == (size,) and out.is_contiguous():
        keep = out
    else:
        keep = torch.empty(size, dtype=torch.bool)
    keep_np = keep.numpy()
    t, zero = _typed(plan.threshold, dtype), _typed(0.0, dtype)
    starts = _starts(operands)
    for (theta, grad, lr), kept in zip(operands, np.split(keep_np, starts[1:-1]), strict=True):
        _write(theta, grad, lr, t, zero, kept)
    if plan.drop.size:
        owner = np.searchsorted(starts, plan.drop, side="right") - 1
        for k, (theta, _, _) in enumerate(operands):
            theta[plan.drop[owner == k] - starts[k]] = 0
        keep_np[plan.drop] = False
    return keep


@_torch_threads
def nonfinite_count(params: Sequence[Tensor], grads: Grads, lrs: Sequence[float]) -> int:
    """How many entries of theta - lr * grad over the pool are inf or NaN (read only)."""
    return sum(int(_count_nonfinite(*ops)) for ops in _operands(params, grads, lrs))


@_torch_threads
def masked_step_(
    params: Sequence[Tensor], grads: Grads, lrs: Sequence[float], keep: Tensor
) -> None:
    """theta <- (theta - lr * grad) on the flat mask ``keep``, 0 off it, in place."""
    zero = _typed(0.0, params[0].dtype)
    operands = _operands(params, grads, lrs)
    pieces = np.split(keep.numpy(), _starts(operands)[1:-1])
    for (theta, grad, lr), kept in zip(operands, pieces, strict=True):
        _masked_write(theta, grad, lr, zero, kept)
    _mark_written(params)


@_torch_threads
def zero_off_mask_(tensors: Sequence[tuple[int, Tensor]], keep: Tensor) -> None:
    """Zero each tensor outside its slice of a pool's flat mask ``keep``, in place.

    ``tensors`` are (offset in the pool, tensor) pairs: a parameter's state tensor (a
    momentum buffer, Adam's moments) takes the mask of its parameter, which starts at that
    offset. Each must be a contiguous CPU float32/float64 tensor (see :func:`eligible`).
    """
    keep_np = keep.numpy()
    for offset, tensor in tensors:
        _zero_off(keep_np[offset : offset + tensor.numel()], _flat(tensor))
    _mark_written([t for _, t in tensors])


def _starts(operands: _Operands) -> NDArray[np.int64]:
    """Flat offset of each operand in the pool, then the pool's size."""
    return np.cumsum([0] + [theta.shape[0] for theta, _, _ in operands])


def _mark_written(tensors: Sequence[Tensor]) -> None:
    """Bump the version counters, as torch's in-place ops do: the kernels write through NumPy
    views, and autograd must still refuse a backward through a graph that saved the old values
    (and a cache keyed on a mask's version must see the mask change)."""
    for t in tensors:
        increment_version(t)
