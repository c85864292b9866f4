"""Compiled fast path for the IRIS study: many IHT runs of a 4 -> 3 linear-softmax model.

Each run trains start to finish inside one ``numba.prange`` iteration, so a finished run
costs nothing and no Python runs per step. Per run the training features are stored
feature-major, (4, N) contiguous over points, so the loop over points vectorises (SIMD
running sums for the 12 weight and 3 bias gradients and the loss).

libm's exp and log block that vectorisation (llvmlite has no vector math library), so two
branch-free polynomial versions are used on the only ranges that occur: exp(x) for x <= 0
(after subtracting the row maximum) and log(t) for t in [1, 3] (a sum of three softmax
numerators, the largest equal to 1). They agree with libm to a few ulp (tests/test_fastpath.py).

This is a fast path of :class:`iht.problems.LinearSoftmax` + :func:`iht.engine.run_many`, with
the same semantics (stop when the loss at the current point is <= tol, ``steps`` = updates
applied, H_s ties to the smaller index); tests check that the two agree in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic
from numpy.typing import NDArray

__all__ = [
    "N_CLASSES",
    "N_FEATURES",
    "exp_nonpositive",
    "log_1_to_3",
    "loss_and_grad_rows",
    "train_runs",
]

N_FEATURES, N_CLASSES = 4, 3
P = N_CLASSES * (N_FEATURES + 1)

# Reassociation (for vectorised sums) and contraction, but no "no NaN / no inf" assumptions:
# a diverging run must still show up as non-finite.
_FAST = {"reassoc", "contract", "nsz", "arcp"}


@intrinsic
def _i64_as_f64(typingctx, i):  # type: ignore[no-untyped-def]
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def _i32_as_f32(typingctx, i):  # type: ignore[no-untyped-def]
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453
_LN2_HI = 0.693147180369123816490  # Cody-Waite split of ln 2
_LN2_LO = 1.90821492927058770002e-10


@njit(inline="always", fastmath=_FAST)
def _exp_neg64(x):  # type: ignore[no-untyped-def]
    """exp(x), x <= 0: 2^n e^r with n = round(x / ln 2), |r| <= ln2/2, Taylor degree 12."""
    x = x if x > -708.0 else -708.0
    n = np.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _i64_as_f64((np.int64(n) + 1023) << 52)  # type: ignore[call-arg]


@njit(inline="always", fastmath=_FAST)
def _log13_64(s):  # type: ignore[no-untyped-def]
    """log(s), s in [1, 3]: halve if s > 1.5, then 2 atanh((t - 1) / (t + 1)), |u| <= 0.2."""
    big = s > 1.5
    t = s * 0.5 if big else s
    u = (t - 1.0) / (t + 1.0)
    u2 = u * u
    p = 1.0 / 21.0
    p = p * u2 + 1.0 / 19.0
    p = p * u2 + 1.0 / 17.0
    p = p * u2 + 1.0 / 15.0
    p = p * u2 + 1.0 / 13.0
    p = p * u2 + 1.0 / 11.0
    p = p * u2 + 1.0 / 9.0
    p = p * u2 + 1.0 / 7.0
    p = p * u2 + 1.0 / 5.0
    p = p * u2 + 1.0 / 3.0
    p = p * u2 + 1.0
    return (_LN2 if big else 0.0) + 2.0 * u * p


_f = np.float32
_LOG2E_F, _LN2_F = _f(_LOG2E), _f(_LN2)
_LN2_HI_F, _LN2_LO_F = _f(0.693359375), _f(-2.12194440e-4)
_E0, _E1, _E2, _E3, _E4, _E5, _E6 = (
    _f(c) for c in (1 / 5040, 1 / 720, 1 / 120, 1 / 24, 1 / 6, 0.5, 1.0)
)
_L0, _L1, _L2, _L3, _L4, _L5 = (_f(c) for c in (1 / 11, 1 / 9, 1 / 7, 1 / 5, 1 / 3, 1.0))
_F0, _F05, _F1, _F15, _F2, _FM87 = _f(0.0), _f(0.5), _f(1.0), _f(1.5), _f(2.0), _f(-87.0)


@njit(inline="always", fastmath=_FAST)
def _exp_neg32(x):  # type: ignore[no-untyped-def]
    """float32 exp(x), x <= 0: Taylor degree 7 on |r| <= ln2/2."""
    x = x if x > _FM87 else _FM87
    n = np.floor(x * _LOG2E_F + _F05)
    r = (x - n * _LN2_HI_F) - n * _LN2_LO_F
    p = _E0 * r + _E1
    p = p * r + _E2
    p = p * r + _E3
    p = p * r + _E4
    p = p * r + _E5
    p = p * r + _E6
    p = p * r + _E6
    return p * _i32_as_f32((np.int32(n) + np.int32(127)) << np.int32(23))  # type: ignore[call-arg]


@njit(inline="always", fastmath=_FAST)
def _log13_32(s):  # type: ignore[no-untyped-def]
    big = s > _F15
    t = s * _F05 if big else s
    u = (t - _F1) / (t + _F1)
    u2 = u * u
    p = _L0 * u2 + _L1
    p = p * u2 + _L2
    p = p * u2 + _L3
    p = p * u2 + _L4
    p = p * u2 + _L5
    return (_LN2_F if big else _F0) + _F2 * u * p


def _make_kernels(dtype: type[np.floating]) -> tuple:  # type: ignore[type-arg]
    exp_, log_ = (_exp_neg64, _log13_64) if dtype is np.float64 else (_exp_neg32, _log13_32)
    T = dtype
    ZERO, ONE = T(0.0), T(1.0)

    @njit(parallel=True, fastmath=_FAST)
    def vec_exp(x, out):  # type: ignore[no-untyped-def]
        for i in prange(x.shape[0]):
            out[i] = exp_(x[i])

    @njit(parallel=True, fastmath=_FAST)
    def vec_log(x, out):  # type: ignore[no-untyped-def]
        for i in prange(x.shape[0]):
            out[i] = log_(x[i])

    @njit(inline="always", fastmath=_FAST)
    def loss_grad(x0, x1, x2, x3, y, th, g):  # type: ignore[no-untyped-def]
        """Mean cross-entropy at th over the run's points; its gradient into g."""
        n_points = x0.shape[0]
        w00, w01, w02, w03 = th[0], th[1], th[2], th[3]
        w10, w11, w12, w13 = th[4], th[5], th[6], th[7]
        w20, w21, w22, w23 = th[8], th[9], th[10], th[11]
        b0, b1, b2 = th[12], th[13], th[14]
        g00 = g01 = g02 = g03 = ZERO
        g10 = g11 = g12 = g13 = ZERO
        g20 = g21 = g22 = g23 = ZERO
        gb0 = gb1 = gb2 = ZERO
        loss = ZERO
        for i in range(n_points):
            a0, a1, a2, a3 = x0[i], x1[i], x2[i], x3[i]
            yi = y[i]
            z0 = w00 * a0 + w01 * a1 + w02 * a2 + w03 * a3 + b0
            z1 = w10 * a0 + w11 * a1 + w12 * a2 + w13 * a3 + b1
            z2 = w20 * a0 + w21 * a1 + w22 * a2 + w23 * a3 + b2
            m = z0 if z0 > z1 else z1
            m = m if m > z2 else z2
            e0 = exp_(z0 - m)
            e1 = exp_(z1 - m)
            e2 = exp_(z2 - m)
            total = e0 + e1 + e2
            inv = ONE / total
            zy = z0 if yi == 0 else (z1 if yi == 1 else z2)
            loss += (m - zy) + log_(total)
            d0 = e0 * inv - (ONE if yi == 0 else ZERO)
            d1 = e1 * inv - (ONE if yi == 1 else ZERO)
            d2 = e2 * inv - (ONE if yi == 2 else ZERO)
            g00 += d0 * a0
            g01 += d0 * a1
            g02 += d0 * a2
            g03 += d0 * a3
            g10 += d1 * a0
            g11 += d1 * a1
            g12 += d1 * a2
            g13 += d1 * a3
            g20 += d2 * a0
            g21 += d2 * a1
            g22 += d2 * a2
            g23 += d2 * a3
            gb0 += d0
            gb1 += d1
            gb2 += d2
        inv_n = ONE / T(n_points)
        g[0], g[1], g[2], g[3] = g00 * inv_n, g01 * inv_n, g02 * inv_n, g03 * inv_n
        g[4], g[5], g[6], g[7] = g10 * inv_n, g11 * inv_n, g12 * inv_n, g13 * inv_n
        g[8], g[9], g[10], g[11] = g20 * inv_n, g21 * inv_n, g22 * inv_n, g23 * inv_n
        g[12], g[13], g[14] = gb0 * inv_n, gb1 * inv_n, gb2 * inv_n
        return loss * inv_n

    @njit(inline="always", fastmath=_FAST)
    def step(th, g, lr, s, mag):  # type: ignore[no-untyped-def]
        """th <- H_s(th - lr g); ties go to the smaller index (rank by count of winners)."""
        size = th.shape[0]
        for k in range(size):
            th[k] = th[k] - lr * g[k]
        if s >= size:
            return
        for k in range(size):
            mag[k] = abs(th[k])
        for k in range(size):
            mk = mag[k]
            rank = 0
            for j in range(size):
                mj = mag[j]
                rank += (mj > mk) | ((mj == mk) & (j < k))
            if rank >= s:
                th[k] = ZERO

    @njit(parallel=True, fastmath=_FAST)
    def train(X, y, lr, theta, s, max_steps, tol, steps_out, loss_out):  # type: ignore[no-untyped-def]
        n_runs = X.shape[0]
        # One scratch row per run, allocated once: per-thread heap arrays would share
        # cache lines between threads.
        work = np.empty((n_runs, 32), dtype=theta.dtype)
        for r in prange(n_runs):
            x0, x1, x2, x3 = X[r, 0], X[r, 1], X[r, 2], X[r, 3]
            yr = y[r]
            th = theta[r]
            g = work[r, :15]
            mag = work[r, 16:31]
            lr_r = lr[r]
            n = 0
            loss = ZERO
            while True:
                loss = loss_grad(x0, x1, x2, x3, yr, th, g)
                if loss <= tol or n >= max_steps or not np.isfinite(loss):
                    break
                step(th, g, lr_r, s, mag)
                n += 1
            steps_out[r] = n
            loss_out[r] = loss

    @njit(parallel=True, fastmath=_FAST)
    def rows_loss_grad(X, y, run_of_row, theta, loss_out, grad_out):  # type: ignore[no-untyped-def]
        for i in prange(theta.shape[0]):
            r = run_of_row[i]
            loss_out[i] = loss_grad(X[r, 0], X[r, 1], X[r, 2], X[r, 3], y[r], theta[i], grad_out[i])

    return train, rows_loss_grad, vec_exp, vec_log


