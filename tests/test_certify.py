"""HT-stability and epsilon-optimality certificates."""

from __future__ import annotations

import copy
import dataclasses
import math

import hypothesis.strategies as st
import pytest
import reference
import torch
from hypothesis import given
from torch import Tensor, nn

import iht
from iht.certify import (
    DEFAULT_GRAD_TOL,
    constant_output_loss,
    degeneracy,
    instability_reasons,
    stability_figures,
)

F64 = torch.float64
FIELDS = [
    "nonzeros",
    "max_grad_on_support",
    "max_grad_off_support",
    "off_support_ratio",
    "residual",
    "tie",
    "stable",
]

# Dyadic values: theta - lr * grad is exact, so ties at the boundary really happen.
THETA_VALUES = [0.0, 0.0, 1.0, -1.0, 2.0, -2.0, 0.75]
GRAD_VALUES = [0.0, 2.0**-12, -(2.0**-12), 0.25, -0.5, 1.0, -1.0]
LRS = [0.5, 1.0, 2.0]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_matches(cert: iht.Certificate, expected: dict[str, float | int | bool]) -> None:
    for field in FIELDS:
        got, want = getattr(cert, field), expected[field]
        if isinstance(want, float) and math.isfinite(want):
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15), field
        else:
            assert got == want, field


# --------------------------------------------------------------------------- definitions


@st.composite
def points(draw: st.DrawFn, *, size: int | None = None) -> tuple[list[float], list[float]]:
    n = size if size is not None else draw(st.integers(1, 6))
    theta = draw(st.lists(st.sampled_from(THETA_VALUES), min_size=n, max_size=n))
    grad = draw(st.lists(st.sampled_from(GRAD_VALUES), min_size=n, max_size=n))
    return theta, grad


@given(points(), st.sampled_from(LRS), st.data())
def test_certify_point_matches_the_definitions(
    point: tuple[list[float], list[float]], lr: float, data: st.DataObject
) -> None:
    theta, grad = point
    s = data.draw(st.integers(0, len(theta)))
    cert = iht.certify_point(
        torch.tensor(theta, dtype=F64), torch.tensor(grad, dtype=F64), lr=lr, sparsity=s
    )
    _assert_matches(cert, reference.certificate_row(theta, grad, lr, s, DEFAULT_GRAD_TOL))
    assert cert.sparsity == s and cert.lr == lr and cert.grad_tol == DEFAULT_GRAD_TOL
    # A stable point is a fixed point of the IHT map with a unique value.
    if cert.stable and cert.nonzeros == s:
        assert not cert.tie
        assert cert.residual <= lr * DEFAULT_GRAD_TOL * math.sqrt(len(theta))


@given(st.integers(1, 6), st.integers(1, 8), st.data())
def test_batched_figures_equal_certify_point_row_by_row(
    size: int, rows: int, data: st.DataObject
) -> None:
    s = data.draw(st.integers(0, size))
    pts = [data.draw(points(size=size)) for _ in range(rows)]
    lrs = data.draw(st.lists(st.sampled_from(LRS), min_size=rows, max_size=rows))
    theta = torch.tensor([p[0] for p in pts], dtype=F64)
    grad = torch.tensor([p[1] for p in pts], dtype=F64)
    per_row = [iht.certify_point(theta[r], grad[r], lr=lrs[r], sparsity=s) for r in range(rows)]
    for lr in (torch.tensor(lrs, dtype=F64), torch.tensor(lrs, dtype=F64).reshape(rows, 1)):
        figures = stability_figures(theta, grad, lr=lr, sparsity=s)
        for field in FIELDS:
            assert figures[field].shape == (rows,), field
            assert [float(v) for v in figures[field]] == [
                float(getattr(c, field)) for c in per_row
            ], field
    # A scalar step applies to every row.
    same = stability_figures(theta, grad, lr=lrs[0], sparsity=s)
    for r in range(rows):
        _assert_matches(
            iht.certify_point(theta[r], grad[r], lr=lrs[0], sparsity=s),
            {f: same[f][r].item() for f in FIELDS},
        )


# --------------------------------------------------------------------------- built points


