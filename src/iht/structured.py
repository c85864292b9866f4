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

Like :func:`iht.threshold.threshold_mask`, each raises on NaN (its order is undefined) and on
budgets outside their range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import InvalidValueError
from .threshold import check_sparsity, threshold_mask

__all__ = [
    "STRUCTURES",
    "Structure",
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
    whole, so a dropped one outputs exactly a(0) and the model shrinks exactly."""

    kind: str
    n: int = 0
    m: int = 0
    bias: bool = False

    def rows(self, params: Sequence[Tensor]) -> Tensor:
        """A (weight, bias) pool as one matrix: the weight's rows with the bias as a last
        column (the groups of a ``bias`` structure)."""
        weight, bias = params
        return torch.cat([weight.reshape(weight.shape[0], -1), bias.reshape(-1, 1)], dim=1)

    def units(self, params: Sequence[Tensor]) -> int:
        """What the budget counts: rows for groups, entries for N:M."""
        if self.bias:
            return params[0].shape[0]
        if self.kind == "group":
            return sum(p.shape[0] if p.dim() else 1 for p in params)
        return sum(p.numel() for p in params)

    def implied(self, params: Sequence[Tensor]) -> int:
        """The nonzeros an N:M pattern keeps (its budget)."""
        return sum(p.numel() // self.m * self.n for p in params)

    def mask(self, params: Sequence[Tensor], budget: int) -> Tensor:
        """The flat mask (pool order) of the best point of this shape: ``budget`` rows for
        groups; the N:M pattern over each tensor's rows (dim 0 by the rest) for N:M."""
        if self.bias:
            kept = group_mask([self.rows(params)], budget)[0][:, :1]
            width = params[0][0].numel()
            return torch.cat([kept.expand(-1, width).reshape(-1), kept.reshape(-1)])
        if self.kind == "group":
            masks = group_mask(
                [p.reshape(p.shape[0], -1) if p.dim() else p.reshape(1, 1) for p in params], budget
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
        that is not a multiple of M; a ``bias`` structure: not one weight and its bias)."""
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


def parse_structure(value: object) -> Structure | None:
    """A param group's ``"structure"``: None or ``"entry"`` (entry-wise H_s), ``"group"``
    (also ``"neuron"``, ``"channel"``), or an N:M pattern such as ``"2:4"``.

    Raises:
        InvalidValueError: anything else.
    """
    if value is None or value == "entry":
        return None
    if value in ("group", "neuron", "channel"):
        return Structure("group")
    if value in ("group+bias", "neuron+bias", "channel+bias"):
        return Structure("group", bias=True)
    if isinstance(value, str) and ":" in value:
        n, m = parse_nm(value)
        return Structure("nm", n, m)
    raise InvalidValueError(
        f"structure must be one of {', '.join(STRUCTURES)} or an N:M pattern such as 2:4, "
        f"got {value!r}"
    )
