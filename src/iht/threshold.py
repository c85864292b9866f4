"""Hard thresholding H_s over the last dimension, with the paper's tie rule.

H_s(x) keeps the s entries of largest magnitude |x_i| and sets the others to zero.
When the s-th and (s+1)-th largest magnitudes are equal, H_s is set-valued; this module
returns one value deterministically: among equal magnitudes **the smaller index wins**
(footnote 2 of the paper), and :func:`boundary_tie` reports that the choice was a tie.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import SupportsIndex, cast

import torch
from torch import Tensor

from .errors import InvalidTypeError, InvalidValueError

__all__ = [
    "COMPILED_THRESHOLD",
    "boundary_tie",
    "check_sparsity",
    "flatten",
    "hard_threshold",
    "is_integer",
    "kth_largest",
    "magnitude",
    "refuse_repeated",
    "split_like",
    "threshold_mask",
    "top_s_mask",
    "top_s_mask_with_minimum",
    "unflatten_",
    "weighted_top_s_mask",
]


def check_sparsity(s: object, size: int, *, name: str = "sparsity") -> int:
    """Validate a budget ``s`` for a vector of ``size`` entries and return it as an int.

    Raises:
        TypeError: ``s`` is not an integer (floats, even 3.0, and bools are refused).
        ValueError: ``s`` is negative or larger than ``size``.
    """
    if isinstance(s, bool) or not is_integer(s):
        raise InvalidTypeError(
            f"{name} must be an integer count of nonzeros in 0..{size}, got {s!r}"
        )
    value = operator.index(cast(SupportsIndex, s))
    if value < 0 or value > size:
        raise InvalidValueError(f"{name} must be in 0..{size} (P = {size}), got {value}")
    return value


def is_integer(s: object) -> bool:
    """Whether ``s`` is an integer in the sense of ``operator.index`` (int, numpy ints, ...)."""
    try:
        operator.index(cast(SupportsIndex, s))
    except TypeError:
        return False
    return True


def threshold_mask(x: Tensor, s: int) -> Tensor:
    """Boolean mask of the entries H_s keeps, row by row along the last dimension.

    Exactly ``min(s, P)`` entries are True in every row. Among equal magnitudes the
    smaller index is kept.

    Computed without sorting whole rows: with t the s-th largest magnitude of a row,
    keep every entry with |x_i| > t, then the first (by index) entries with |x_i| = t
    until s are kept. ``topk`` only supplies the value t, which does not depend on how
    ``topk`` itself breaks ties, so the result is deterministic.

    Args:
        x: tensor of shape (..., P), any floating dtype.
        s: number of entries to keep per row, 0 <= s.

    Returns:
        Bool tensor of the shape of ``x``.

    Raises:
        ValueError: ``x`` contains NaN (its order is undefined), or ``s`` is out of range.
    """
    s = _check_input(x, s)
    return top_s_mask(x, s)


def _check_input(x: Tensor, s: object) -> int:
    """Validate the operator's arguments once; return s as an int."""
    if isinstance(s, bool) or not is_integer(s):
        raise InvalidTypeError(f"s must be a non-negative integer, got {s!r}")
    value = operator.index(cast(SupportsIndex, s))
    if value < 0:
        raise InvalidValueError(f"s must be a non-negative integer, got {value}")
    if x.dim() == 0:
        raise InvalidValueError("hard_threshold needs a tensor with at least one dimension")
    if x.dtype == torch.bool or x.is_complex():
        raise InvalidTypeError(
            f"hard_threshold needs a real tensor (floating or integer), got dtype {x.dtype}"
        )
    if (
        x.dtype == torch.int64
        and x.numel()
        and x.device.type != "meta"
        and bool((x == _INT64_MIN).any())
    ):
        # |-2**63| does not fit an int64: its magnitude cannot be compared exactly.
        raise InvalidValueError(
            "hard_threshold got -2**63 in an int64 tensor; its magnitude does not fit int64 "
            "(use values in -(2**63 - 1)..2**63 - 1)"
        )
    if x.layout != torch.strided:
        raise InvalidTypeError(f"hard_threshold needs a dense (strided) tensor, got {x.layout}")
    if x.device.type != "meta" and torch.isnan(x).any():  # (meta tensors hold no values)
        raise InvalidValueError("hard_threshold got NaN entries; their order is undefined")
    return value


_INT64_MIN = -(2**63)


