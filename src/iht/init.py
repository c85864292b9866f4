"""Sparse initialisation: keep a uniformly random support of size s, zero the rest."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .errors import InvalidValueError
from .threshold import check_sparsity, refuse_repeated, split_like

__all__ = ["linear_init", "random_support", "reset_parameters_", "sparse_init_"]


def random_support(size: int, s: int, *, generator: torch.Generator | None = None) -> Tensor:
    """A uniformly random support: s distinct indices of 0..size-1 (drawn without replacement).

    Returns a bool mask of shape (size,) with exactly s True entries.
    """
    s = check_sparsity(s, size, name="s")
    chosen = torch.randperm(size, generator=generator)[:s]
    mask = torch.zeros(size, dtype=torch.bool)
    mask[chosen] = True
    return mask


@torch.no_grad()
def sparse_init_(
    params: Iterable[Tensor], s: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """Zero all but a uniformly random support of s entries across ``params``, in place.

    One global draw over the concatenation of the parameters (in iteration order), so the
    support is spread over tensors as chance has it: theta^0 = theta_init * 1_S with
    S uniform among the C(P, s) supports.

    Args:
        params: the tensors to sparsify (e.g. ``model.parameters()``).
        s: support size, 0 <= s <= P.
        generator: source of randomness (CPU generator); None uses torch's global one.

    Returns:
        The flat bool mask of the support that was kept.

    Raises:
        TypeError, ValueError: ``s`` is not an integer in 0..P; a tensor is listed twice.
    """
    tensors = list(params)
    refuse_repeated(tensors)
    size = sum(t.numel() for t in tensors)
    mask = random_support(size, s, generator=generator)
    for t, kept in zip(tensors, split_like(mask, tensors), strict=True):
        t.mul_(kept.to(device=t.device, dtype=t.dtype))
    return mask


@torch.no_grad()
def reset_parameters_(model: nn.Module, *, generator: torch.Generator | None = None) -> None:
    """Re-draw a model's parameters from its own default initialisation.

    Calls ``reset_parameters()`` of every submodule that has one. PyTorch's initialisers
    draw from the global RNG, so the draw runs inside ``torch.random.fork_rng`` seeded from
    ``generator``: the caller's global RNG state is left as it was.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        found = False
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                found = True
    if not found:
        raise InvalidValueError(
            f"{type(model).__name__} has no submodule with reset_parameters(); "
            "pass init_fn to draw its parameters"
        )


def linear_init(
    n: int, in_features: int, out_features: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """n draws of ``nn.Linear(in_features, out_features)``'s default initialisation, flat.

    W and b are both uniform on (-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform with a = sqrt(5)
    reduces to that bound). Drawn in float32 as PyTorch draws them, W first then b, so with
    ``n = 1`` and a generator seeded k the result equals
    ``torch.manual_seed(k); nn.Linear(in, out)``; returned as float64 (n, out*in + out).
    """
    bound = 1.0 / math.sqrt(in_features)
    weight = torch.empty(n, out_features, in_features).uniform_(-bound, bound, generator=generator)
    bias = torch.empty(n, out_features).uniform_(-bound, bound, generator=generator)
    return torch.cat([weight.reshape(n, -1), bias], dim=1).to(torch.float64)
