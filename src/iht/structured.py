r"""Structured hard thresholding: the exact projections onto group and N:M sparsity sets.

Each function returns the mask of the closest point of its set (in Euclidean distance) to x;
applying it keeps x there and zeroes the rest. All are exact because the sets are separable:

- **Groups** (output neurons of a Linear, output channels of a Conv, heads): the set of
  points with at most s nonzero groups. Keeping a group g saves :math:`\|x_g\|^2` of distance,
  so the best point keeps the s groups of largest norm (group hard thresholding,
  :math:`H_s^{\mathrm{grp}}`). Ties between equal norms go to the smaller group index, as H_s's
  go to the smaller entry index.
- **N:M** (GPU sparse tensor cores: 2:4, 4:8): in every block of M consecutive entries along
  the last dimension at most N nonzeros. Blocks are independent, so the best point keeps the
  N largest magnitudes of each block (ties: the smaller index).
- **Groups and entries** (:func:`group_entry_mask`): at most g nonzero rows *and* at most s
  nonzero entries, all inside the kept rows. Not separable: the best rows are not those of
  largest norm (a row with one large entry can beat a row of many small ones when s is
  small). Keeping k entries of row r saves P_r(k), the sum of its k largest squares, a
  concave function of k; the best point maximises sum_r P_r(k_r) over sum k_r <= s and at
  most g rows with k_r > 0, which a dynamic program over the rows solves exactly in
  O(rows x g x s x width) (vectorised over g and s).

Like :func:`iht.threshold.threshold_mask`, each raises on NaN (its order is undefined) and on
budgets outside their range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import InvalidValueError
from .threshold import check_sparsity, threshold_mask

__all__ = [
    "STRUCTURES",
    "Structure",
    "group_entry_mask",
    "group_hard_threshold",
    "group_mask",
    "group_norms",
    "nm_hard_threshold",
    "nm_mask",
    "parse_nm",
    "parse_structure",
]

#: The budget shapes a param group can ask for (``"structure"``), besides N:M patterns.
STRUCTURES = ("entry", "group", "neuron", "channel", "group+bias", "neuron+bias", "channel+bias")


def group_norms(tensors: list[Tensor]) -> Tensor:
    """The squared norm of every group of ``tensors``: rows of each (dim 0: a Linear's output
    neurons, a Conv's output channels), concatenated in order. A 1-D tensor (a bias) is one
    group per entry, so a layer's bias entries go with their neurons' rows when the caller
    adds them (see :func:`group_mask`)."""
    parts = [t.detach().reshape(t.shape[0], -1).pow(2).sum(dim=1) for t in tensors if t.dim() > 0]
    if not parts:
        raise InvalidValueError("group thresholding needs at least one tensor with a dim 0")
    return torch.cat(parts)


def group_mask(
    tensors: list[Tensor], s: int, *, biases: list[Tensor | None] | None = None
) -> list[Tensor]:
    """Masks (one per tensor, its shape) of the best point with at most ``s`` nonzero groups.

    A group is a row (dim 0) of one tensor; with ``biases`` (one per tensor, or None), bias
    entry i belongs to row i of its tensor's group: the neuron is kept or dropped whole.

    Raises:
        InvalidValueError: ``s`` outside 0..number of groups, a bias of the wrong length, NaN.
    """
    norms = group_norms(tensors)
    if biases is not None:
        if len(biases) != len(tensors):
            raise InvalidValueError("give one bias (or None) per tensor")
        extra = []
        for t, b in zip(tensors, biases, strict=True):
            if b is None:
                extra.append(torch.zeros(t.shape[0], dtype=norms.dtype, device=norms.device))
            elif b.shape != (t.shape[0],):
                raise InvalidValueError(
                    f"a bias of shape {tuple(b.shape)} does not match {t.shape[0]} groups"
                )
            else:
                extra.append(b.detach().to(norms.dtype).pow(2))
        norms = norms + torch.cat(extra)
    s = check_sparsity(s, norms.numel(), name="group budget")
    if torch.isnan(norms).any():
        raise InvalidValueError("group thresholding got NaN entries; their order is undefined")
    kept = threshold_mask(norms, s)  # s largest norms, ties to the smaller group index
    masks, start = [], 0
    for t in tensors:
        rows = kept[start : start + t.shape[0]]
        start += t.shape[0]
        masks.append(rows.view(-1, *([1] * (t.dim() - 1))).expand(t.shape).clone())
    return masks


def group_entry_mask(x: Tensor, groups: int, s: int) -> Tensor:
    """The mask of the closest point to the matrix ``x`` (rows = groups) with at most
    ``groups`` nonzero rows and at most ``s`` nonzero entries (see the module docstring).

    Exact, by dynamic programming over the rows; among optimal points it keeps the earlier
    rows' choice unless a later row does strictly better, and inside a row the largest
    magnitudes, ties to the smaller index. Meant for layers of moderate size (its cost is
    rows x groups x s x row width elementary operations per call).

    Raises:
        InvalidValueError: ``x`` not 2-D, budgets outside their ranges, NaN.
    """
    if x.dim() != 2:
        raise InvalidValueError(f"group_entry_mask takes a matrix (rows = groups), got {x.dim()}-D")
    n_rows, width = x.shape
    groups = check_sparsity(groups, n_rows, name="group budget")
    s = check_sparsity(s, n_rows * width, name="entry budget")
    if torch.isnan(x).any():
        raise InvalidValueError("group thresholding got NaN entries; their order is undefined")
    squares = x.detach().double().pow(2)
    order = torch.sort(squares, dim=1, descending=True, stable=True)  # ties: smaller index first
    prefix = torch.cat(
        [torch.zeros(n_rows, 1, dtype=torch.float64, device=x.device), order.values.cumsum(1)], 1
    )  # prefix[r, k]: the best k entries of row r
    top = min(s, width)
    neg = torch.tensor(-math.inf, dtype=torch.float64, device=x.device)
    best = torch.full((groups + 1, s + 1), -math.inf, dtype=torch.float64, device=x.device)
    best[0, 0] = 0.0
    choices = torch.zeros((n_rows, groups + 1, s + 1), dtype=torch.int64, device=x.device)
    for r in range(n_rows):
        new = best.clone()  # k = 0: the row is dropped
        pick = torch.zeros((groups + 1, s + 1), dtype=torch.int64, device=x.device)
        for k in range(1, top + 1):
            shifted = torch.full_like(best, -math.inf)
            shifted[1:, k:] = best[:-1, : s + 1 - k] + prefix[r, k]
            better = shifted > new  # strictly: an equal later choice does not replace
            new = torch.where(better, shifted, new)
            pick = torch.where(better, torch.full_like(pick, k), pick)
        best, choices[r] = new, pick
    flat = int(torch.argmax(torch.where(torch.isfinite(best), best, neg)))
    g, e = divmod(flat, s + 1)
    mask = torch.zeros(n_rows, width, dtype=torch.bool, device=x.device)
    for r in range(n_rows - 1, -1, -1):
        k = int(choices[r, g, e])
        if k:
            mask[r, order.indices[r, :k]] = True
            g, e = g - 1, e - k
    return mask


def group_hard_threshold(x: Tensor, s: int) -> Tensor:
    r""":math:`H_s^{\mathrm{grp}}(x)` for one tensor: keep the s rows (dim 0) of largest norm."""
    (mask,) = group_mask([x], s)
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def parse_nm(text: str) -> tuple[int, int]:
    """``"2:4"`` -> (2, 4); N in 1..M.

    Raises:
        InvalidValueError: not of the form N:M with 1 <= N <= M.
    """
    try:
        n_text, m_text = text.split(":")
        n, m = int(n_text), int(m_text)
    except ValueError:
        raise InvalidValueError(f"an N:M pattern is written like 2:4, got {text!r}") from None
    if not 1 <= n <= m:
        raise InvalidValueError(f"an N:M pattern needs 1 <= N <= M, got {text!r}")
    return n, m


def nm_mask(x: Tensor, n: int, m: int) -> Tensor:
    """Mask of the best N:M-sparse point: the n largest magnitudes of every block of m
    consecutive entries along the last dimension (ties: the smaller index).

    Raises:
        InvalidValueError: the last dimension is not a multiple of m, bad n or m, NaN.
    """
    if not 1 <= n <= m:
        raise InvalidValueError(f"an N:M pattern needs 1 <= N <= M, got {n}:{m}")
    if x.dim() == 0 or x.shape[-1] % m:
        raise InvalidValueError(
            f"N:M sparsity needs a last dimension that is a multiple of M = {m}, got shape "
            f"{tuple(x.shape)}"
        )
    blocks = x.detach().reshape(*x.shape[:-1], x.shape[-1] // m, m)
    return threshold_mask(blocks, n).reshape(x.shape)


def nm_hard_threshold(x: Tensor, n: int, m: int) -> Tensor:
    """The closest N:M-sparse point to ``x`` (see :func:`nm_mask`)."""
    return torch.where(nm_mask(x, n, m), x, torch.zeros((), dtype=x.dtype, device=x.device))


@dataclass(frozen=True)
class Structure:
    """The shape of a pool's budget: ``group`` (s counts rows: a Linear's output neurons, a
    Conv's output channels) or ``nm`` (N of every M consecutive inputs of each row; the
    pattern is the budget). With ``bias`` (structure ``"neuron+bias"``) the pool is one
    layer's (weight, bias) and bias entry i belongs to row i: a neuron is kept or dropped
    whole, so a dropped one outputs exactly a(0) and the model shrinks exactly. With
    ``block`` = k > 1 a group is k consecutive rows (an attention head: the k rows of a
    projection that compute one head; the model says k), and s counts such blocks."""

    kind: str
    n: int = 0
    m: int = 0
    bias: bool = False
    entries: int = 0  # > 0: also at most this many nonzero entries, inside the kept rows
    block: int = 1  # rows per group (a head's rows)

    def rows(self, params: Sequence[Tensor]) -> Tensor:
        """A (weight, bias) pool as one matrix: the weight's rows with the bias as a last
        column (the groups of a ``bias`` structure)."""
        weight, bias = params
        return torch.cat([weight.reshape(weight.shape[0], -1), bias.reshape(-1, 1)], dim=1)

    def units(self, params: Sequence[Tensor]) -> int:
        """What the budget counts: rows for groups, entries for N:M."""
        if self.bias:
            return params[0].shape[0] // self.block
        if self.kind == "group":
            return sum((p.shape[0] if p.dim() else 1) // self.block for p in params)
        return sum(p.numel() for p in params)

    def implied(self, params: Sequence[Tensor]) -> int:
        """The nonzeros an N:M pattern keeps (its budget)."""
        return sum(p.numel() // self.m * self.n for p in params)

    def mask(self, params: Sequence[Tensor], budget: int) -> Tensor:
        """The flat mask (pool order) of the best point of this shape: ``budget`` rows for
        groups; the N:M pattern over each tensor's rows (dim 0 by the rest) for N:M."""
        if self.entries:
            matrix = self.rows(params) if self.bias else _one_matrix(params)
            chosen = group_entry_mask(matrix, budget, min(self.entries, matrix.numel()))
            if self.bias:
                width = params[0][0].numel()
                return torch.cat([chosen[:, :width].reshape(-1), chosen[:, width]])
            return chosen.reshape(-1)
        k = self.block
        if self.bias:
            matrix = self.rows(params)
            blocks = matrix.reshape(matrix.shape[0] // k, -1)  # k rows (and biases) per group
            kept = group_mask([blocks], budget)[0][:, :1].repeat_interleave(k, dim=0)
            width = params[0][0].numel()
            return torch.cat([kept.expand(-1, width).reshape(-1), kept.reshape(-1)])
        if self.kind == "group":
            masks = group_mask(
                [p.reshape(p.shape[0] // k, -1) if p.dim() else p.reshape(1, 1) for p in params],
                budget,
            )
        else:
            masks = [
                nm_mask(
                    p.reshape(p.shape[0], -1) if p.dim() > 1 else p.reshape(1, -1), self.n, self.m
                )
                for p in params
            ]
        return torch.cat([mask.reshape(-1) for mask in masks])

    def check(self, params: Sequence[Tensor]) -> None:
        """Raise InvalidValueError when a tensor cannot take this shape (N:M: a row length
        that is not a multiple of M; a ``bias`` structure: not one weight and its bias; a
        ``block`` that does not divide the rows)."""
        if self.block > 1:
            if self.entries:
                raise InvalidValueError("an entry budget inside blocks of rows is not available")
            for p in params:
                if p.dim() and p.shape[0] % self.block:
                    raise InvalidValueError(
                        f"a tensor of shape {tuple(p.shape)} has {p.shape[0]} rows, not a "
                        f"multiple of the {self.block} rows of a group"
                    )
        if self.bias:
            if len(params) != 2 or params[0].dim() < 2 or params[1].shape != (params[0].shape[0],):
                raise InvalidValueError(
                    "a neuron+bias structure takes one layer's weight and its bias, got shapes "
                    f"{[tuple(p.shape) for p in params]}"
                )
            return
        if self.kind != "nm":
            return
        for p in params:
            width = p[0].numel() if p.dim() > 1 else p.numel()
            if width % self.m:
                raise InvalidValueError(
                    f"a tensor of shape {tuple(p.shape)} has rows of {width} entries, not a "
                    f"multiple of M = {self.m}; give it no N:M structure"
                )


_GROUPS = ("group", "neuron", "channel", "group+bias", "neuron+bias", "channel+bias")


def _one_matrix(params: Sequence[Tensor]) -> Tensor:
    """The rows of a one-tensor pool as a matrix (rows = groups)."""
    if len(params) != 1 or params[0].dim() < 2:
        raise InvalidValueError(
            "a group budget with an entry budget inside takes one weight (or one weight and "
            f"its bias, structure 'neuron+bias'), got shapes {[tuple(p.shape) for p in params]}"
        )
    return params[0].reshape(params[0].shape[0], -1)


def parse_structure(
    value: object, *, entries: object = None, block: object = None
) -> Structure | None:
    """A param group's ``"structure"``: None or ``"entry"`` (entry-wise H_s), ``"group"``
    (also ``"neuron"``, ``"channel"``, and with ``+bias`` a layer's weight and bias kept or
    dropped together), or an N:M pattern such as ``"2:4"``. ``entries`` (the group's
    ``"entries"``) adds a budget of at most that many nonzero entries inside the kept rows
    (:func:`group_entry_mask`, exact); ``block`` (the group's ``"group_rows"``) makes each
    group that many consecutive rows (an attention head's rows in a projection).

    Raises:
        InvalidValueError: anything else, or ``entries`` that is not a positive integer or
            goes with no group structure.
    """
    if entries is not None:
        if isinstance(entries, bool) or not isinstance(entries, int) or entries < 1:
            raise InvalidValueError(f"entries must be a positive integer, got {entries!r}")
        if value not in _GROUPS:
            raise InvalidValueError(
                f"an entry budget inside kept rows needs a group structure, got {value!r}"
            )
    count = 0 if entries is None else int(entries)  # checked above
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
        raise InvalidValueError(f"group_rows must be a positive integer, got {block!r}")
    rows = 1 if block is None else int(block)
    if rows > 1 and value not in _GROUPS:
        raise InvalidValueError(f"group_rows needs a group structure, got {value!r}")
    if value is None or value == "entry":
        return None
    if value in ("group", "neuron", "channel"):
        return Structure("group", entries=count, block=rows)
    if value in ("group+bias", "neuron+bias", "channel+bias"):
        return Structure("group", bias=True, entries=count, block=rows)
    if isinstance(value, str) and ":" in value:
        n, m = parse_nm(value)
        return Structure("nm", n, m)
    raise InvalidValueError(
        f"structure must be one of {', '.join(STRUCTURES)} or an N:M pattern such as 2:4, "
        f"got {value!r}"
    )