_KERNELS: dict[type, tuple] = {}  # type: ignore[type-arg]


def _kernels(dtype: np.dtype) -> tuple:  # type: ignore[type-arg]
    key = np.dtype(dtype).type
    if key not in (np.float32, np.float64):
        raise ValueError(f"fast path dtype must be float32 or float64, got {dtype}")
    if key not in _KERNELS:
        _KERNELS[key] = _make_kernels(key)
    return _KERNELS[key]


def exp_nonpositive(x: NDArray[Any]) -> NDArray[Any]:
    """The kernel's exp on a 1-D array of values <= 0 (exposed for tests)."""
    out = np.empty_like(x)
    _kernels(x.dtype)[2](x, out)
    return out


def log_1_to_3(x: NDArray[Any]) -> NDArray[Any]:
    """The kernel's log on a 1-D array of values in [1, 3] (exposed for tests)."""
    out = np.empty_like(x)
    _kernels(x.dtype)[3](x, out)
    return out


def _check(X: NDArray[Any], y: NDArray[Any]) -> None:
    if X.ndim != 3 or X.shape[1] != N_FEATURES or not X.flags.c_contiguous:
        raise ValueError(f"X must be C-contiguous of shape (R, {N_FEATURES}, N), got {X.shape}")
    if y.shape != (X.shape[0], X.shape[2]):
        raise ValueError(f"y must have shape {(X.shape[0], X.shape[2])}, got {y.shape}")


