"""shrink(): a structured-sparse network becomes a smaller dense one with the same outputs."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from iht.errors import InvalidValueError
from iht.models import build_cnn
from iht.shrink import shrink, shrink_report
from iht.structured import group_mask

F64 = torch.float64


def _kill_rows(layer: nn.Module, keep: int, gen: torch.Generator) -> None:
    with torch.no_grad():
        (mask,) = group_mask([layer.weight.reshape(layer.weight.shape[0], -1)], keep)
        layer.weight.mul_(mask.reshape(layer.weight.shape[0], -1).view_as(layer.weight))


@settings(max_examples=40, deadline=None)
@given(
    widths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    data=st.data(),
    activation=st.sampled_from([nn.ReLU, nn.Tanh, nn.GELU, nn.Sigmoid]),
)
def test_a_shrunk_mlp_computes_the_same_function(widths, data, activation) -> None:
    torch.manual_seed(data.draw(st.integers(0, 10_000)))
    sizes = [5, *widths, 3]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b).to(F64), activation()]
    model = nn.Sequential(*layers[:-1])
    gen = torch.Generator().manual_seed(0)
    for layer in [m for m in model if isinstance(m, nn.Linear)][:-1]:
        _kill_rows(layer, data.draw(st.integers(0, layer.out_features)), gen)
    shrunk = shrink(model)
    X = torch.randn(64, 5, dtype=F64)
    assert torch.allclose(shrunk(X), model(X), rtol=0, atol=1e-12)
    report = shrink_report(model, shrunk)
    assert report["widths_after"][-1] == 3  # the outputs are kept
    dead = [int((~(m.weight != 0).any(dim=1)).sum()) for m in model if isinstance(m, nn.Linear)]
    kept = report["widths_after"]
    for before, after, d in zip(report["widths_before"][:-1], kept[:-1], dead[:-1], strict=True):
        assert after == max(1, before - d)  # every dead neuron removed (one kept if all are)


def test_a_shrunk_cnn_equals_the_cnn_and_is_smaller() -> None:
    torch.manual_seed(0)
    model = build_cnn((1, 40), 10).to(F64)
    convs = [m for m in model if isinstance(m, nn.Conv1d)]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in convs:
            _kill_rows(conv, 8, gen)
            conv.bias[conv.bias > 0] *= -1  # ReLU(bias) = 0: a dead channel is exactly zero
        convs[1].bias[0] = 0.5  # ...but one dead channel with a positive bias must stay
    shrunk = shrink(model)
    X = torch.randn(16, 40, dtype=F64)
    assert torch.allclose(shrunk(X), model(X), rtol=0, atol=1e-12)
    report = shrink_report(model, shrunk)
    assert report["params_after"] < report["params_before"] / 3
    assert report["widths_after"][:3] == [8, 8 + (0 if (convs[1].weight[0] != 0).any() else 1), 8]


def test_shrink_refuses_what_it_cannot_rewrite() -> None:
    with pytest.raises(InvalidValueError, match=r"nn\.Sequential"):
        shrink(nn.Linear(3, 2))  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="BatchNorm1d"):
        shrink(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)))
