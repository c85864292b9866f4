r"""Shrink a structured-sparse network into a smaller dense one that computes the same function.

A hidden neuron (a row of a Linear's weight) or a channel (an output channel of a Conv) whose
weights are all zero outputs a constant, :math:`a(b_i)` (its activation of its bias), whatever
the input. :func:`shrink` removes it and the matching inputs of the next layer:

- before a Linear, the constant is folded into the next layer's bias,
  :math:`b' = b + W_{:,i}\, a(b_i)`, which is exact;
- before a Conv the constant's contribution depends on the position (zero padding at the
  borders), so a channel is removed only when its constant is exactly 0 (e.g. a ReLU of a
  bias <= 0, or a zero bias).

The result is an ``nn.Sequential`` of ordinary dense layers (its files and its inference are
smaller and faster with no sparse kernel), equal to the original on every input up to
floating-point rounding (tested in float64 on random inputs). What it handles: an
``nn.Sequential`` of Linear, Conv1d and Conv2d layers with elementwise activations (ReLU,
Tanh, GELU, Sigmoid, ...) or Flatten between them, as :func:`iht.models.build_model` makes.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, cast

import torch
from torch import Tensor, nn

from .errors import InvalidValueError

__all__ = ["shrink", "shrink_report"]

_ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Identity,
    nn.Dropout,
)
_CONV = (nn.Conv1d, nn.Conv2d)
_Weighted = Any  # nn.Linear | nn.Conv1d | nn.Conv2d: their weight, bias and sizes are set


@torch.no_grad()
def shrink(model: nn.Sequential) -> nn.Sequential:
    """A smaller dense copy of ``model`` without its all-zero neurons and channels.

    The last layer keeps all its outputs (they are the model's outputs); the model itself is
    not changed. See the module docstring for what is removed and why it is exact.

    Raises:
        InvalidValueError: ``model`` is not an ``nn.Sequential`` of the layers handled.
    """
    if not isinstance(model, nn.Sequential):
        raise InvalidValueError(f"shrink takes an nn.Sequential, got {type(model).__name__}")
    layers = list(copy.deepcopy(model))
    weighted = [i for i, layer in enumerate(layers) if isinstance(layer, (nn.Linear, *_CONV))]
    for i, layer in enumerate(layers):
        before_first = not weighted or i < weighted[0]  # reshaping the input is left as it is
        allowed = (*_ELEMENTWISE, nn.Flatten, *((nn.Unflatten,) if before_first else ()))
        if i not in weighted and not isinstance(layer, allowed):
            raise InvalidValueError(
                f"shrink handles Linear, Conv1d/2d, elementwise activations and Flatten; "
                f"layer {i} is {type(layer).__name__}"
            )
    for here, after in itertools.pairwise(weighted):
        _drop_dead_outputs(layers, here, after)
    return nn.Sequential(*layers)


def _drop_dead_outputs(layers: list[nn.Module], here: int, after: int) -> None:
    """Remove the dead outputs of ``layers[here]`` and the inputs of ``layers[after]``."""
    layer = cast(_Weighted, layers[here])
    nxt = cast(_Weighted, layers[after])
    between = layers[here + 1 : after]
    weight = layer.weight.detach()
    dead = ~(weight.reshape(weight.shape[0], -1) != 0).any(dim=1)
    if not bool(dead.any()):
        return
    bias = (
        layer.bias.detach()
        if layer.bias is not None
        else torch.zeros(weight.shape[0], dtype=weight.dtype)
    )
    constant = _through(between, bias, spatial=isinstance(layer, _CONV))  # a(b_i) per output
    if isinstance(nxt, _CONV):
        dead &= constant == 0  # a constant channel is not constant after zero padding
    if bool(dead.all()):
        dead[0] = False  # keep one output: a layer of width 0 is not a layer
    keep = (~dead).nonzero().squeeze(1)
    if isinstance(nxt, nn.Linear):
        # the next layer's columns of each output: one per neuron, a block per channel
        per = _inputs_per_output(nxt, weight.shape[0], between)
        offsets = torch.arange(per).view(1, -1)
        columns = (keep.view(-1, 1) * per + offsets).reshape(-1)
        dropped = (dead.nonzero().squeeze(1).view(-1, 1) * per + offsets).reshape(-1)
        folded = nxt.weight.detach()[:, dropped] @ constant[dead].repeat_interleave(per)
        if nxt.bias is None:
            nxt.bias = nn.Parameter(torch.zeros(nxt.out_features, dtype=nxt.weight.dtype))
        nxt.bias.add_(folded.to(nxt.bias.dtype))
        nxt.weight = nn.Parameter(nxt.weight.detach()[:, columns].clone())
        nxt.in_features = len(columns)
    else:
        nxt.weight = nn.Parameter(nxt.weight.detach()[:, keep].clone())
        nxt.in_channels = len(keep)
    layer.weight = nn.Parameter(weight[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(bias[keep].clone())
    if isinstance(layer, nn.Linear):
        layer.out_features = len(keep)
    else:
        layer.out_channels = len(keep)


def _through(between: list[nn.Module], bias: Tensor, *, spatial: bool) -> Tensor:
    """The constant output a(b_i) of each dead unit: the bias through the activations."""
    value = bias.clone()
    for module in between:
        if isinstance(module, (nn.Flatten, nn.Dropout)):
            continue  # (dropout is the identity at inference)
        value = module(value.view(1, -1)).view(-1) if not spatial else module(value)
    return value


def _inputs_per_output(nxt: nn.Module, outputs: int, between: list[nn.Module]) -> int:
    """How many inputs of ``nxt`` each output of the previous layer feeds (a Flatten after a
    Conv: the positions of its channel)."""
    if isinstance(nxt, nn.Linear):
        if nxt.in_features % outputs:
            raise InvalidValueError(
                f"cannot match {outputs} outputs to the {nxt.in_features} inputs of the next Linear"
            )
        per = nxt.in_features // outputs
        if per > 1 and not any(isinstance(m, nn.Flatten) for m in between):
            raise InvalidValueError("a Conv feeding a Linear needs a Flatten between them")
        return per
    return 1


def shrink_report(model: nn.Sequential, shrunk: nn.Sequential) -> dict[str, object]:
    """Parameter counts and layer widths before and after :func:`shrink`."""

    def widths(m: nn.Sequential) -> list[int]:
        return [int(layer.weight.shape[0]) for layer in m if isinstance(layer, (nn.Linear, *_CONV))]

    return {
        "params_before": sum(p.numel() for p in model.parameters()),
        "params_after": sum(p.numel() for p in shrunk.parameters()),
        "widths_before": widths(model),
        "widths_after": widths(shrunk),
    }