def test_tie_at_the_boundary_is_not_stable() -> None:
    # Candidate theta - gamma grad = [2, 2, 0]: H_1 is set-valued. The tie rule picks
    # index 0, so the residual is 0, yet the point is not HT-stable.
    cert = iht.certify_point(
        torch.tensor([2.0, 0.0, 0.0]), torch.tensor([0.0, -1.0, 0.0]), lr=2.0, sparsity=1
    )
    assert cert.tie is True
    assert cert.residual == 0.0
    assert cert.off_support_ratio == 1.0
    assert cert.stable is False


def test_tie_alone_breaks_stability() -> None:
    # Ratio below 1 and on-support gradient within tolerance, but the on-support entry moved
    # down to meet the off-support one: candidate = [2 - 2^-10, 2 - 2^-10].
    eps = 2.0**-11
    cert = iht.certify_point(
        torch.tensor([2.0, 0.0], dtype=F64),
        torch.tensor([eps, -(1 - eps)], dtype=F64),
        lr=2.0,
        sparsity=1,
    )
    assert cert.tie is True
    assert cert.off_support_ratio == 1 - eps < 1
    assert cert.max_grad_on_support == eps <= cert.grad_tol
    assert cert.stable is False


def test_large_off_support_gradient_is_not_stable() -> None:
    theta = torch.tensor([3.0, 0.0, -1.0, 0.0], dtype=F64)
    grad = torch.tensor([0.0, 0.5, 0.0, -4.0], dtype=F64)
    cert = iht.certify_point(theta, grad, lr=0.5, sparsity=2)
    assert cert.nonzeros == 2
    assert cert.max_grad_on_support == 0.0
    assert cert.max_grad_off_support == 4.0
    assert cert.off_support_ratio == 2.0  # 0.5 * 4 / min(3, 1)
    # theta - gamma grad = [3, -0.25, -1, 2]; H_2 keeps [3, 0, 0, 2].
    assert cert.residual == pytest.approx(math.sqrt(5.0), rel=1e-15)
    assert cert.tie is False
    assert cert.stable is False


def test_small_support_needs_a_zero_gradient() -> None:
    theta = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    ok = iht.certify_point(theta, torch.zeros(3, dtype=F64), lr=1.0, sparsity=2)
    assert ok.stable is True and ok.residual == 0.0 and ok.nonzeros == 1
    # Ratio 0.01 < 1, but a free slot lets the off-support entry in.
    bad = iht.certify_point(theta, torch.tensor([0.0, 0.01, 0.0], dtype=F64), lr=1.0, sparsity=2)
    assert bad.off_support_ratio == pytest.approx(0.01)
    assert bad.residual == pytest.approx(0.01)
    assert bad.stable is False


def test_point_with_more_than_s_nonzeros_is_not_stable() -> None:
    # Not s-sparse, so not a fixed point of H_s whatever the gradient.
    cert = iht.certify_point(
        torch.tensor([1.0, 2.0, 3.0], dtype=F64), torch.zeros(3, dtype=F64), lr=1.0, sparsity=2
    )
    assert cert.nonzeros == 3
    assert cert.residual == 1.0
    assert cert.stable is False


def test_empty_support_with_budget_is_not_stable_unless_gradient_is_zero() -> None:
    zero = torch.zeros(4, dtype=F64)
    assert iht.certify_point(zero, zero, lr=1.0, sparsity=2).stable is True
    cert = iht.certify_point(
        zero, torch.tensor([0.0, 0.1, 0.0, 0.0], dtype=F64), lr=1.0, sparsity=2
    )
    assert cert.off_support_ratio == math.inf
    assert cert.stable is False


def test_zero_budget_zero_point_is_stable() -> None:
    # H_0 is the constant 0: theta = 0 is its fixed point for any gradient.
    zero = torch.zeros(3, dtype=F64)
    cert = iht.certify_point(zero, torch.tensor([5.0, -1.0, 0.0], dtype=F64), lr=1.0, sparsity=0)
    assert cert.off_support_ratio == math.inf
    assert cert.residual == 0.0
    assert cert.stable is True
    nonzero = iht.certify_point(torch.tensor([0.0, 1.0, 0.0], dtype=F64), zero, lr=1.0, sparsity=0)
    assert nonzero.stable is False