def magnitude(x: Tensor) -> Tensor:
    """|x|, exact for every real dtype: signed integers narrower than 64 bits are widened first
    (``torch.abs`` of int8 -128 is -128), int64 is exact on the values :func:`hard_threshold`
    accepts (all but -2**63)."""
    if x.dtype in (torch.int8, torch.int16, torch.int32):
        return x.to(torch.int64).abs()
    return x.abs()


def _compiled_applies(x: Tensor) -> bool:
    """Long flat CPU vectors take the compiled selection of :mod:`iht._kernels.iht_step`."""
    return (
        x.dim() == 1
        and x.numel() >= COMPILED_THRESHOLD
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
    )


def top_s_mask(x: Tensor, s: int) -> Tensor:
    """The mask of :func:`threshold_mask` without its checks: for callers that checked already.

    ``x`` must hold no NaN and ``s`` must be an int (s <= 0 keeps nothing, s >= P everything).
    Every module that needs H_s's kept set on validated input calls this one function.
    """
    size = x.shape[-1]
    if s <= 0:
        return torch.zeros_like(x, dtype=torch.bool)
    if s >= size:
        return torch.ones_like(x, dtype=torch.bool)
    x = x.detach()  # a mask has no gradient; the compiled kernel below writes in place
    if _compiled_applies(x):
        from ._kernels import iht_step

        keep = iht_step.threshold_flat_(x.clone(memory_format=torch.contiguous_format), s)
        if keep is not None:
            return keep
    mag = magnitude(x)
    kth = kth_largest(mag, s)
    keep = mag >= kth
    # Usually no tie crosses the boundary and every entry >= t is kept. Only when more than s
    # entries reach t must the tied ones be ranked by index (the smaller index wins).
    # (on a CPU the test is free; elsewhere it would cost a device sync, so the ranked mask,
    # equal whenever no tie crosses, is computed without asking)
    if x.device.type == "cpu" and bool((_count_last(keep) <= s).all()):
        return keep
    above = mag > kth
    at = mag == kth
    n_above = above.sum(dim=-1, keepdim=True)
    # Rank of each tied entry among the ties of its row, in index order: 1, 2, ...
    rank_at = torch.cumsum(at.to(torch.int32), dim=-1)
    return above | (at & (rank_at <= s - n_above))


def top_s_mask_with_minimum(
    x: Tensor, s: int, sizes: Sequence[int], minimum: Sequence[int]
) -> Tensor:
    r"""The kept set of the best s-sparse point that keeps at least ``minimum[t]`` entries of
    every segment t of a flat vector (segments of ``sizes`` entries, in order).

    The set is :math:`\{z : \|z\|_0 \le s,\ \|z_t\|_0 \ge m_t\}` (a support S with
    :math:`|S| \le s` and :math:`|S \cap T_t| \ge m_t`); the closest point keeps x on the S that
    maximises :math:`\sum_{i \in S} x_i^2`. It is found exactly by: the top :math:`m_t` of each
    segment, then the top :math:`s - \sum_t m_t` of everything left. Exact because the best
    value of a segment as a function of how many entries it keeps, the sum of its k largest
    squares, is concave in k: taking the largest remaining square first is optimal (the
    greedy rule for a separable concave allocation). Ties go to the smaller flat index.

    Args:
        x: flat vector (no NaN).
        s: the budget, at least ``sum(minimum)``.
        sizes: the segments' sizes (a parameter tensor each), summing to ``len(x)``.
        minimum: the least nonzeros to keep in each segment (capped at its size).

    Raises:
        InvalidValueError: the sizes do not tile x, or s < sum of the (capped) minimums.
    """
    if x.dim() != 1 or sum(sizes) != x.numel() or len(sizes) != len(minimum):
        raise InvalidValueError(
            f"segments of sizes {list(sizes)} (and one minimum each) must tile a flat vector "
            f"of {x.numel()} entries"
        )
    floors = [min(int(m), n) for m, n in zip(minimum, sizes, strict=True)]
    if any(m < 0 for m in floors) or sum(floors) > s:
        raise InvalidValueError(
            f"the budget s = {s} cannot keep the minimums {floors} of every tensor "
            f"(they need {sum(floors)})"
        )
    forced = torch.cat(
        [top_s_mask(part, m) for part, m in zip(x.split(list(sizes)), floors, strict=True)]
    )
    rest = s - sum(floors)
    if rest <= 0:
        return forced
    # The others compete for what is left (in index order, so the tie rule carries over).
    others = (~forced).nonzero().squeeze(1)
    keep = forced.clone()
    keep[others[top_s_mask(x[others], rest)]] = True
    return keep


