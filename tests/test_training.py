"""The training loop and budgets: mini-batch == full batch, budgets hold at every step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pandas as pd
import pytest
import torch
from torch import Tensor, nn

import iht
from iht.budget import plan_budget
from iht.certify import certify_budget
from iht.errors import NonFiniteError
from iht.init import reset_parameters_
from iht.models import build_model
from iht.training import History, _batches, fit


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one thread avoids OpenMP contention on a busy machine (10-50x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def problem(n: int = 60, d: int = 5, c: int = 3, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A small separable-ish float64 classification problem."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(d, c, generator=gen, dtype=torch.float64)
    return X, (X @ w).argmax(dim=1)


def mlp(hidden: tuple[int, ...] = (8,), *, seed: int = 1, d: int = 5, c: int = 3) -> nn.Sequential:
    model = build_model(d, c, hidden).to(torch.float64)
    reset_parameters_(model, generator=torch.Generator().manual_seed(seed))
    return model


# -- the loop ---------------------------------------------------------------------------
def train(
    batch_size: int | None,
    *,
    steps: int = 50,
    sparsity: int = 20,
    shuffle_seed: int = 7,
    **budget_options: bool,
) -> tuple[nn.Module, History]:
    X, y = problem()
    model = mlp()
    budget = plan_budget(model, sparsity, **budget_options)
    budget.sparse_init_(model, generator=torch.Generator().manual_seed(2))
    history = fit(
        model,
        X,
        y,
        optimizer=budget.optimizer(model, lr=0.5),
        steps=steps,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(shuffle_seed),
        test=problem(20, seed=5),
    )
    return model, history


@pytest.mark.parametrize("batch_size", [60, 61, 1000])
def test_minibatch_with_every_row_is_full_batch_exactly(batch_size: int) -> None:
    full_model, full_history = train(None)
    mini_model, mini_history = train(batch_size)
    for p, q in zip(full_model.parameters(), mini_model.parameters(), strict=True):
        assert p.dtype == torch.float64
        assert torch.equal(p, q)
    assert pd.DataFrame(full_history.columns()).equals(pd.DataFrame(mini_history.columns()))


def test_minibatch_is_seeded_and_differs_from_full_batch() -> None:
    a, ha = train(16)
    b, _ = train(16)
    c, _ = train(16, shuffle_seed=8)
    full, _ = train(None)
    flat = [iht.threshold.flatten(m.parameters()) for m in (a, b, c, full)]
    assert torch.equal(flat[0], flat[1])
    assert not torch.equal(flat[0], flat[2]) and not torch.equal(flat[0], flat[3])
    frame = pd.DataFrame(ha.columns())
    assert not frame["batch_loss"].equals(frame["train_loss"])  # full loss recorded besides


def test_batches_reshuffle_each_epoch_and_cover_every_row() -> None:
    batches = _batches(10, 4, torch.Generator().manual_seed(0))
    epochs = [[next(batches) for _ in range(3)] for _ in range(2)]
    for epoch in epochs:
        assert [len(b) for b in epoch] == [4, 4, 2]
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))
        assert all(torch.equal(b, b.sort().values) for b in epoch)  # dataset order inside
    assert not all(torch.equal(a, b) for a, b in zip(*epochs, strict=True))


def budget_checker(
    model: nn.Module, budget_of: dict[str, int], dense: tuple[str, ...] = ()
) -> tuple[Callable[[int, History], None], list[int]]:
    """An on_step callback asserting every pool's budget (and dense params) after each step."""
    named = dict(model.named_parameters())
    seen: list[int] = []

    def check(step: int, history: History) -> None:
        for names, limit in budget_of.items():
            count = sum(int((named[n] != 0).sum()) for n in names.split("+"))
            assert count <= limit, f"step {step}: {names} has {count} > {limit} nonzeros"
        for name in dense:
            assert bool((named[name] != 0).all()), f"step {step}: {name} lost entries"
        seen.append(step)

    return check, seen


@pytest.mark.parametrize("batch_size", [None, 16])
def test_per_layer_budgets_hold_at_every_step(batch_size: int | None) -> None:
    X, y = problem()
    model = mlp()
    budget = plan_budget(model, 20, per_layer=True)
    budget.sparse_init_(model, generator=torch.Generator().manual_seed(2))
    check, seen = budget_checker(model, {"0.weight+0.bias": 13, "2.weight+2.bias": 7})
    history = fit(
        model,
        X,
        y,
        optimizer=budget.optimizer(model, lr=1.0),
        steps=60,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(0),
        on_step=check,
    )
    assert seen == list(range(60))
    frame = pd.DataFrame(history.columns())
    assert (frame["nonzeros.0"] <= 13).all() and (frame["nonzeros.2"] <= 7).all()
    assert (frame["nonzeros"] == frame["nonzeros.0"] + frame["nonzeros.2"]).all()
    assert frame["nonzeros"].iloc[-1] == 20  # the budget is used, not only respected