def test_dense_point_is_stable_iff_gradient_is_zero() -> None:
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    assert iht.certify_point(theta, torch.full((3,), 1e-4, dtype=F64), lr=1.0, sparsity=None).stable
    cert = iht.certify_point(theta, torch.tensor([0.0, 0.1, 0.0], dtype=F64), lr=1.0, sparsity=None)
    assert cert.sparsity == 3
    assert cert.max_grad_on_support == pytest.approx(0.1)
    assert cert.residual == pytest.approx(0.1)
    assert cert.stable is False


def test_grad_tol_decides_what_counts_as_zero() -> None:
    theta = torch.tensor([2.0, 0.0], dtype=F64)
    grad = torch.tensor([1e-3, 1e-3], dtype=F64)
    assert iht.certify_point(theta, grad, lr=1.0, sparsity=1).stable is True  # |g| <= tol
    assert iht.certify_point(theta, grad, lr=1.0, sparsity=1, grad_tol=1e-4).stable is False


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        iht.certify_point(torch.zeros(2, 2), torch.zeros(2, 2), lr=1.0, sparsity=1)
    with pytest.raises(ValueError, match=r"\(3,\) and \(4,\)"):
        iht.certify_point(torch.zeros(3), torch.zeros(4), lr=1.0, sparsity=1)
    with pytest.raises(ValueError, match="got 4"):
        iht.certify_point(torch.zeros(3), torch.zeros(3), lr=1.0, sparsity=4)
    with pytest.raises(TypeError, match=r"1\.5"):
        iht.certify_point(torch.zeros(3), torch.zeros(3), lr=1.0, sparsity=1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- epsilon


def test_epsilon_is_loss_minus_dense_loss() -> None:
    theta = torch.tensor([1.0, 0.0], dtype=F64)
    grad = torch.zeros(2, dtype=F64)
    cert = iht.certify_point(
        theta, grad, lr=1.0, sparsity=1, loss=0.30, dense_loss=0.05, epsilon_tol=0.3
    )
    assert cert.loss == 0.30 and cert.dense_loss == 0.05
    assert cert.epsilon == pytest.approx(0.25)
    assert cert.epsilon_optimal is True
    tight = iht.certify_point(
        theta, grad, lr=1.0, sparsity=1, loss=0.30, dense_loss=0.05, epsilon_tol=0.2
    )
    assert tight.epsilon_optimal is False
    no_tol = iht.certify_point(theta, grad, lr=1.0, sparsity=1, loss=0.30, dense_loss=0.05)
    assert no_tol.epsilon == pytest.approx(0.25) and no_tol.epsilon_optimal is None
    no_dense = iht.certify_point(theta, grad, lr=1.0, sparsity=1, loss=0.30, epsilon_tol=0.2)
    assert no_dense.epsilon is None and no_dense.epsilon_optimal is None


# --------------------------------------------------------------------------- converged IHT


def _noisy_planted(seed: int) -> reference.Planted:
    """The planted problem with measurement noise: the minimiser is not exactly sparse, so the
    off-support gradient at the IHT fixed point is nonzero and the ratio is a real test."""
    clean = reference.planted_least_squares(seed=seed, size=40, sparsity=5, m=120)
    noise = 0.05 * torch.randn(clean.b.shape, generator=_gen(seed + 50), dtype=F64)
    return reference.Planted(A=clean.A, b=clean.b + noise, theta_true=clean.theta_true, sparsity=5)


def _run_iht(problem: reference.Planted, lr: float, steps: int) -> Tensor:
    theta = torch.zeros(problem.size, dtype=F64, requires_grad=True)
    opt = iht.IHT([theta], lr=lr, sparsity=problem.sparsity)
    for _ in range(steps):
        theta.grad = problem.grad(theta.detach())
        opt.step()
    return theta.detach()


def _lr(problem: reference.Planted) -> float:
    return iht.estimate_l2s_fn(
        problem.grad,
        lambda n, g: torch.randn(n, problem.size, generator=g, dtype=F64),
        sparsity=problem.sparsity,
        size=problem.size,
        n_samples=200,
        generator=_gen(1),
    ).lr


@pytest.mark.parametrize("noisy", [False, True], ids=["exact", "noisy"])
def test_converged_iht_point_is_stable(noisy: bool) -> None:
    problem = _noisy_planted(0) if noisy else reference.planted_least_squares(seed=0)
    lr = _lr(problem)
    theta = _run_iht(problem, lr, 400)
    grad = problem.grad(theta)
    cert = iht.certify_point(theta, grad, lr=lr, sparsity=5, grad_tol=1e-9)
    assert cert.stable is True
    assert cert.nonzeros == 5
    assert cert.tie is False
    assert cert.residual < 1e-12
    assert cert.max_grad_on_support < 1e-12
    support = theta != 0
    expected_ratio = lr * float(grad[~support].abs().max()) / float(theta[support].abs().min())
    assert cert.off_support_ratio == pytest.approx(expected_ratio, rel=1e-12)
    if noisy:
        # Noise leaves a real off-support gradient, still well inside the stable region.
        assert 1e-4 < cert.off_support_ratio < 0.5
        assert torch.equal(support, problem.theta_true != 0)
    else:
        assert cert.off_support_ratio < 1e-10


def test_certify_model_matches_certify_point_with_epsilon() -> None:
    problem = _noisy_planted(1)
    lr = _lr(problem)
    theta = _run_iht(problem, lr, 400)
    model = nn.Linear(40, 1, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(theta.reshape(1, 40))
    A, b = problem.A, problem.b

    def loss_fn(m: nn.Module) -> Tensor:
        r = m(A).squeeze(1) - b
        return 0.5 * (r * r).sum() / A.shape[0]

    # The dense reference: least squares over all 40 coordinates.
    dense = torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)
    dense_loss = float(problem.loss(dense))
    sparse_loss = float(problem.loss(theta))
    cert = iht.certify(
        model, loss_fn, lr=lr, sparsity=5, grad_tol=1e-9, dense_loss=dense_loss, epsilon_tol=0.01
    )
    direct = iht.certify_point(theta, problem.grad(theta), lr=lr, sparsity=5, grad_tol=1e-9)
    assert cert.stable is True and direct.stable is True
    assert cert.nonzeros == 5
    assert cert.off_support_ratio == pytest.approx(direct.off_support_ratio, rel=1e-9)
    assert cert.residual < 1e-12
    assert cert.loss == pytest.approx(sparse_loss, rel=1e-12)
    assert cert.dense_loss == dense_loss
    # The sparse fit cannot beat the dense one; with 5 true nonzeros it is close.
    assert cert.epsilon == pytest.approx(sparse_loss - dense_loss, rel=1e-9)
    assert 0 < cert.epsilon < 0.01
    assert cert.epsilon_optimal is True
    # The dense least-squares solution is a stable dense point.
    dense_model = nn.Linear(40, 1, bias=False).to(F64)
    with torch.no_grad():
        dense_model.weight.copy_(dense.reshape(1, 40))
    dense_cert = iht.certify(dense_model, loss_fn, lr=lr, sparsity=None, grad_tol=1e-9)
    assert dense_cert.stable is True and dense_cert.nonzeros == 40
    # And it is not an s-sparse fixed point.
    assert iht.certify(dense_model, loss_fn, lr=lr, sparsity=5).stable is False


# -- certificates that cannot be fooled -----------------------------------------------------
def _dead_mlp() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """The newcomer's 10-16-3 MLP whose global budget went to the first layer: every weight
    of the last layer is 0 (and here every hidden unit is off), so the network outputs its
    last bias whatever the input, and IHT has nowhere to go: a fixed point of its map."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)).to(torch.float64)
    X = torch.randn(50, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(50) % 3
    with torch.no_grad():
        model[2].weight.zero_()
        model[0].bias.fill_(-100.0)  # dead ReLUs: no gradient reaches either layer's weights
        model[0].weight.mul_((model[0].weight.abs() > 0.25).to(torch.float64))
    s = sum(int(p.count_nonzero()) for p in model.parameters()) + 3
    opt = iht.IHT(model.parameters(), lr=0.5, sparsity=s)
    for _ in range(400):  # the last bias to its optimum
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model, X, y


def test_a_dead_network_is_never_certified_stable() -> None:
    model, X, y = _dead_mlp()
    assert int(model[2].weight.count_nonzero()) == 0

    def loss_fn(m: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(m(X), y)

    s = sum(int(p.count_nonzero()) for p in model.parameters())
    cert = iht.certify(model, loss_fn, lr=0.5, sparsity=s, inputs=X)
    assert not cert.stable
    assert any("layer 2 (Linear) has no nonzero weight" in r for r in cert.degenerate)
    assert any("does not depend on the input" in r for r in cert.degenerate)
    assert cert.tensor_nonzeros["2.weight"] == 0 and cert.tensor_nonzeros["0.weight"] > 0
    # The figures alone pass: the point is a fixed point of the IHT map.
    assert cert.off_support_ratio < 1 and not cert.tie and cert.max_grad_on_support < 1e-3
    reasons = instability_reasons(dataclasses.asdict(cert))
    assert reasons[0].startswith("layer 2 (Linear) has no nonzero weight")


def test_a_constant_output_is_caught_without_a_sequential() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) * 0.0 + self.b(x * 0.0)

    model = Branchy()
    X = torch.randn(20, 4)
    assert degeneracy(model) == ()  # no Sequential to read layers from
    assert "does not depend on the input" in degeneracy(model, X)[0]


def test_certify_evaluates_in_eval_mode_and_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    X, y = torch.randn(30, 4), torch.arange(30) % 3
    before = copy.deepcopy(model.state_dict())

    def loss_fn(m: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(m(X), y)

    first = iht.certify(model, loss_fn, lr=0.1, sparsity=40)
    second = iht.certify(model, loss_fn, lr=0.1, sparsity=40)
    assert first == second  # dropout off, batch norm on its running statistics: reproducible
    assert model.training and model[1].training and model[2].training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched


def test_certify_refuses_a_step_that_is_not_positive() -> None:
    model = nn.Linear(3, 2)
    X, y = torch.randn(5, 3), torch.arange(5) % 2
    for lr in (0.0, -1.0, float("nan")):
        with pytest.raises(iht.errors.InvalidValueError, match="lr must be a positive"):
            iht.certify(model, lambda m: nn.functional.cross_entropy(m(X), y), lr=lr, sparsity=3)


def test_constant_output_loss_is_the_entropy_of_the_labels() -> None:
    assert constant_output_loss(torch.arange(1000) % 10) == pytest.approx(math.log(10))
    assert constant_output_loss(torch.tensor([0, 0, 0, 1])) == pytest.approx(
        -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    )
    # The best constant logits (log-frequencies) reach it exactly.
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    logits = torch.log(torch.bincount(y).double() / len(y)).expand(len(y), 3)
    assert float(nn.functional.cross_entropy(logits, y)) == pytest.approx(constant_output_loss(y))
    with pytest.raises(iht.IhtError, match="class indices"):
        constant_output_loss(torch.tensor([0.5]))


def test_a_collapsed_network_at_chance_is_never_certified_stable() -> None:
    # A fixed point of the IHT map that has learnt nothing: the output depends on the input
    # only through a tiny weight, the loss is the entropy of the labels. HT-stability's
    # figures pass; the comparison with the best constant output does not.
    torch.manual_seed(0)
    X = torch.randn(200, 5, dtype=torch.float64)
    y = torch.arange(200) % 4
    model = nn.Sequential(nn.Linear(5, 4)).to(torch.float64)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 0] = 1e-6  # the output is not constant: the input check passes
        model[0].bias.zero_()

    def loss_fn(m: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(m(X), y)

    plain = iht.certify(model, loss_fn, lr=0.1, sparsity=5, inputs=X, grad_tol=1.0)
    assert plain.stable and plain.degenerate == ()  # what a chance-level run used to get
    cert = iht.certify(
        model,
        loss_fn,
        lr=0.1,
        sparsity=5,
        inputs=X,
        grad_tol=1.0,
        constant_loss=constant_output_loss(y),
    )
    assert not cert.stable
    assert "no better than" in cert.degenerate[0] and "ignores its input" in cert.degenerate[0]