def train_runs(
    X: NDArray[Any],
    y: NDArray[Any],
    lr: NDArray[Any],
    theta0: NDArray[Any],
    *,
    sparsity: int | None,
    max_steps: int,
    tol: float,
) -> tuple[NDArray[Any], NDArray[np.int64], NDArray[Any]]:
    """Train R runs to the stopping rule: H_s(theta - lr grad f) (GD when sparsity is None).

    Args:
        X: each run's standardised training features, (R, 4, N), C-contiguous, float32/64.
        y: each run's training labels (R, N) in 0..2.
        lr: per-run learning rates (R,).
        theta0: initial parameters (R, 15): W (3x4 row-major) then b.
        sparsity: the budget s, or None for dense GD.
        max_steps, tol: the stopping rule.

    Returns:
        (theta, steps, loss): final parameters, updates applied and the loss at the final point.
    """
    _check(X, y)
    dtype = X.dtype
    train = _kernels(dtype)[0]
    theta = np.array(theta0, dtype=dtype, order="C", copy=True)
    steps = np.zeros(X.shape[0], np.int64)
    loss = np.zeros(X.shape[0], dtype)
    s = P if sparsity is None else int(sparsity)
    train(
        X,
        np.ascontiguousarray(y, np.int32),
        np.asarray(lr, dtype),
        theta,
        s,
        int(max_steps),
        dtype.type(tol),
        steps,
        loss,
    )
    return theta, steps, loss


def loss_and_grad_rows(
    X: NDArray[Any],
    y: NDArray[Any],
    run_of_row: NDArray[Any],
    theta: NDArray[Any],
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Loss and gradient of many parameter vectors, row i on the data of run ``run_of_row[i]``."""
    _check(X, y)
    theta = np.ascontiguousarray(theta, dtype=X.dtype)
    loss = np.empty(theta.shape[0], X.dtype)
    grad = np.empty_like(theta)
    _kernels(X.dtype)[1](
        X,
        np.ascontiguousarray(y, np.int32),
        np.ascontiguousarray(run_of_row, np.int64),
        theta,
        loss,
        grad,
    )
    return loss, grad