def weighted_top_s_mask(
    z: Tensor,
    weights: Tensor,
    s: int,
    *,
    sizes: Sequence[int] | None = None,
    minimum: Sequence[int] | None = None,
) -> Tensor:
    r"""The kept set of the projection onto s-sparse vectors in a diagonal norm:

    .. math:: \arg\min_{\|x\|_0 \le s} \sum_i w_i (x_i - z_i)^2, \qquad w_i \ge 0.

    On a support S the best x is z on S, at cost :math:`\sum_{i \notin S} w_i z_i^2`, so the
    projection keeps the s largest :math:`w_i z_i^2` (with w = 1 this is H_s). With
    ``minimum`` (one per segment of ``sizes``) the support also keeps at least that many entries
    of every segment, exactly as :func:`top_s_mask_with_minimum` (whose greedy argument holds
    for any nonnegative per-entry values). Ties go to the smaller flat index.

    Args:
        z: flat vector (no NaN).
        weights: the norm's weights, same shape, finite and >= 0 (negatives count as 0).
        s: the budget.
        sizes, minimum: segments and their minimums, as :func:`top_s_mask_with_minimum`.
    """
    # sqrt(w)|z| ranks as w z^2 and is what the minimum rule squares.
    scores = weights.clamp(min=0).sqrt() * z.abs()
    if minimum is not None:
        return top_s_mask_with_minimum(scores, s, list(sizes or [z.numel()]), minimum)
    return top_s_mask(scores, s)


def _count_last(mask: Tensor) -> Tensor:
    """True entries per row; for one long row ``count_nonzero`` without ``dim`` is ~5x faster."""
    if mask.dim() == 1:
        return torch.count_nonzero(mask)
    return torch.count_nonzero(mask, dim=-1)


#: Flat CPU vectors at least this long take :func:`iht._kernels.iht_step.threshold_flat_`.
COMPILED_THRESHOLD = 1 << 16

#: Vectors at least this long find t by sampling (see :func:`_kth_largest_by_sampling`).
SAMPLING_THRESHOLD = 1 << 20


def kth_largest(mag: Tensor, s: int) -> Tensor:
    """The s-th largest value of every row of ``mag`` (>= 0, 1 <= s <= P), shape (..., 1). Exact.

    Long vectors avoid ``topk`` with a sampled bracket (exact; it declines, falling back to
    ``topk``, only when the sample misses). Long CPU vectors do not get here from
    :func:`top_s_mask`: they take :func:`iht._kernels.iht_step.threshold_flat_` first.
    """
    if mag.dim() == 1 and mag.numel() >= SAMPLING_THRESHOLD:
        found = _kth_largest_by_sampling(mag, s)
        if found is not None:
            return found.reshape(1)
    return torch.topk(mag, s, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)


