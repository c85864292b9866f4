"""IHT on sharded parameters (FSDP2's DTensors) without gathering them.

Under ``torch.distributed.fsdp.fully_shard`` every parameter is a DTensor sharded on dim 0
over a 1-D device mesh: rank r holds rows [r c, (r + 1) c) of it (c = ceil(rows / W)), that is
one contiguous slice of the parameter's flat vector. A pool's flat vector (its parameters
concatenated in order, global shapes) is then tiled by the ranks' slices, several per rank,
and the global H_s of the pool is :func:`iht.distributed.sharded_threshold_masks` over them:
each rank selects on its own slices, a few collectives of O(world size x (parameters +
candidates)) decide the global threshold and the ties (the smaller global index wins, as in
one process), and no rank ever holds the whole vector.

:func:`is_sharded` tells a pool that needs this path; :func:`sharded_plan` is the step of such
a pool (the gradient step on the local shards, then the sharded selection), with the same
checks as the one-process step: every rank raises the same error when any rank's update is
not finite, before anything is written.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import InvalidValueError, NonFiniteError
from .threshold import split_like

__all__ = ["is_sharded", "local_part", "shard_segments", "sharded_plan"]


def _dtensor_type() -> type | None:
    """DTensor, if its module is loaded: no parameter can be one otherwise (so a model that
    is not sharded never pays for importing it)."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else getattr(module, "DTensor", None)


def is_sharded(params: Sequence[Tensor]) -> bool:
    """Whether the pool holds DTensors (then every tensor of it must be one)."""
    kind = _dtensor_type()
    if kind is None:
        return False
    flags = [isinstance(p, kind) for p in params]
    if any(flags) and not all(flags):
        raise InvalidValueError(
            "a budget pool mixes DTensor and plain parameters; shard the whole model "
            "(fully_shard) or none of it"
        )
    return any(flags)


def local_part(t: Any) -> Tensor:
    """The rank's local tensor of a DTensor (the tensor itself otherwise)."""
    return t.to_local() if hasattr(t, "to_local") else t


def shard_segments(params: Sequence[Any]) -> tuple[list[int], Any]:
    """The global flat offset of each parameter's local slice in the pool's vector, and the
    process group of their mesh.

    Raises:
        InvalidValueError: a parameter is not sharded on dim 0 of one 1-D mesh (Shard(0), as
            ``fully_shard`` places it), or the parameters live on different meshes.
    """
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    offsets: list[int] = []
    base = 0
    mesh = None
    for p in params:
        placements = tuple(p.placements)
        if p.device_mesh.ndim != 1 or placements != (Shard(0),):
            raise InvalidValueError(
                "IHT selects on DTensors sharded on dim 0 over a 1-D mesh (fully_shard's "
                f"layout); got placements {placements} on a {p.device_mesh.ndim}-D mesh"
            )
        if mesh is None:
            mesh = p.device_mesh
        elif p.device_mesh != mesh:
            raise InvalidValueError("the parameters of a budget pool must share one device mesh")
        _, start = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
        row = math.prod(p.shape[1:]) if p.dim() > 1 else 1
        offsets.append(base + int(start[0]) * row if p.dim() > 0 else base)
        base += p.numel()
    assert mesh is not None
    return offsets, mesh.get_group()


def sharded_plan(pool: Any, every: int, reselects: Callable[..., bool]) -> Callable[[], None]:
    """The step of a pool of DTensors: check (collectively), then return its writer.

    ``pool`` is an :class:`iht.optim.StepPool`; its ``state.mask`` holds the rank's local
    part of the pool's mask (local slices concatenated in pool order).
    """
    from .distributed import sharded_threshold_masks

    if pool.minimum or pool.structure is not None:
        raise InvalidValueError(
            "a minimum per tensor and structured budgets are not available on sharded "
            "(DTensor) parameters yet; use an entry budget"
        )
    params = [local_part(p) for p in pool.params]
    grads = [None if g is None else local_part(g) for g in pool.grads]
    offsets, group = shard_segments(pool.params)
    bad = 0.0
    for p, g, lr in zip(params, grads, pool.lrs, strict=True):
        x = p if g is None else p - lr * g
        bad += float((~torch.isfinite(x)).sum())
    flag = torch.tensor([bad], dtype=torch.float64, device=params[0].device)
    dist.all_reduce(flag, group=group)  # every rank raises alike, before anything is written
    if float(flag[0]) > 0:
        raise NonFiniteError(
            "the update theta - lr * grad is not finite on some rank; parameters left unchanged"
        )
    budget, state = pool.sparsity, pool.state

    def write() -> None:
        for p, g, lr in zip(params, grads, pool.lrs, strict=True):
            if g is not None:
                p.add_(g, alpha=-lr)
        if budget is not None:
            size = sum(p.numel() for p in params)
            if reselects(state, every, size, budget):
                masks = sharded_threshold_masks(
                    [(p.detach().reshape(-1), o) for p, o in zip(params, offsets, strict=True)],
                    budget,
                    group=group,
                )
                device = params[0].device
                state.mask = (
                    torch.cat([m.reshape(-1) for m in masks])
                    if masks
                    else torch.zeros(0, dtype=torch.bool, device=device)
                )
                state.threshold = None
                state.sparsity = budget
            for p, dropped in zip(params, split_like(state.dropped(), params), strict=True):
                p.masked_fill_(dropped, 0.0)
        state.step += 1

    return write
