"""The compiled IRIS fast path against its slow references."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from iht._kernels import iris as fastpath
from iht.study.chunks import plan_chunks, run_chunk
from iht.study.config import StudyConfig
from iht.threshold import hard_threshold


def chunk_rows(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """A chunk's runs as dicts (the stored rows)."""
    return [row.to_dict() for row in run_chunk(*args, **kwargs)]


FLOATS64 = st.floats(min_value=-700.0, max_value=0.0, allow_nan=False)


@given(st.lists(FLOATS64, min_size=1, max_size=50))
def test_exp_matches_libm_float64(values: list[float]) -> None:
    x = np.array(values, dtype=np.float64)
    np.testing.assert_allclose(fastpath.exp_nonpositive(x), np.exp(x), rtol=5e-14, atol=0)


@given(st.lists(st.floats(min_value=-87.0, max_value=0.0), min_size=1, max_size=50))
def test_exp_matches_libm_float32(values: list[float]) -> None:
    x = np.array(values, dtype=np.float32)
    np.testing.assert_allclose(fastpath.exp_nonpositive(x), np.exp(x.astype(np.float64)), rtol=1e-6)


@given(st.lists(st.floats(min_value=1.0, max_value=3.0), min_size=1, max_size=50))
def test_log_matches_libm(values: list[float]) -> None:
    x64 = np.array(values, dtype=np.float64)
    np.testing.assert_allclose(fastpath.log_1_to_3(x64), np.log(x64), rtol=0, atol=1e-15)
    x32 = x64.astype(np.float32)
    np.testing.assert_allclose(fastpath.log_1_to_3(x32), np.log(x32.astype(np.float64)), atol=3e-7)


def _problem(n_runs: int, n_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.ascontiguousarray(rng.normal(size=(n_runs, 4, n_points)))
    y = rng.integers(0, 3, size=(n_runs, n_points))
    return X, y


def _reference_loss_grad(
    X: np.ndarray, y: np.ndarray, theta: np.ndarray
) -> tuple[float, np.ndarray]:
    """Autograd through nn.functional.cross_entropy, float64."""
    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    logits = torch.tensor(X.T) @ t[:12].reshape(3, 4).T + t[12:]
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    loss.backward()
    assert t.grad is not None
    return float(loss.detach()), t.grad.numpy()


def test_loss_and_grad_rows_match_autograd() -> None:
    X, y = _problem(3, 40, 0)
    rng = np.random.default_rng(1)
    theta = rng.normal(size=(7, 15))
    run_of_row = rng.integers(0, 3, size=7)
    loss, grad = fastpath.loss_and_grad_rows(X, y, run_of_row, theta)
    for i in range(7):
        ref_loss, ref_grad = _reference_loss_grad(X[run_of_row[i]], y[run_of_row[i]], theta[i])
        assert loss[i] == pytest.approx(ref_loss, abs=1e-13)
        np.testing.assert_allclose(grad[i], ref_grad, atol=1e-13)


@pytest.mark.parametrize("sparsity", [None, 1, 4, 9, 14])
def test_train_runs_matches_a_python_loop(sparsity: int | None) -> None:
    X, y = _problem(4, 30, 2)
    rng = np.random.default_rng(3)
    theta0 = rng.normal(size=(4, 15)) * 0.3
    lr = np.array([0.5, 1.0, 1.5, 2.0])
    theta, steps, loss = fastpath.train_runs(
        X, y, lr, theta0, sparsity=sparsity, max_steps=200, tol=0.6
    )
    for r in range(4):
        th = theta0[r].copy()
        n = 0
        while True:
            value, grad = _reference_loss_grad(X[r], y[r], th)
            if value <= 0.6 or n >= 200:
                break
            candidate = torch.tensor(th - lr[r] * grad)
            th = (candidate if sparsity is None else hard_threshold(candidate, sparsity)).numpy()
            n += 1
        assert steps[r] == n
        assert loss[r] == pytest.approx(value, abs=1e-12)
        np.testing.assert_allclose(theta[r], th, atol=1e-11)


def test_tie_rule_is_the_smaller_index() -> None:
    # zero data: the gradient is the softmax residual only through the bias; with
    # theta of equal magnitudes the step keeps the first s entries.
    X = np.zeros((1, 4, 3))
    y = np.array([[0, 1, 2]])
    theta0 = np.ones((1, 15))
    theta, steps, _ = fastpath.train_runs(
        X, y, np.array([1.0]), theta0, sparsity=5, max_steps=1, tol=0.0
    )
    assert steps[0] == 1
    np.testing.assert_array_equal(np.flatnonzero(theta[0]), [0, 1, 2, 3, 4])


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        fastpath.train_runs(
            np.zeros((2, 3, 5)),
            np.zeros((2, 5), int),
            np.ones(2),
            np.zeros((2, 15)),
            sparsity=2,
            max_steps=1,
            tol=0.0,
        )


@pytest.mark.parametrize("level", [0, 2, 8, 13])
def test_numba_engine_equals_torch_engine_on_a_study_chunk(level: int) -> None:
    """Every stored number of the two engines agrees in float64 (0 = the dense chunk)."""
    common = dict(
        runs=5, chunk_runs=5, max_steps=1500, n_monte=15, levels=(2, 8, 13), dtype="float64"
    )
    chunks = plan_chunks(StudyConfig(**common))
    chunk = next(
        c
        for c in chunks
        if (c.kind == "dense" and level == 0) or (c.sparsity == level and c.kind == "iht")
    )
    rows_numba = chunk_rows(StudyConfig(engine="numba", **common), chunk, {})
    rows_torch = chunk_rows(StudyConfig(engine="torch", **common), chunk, {})
    for a, b in zip(rows_numba, rows_torch, strict=True):
        assert a["steps"] == b["steps"] and a["support"] == b["support"]
        for key, value in a.items():
            if isinstance(value, float) and not np.isnan(value):
                assert value == pytest.approx(b[key], abs=1e-9), key
            elif isinstance(value, list) and value and isinstance(value[0], float):
                np.testing.assert_allclose(value, b[key], atol=1e-9, err_msg=key)