def _kth_largest_by_sampling(mag: Tensor, s: int, sample_size: int = 1 << 16) -> Tensor | None:
    """Exact s-th largest of a long vector in a few passes, or None to fall back to topk.

    A strided sample brackets the answer between two of its quantiles, lo <= t < hi; two counts
    check the bracket, and ``topk`` then runs only on the few entries inside it. The bracket is a
    guess; the counts make the result exact (None when the guess missed).
    """
    size = mag.numel()
    sample = mag[:: max(1, size // sample_size)].float()
    fraction = s / size
    # Bracket width: a few standard deviations of a sampled quantile, plus a margin.
    spread = 4.0 * (fraction * (1 - fraction) / sample.numel()) ** 0.5 + 2.0 / sample.numel()
    q_lo, q_hi = max(0.0, 1.0 - fraction - spread), min(1.0, 1.0 - fraction + spread)
    ordered = torch.sort(sample).values
    last = ordered.numel() - 1
    lo = ordered[int(q_lo * last)].to(mag.dtype)
    hi = ordered[int(q_hi * last)].to(mag.dtype)
    n_hi = int(torch.count_nonzero(mag >= hi)) if q_hi < 1.0 else 0
    if q_hi >= 1.0:
        hi = mag.max() + 1  # nothing is above the bracket
    band = mag[(mag >= lo) & (mag < hi)]
    if not (n_hi < s <= n_hi + band.numel()):
        return None
    return torch.topk(band, s - n_hi, sorted=False).values.amin()


def hard_threshold(x: Tensor, s: int) -> Tensor:
    """H_s(x): keep the s largest-magnitude entries of every row, zero the rest.

    Every row along the last dimension is thresholded independently (no loop over rows).
    Ties between equal magnitudes go to the smaller index. ``s = 0`` gives zeros and
    ``s >= P`` returns a copy of ``x``. Entries already zero may be "kept" when a row
    has fewer than s nonzeros, so the result has at most s nonzeros per row.

    Args:
        x: tensor of shape (..., P); any real dtype (floating, or integer: exact), any
            device. Bool, complex and sparse tensors are refused.
        s: the budget, a non-negative integer.

    Returns:
        A new tensor of the same shape, dtype and device as ``x``.

    Raises:
        TypeError: ``s`` is not an integer.
        ValueError: ``s`` is negative, ``x`` is a scalar, or ``x`` holds NaN.

    Example:
        >>> hard_threshold(torch.tensor([1.0, -3.0, 2.0, 3.0]), 2)
        tensor([ 0., -3.,  0.,  3.])
    """
    s = _check_input(x, s)
    if s >= x.shape[-1]:
        return x.clone()
    # The compiled kernel writes in place behind autograd: with a graph to record, the mask is
    # found without one and applied by torch.where, so the gradient reaches kept entries only.
    records_graph = x.requires_grad and torch.is_grad_enabled()
    if s > 0 and not records_graph and _compiled_applies(x):
        from ._kernels import iht_step

        out = x.clone(memory_format=torch.contiguous_format)
        if iht_step.threshold_flat_(out, s) is not None:
            return out
    keep = top_s_mask(x.detach(), s)
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


def boundary_tie(x: Tensor, s: int) -> Tensor:
    """Whether H_s(x) is set-valued: the s-th and (s+1)-th largest magnitudes are equal.

    A tie among zeros does not count, since every choice then gives the same vector.

    Args:
        x: tensor of shape (..., P).
        s: the budget.

    Returns:
        Bool tensor of shape ``x.shape[:-1]``.
    """
    s = _check_input(x, s)
    size = x.shape[-1]
    if s <= 0 or s >= size:
        return torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
    top = torch.topk(magnitude(x), s + 1, dim=-1, sorted=True).values
    return (top[..., s - 1] == top[..., s]) & (top[..., s] > 0)


def refuse_repeated(params: Iterable[Tensor]) -> None:
    """Raise InvalidValueError when a tensor is listed twice, or two share memory (e.g.
    ``nn.Parameter(w.data)`` beside ``w``): it would be stepped twice per step and counted
    twice against its budget."""
    seen: set[int] = set()
    spans: dict[int, list[tuple[int, int]]] = {}  # storage address -> element ranges used
    for i, p in enumerate(params):
        if id(p) in seen:
            raise InvalidValueError(
                f"a parameter of shape {tuple(p.shape)} is listed twice (at position {i}); "
                "list each parameter once"
            )
        seen.add(id(p))
        local = p.to_local() if hasattr(p, "to_local") else p  # a DTensor: its shard's memory
        if (
            local.device.type == "meta"
            or local.layout != torch.strided
            or not local.is_contiguous()
        ):
            continue  # (no memory to share, or no simple range of it)
        start = int(local.storage_offset()) * local.element_size()
        span = (start, start + local.numel() * local.element_size())
        ranges = spans.setdefault(local.untyped_storage().data_ptr(), [])
        if any(a < span[1] and span[0] < b for a, b in ranges):
            raise InvalidValueError(
                f"a parameter of shape {tuple(p.shape)} (at position {i}) shares memory with "
                "another one listed; list each parameter once"
            )
        ranges.append(span)


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector, in iteration order (row-major each)."""
    parts = [t.reshape(-1) for t in tensors]
    if not parts:
        raise InvalidValueError("flatten needs at least one tensor")
    return torch.cat(parts)


def split_like(flat: Tensor, tensors: Iterable[Tensor]) -> list[Tensor]:
    """Views of consecutive slices of ``flat``, shaped like ``tensors`` (inverse of flatten).

    Raises:
        ValueError: ``flat`` does not have exactly as many entries as the tensors together.
    """
    shapes = [t.shape for t in tensors]
    sizes = [shape.numel() for shape in shapes]
    if sum(sizes) != flat.numel():
        raise InvalidValueError(
            f"flat vector has {flat.numel()} entries, tensors take {sum(sizes)}"
        )
    return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True)]


def unflatten_(flat: Tensor, tensors: Iterable[Tensor]) -> None:
    """Copy consecutive slices of ``flat`` into ``tensors`` in place (inverse of flatten)."""
    tensors = list(tensors)
    for t, part in zip(tensors, split_like(flat, tensors), strict=True):
        t.copy_(part)
