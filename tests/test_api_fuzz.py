"""The public API under random and degenerate input: correct results or a documented error.

Documented errors are TypeError / ValueError (bad arguments) and iht.NonFiniteError /
iht.EstimateError; anything else (IndexError, RuntimeError from deep inside torch, ...) is a bug.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import iht

DOCUMENTED = (TypeError, ValueError, iht.NonFiniteError, iht.EstimateError)
DTYPES = st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64])
SPECIAL = st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, math.inf, -math.inf, math.nan])
BUDGETS = st.one_of(
    st.integers(-3, 40), st.floats(-2, 40), st.booleans(), st.none(), st.just("5"), st.just(3.0)
)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=3)))
    dtype = draw(DTYPES)
    n = math.prod(shape)
    values = draw(st.lists(st.one_of(st.floats(-10, 10), SPECIAL), min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)


@settings(max_examples=150)
@given(x=tensors(), s=BUDGETS)
def test_threshold_operators_never_crash(x: torch.Tensor, s: object) -> None:
    for op in (iht.hard_threshold, iht.threshold_mask, iht.boundary_tie):
        try:
            out = op(x, s)  # type: ignore[arg-type]
        except DOCUMENTED:
            continue
        if op is iht.hard_threshold:
            assert out.shape == x.shape and out.dtype == x.dtype
            if x.numel() > 0 and isinstance(s, int) and not isinstance(s, bool):
                nonzeros = int((out != 0).sum(dim=-1).max())
                assert nonzeros <= s or s >= x.shape[-1]


@settings(max_examples=60)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    s=BUDGETS,
    lr=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3), st.none()),
    grad_value=st.one_of(st.floats(-5, 5), SPECIAL),
)
def test_optimizer_never_crashes(
    sizes: list[int], s: object, lr: object, grad_value: float
) -> None:
    params = [torch.nn.Parameter(torch.randn(n, dtype=torch.float64)) for n in sizes]
    try:
        opt = iht.IHT(params, lr=lr, sparsity=s)  # type: ignore[arg-type]
    except DOCUMENTED:
        return
    for p in params:
        p.grad = torch.full_like(p, grad_value)
    before = [p.detach().clone() for p in params]
    try:
        opt.step()
    except DOCUMENTED:
        for p, b in zip(params, before, strict=True):  # a refused step changes nothing
            assert torch.equal(p, b)
        return
    if isinstance(s, int) and not isinstance(s, bool):
        assert sum(int((p != 0).sum()) for p in params) <= s


@settings(max_examples=60)
@given(sizes=st.lists(st.integers(0, 5), min_size=0, max_size=3), s=BUDGETS)
def test_sparse_init_never_crashes(sizes: list[int], s: object) -> None:
    params = [torch.ones(n) for n in sizes]
    try:
        mask = iht.sparse_init_(params, s, generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    except DOCUMENTED:
        return
    assert int(mask.sum()) == s == sum(int(p.sum()) for p in params)


@settings(max_examples=60)
@given(
    n=st.integers(1, 8),
    s=BUDGETS,
    lr=st.floats(1e-3, 10),
    theta_special=SPECIAL,
    grad_special=SPECIAL,
)
def test_certify_point_never_crashes(
    n: int, s: object, lr: float, theta_special: float, grad_special: float
) -> None:
    theta = torch.randn(n, dtype=torch.float64)
    grad = torch.randn(n, dtype=torch.float64)
    theta[0], grad[-1] = theta_special, grad_special
    try:
        cert = iht.certify_point(theta, grad, lr=lr, sparsity=s)  # type: ignore[arg-type]
    except DOCUMENTED:
        return
    assert cert.nonzeros == int((theta != 0).sum())
    if cert.stable:
        assert not cert.tie and cert.nonzeros <= cert.sparsity


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", None, True])
def test_estimate_l2s_bad_arguments_are_documented_errors(bad: object) -> None:
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))

    def loss_fn(m: torch.nn.Module) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(x), y)

    with pytest.raises(DOCUMENTED):
        iht.estimate_l2s(model, loss_fn, sparsity=3, n_samples=bad)  # type: ignore[arg-type]
    if bad is not None:
        with pytest.raises(DOCUMENTED):
            iht.estimate_l2s(model, loss_fn, sparsity=bad, n_samples=5)  # type: ignore[arg-type]