def test_exclude_biases_keeps_biases_dense_and_weights_in_budget() -> None:
    X, y = problem()
    model = mlp()
    budget = plan_budget(model, 10, exclude_biases=True)
    budget.sparse_init_(model, generator=torch.Generator().manual_seed(2))
    biases_before = [model[0].bias.detach().clone(), model[2].bias.detach().clone()]
    check, seen = budget_checker(model, {"0.weight+2.weight": 10}, dense=("0.bias", "2.bias"))
    fit(model, X, y, optimizer=budget.optimizer(model, lr=1.0), steps=60, on_step=check)
    assert len(seen) == 60
    assert int((model[0].weight != 0).sum() + (model[2].weight != 0).sum()) == 10
    # The biases were trained (plain gradient steps), not frozen.
    assert not torch.equal(biases_before[0], model[0].bias)


def test_global_budget_history_is_consistent() -> None:
    _, history = train(None, steps=40, sparsity=12)
    frame = pd.DataFrame(history.columns())
    assert len(frame) == 40 and frame["step"].tolist() == list(range(40))
    assert (frame["nonzeros"] <= 12).all()
    # nonzeros change only by the entries that entered or left
    delta = frame["nonzeros"].diff().iloc[1:]
    assert (delta == (frame["entered"] - frame["left"]).iloc[1:]).all()
    assert frame["train_loss"].iloc[-1] < frame["train_loss"].iloc[0]
    assert frame["test_loss"].notna().all() and frame["batch_loss"].equals(frame["train_loss"])
    assert frame["train_accuracy"].between(0, 1).all()


def test_fit_records_the_loss_at_theta_k_and_eval_every() -> None:
    X, y = problem()
    model = mlp()
    opt = iht.IHT(model.parameters(), lr=0.3, sparsity=None)
    start = nn.functional.cross_entropy(model(X), y).item()
    history = fit(model, X, y, optimizer=opt, steps=7, test=problem(20, seed=5), eval_every=3)
    assert history.train_loss[0] == pytest.approx(start, rel=1e-12)
    evaluated = [k for k, v in enumerate(history.test_loss) if not math.isnan(v)]
    assert evaluated == [0, 3, 6]
    # Appending to a history continues the step count.
    fit(model, X, y, optimizer=opt, steps=2, history=history)
    assert history.step == list(range(9))


def test_non_finite_loss_stops_with_history_kept() -> None:
    X, y = problem()
    X[3, 0] = math.nan
    model = mlp()
    history = History()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteError, match="step 0"):
        fit(
            model,
            X,
            y,
            optimizer=iht.IHT(model.parameters(), lr=0.1, sparsity=10),
            steps=5,
            history=history,
        )
    assert len(history) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_non_finite_update_mid_run_keeps_finished_steps() -> None:
    X, y = problem()
    model = mlp(())
    history = History()
    opt = iht.IHT(model.parameters(), lr=1e308, sparsity=10)
    with pytest.raises(NonFiniteError, match="training stopped at step"):
        fit(model, X, y, optimizer=opt, steps=50, history=history)
    assert len(history) >= 1 and len(history) < 50


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": -1}, "steps"),
        ({"steps": 2, "batch_size": 0}, "batch_size"),
        ({"steps": 2, "batch_size": 4, "generator": None}, "generator"),
        ({"steps": 2, "eval_every": 0}, "eval_every"),
    ],
)
def test_fit_checks_arguments(kwargs: dict[str, object], message: str) -> None:
    X, y = problem()
    model = mlp()
    with pytest.raises(ValueError, match=message):
        fit(model, X, y, optimizer=iht.IHT(model.parameters(), lr=0.1), **kwargs)  # type: ignore[arg-type]


# -- certificates -----------------------------------------------------------------------
def test_certify_budget_single_pool_is_certify() -> None:
    X, y = problem()
    model, _ = train(None, steps=30, sparsity=12)

    def loss_fn(m: nn.Module) -> Tensor:
        return nn.functional.cross_entropy(m(X), y)

    ours = certify_budget(model, loss_fn, lr=0.5, budget=plan_budget(model, 12), dense_loss=0.1)
    theirs = iht.certify(model, loss_fn, lr=0.5, sparsity=12, dense_loss=0.1)
    assert ours == {k: getattr(theirs, k) for k in ours}


def test_certify_budget_pools() -> None:
    X, y = problem()
    model, _ = train(None, steps=30, sparsity=20, per_layer=True, exclude_biases=True)

    def loss_fn(m: nn.Module) -> Tensor:
        return nn.functional.cross_entropy(m(X), y)

    budget = plan_budget(model, 20, per_layer=True, exclude_biases=True)
    cert = certify_budget(model, loss_fn, lr=0.5, budget=budget, dense_loss=0.0)
    assert [p["name"] for p in cert["pools"]] == ["0", "2", "biases"]
    assert [p["sparsity"] for p in cert["pools"]] == [p.sparsity for p in budget.pools]
    assert cert["nonzeros"] == 20 and cert["sparsity"] == 20
    assert cert["stable"] == all(p["stable"] for p in cert["pools"])
    assert cert["max_grad_on_support"] == max(p["max_grad_on_support"] for p in cert["pools"])
    assert cert["epsilon"] == pytest.approx(cert["loss"])
    assert math.isclose(cert["residual"], math.sqrt(sum(p["residual"] ** 2 for p in cert["pools"])))
