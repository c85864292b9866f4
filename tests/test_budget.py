"""Budgets: the one sparsity parser of every command, sharing s among layers, the layers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from iht.budget import (
    apportion,
    budgeted_size,
    layers_of,
    parse_sparsity,
    parse_sparsity_list,
    plan_budget,
)
from iht.errors import InvalidValueError
from iht.init import reset_parameters_
from iht.models import build_model


def mlp(hidden: tuple[int, ...] = (8,), *, seed: int = 1, d: int = 5, c: int = 3) -> nn.Sequential:
    model = build_model(d, c, hidden).to(torch.float64)
    reset_parameters_(model, generator=torch.Generator().manual_seed(seed))
    return model


# -- one parser for every command -----------------------------------------------------
@pytest.mark.parametrize(
    ("given", "total", "expected"),
    [
        ("5", 15, 5),
        (5, 15, 5),
        ("1", 15, 1),
        ("15", 15, 15),
        ("0.1", 4810, 481),
        ("0.1", 15, 2),
        ("0.5", 5, 3),
        ("0.01", 15, 1),
        (0.3, 10, 3),
        (" 0.25 ", 4, 1),
        ("1.0", 15, 15),
        (1.0, 15, 15),
        ("10%", 4810, 481),
        ("100%", 15, 15),
        ("2.5%", 40, 1),
        ("1e-1", 50, 5),
    ],
)
def test_parse_sparsity(given: str | float, total: int, expected: int) -> None:
    assert parse_sparsity(given, total) == expected


@pytest.mark.parametrize("form", ["0.1", "10%", 0.1])
def test_every_form_rounds_the_same_way(form: str | float) -> None:
    # 0.1 * 25 = 2.5: rounded half up, whichever way the budget is written (the commands
    # used to disagree here: 2 in compare, 3 in train).
    assert parse_sparsity(form, 25) == 3
    assert parse_sparsity_list(str(form), 25) == (3,)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("0", "count of nonzeros must be in 1..15"),
        ("-3", "must be in 1..15"),
        ("16", "must be in 1..15"),
        ("2.5", "must be in (0, 1]"),
        ("0.0", "must be in (0, 1]"),
        ("nan", "not a count"),
        ("inf", "not a count"),
        ("abc", "not a count (100), a fraction (0.1) or a percentage (10%)"),
        ("", "not a count"),
        ("0%", "must be in (0%, 100%]"),
        ("101%", "must be in (0%, 100%]"),
        ("x%", "not a count"),
        (True, "a count, a fraction or a percentage"),
    ],
)
def test_parse_sparsity_refuses(given: object, message: str) -> None:
    with pytest.raises(InvalidValueError) as caught:
        parse_sparsity(given, 15)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_parse_sparsity_list() -> None:
    assert parse_sparsity_list("3,5,8", 15) == (3, 5, 8)
    assert parse_sparsity_list("8, 3,3", 15) == (3, 8)
    assert parse_sparsity_list("1-3,12", 15) == (1, 2, 3, 12)
    assert parse_sparsity_list("10%,0.5,1.0", 650) == (65, 325, 650)
    with pytest.raises(InvalidValueError, match="empty"):
        parse_sparsity_list("5-3", 15)
    with pytest.raises(InvalidValueError, match=r"1\.\.15"):
        parse_sparsity_list("14-16", 15)


# -- budgets ----------------------------------------------------------------------------
@given(
    total_frac=st.floats(0, 1),
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=6),
)
def test_apportion_sums_and_stays_proportional(total_frac: float, sizes: list[int]) -> None:
    total = round(total_frac * sum(sizes))
    shares = apportion(total, sizes)
    assert sum(shares) == total
    for share, size in zip(shares, sizes, strict=True):
        assert 0 <= share <= size
        assert abs(share - total * size / sum(sizes)) < 1


def test_apportion_example_and_ties() -> None:
    assert apportion(481, [4160, 650]) == [416, 65]
    assert apportion(3, [2, 2, 2, 2]) == [1, 1, 1, 0]  # equal remainders: earlier first


def test_plan_budget_global_is_the_papers_convention() -> None:
    model = mlp()
    budget = plan_budget(model, 20)
    assert budget.mode == "global" and len(budget.pools) == 1
    assert budget.pools[0].size == budgeted_size(model) == 5 * 8 + 8 + 8 * 3 + 3
    assert budget.max_nonzeros == 20
    groups, sparsity = budget.param_groups(model)
    assert sparsity == 20 and "sparsity" not in groups[0]


def test_plan_budget_per_layer_and_biases() -> None:
    model = mlp()
    per_layer = plan_budget(model, 20, per_layer=True)
    assert [(p.name, p.size, p.sparsity) for p in per_layer.pools] == [("0", 48, 13), ("2", 27, 7)]
    no_bias = plan_budget(model, 10, exclude_biases=True)
    assert [(p.name, p.size, p.sparsity, p.dense) for p in no_bias.pools] == [
        ("weights", 64, 10, False),
        ("biases", 11, 11, True),
    ]
    assert no_bias.max_nonzeros == 21 and budgeted_size(model, exclude_biases=True) == 64
    both = plan_budget(model, 10, per_layer=True, exclude_biases=True)
    assert [(p.name, p.size, p.sparsity) for p in both.pools] == [
        ("0", 40, 6),
        ("2", 24, 4),
        ("biases", 11, 11),
    ]
    with pytest.raises(ValueError, match=r"1\.\.64"):
        plan_budget(model, 65, exclude_biases=True)


def test_layers_of_names_modules_in_parameter_order() -> None:
    layers = layers_of(mlp((4, 3)))
    assert [name for name, _ in layers] == ["0", "2", "4"]
    assert [n for _, own in layers for n, _ in own] == [
        n for n, _ in mlp((4, 3)).named_parameters()
    ]
