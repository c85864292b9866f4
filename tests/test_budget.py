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
    make_budget,
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


# -- allocations, weights-only budgets, minimum per tensor ------------------------------
def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 8, 5),
        nn.ReLU(),
        nn.Conv1d(8, 8, 3),
        nn.LayerNorm(34),
        nn.Flatten(),
        nn.Linear(8 * 34, 10),
    )


@pytest.mark.parametrize("allocation", ["global", "uniform", "proportional", "erk"])
@pytest.mark.parametrize("s", [1, 7, 40, 300, 2000])
def test_every_allocation_shares_exactly_s(allocation: str, s: int) -> None:
    model = conv_net()
    budget = plan_budget(model, s, allocation=allocation, budgeted="weights")
    sparse = [p for p in budget.pools if not p.dense]
    assert sum(p.sparsity for p in sparse) == s
    assert all(0 <= p.sparsity <= p.size for p in sparse)
    dense = [p for p in budget.pools if p.dense]
    assert len(dense) == 1 and {"3.weight", "3.bias", "0.bias"} <= set(dense[0].params)


def test_erk_gives_small_layers_higher_density() -> None:
    model = conv_net()
    erk = {
        p.name: p.sparsity / p.size
        for p in plan_budget(model, 400, allocation="erk", budgeted="weights").pools
        if not p.dense
    }
    uniform = {
        p.name: p.sparsity
        for p in plan_budget(model, 30, allocation="uniform", budgeted="weights").pools
        if not p.dense
    }
    proportional = {
        p.name: (p.sparsity, p.size)
        for p in plan_budget(model, 400, allocation="proportional", budgeted="weights").pools
        if not p.dense
    }
    # RigL's ERK: density proportional to sum(dims) / prod(dims) of the weight:
    # (8 + 1 + 5) / 40, (8 + 8 + 3) / 192, (10 + 272) / 2720.
    raw = {"0": 14 / 40, "2": 19 / 192, "5": 282 / 2720}
    ratios = [erk[k] / raw[k] for k in raw]
    assert max(ratios) / min(ratios) < 1.05  # up to rounding to whole counts
    assert len(set(uniform.values())) == 1  # the same count everywhere
    budgeted = sum(size for _, size in proportional.values())
    # one density, up to rounding to whole counts
    assert all(abs(share - 400 * size / budgeted) < 1 for share, size in proportional.values())
    # ERK caps a layer at density 1 and hands the rest to the others.
    capped = plan_budget(model, 2900, allocation="erk", budgeted="weights")
    first = next(p for p in capped.pools if p.name == "0")
    assert first.sparsity == first.size


def test_the_usual_budget_keeps_norms_biases_and_embeddings_dense() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 6), nn.Linear(6, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    budget = make_budget(model, "10%")
    assert budget.sparsity == round(0.1 * (36 + 18)) and budget.covers == "weights"
    sparse = next(p for p in budget.pools if not p.dense)
    assert set(sparse.params) == {"1.weight", "3.weight"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    budget.sparse_init_(model, generator=torch.Generator().manual_seed(1))
    for name, p in model.named_parameters():
        if name in sparse.params:
            continue
        assert torch.equal(p, before[name]), name  # LayerNorm gains, biases, the embedding
    assert (
        sum(int((dict(model.named_parameters())[n] != 0).sum()) for n in sparse.params)
        == budget.sparsity
    )


def test_a_minimum_per_tensor_keeps_every_layer_alive_through_iht() -> None:
    """The newcomer's case: a 10-16-3 MLP whose global budget all went to the first layer,
    leaving a network that outputs a constant. With a minimum per tensor, every weight
    tensor keeps nonzeros at every step, and the projection is still exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)).to(torch.float64)
    with torch.no_grad():
        model[0].weight.mul_(50.0)  # the first layer dominates in magnitude
    X = torch.randn(80, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.arange(80) % 3
    plain = plan_budget(model, 12, budgeted="weights")
    held = plan_budget(model, 12, budgeted="weights", min_per_tensor=2)
    for budget, alive in ((plain, False), (held, True)):
        net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)).to(torch.float64)
        net.load_state_dict(model.state_dict())
        opt = budget.optimizer(net, lr=0.05)
        for _ in range(20):
            opt.zero_grad()
            nn.functional.cross_entropy(net(X), y).backward()
            opt.step()
            last = int((net[2].weight != 0).sum())
            if alive:
                assert last >= 2 and int((net[0].weight != 0).sum()) >= 2
            assert int((net[0].weight != 0).sum()) + last <= 12
        assert (last > 0) is alive


def test_bad_budget_plans() -> None:
    model = conv_net()
    with pytest.raises(InvalidValueError, match="allocation must be one of global"):
        plan_budget(model, 5, allocation="random")
    with pytest.raises(InvalidValueError, match="budgeted must be one of all, weights"):
        plan_budget(model, 5, budgeted="convs")
    with pytest.raises(InvalidValueError, match="needs 9, more than the budget s = 5"):
        plan_budget(model, 5, budgeted="weights", min_per_tensor=3)
