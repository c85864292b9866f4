"""The IHT optimizer against a Python-loop reference, and its handling of bad input."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Sequence

import pytest
import reference
import torch
from torch import Tensor, nn

import iht

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fill_(model: nn.Module, seed: int, *, scale: float = 0.5) -> nn.Module:
    """Dense Gaussian parameters without zeros, drawn from a private generator."""
    gen = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _mlp(seed: int = 0) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(F64)
    return _fill_(model, seed)  # type: ignore[return-value]


def _regression_data(seed: int = 1, n: int = 32) -> tuple[Tensor, Tensor]:
    gen = _gen(seed)
    return torch.randn(n, 3, generator=gen, dtype=F64), torch.randn(n, 2, generator=gen, dtype=F64)


def _grads(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> None:
    for p in model.parameters():
        p.grad = None
    loss_fn(model).backward()


def _load_(model: nn.Module, values: Sequence[Sequence[float]]) -> None:
    with torch.no_grad():
        for p, v in zip(model.parameters(), values, strict=True):
            p.copy_(torch.tensor(v, dtype=p.dtype).reshape(p.shape))


def _flat(tensors: Sequence[Tensor] | Callable[[], object]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])  # type: ignore[union-attr]


def _nonzeros(tensors: Sequence[Tensor]) -> int:
    return sum(int((t != 0).sum()) for t in tensors)


def _assert_same(params: Sequence[Tensor], values: Sequence[Sequence[float]]) -> None:
    got = _flat(params)
    want = torch.tensor([v for row in values for v in row], dtype=got.dtype)
    # The support must agree exactly; values to a few ulps (torch may fuse lr * g - p).
    assert torch.equal(got != 0, want != 0)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)


# --------------------------------------------------------------------------- functional step


def test_iht_update_docstring_example() -> None:
    out = iht.iht_update(
        torch.tensor([1.0, 0.1, -2.0]), torch.tensor([0.5, 0.0, 1.0]), lr=1.0, sparsity=1
    )
    assert out.tolist() == [0.0, 0.0, -3.0]


def test_iht_update_rows_with_their_own_step() -> None:
    gen = _gen(3)
    theta = torch.randn(6, 10, generator=gen, dtype=F64)
    grad = torch.randn(6, 10, generator=gen, dtype=F64)
    lr = torch.linspace(0.1, 1.0, 6, dtype=F64).reshape(6, 1)
    out = iht.iht_update(theta, grad, lr=lr, sparsity=3)
    for r in range(6):
        candidate = [
            t - float(lr[r]) * g for t, g in zip(theta[r].tolist(), grad[r].tolist(), strict=True)
        ]
        expected = torch.tensor(reference.hard_threshold_row(candidate, 3), dtype=F64)
        torch.testing.assert_close(out[r], expected, rtol=1e-15, atol=0.0)
    dense = iht.iht_update(theta, grad, lr=lr, sparsity=None)
    torch.testing.assert_close(dense, theta - lr * grad, rtol=0.0, atol=0.0)


# --------------------------------------------------------------------------- against the loop


def test_global_budget_matches_reference_loop_on_mlp() -> None:
    X, Y = _regression_data()

    def loss_fn(m: nn.Module) -> Tensor:
        return nn.functional.mse_loss(m(X), Y)

    model = _mlp()
    twin = copy.deepcopy(model)
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    assert P == 32
    budget, lr = 9, 0.3
    opt = iht.IHT(params, lr=lr, sparsity=budget)
    pool = reference.Pool(values=reference.as_lists(params), lrs=[lr] * len(params), budget=budget)
    tensors_used = set()
    for _ in range(20):
        _grads(model, loss_fn)
        opt.step()
        _load_(twin, pool.values)
        _grads(twin, loss_fn)
        reference.iht_step(pool, reference.as_lists([p.grad for p in twin.parameters()]))  # type: ignore[misc]
        _assert_same(params, pool.values)
        assert _nonzeros(params) <= budget
        tensors_used |= {i for i, p in enumerate(params) if bool((p != 0).any())}
    # One budget over the concatenation: the support was spread over several tensors.
    assert len(tensors_used) >= 3


def test_per_group_budgets_match_reference_loop() -> None:
    X, Y = _regression_data(seed=2)

    def loss_fn(m: nn.Module) -> Tensor:
        return nn.functional.mse_loss(m(X), Y)

    model = _mlp(seed=4)
    twin = copy.deepcopy(model)
    first, _, second = model
    # Global pool (budget 5): first.weight (lr 0.05) and second layer (lr 0.2);
    # first.bias is a pool of its own (budget 2, lr 0.2).
    opt = iht.IHT(
        [
            {"params": [first.weight], "lr": 0.05},
            {"params": [first.bias], "sparsity": 2},
            {"params": list(second.parameters())},
        ],
        lr=0.2,
        sparsity=5,
    )
    shared = [first.weight, second.weight, second.bias]
    global_pool = reference.Pool(values=reference.as_lists(shared), lrs=[0.05, 0.2, 0.2], budget=5)
    own_pool = reference.Pool(values=reference.as_lists([first.bias]), lrs=[0.2], budget=2)
    for _ in range(20):
        _grads(model, loss_fn)
        opt.step()
        t_first, _, t_second = twin
        _load_(twin, [global_pool.values[0], own_pool.values[0], *global_pool.values[1:]])
        _grads(twin, loss_fn)
        reference.iht_step(
            global_pool,
            reference.as_lists([t_first.weight.grad, t_second.weight.grad, t_second.bias.grad]),  # type: ignore[list-item]
        )
        reference.iht_step(own_pool, reference.as_lists([t_first.bias.grad]))  # type: ignore[list-item]
        _assert_same(shared, global_pool.values)
        _assert_same([first.bias], own_pool.values)
        assert _nonzeros(shared) <= 5
        assert _nonzeros([first.bias]) <= 2
    # The own pool is full (2 of 5 biases) and the global one holds exactly 5.
    assert _nonzeros([first.bias]) == 2
    assert _nonzeros(shared) == 5


def test_dense_is_plain_gradient_descent() -> None:
    X, Y = _regression_data(seed=5)

    def loss_fn(m: nn.Module) -> Tensor:
        return nn.functional.mse_loss(m(X), Y)

    model = _mlp(seed=6)
    twin = copy.deepcopy(model)
    opt = iht.IHT(model.parameters(), lr=0.25, sparsity=None)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.25)
    start = _flat(list(model.parameters())).clone()
    for _ in range(20):
        for m, o in ((model, opt), (twin, sgd)):
            o.zero_grad()
            loss_fn(m).backward()
            o.step()
        torch.testing.assert_close(
            _flat(list(model.parameters())), _flat(list(twin.parameters())), rtol=1e-13, atol=1e-15
        )
    assert not torch.allclose(start, _flat(list(model.parameters())))
    assert _nonzeros(list(model.parameters())) == 32  # nothing thresholded


def test_threshold_every_matches_reference_on_mlp() -> None:
    X, Y = _regression_data(seed=7)

    def loss_fn(m: nn.Module) -> Tensor:
        return nn.functional.mse_loss(m(X), Y)

    model = _mlp(seed=8)
    twin = copy.deepcopy(model)
    params = list(model.parameters())
    k, budget, lr = 3, 6, 0.5
    opt = iht.IHT(params, lr=lr, sparsity=budget, threshold_every=k)
    pool = reference.Pool(values=reference.as_lists(params), lrs=[lr] * 4, budget=budget, every=k)
    for _ in range(15):
        _grads(model, loss_fn)
        opt.step()
        _load_(twin, pool.values)
        _grads(twin, loss_fn)
        reference.iht_step(pool, reference.as_lists([p.grad for p in twin.parameters()]))  # type: ignore[misc]
        _assert_same(params, pool.values)
        assert _nonzeros(params) <= budget


def _support_changes(every: int, steps: int = 30) -> tuple[list[int], list[Tensor]]:
    """Steps (1-based index t of the update) on which the support moved, planted problem."""
    problem = reference.planted_least_squares(seed=3, size=40, sparsity=5, m=60)
    theta = torch.zeros(40, dtype=F64, requires_grad=True)
    opt = iht.IHT([theta], lr=0.3, sparsity=5, threshold_every=every)
    pool = reference.Pool(values=[[0.0] * 40], lrs=[0.3], budget=5, every=every)
    supports = []
    for _ in range(steps):
        theta.grad = problem.grad(theta.detach())
        opt.step()
        reference.iht_step(pool, [problem.grad(torch.tensor(pool.values[0], dtype=F64)).tolist()])
        _assert_same([theta], pool.values)
        assert _nonzeros([theta]) == 5
        supports.append(theta.detach() != 0)
    moved = [t for t in range(1, steps) if not torch.equal(supports[t], supports[t - 1])]
    return moved, supports


def test_threshold_every_reselects_only_on_schedule() -> None:
    # With re-selection on every step the support moves on step 5 on this problem ...
    moved_every_step, _ = _support_changes(every=1)
    assert any(t % 3 for t in moved_every_step), moved_every_step
    # ... with k = 3 it may only move on steps 3, 6, 9, ..., and it does move.
    moved, _ = _support_changes(every=3)
    assert moved, "the support never moved; the test would not see a wrong schedule"
    assert all(t % 3 == 0 for t in moved), moved


def test_frozen_parameters_are_in_no_pool_and_unused_ones_count() -> None:
    X, Y = _regression_data(seed=9)
    model = nn.Linear(3, 2).to(F64)
    _fill_(model, 10)
    unused = nn.Parameter(torch.tensor([0.0, -2.0, 0.0, 0.0], dtype=F64))  # in no forward pass
    frozen = nn.Parameter(torch.tensor([5.0, 6.0], dtype=F64), requires_grad=False)
    opt = iht.IHT([*model.parameters(), unused, frozen], lr=0.1, sparsity=3)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.mse_loss(model(X), Y).backward()
        opt.step()
        assert unused.grad is None
        # Not moved by a gradient step, but inside H_s: its -2 is the largest magnitude.
        assert unused.tolist() == [0.0, -2.0, 0.0, 0.0]
        assert frozen.tolist() == [5.0, 6.0]  # frozen: never moved, never counted
        assert _nonzeros([*model.parameters(), unused]) == 3
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()  # every grad is None now: step() is a no-op
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("kernel", ["torch", "compiled"])
def test_budget_holds_when_a_parameter_has_no_gradient(kernel: str) -> None:
    """The issue's case: a = [3, 1], b = [2, 5], s = 2; a zero-gradient step, then a step in
    which only b has a gradient. The pool must end with 2 nonzeros, H_2 of the whole pool."""
    a = torch.tensor([3.0, 1.0], requires_grad=True)
    b = torch.tensor([2.0, 5.0], requires_grad=True)
    opt = iht.IHT([a, b], lr=0.1, sparsity=2, kernel=kernel)
    a.grad, b.grad = torch.zeros(2), torch.zeros(2)
    opt.step()
    assert a.tolist() == [3.0, 0.0] and b.tolist() == [0.0, 5.0]
    a.grad, b.grad = None, torch.tensor([-10.0, 0.0])
    opt.step()  # b -> [1, 5]; H_2 over [3, 0, 1, 5] keeps 5 and 3
    assert a.tolist() == [3.0, 0.0] and b.tolist() == [0.0, 5.0]
    assert _nonzeros([a, b]) == 2
    assert opt.pool_states["global"].step == 2
    # An entry of a gradient-less parameter is dropped when others outgrow it.
    b.grad = torch.tensor([-40.0, 0.0])
    opt.step()  # b -> [4, 5]; H_2 over [3, 0, 4, 5] drops a's 3
    assert a.tolist() == [0.0, 0.0] and b.tolist() == [4.0, 5.0]


@pytest.mark.parametrize("kernel", ["torch", "compiled"])
def test_threshold_every_counts_steps_without_a_gradient_on_the_first_parameter(
    kernel: str,
) -> None:
    """The re-selection phase is the pool's, not its first parameter's: it must not restart
    when that parameter has no gradient on a step."""
    a = torch.tensor([3.0, 1.0], requires_grad=True)
    b = torch.tensor([2.0, 5.0, 0.5], requires_grad=True)
    opt = iht.IHT([a, b], lr=1.0, sparsity=2, threshold_every=3, kernel=kernel)
    a.grad, b.grad = torch.zeros(2), torch.zeros(3)
    opt.step()  # step 0 selects {a0, b1}
    for step in (1, 2):
        a.grad, b.grad = None, torch.tensor([0.0, 0.0, -10.0])  # b2 would grow to 10.5
        opt.step()  # masked steps: b2 stays out
        assert b[2].item() == 0.0, step
    assert opt.pool_states["global"].step == 3
    a.grad, b.grad = None, torch.tensor([0.0, 0.0, -10.0])
    opt.step()  # step 3 re-selects: b2 = 10 enters, a0 = 3 leaves
    assert a.tolist() == [0.0, 0.0] and b.tolist() == [0.0, 5.0, 10.0]


# --------------------------------------------------------------------------- state dict


def _run(
    model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[nn.Module], Tensor], n: int
) -> list[Tensor]:
    out = []
    for _ in range(n):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
        out.append(_flat(list(model.parameters())).clone())
    return out


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("fresh_hyper", [False, True], ids=["same-hyper", "other-hyper"])
def test_state_dict_round_trip(every: int, fresh_hyper: bool) -> None:
    X, Y = _regression_data(seed=11)

    def loss_fn(m: nn.Module) -> Tensor:
        return nn.functional.mse_loss(m(X), Y)

    model = _mlp(seed=12)
    opt = iht.IHT(model.parameters(), lr=0.5, sparsity=7, threshold_every=every)
    _run(model, opt, loss_fn, 4)  # 4 is not a multiple of 3: the stored mask matters
    twin = copy.deepcopy(model)
    saved = copy.deepcopy(opt.state_dict())
    if fresh_hyper:
        # As with torch.optim: the hyperparameters come back from the state dict.
        fresh = iht.IHT(twin.parameters(), lr=0.01, sparsity=20)
    else:
        fresh = iht.IHT(twin.parameters(), lr=0.5, sparsity=7, threshold_every=every)
    fresh.load_state_dict(saved)
    a = _run(model, opt, loss_fn, 10)
    b = _run(twin, fresh, loss_fn, 10)
    for t, (x, y) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(x, y), f"diverged on step {t}"
        assert int((x != 0).sum()) <= 7


def test_state_dict_keeps_the_reselection_phase() -> None:
    # A fresh optimizer *without* the state would re-select on its first step; with the state
    # it keeps the stored mask until step 6. The two must differ, or the test proves nothing.
    X, Y = _regression_data(seed=13)

    def loss_fn(m: nn.Module) -> Tensor:
        return nn.functional.mse_loss(m(X), Y)

    model = _mlp(seed=14)
    opt = iht.IHT(model.parameters(), lr=0.8, sparsity=5, threshold_every=3)
    _run(model, opt, loss_fn, 4)
    mask = _flat(list(model.parameters())) != 0
    twin = copy.deepcopy(model)
    fresh = iht.IHT(twin.parameters(), lr=0.8, sparsity=5, threshold_every=3)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    after = _run(twin, fresh, loss_fn, 2)  # steps 4 and 5: no re-selection
    assert all(torch.equal(x != 0, mask) for x in after)


# --------------------------------------------------------------------------- training


def _classification(seed: int, shape: tuple[int, ...], n: int = 48) -> tuple[Tensor, Tensor]:
    gen = _gen(seed)
    X = torch.randn(n, *shape, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    return X, y


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3))


@pytest.mark.parametrize(
    ("build", "shape", "budget"),
    [
        (lambda: nn.Linear(4, 3), (4,), 5),
        (lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), (4,), 20),
        (_cnn, (1, 6, 6), 40),
    ],
    ids=["linear", "mlp", "cnn"],
)
def test_training_lowers_loss_within_budget(
    build: Callable[[], nn.Module], shape: tuple[int, ...], budget: int
) -> None:
    X, y = _classification(20, shape)
    model = build()
    iht.reset_parameters_(model, generator=_gen(21))

    def loss_fn(m: nn.Module) -> Tensor:
        return nn.functional.cross_entropy(m(X), y)

    iht.sparse_init_(model.parameters(), budget, generator=_gen(22))
    est = iht.estimate_l2s(model, loss_fn, sparsity=budget, n_samples=20, generator=_gen(23))
    opt = iht.IHT(model.parameters(), lr=est.lr, sparsity=budget)
    with torch.no_grad():
        start = float(loss_fn(model))
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()
        assert _nonzeros(list(model.parameters())) <= budget
        with torch.no_grad():
            losses.append(float(loss_fn(model)))
    assert _nonzeros(list(model.parameters())) == budget
    assert losses[-1] < 0.9 * start
    if isinstance(model, nn.Linear):
        # Convex f and gamma = 1 / L_hat: the descent lemma makes every step go down (up to
        # float32 rounding at the plateau). (The
        # networks are not convex and L_hat is drawn at initialisation, so their loss can
        # bump up on the way, e.g. the CNN here from 0.45 to 0.80 on one step.)
        assert all(b <= a + 1e-6 for a, b in zip([start, *losses], losses, strict=False))


# --------------------------------------------------------------------------- planted recovery


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_planted_sparse_vector_with_estimated_step(seed: int) -> None:
    # gamma = 1 / L_hat may exceed 1 / L_2s (L_hat estimates from below); measured on seeds
    # 0..11: L_hat ~ 1.4-1.7 against lambda_max(A^T A / m) ~ 2.1-2.5, and exact recovery to
    # 1e-12 within 30-51 steps on every seed.
    problem = reference.planted_least_squares(seed=seed, size=40, sparsity=5, m=120)
    P, s = problem.size, problem.sparsity
    est = iht.estimate_l2s_fn(
        problem.grad,
        lambda n, g: torch.randn(n, P, generator=g, dtype=F64),
        sparsity=s,
        size=P,
        n_samples=200,
        generator=_gen(seed + 1),
    )
    theta = torch.zeros(P, dtype=F64, requires_grad=True)
    opt = iht.IHT([theta], lr=est.lr, sparsity=s)
    n_steps = None
    for step in range(3000):
        with torch.no_grad():
            theta.grad = problem.grad(theta)
        opt.step()
        if float((theta.detach() - problem.theta_true).abs().max()) < 1e-12:
            n_steps = step + 1
            break
    assert n_steps is not None and n_steps <= 200, n_steps
    assert torch.equal(theta.detach() != 0, problem.theta_true != 0)
    torch.testing.assert_close(theta.detach(), problem.theta_true, rtol=0.0, atol=1e-6)


# --------------------------------------------------------------------------- bad input


def test_bad_sparsity_names_value_and_size() -> None:
    model = nn.Linear(4, 3)  # P = 15
    with pytest.raises(ValueError, match=r"P = 15.*got -1"):
        iht.IHT(model.parameters(), lr=0.1, sparsity=-1)
    with pytest.raises(ValueError, match=r"P = 15.*got 16"):
        iht.IHT(model.parameters(), lr=0.1, sparsity=16)
    with pytest.raises(TypeError, match=r"0\.\.15.*got 2\.5"):
        iht.IHT(model.parameters(), lr=0.1, sparsity=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got 3\.0"):
        iht.IHT(model.parameters(), lr=0.1, sparsity=3.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got True"):
        iht.IHT(model.parameters(), lr=0.1, sparsity=True)
    # Edge values are fine.
    iht.IHT(model.parameters(), lr=0.1, sparsity=0)
    iht.IHT(model.parameters(), lr=0.1, sparsity=15)


def test_bad_group_sparsity_names_value_and_size() -> None:
    model = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"0\.\.3.*got 4"):
        iht.IHT([{"params": [model.weight]}, {"params": [model.bias], "sparsity": 4}], lr=0.1)
    # The global budget is checked against the global pool only (the 12 weights).
    with pytest.raises(ValueError, match=r"P = 12.*got 13"):
        iht.IHT(
            [{"params": [model.weight]}, {"params": [model.bias], "sparsity": 2}],
            lr=0.1,
            sparsity=13,
        )


@pytest.mark.parametrize("lr", [0.0, -0.1, math.nan, math.inf, -math.inf])
def test_bad_lr_is_refused(lr: float) -> None:
    with pytest.raises(ValueError, match=re.escape(str(lr))):
        iht.IHT(nn.Linear(2, 1).parameters(), lr=lr, sparsity=1)
    with pytest.raises(ValueError, match=re.escape(str(lr))):
        iht.IHT([{"params": nn.Linear(2, 1).parameters(), "lr": lr}], lr=0.1)


@pytest.mark.parametrize("lr", ["0.1", None, True])
def test_non_numeric_lr_is_refused(lr: object) -> None:
    with pytest.raises(TypeError, match=re.escape(repr(lr))):
        iht.IHT(nn.Linear(2, 1).parameters(), lr=lr)  # type: ignore[arg-type]


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_bad_threshold_every_is_refused(every: object) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(every))):
        iht.IHT(nn.Linear(2, 1).parameters(), lr=0.1, threshold_every=every)  # type: ignore[arg-type]


def _snapshot(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _unchanged(model: nn.Module, snapshot: list[Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(snapshot, model.parameters(), strict=True))


def test_nan_loss_from_closure_changes_nothing() -> None:
    X, Y = _regression_data(seed=30)
    model = _mlp(seed=31)
    opt = iht.IHT(model.parameters(), lr=0.1, sparsity=4)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X), Y)
        loss.backward()  # finite gradients: only the loss is bad
        return loss * math.nan

    before = _snapshot(model)
    with pytest.raises(iht.NonFiniteError, match="nan"):
        opt.step(closure)
    assert _unchanged(model, before)
    assert not opt.state  # no step was counted

    def good() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X), Y)
        loss.backward()
        return loss

    loss = opt.step(good)
    assert loss is not None and math.isfinite(float(loss.detach()))
    assert _nonzeros(list(model.parameters())) == 4


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_gradient_changes_nothing(bad: float) -> None:
    model = _mlp(seed=32)
    first, _, second = model
    # Two pools: the bad gradient sits in the second, the first must not move either.
    opt = iht.IHT(
        [
            {"params": list(first.parameters()), "sparsity": 3},
            {"params": list(second.parameters())},
        ],
        lr=0.1,
        sparsity=4,
    )
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    second.bias.grad[1] = bad  # type: ignore[index]
    before = _snapshot(model)
    with pytest.raises(iht.NonFiniteError, match="non-finite"):
        opt.step()
    assert _unchanged(model, before)
    assert isinstance(iht.NonFiniteError(), FloatingPointError)


def test_overflowing_update_changes_nothing() -> None:
    p = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    p.grad = torch.tensor([3e38, 0.0, 0.0])  # finite, but lr * grad overflows float32
    opt = iht.IHT([p], lr=10.0, sparsity=2)
    with pytest.raises(iht.NonFiniteError):
        opt.step()
    assert p.tolist() == [1.0, 2.0, 3.0]


def test_mixed_devices_are_refused() -> None:
    cpu = nn.Parameter(torch.zeros(3))
    meta = nn.Parameter(torch.zeros(3, device="meta"))
    with pytest.raises(ValueError, match=r"one device.*cpu.*meta"):
        iht.IHT([cpu, meta], lr=0.1, sparsity=2)
    with pytest.raises(ValueError, match="one device"):
        iht.IHT([{"params": [cpu]}, {"params": [meta], "sparsity": 1}], lr=0.1)


def test_lr_may_be_a_one_element_tensor_as_in_torch() -> None:
    model = nn.Linear(3, 2).to(F64)
    opt = iht.IHT(model.parameters(), lr=torch.tensor(0.25), sparsity=3)  # type: ignore[arg-type]
    assert opt.param_groups[0]["lr"] == 0.25
    with pytest.raises(TypeError, match="lr must be a positive finite number"):
        iht.IHT(model.parameters(), lr=torch.tensor([0.1, 0.2]), sparsity=3)  # type: ignore[arg-type]


def test_a_sparse_gradient_gets_a_clear_error_and_changes_nothing() -> None:
    emb = nn.Embedding(10, 4, sparse=True).to(F64)
    opt = iht.IHT(emb.parameters(), lr=0.1, sparsity=8)
    before = emb.weight.detach().clone()
    emb(torch.tensor([1, 2, 3])).sum().backward()
    with pytest.raises(ValueError, match="sparse_coo gradient; IHT needs dense gradients"):
        opt.step()
    assert torch.equal(emb.weight, before)
