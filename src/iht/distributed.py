"""IHT across processes: replicated parameters (DDP) and sharded parameters (FSDP-like).

**Data parallel.** Under ``DistributedDataParallel`` every rank holds the whole model and DDP
averages the gradients, so every rank runs the *same* :class:`iht.IHT` step on the same
numbers and keeps the same mask; nothing beyond ``iht.IHT`` is needed. :func:`replicas_agree`
checks that claim bit for bit (use it in tests or now and then in training).

**Sharded parameters.** When each rank holds a disjoint contiguous slice of the flat parameter
vector (FSDP's flat shards, a DTensor sharded on dim 0), :func:`sharded_threshold_mask` returns
the rank's slice of the mask of H_s over the *global* vector, with the library's tie rule
(equal magnitudes: the smaller global index wins), without gathering the vector anywhere.
:func:`sharded_iht_step_` applies theta <- H_s(theta - lr * grad) shard by shard.

Two exact algorithms find the global s-th largest magnitude t and the tie cutoff; both cost
O(n) local work per rank (n = shard length) and never move the vector itself:

* ``"candidates"``: each rank's local top-min(s, n) entries (ties to the smaller index) hold
  every entry the global H_s keeps, so one ``all_gather`` of s (magnitude, index) pairs per
  rank decides everything: 16 * W * s bytes received by every rank (W ranks), O(W * s) memory
  and work, one round. Best when W * s is small next to P.
* ``"count"``: a 64-way search for t over the bit patterns of the magnitudes (as float64, whose
  order the bits preserve), one ``all_reduce(SUM)`` of 63 counts per round: at most 11 rounds
  (1 to 5 on 2**21 Gaussian entries; it stops as soon as a probe has exactly s entries at or
  above it), after one ``all_reduce`` for the starting bracket and, only when a tie crosses the
  boundary, followed by one ``all_gather`` of W tie counts. Traffic and memory do not grow
  with s; the price is latency: a few rounds instead of one.

``"auto"`` picks ``"candidates"`` while W * s <= :data:`CANDIDATE_LIMIT` (the gathered buffer
stays under about 1 MiB), else ``"count"``.

Every call first exchanges a few integers per rank (offset, size, s, dtype, NaN flag) so that
bad input raises the *same* error on every rank instead of leaving the others waiting in a
collective.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, SupportsIndex, cast

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import InvalidTypeError, InvalidValueError, NonFiniteError
from .threshold import is_integer, kth_largest, top_s_mask

__all__ = [
    "CANDIDATE_LIMIT",
    "Method",
    "replicas_agree",
    "sharded_iht_step_",
    "sharded_threshold_mask",
    "sharded_threshold_masks",
]

Method = Literal["auto", "candidates", "count"]

#: ``method="auto"`` gathers candidates while world_size * s is at most this many entries.
CANDIDATE_LIMIT = 1 << 16

#: Probes per round of the count search: each round shrinks the bracket 64-fold.
_PROBES = 63

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BAD = -(1 << 62)  # stands for "not an integer" in the exchanged metadata


# --------------------------------------------------------------------------- replicas (DDP)


def replicas_agree(tensors: Iterable[Tensor], *, group: dist.ProcessGroup | None = None) -> bool:
    """Whether every rank of ``group`` holds bit-identical ``tensors`` (same order and sizes).

    Under DDP this is the check that all ranks hold the same parameters, hence the same IHT
    mask. Collective: every rank must call it; all ranks get the same answer. It costs two
    ``all_reduce`` (MIN and MAX) of the raw bytes; equal bytes at every position on every
    rank is exactly min == max.

    Args:
        tensors: e.g. ``model.parameters()``; any dtypes, on the group's device.
        group: the process group (default: the world).

    Returns:
        True if all ranks agree byte for byte (so also on which entries are zero).
    """
    parts = [t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    device = parts[0].device if parts else torch.device("cpu")
    local = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8, device=device)
    # Sizes first: collectives on buffers of different lengths would fail or hang.
    size = torch.tensor([local.numel(), -local.numel()], dtype=torch.int64, device=device)
    dist.all_reduce(size, op=dist.ReduceOp.MAX, group=group)
    if int(size[0]) != -int(size[1]):
        return False
    low, high = local.clone(), local.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    return bool(torch.equal(low, high))


# --------------------------------------------------------------------------- sharded H_s


@dataclass(frozen=True)
class _Layout:
    """What every rank knows after the metadata exchange."""

    s: int
    size: int  # P, the global length
    offsets: tuple[int, ...]  # per rank
    numels: tuple[int, ...]  # per rank
    world: int


def _exchange_layout(
    local: Tensor,
    s: object,
    offset: object,
    group: dist.ProcessGroup | None,
    *,
    require_finite: bool,
    s_name: str,
    size_of: int | None = None,
) -> _Layout:
    """Share (offset, size, s, dtype, NaN/inf flags) of every rank; raise the same error on all.
    With ``size_of`` (P, checked by the caller's own tiling of several segments per rank) the
    one-shard tiling check is skipped.

    Raises:
        TypeError: ``local`` is not a floating tensor of one dtype on every rank; s or offset
            is not an integer.
        ValueError: ``local`` is not 1-D, the shards do not tile 0..P-1, s differs between
            ranks or is outside 0..P, or a shard holds NaN.
        NonFiniteError: ``require_finite`` and some shard holds inf or NaN.
    """
    if not isinstance(local, Tensor):
        raise InvalidTypeError(f"local must be a torch.Tensor, got {type(local).__name__}")
    s_code = _int_or_bad(s)
    offset_code = _int_or_bad(offset)
    dtype_code = _DTYPES.index(local.dtype) if local.dtype in _DTYPES else -1
    non_finite = dtype_code >= 0 and not bool(torch.isfinite(local).all())
    has_nan = non_finite and bool(torch.isnan(local).any())  # a second pass only when needed
    meta = torch.tensor(
        [offset_code, local.numel(), s_code, dtype_code, local.dim(), has_nan, non_finite],
        dtype=torch.int64,
        device=local.device,
    )
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(gathered, meta, group=group)
    rows = [cast(list[int], g.tolist()) for g in gathered]
    offsets = tuple(r[0] for r in rows)
    numels = tuple(r[1] for r in rows)
    s_codes = {r[2] for r in rows}
    dtypes = {r[3] for r in rows}

    # From here on every rank holds the same rows, so every rank raises the same error.
    if -1 in dtypes:
        raise InvalidTypeError(
            "every shard must be float16, bfloat16, float32 or float64; "
            f"rank {_ranks(rows, 3, -1)} is not (this rank: {local.dtype})"
        )
    if len(dtypes) > 1:
        names = [str(_DTYPES[r[3]]) for r in rows]
        raise InvalidTypeError(f"shards must share one dtype, got {names} by rank")
    bad_dim = [rank for rank, r in enumerate(rows) if r[4] != 1]
    if bad_dim:
        raise InvalidValueError(
            f"each shard must be a 1-D tensor; rank(s) {bad_dim} passed another shape"
        )
    if any(r[0] == _BAD for r in rows):
        raise InvalidTypeError(
            f"offset must be an integer on every rank; rank(s) {_ranks(rows, 0)} not"
        )
    if _BAD in s_codes:
        raise InvalidTypeError(
            f"{s_name} must be an integer count of nonzeros; rank(s) {_ranks(rows, 2)} not"
        )
    if len(s_codes) > 1:
        raise InvalidValueError(
            f"{s_name} must be the same on every rank, got {[r[2] for r in rows]}"
        )
    size = sum(numels)
    if size_of is None:
        _check_tiling(offsets, numels, size)
    (s_value,) = s_codes
    if not 0 <= s_value <= size:
        raise InvalidValueError(f"{s_name} must be in 0..{size} (P = {size}), got {s_value}")
    nan_ranks = [rank for rank, r in enumerate(rows) if r[5]]
    if nan_ranks:
        raise InvalidValueError(
            f"shard(s) of rank(s) {nan_ranks} hold NaN; their order is undefined"
        )
    bad_ranks = [rank for rank, r in enumerate(rows) if r[6]]
    if require_finite and bad_ranks:
        raise NonFiniteError(
            f"non-finite gradient or update on rank(s) {bad_ranks}; parameters left unchanged"
        )
    return _Layout(s=s_value, size=size, offsets=offsets, numels=numels, world=world)


def _int_or_bad(value: object) -> int:
    if isinstance(value, bool) or not is_integer(value):
        return _BAD
    return operator.index(cast(SupportsIndex, value))


def _ranks(rows: Sequence[Sequence[int]], column: int, code: int = _BAD) -> list[int]:
    return [rank for rank, r in enumerate(rows) if r[column] == code]


def _check_tiling(offsets: Sequence[int], numels: Sequence[int], size: int) -> None:
    """The non-empty shards must cover 0..size-1 exactly once, each contiguous."""
    spans = sorted(
        (o, o + n, rank) for rank, (o, n) in enumerate(zip(offsets, numels, strict=True)) if n > 0
    )
    position = 0
    for start, stop, rank in spans:
        if start != position:
            raise InvalidValueError(
                f"shards must tile 0..{size - 1} without gaps or overlaps: rank {rank} starts at "
                f"offset {start}, expected {position} (offsets {list(offsets)}, sizes {list(numels)})"
            )
        position = stop
    for rank, (o, n) in enumerate(zip(offsets, numels, strict=True)):
        if n == 0 and not 0 <= o <= size:
            raise InvalidValueError(f"offset of (empty) rank {rank} must be in 0..{size}, got {o}")


def sharded_threshold_mask(
    local: Tensor,
    s: int,
    *,
    offset: int,
    group: dist.ProcessGroup | None = None,
    method: Method = "auto",
) -> Tensor:
    """This rank's slice of the mask of H_s over the global flat vector, ties to the smaller index.

    With x the global vector (P entries) and ``local = x[offset : offset + n]``, returns
    ``threshold_mask(x, s)[offset : offset + n]``, exactly, for any split of x into contiguous
    shards (uneven, empty, in any rank order), without gathering x. Collective: every rank of
    ``group`` calls it with the same ``s``.

    Args:
        local: this rank's shard, 1-D, float16/bfloat16/float32/float64, no NaN.
        s: the global budget, 0 <= s <= P (the sum of the shard sizes).
        offset: the global flat index of ``local[0]``.
        group: the process group (default: the world).
        method: ``"candidates"``, ``"count"`` or ``"auto"`` (see the module docstring).

    Returns:
        A bool tensor shaped like ``local``; over all ranks exactly s entries are True.

    Raises:
        TypeError, ValueError: on every rank, when any rank's input is bad (see
            :func:`_exchange_layout`); unknown ``method`` (raised before communicating).

    Example (on each of 2 ranks, x = [1, -3, 2, 3] split as [1, -3] | [2, 3]):
        >>> sharded_threshold_mask(x[offset : offset + 2], 2, offset=offset)  # doctest: +SKIP
        tensor([False, True])   # rank 0
        tensor([False, True])   # rank 1
    """
    _check_method(method)
    layout = _exchange_layout(local, s, offset, group, require_finite=False, s_name="s")
    return _sharded_mask(local, layout, offset, group, method)


def sharded_iht_step_(
    params: Tensor,
    grad: Tensor,
    *,
    lr: float,
    sparsity: int | None,
    offset: int,
    group: dist.ProcessGroup | None = None,
    method: Method = "auto",
) -> Tensor:
    """One IHT step on sharded flat parameters, in place: theta <- H_s(theta - lr * grad).

    Each rank passes its shard of theta and of the gradient of the *global* loss; H_s is taken
    over the global vector (:func:`sharded_threshold_mask`), so the result equals
    ``iht_update`` on the full vector, sliced. ``sparsity=None`` is the dense step (Alg. 2) and
    communicates nothing. Collective when ``sparsity`` is set.

    Args:
        params: this rank's shard of theta, 1-D, updated in place.
        grad: the matching shard of grad f(theta), same shape.
        lr: the step size gamma > 0.
        sparsity: the global budget s (0 <= s <= P), or None.
        offset: the global flat index of ``params[0]``.
        group: the process group (default: the world).
        method: how to select, see :func:`sharded_threshold_mask`.

    Returns:
        The kept mask of this shard (all True for a dense step).

    Raises:
        NonFiniteError: on every rank when some rank's update is not finite; no shard changes.
        TypeError, ValueError: bad arguments (on every rank when they concern the shards).
    """
    _check_method(method)
    if params.shape != grad.shape:
        raise InvalidValueError(
            f"grad shape {tuple(grad.shape)} does not match params {tuple(params.shape)}"
        )
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise InvalidValueError(f"lr must be a positive finite number, got {lr!r}")
    with torch.no_grad():
        candidate = params - lr * grad
        if sparsity is None:
            if not bool(torch.isfinite(candidate).all()):
                raise NonFiniteError("non-finite gradient or update; parameters left unchanged")
            params.copy_(candidate)
            return torch.ones_like(params, dtype=torch.bool)
        layout = _exchange_layout(
            candidate, sparsity, offset, group, require_finite=True, s_name="sparsity"
        )
        mask = _sharded_mask(candidate, layout, offset, group, method)
        zero = torch.zeros((), dtype=params.dtype, device=params.device)
        params.copy_(torch.where(mask, candidate, zero))
    return mask


def _check_method(method: object) -> None:
    if method not in ("auto", "candidates", "count"):
        raise InvalidValueError(f"method must be 'auto', 'candidates' or 'count', got {method!r}")


def _sharded_mask(
    local: Tensor, layout: _Layout, offset: int, group: dist.ProcessGroup | None, method: Method
) -> Tensor:
    s = layout.s
    # Edge cases every rank sees alike (same layout), so none of them skips a collective alone.
    if s == 0:
        return torch.zeros_like(local, dtype=torch.bool)
    if s == layout.size:
        return torch.ones_like(local, dtype=torch.bool)
    if method == "auto":
        method = "candidates" if layout.world * s <= CANDIDATE_LIMIT else "count"
    if method == "candidates":
        return _mask_by_candidates(local, s, offset, group, layout)
    return _mask_by_count(local, s, offset, group, layout)


def _mask_by_candidates(
    local: Tensor, s: int, offset: int, group: dist.ProcessGroup | None, layout: _Layout
) -> Tensor:
    """Gather each rank's local top-min(s, n) and decide the global H_s from them.

    Why it is exact: order entries by (-|x|, global index). An entry that H_s keeps has at most
    s - 1 entries before it in the whole vector, so at most s - 1 in its own shard, so it is in
    its shard's top-min(s, n) by the same order. Shards are contiguous, so local index order is
    global index order and the library's local tie rule gives that order.
    """
    index = torch.arange(local.numel(), device=local.device) + offset
    return _candidates(local, index, s, group, layout)


def _candidates(
    local: Tensor, index: Tensor, s: int, group: dist.ProcessGroup | None, layout: _Layout
) -> Tensor:
    """:func:`_mask_by_candidates` for entries of global indices ``index`` (increasing)."""
    mag = local.abs()
    n = local.numel()
    k = min(s, n)
    # float64 holds every float16/bfloat16/float32 value and every index below 2**53 exactly.
    packed = torch.full((2, s), -1.0, dtype=torch.float64, device=local.device)
    if k > 0:
        chosen = torch.nonzero(top_s_mask(mag, k)).reshape(-1)
        packed[0, :k] = mag[chosen].to(torch.float64)
        packed[1, :k] = index[chosen].to(torch.float64)
    gathered = [torch.empty_like(packed) for _ in range(layout.world)]
    dist.all_gather(gathered, packed, group=group)
    every = torch.cat(gathered, dim=1)
    values, indices = every[0], every[1]  # padding has value -1, below every magnitude
    t = torch.topk(values, s).values.min()
    n_above = int((values > t).sum())
    need = s - n_above  # >= 1 tied entries to keep, the ones with the smallest indices
    tied = indices[values == t]
    cutoff = int(torch.kthvalue(tied, need).values)
    level = mag.new_tensor(float(t))
    return (mag > level) | ((mag == level) & (index <= cutoff))


def _mask_by_count(
    local: Tensor, s: int, offset: int, group: dist.ProcessGroup | None, layout: _Layout
) -> Tensor:
    """Search the s-th largest magnitude t by global counts, then rank the ties across ranks.

    Invariant: c(lo) >= s > c(hi), with c(v) = global #{key >= v}, keys the float64 bit
    patterns of |x| (non-negative doubles sort as their bits do). So t = lo when hi = lo + 1.
    """

    def tie_ranks(at: Tensor) -> Tensor:
        # rank the ties of all shards in offset order: those of the ranks before come first
        count = torch.tensor([int(at.sum())], dtype=torch.int64, device=local.device)
        gathered = [torch.empty_like(count) for _ in range(layout.world)]
        dist.all_gather(gathered, count, group=group)
        before = sum(
            int(g)
            for g, o, m in zip(gathered, layout.offsets, layout.numels, strict=True)
            if m > 0 and o < offset
        )
        return torch.cumsum(at.to(torch.int64), dim=0) + before

    return _count(local, s, group, tie_ranks)


def _count(
    local: Tensor,
    s: int,
    group: dist.ProcessGroup | None,
    tie_ranks: Callable[[Tensor], Tensor],
) -> Tensor:
    """:func:`_mask_by_count` with the ranking of the tied entries across ranks given by
    ``tie_ranks(at)``: for the local tie flags, each entry's 1-based rank among all tied
    entries of the global vector in index order (a collective)."""
    device = local.device
    mag = local.abs().to(torch.float64)
    keys = mag.view(torch.int64)
    n = keys.numel()
    # Bracket: a rank with n >= s holds s keys >= its local s-th largest, so c(that) >= s;
    # nothing is above the largest key, so c(max + 1) = 0 < s.
    bracket = torch.zeros(2, dtype=torch.int64, device=device)
    if n >= s:
        bracket[0] = kth_largest(mag, s).view(torch.int64)[0]
    if n > 0:
        bracket[1] = keys.max()
    dist.all_reduce(bracket, op=dist.ReduceOp.MAX, group=group)
    lo, hi = int(bracket[0]), int(bracket[1]) + 1
    count_lo: int | None = None  # c(lo), once known
    count_hi = 0  # c(hi)
    band = keys[keys >= lo]
    while hi - lo > 1 and count_lo != s:
        if hi - lo - 1 <= _PROBES:
            probes = list(range(lo + 1, hi))
        else:
            probes = [lo + (hi - lo) * j // (_PROBES + 1) for j in range(1, _PROBES + 1)]
        bounds = torch.tensor(probes, dtype=torch.int64, device=device)
        # bucket b(x) = number of probes <= x, so x >= probe j (1-based) iff b(x) >= j.
        buckets = torch.bucketize(band, bounds, right=True)
        hist = torch.bincount(buckets, minlength=len(probes) + 1)
        at_least = hist.flip(0).cumsum(0).flip(0)[1:]  # local #{x >= probe j}, j = 1..
        dist.all_reduce(at_least, op=dist.ReduceOp.SUM, group=group)
        counts = [count_hi + c for c in cast(list[int], at_least.tolist())]
        # The last probe with c >= s becomes lo, the next one (or hi) stays above.
        j = sum(1 for c in counts if c >= s)  # counts is non-increasing
        if j > 0:
            lo, count_lo = probes[j - 1], counts[j - 1]
        if j < len(probes):
            hi, count_hi = probes[j], counts[j]
        band = band[(band >= lo) & (band < hi)]
    if count_lo == s:
        # Exactly s entries are >= lo: keep them, no tie crosses the boundary.
        return keys >= lo
    # Here hi = lo + 1: t = lo, count_hi entries are above it, s - count_hi ties are kept,
    # those with the smallest global indices: rank the ties of all shards in offset order.
    t = torch.tensor(lo, dtype=torch.int64, device=device)
    above = keys > t
    at = keys == t
    rank_at = tie_ranks(at)
    return above | (at & (rank_at <= s - count_hi))


# ------------------------------------------------------------- several slices per rank (FSDP2)


def sharded_threshold_masks(
    segments: Sequence[tuple[Tensor, int]],
    s: int,
    *,
    group: dist.ProcessGroup | None = None,
    method: Method = "auto",
) -> list[Tensor]:
    """The masks of H_s over the global flat vector when each rank holds *several* disjoint
    contiguous slices of it: ``segments`` is this rank's list of (slice, global offset of its
    first entry). This is FSDP2's layout: each parameter is sharded on dim 0, so a rank holds
    one contiguous slice of every parameter's flat vector, and the slices of all ranks tile
    0..P-1. Returns, for each segment (in the order given, shaped like it), exactly
    ``threshold_mask(x, s)`` on its entries (ties to the smaller global index), without
    gathering x: the same two algorithms as :func:`sharded_threshold_mask`, the ties ranked by
    one ``all_gather`` of a count per segment. Collective.

    Raises:
        TypeError, ValueError: on every rank, when any rank's input is bad (the slices do not
            tile 0..P-1, s out of range or not the same everywhere, NaN, mixed dtypes).
    """
    _check_method(method)
    if not segments:
        raise InvalidValueError("give at least one (slice, offset) segment per rank")
    order = sorted(range(len(segments)), key=lambda i: int(segments[i][1]))
    tensors = [segments[i][0].reshape(-1) for i in order]
    offsets = [_int_or_bad(segments[i][1]) for i in order]
    local = torch.cat(tensors)
    device = local.device
    spans = _exchange_segments(offsets, [t.numel() for t in tensors], device, group)
    size = sum(n for _, n in spans)
    layout = _exchange_layout(local, s, 0, group, require_finite=False, s_name="s", size_of=size)
    if layout.s == 0 or layout.s == size:
        full = layout.s == size
        flat = torch.full((local.numel(),), full, dtype=torch.bool, device=device)
    else:
        chosen = method
        if chosen == "auto":
            chosen = "candidates" if layout.world * layout.s <= CANDIDATE_LIMIT else "count"
        if chosen == "candidates":
            # the global index of every local entry (the count search does not need it)
            index = torch.cat(
                [
                    torch.arange(t.numel(), device=device) + o
                    for t, o in zip(tensors, offsets, strict=True)
                ]
            )
            flat = _candidates(local, index, layout.s, group, layout)
        else:
            sizes = [t.numel() for t in tensors]

            def tie_ranks(at: Tensor) -> Tensor:
                return _segment_tie_ranks(at, sizes, offsets, spans, group)

            flat = _count(local, layout.s, group, tie_ranks)
    masks: list[Tensor] = [torch.empty(0)] * len(segments)
    for i, part in zip(order, flat.split([t.numel() for t in tensors]), strict=True):
        masks[i] = part.reshape(segments[i][0].shape)
    return masks


def _exchange_segments(
    offsets: list[int], numels: list[int], device: torch.device, group: dist.ProcessGroup | None
) -> list[tuple[int, int]]:
    """Every rank's (offset, numel) segments, checked to tile 0..P-1 (the same error on every
    rank otherwise)."""
    world = dist.get_world_size(group)
    count = torch.tensor([len(offsets)], dtype=torch.int64, device=device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    most = max(int(c) for c in counts)
    mine = torch.full((most, 2), -1, dtype=torch.int64, device=device)
    for j, (o, n) in enumerate(zip(offsets, numels, strict=True)):
        mine[j, 0], mine[j, 1] = o, n
    rows = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(rows, mine, group=group)
    spans = []
    for rank, (r, c) in enumerate(zip(rows, counts, strict=True)):
        for o, n in cast(list[list[int]], r[: int(c)].tolist()):
            if o == _BAD:
                raise InvalidTypeError(
                    f"segment offsets must be integers; rank {rank} gave another"
                )
            spans.append((o, n))
    ordered = sorted((o, n) for o, n in spans if n > 0)
    position = 0
    for o, n in ordered:
        if o != position:
            raise InvalidValueError(
                f"segments must tile 0..P-1 without gaps or overlaps: one starts at {o}, expected "
                f"{position}"
            )
        position = o + n
    return spans


def _segment_tie_ranks(
    at: Tensor,
    sizes: list[int],
    offsets: list[int],
    spans: list[tuple[int, int]],
    group: dist.ProcessGroup | None,
) -> Tensor:
    """Each local tied entry's 1-based rank among all tied entries of the global vector, in
    global index order: one ``all_gather`` of the tie count of every segment."""
    world = dist.get_world_size(group)
    parts = at.split(sizes)
    mine = torch.tensor([int(p.sum()) for p in parts], dtype=torch.int64, device=at.device)
    most = max(len(spans), 1)
    padded = torch.zeros(most, dtype=torch.int64, device=at.device)
    padded[: len(sizes)] = mine
    padded_offsets = torch.full((most,), -1, dtype=torch.int64, device=at.device)
    padded_offsets[: len(sizes)] = torch.tensor(offsets, dtype=torch.int64, device=at.device)
    ties = [torch.empty_like(padded) for _ in range(world)]
    starts = [torch.empty_like(padded_offsets) for _ in range(world)]
    dist.all_gather(ties, padded, group=group)
    dist.all_gather(starts, padded_offsets, group=group)
    every = [
        (int(o), int(c))
        for t, st in zip(ties, starts, strict=True)
        for o, c in zip(st.tolist(), t.tolist(), strict=True)
        if o >= 0
    ]
    ranks = []
    for part, offset in zip(parts, offsets, strict=True):
        before = sum(c for o, c in every if o < offset)
        ranks.append(torch.cumsum(part.to(torch.int64), dim=0) + before)
    return torch.cat(ranks)
