"""The exact best s-sparse linear-softmax classifier, by solving every support.

Problem (1) of the paper, min f(theta) s.t. ||theta||_0 <= s, is combinatorial, but for the
linear-softmax model f restricted to a support S (theta_i = 0 off S) is convex. Its optimum
is therefore the smallest of the C(P, s) convex optima over the supports of size exactly s
(a smaller support is contained in one of size s, which can only do as well). For IRIS
(P = 15) that is 32,766 convex problems over s = 1..14: this module solves them all, batched.

Model and layout. Logits z_i = W x_i + b for d features and C classes; theta is W (C x d,
row-major) then b (C), the order of ``nn.Linear(d, C).parameters()``: P = C (d + 1).
f(theta) = (1/n) sum_i [logsumexp(z_i) - z_{i, y_i}].

Solver (:func:`solve_supports`). Damped Newton on a batch of supports at once, in float64:
the closed-form gradient and Hessian of multinomial logistic regression,

    grad = (1/n) sum_i (p_i - e_{y_i}) (x) a_i,
    H    = (1/n) sum_i (diag(p_i) - p_i p_i^T) (x) a_i a_i^T,     a_i = (x_i, 1),

restricted to S (an s x s system per support), the step (H_SS + lambda I) delta = -grad_S
with a tiny Levenberg-Marquardt lambda (H is singular along the softmax's gauge directions:
adding one constant to every class's bias, or to every class's weight on one feature,
changes no probability), an Armijo backtracking line search, and the stopping test
||grad_S||_2 <= ``gtol`` (1e-9). It is written in numpy, not torch: the arrays are many and
small (K x C x n with C = 3), and on a busy 2-core machine torch's thread pool made that
elementwise work 10-30x slower.

When is the minimum attained? Write the loss with margins m_ic(theta) = z_ic - z_{i y_i}
(c != y_i), linear in theta: f = (1/n) sum_i log(1 + sum_{c != y_i} exp(m_ic)). A direction
d in the support with m_ic(d) <= 0 for every pair (i, c) and < 0 for some is a separating
direction: f strictly decreases along it from any point, so **no minimiser exists**
(the multinomial version of Albert & Anderson, 1984). Otherwise the minimum is attained.
Let T be the set of pairs that some separating direction makes strictly negative (one
direction d* does so for all of T at once: the cone is closed under sums). Then

    inf f = min f_T,   f_T(theta) = (1/n) sum_i log(1 + sum_{c != y_i, (i, c) not in T} exp(m_ic)),

because f >= f_T everywhere and f(theta + t d*) -> f_T(theta) as t -> infinity; and f_T
attains its minimum (a separating direction of f_T plus a large multiple of d* would
separate a pair outside T). So:

- ``attained``: no separating direction; the value is f at the Newton point.
- ``separable``: T holds every pair (the support classifies the training set perfectly):
  inf f = 0, not attained.
- ``partly separable``: T is a proper non-empty subset; inf f = min f_T > 0 (or 0 when
  every point is in T for all its classes), not attained; f_T is minimised by the same
  Newton solver with the pairs of T left out.

Certificates, so the verdict never depends on an iteration cap (M: the margin rows of the
pairs, restricted to S):

- attained: a Stiemke certificate (:func:`_stiemke`). Exactly one holds: some d has
  M d <= 0, M d != 0 (a separating direction), or some lambda > 0 has M^T lambda = 0. At
  the Newton point M^T p = n grad_S ~ 0 with p > 0 the wrong-class probabilities; a small
  correction on the pairs with p >= tau, which keeps them positive, makes it exact.
- separable: theta itself has every margin < 0 (it classifies every point correctly).
- partly separable, T = T_hat: "T_hat inside T" by a direction that makes exactly the
  pairs of T_hat negative (built from the Newton steps, :func:`_separates`) or because
  T_hat is the union of the T of the support's subsets (a direction of a subset is one of
  the support); "T inside T_hat" by a Stiemke certificate of f_{T_hat} (:func:`_reduce`).
- what no certificate settles goes to a linear program (scipy HiGHS) that finds T
  exactly: maximise sum u_ic subject to M d + u <= 0, 0 <= u <= 1; at every optimum u = 1
  on T and 0 elsewhere. A support whose reduced problem still fails is reported with
  status ``unconverged`` (never silently). On IRIS about 1% of the supports need the LP.

:func:`oracle` solves the levels 1, 2, ... in turn, so that each support starts from its
best subset's solution and knows part of its T: most supports then need one short reduced
solve (about 6 s for all 32,766 IRIS supports of one split). The supports near each
level's optimum are then polished to the float64 floor, so that optimal values are
accurate to about 1e-15, well inside the 1e-9 used to compare them.

This module is the solver only (numpy, and scipy for the linear program). The oracle of a
stored study (``iht oracle DIR``: every support of the first K data splits, stored as
DIR/oracle.parquet and compared with the stored IHT runs) is :mod:`iht.study.oracle`; its
figure is drawn by :mod:`iht.report.oracle`.

Example::

    >>> import numpy as np
    >>> from iht.oracle import oracle
    >>> X = np.random.default_rng(0).normal(size=(40, 2)); y = (X[:, 0] + X[:, 1] > 0) * 1
    >>> rows = oracle(X, y, levels=[1, 2])                    # doctest: +SKIP
    >>> [(r["s"], r["value"], r["support"], r["status"]) for r in rows]  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import InvalidValueError

__all__ = [
    "ATTAINED",
    "PARTLY_SEPARABLE",
    "SEPARABLE",
    "UNCONVERGED",
    "SupportProblem",
    "SupportSolutions",
    "all_supports",
    "check_levels",
    "check_settings",
    "level_summary",
    "oracle",
    "solve_all_supports",
    "solve_levels",
    "solve_on",
    "solve_supports",
]

ATTAINED = "attained"
SEPARABLE = "separable"
PARTLY_SEPARABLE = "partly separable"
UNCONVERGED = "unconverged"

#: Newton steps of the second round (supports without a certificate after the first).
_ROUND2 = 8
#: Supports within this of a level's best value are polished to the float64 floor.
_NEAR = 1e-6


# ----------------------------------------------------------------------------------------
# The problem: layout, loss, gradient, Hessian (numpy float64, K supports of one size)
# ----------------------------------------------------------------------------------------
Array = NDArray[np.float64]
Mask = NDArray[np.bool_]
Index = NDArray[np.int64]


@dataclass(frozen=True)
class SupportProblem:
    """One training set of the linear-softmax model, in the arrays the solver needs.

    Parameter k of theta is the weight of class ``cls[k]`` on column ``col[k]`` of
    a_i = (x_i, 1) (column d is the bias): W[c, j] is k = c d + j, b[c] is k = C d + c.
    Logits and probabilities are stored class-major, (K, C, n), so that every operation
    over the classes runs over contiguous rows of n points.
    """

    at: Array  # (d + 1, n): a_i as columns
    y: Index  # (n,)
    onehot: Array  # (C, n)
    cls: Index  # (P,)
    col: Index  # (P,)
    ya: Array  # (P,): sum_i [y_i = cls_k] a_{i, col_k}
    pairs: Array  # (n (C - 1), P): margin rows m_ic, c != y_i
    pair_index: Index  # (n (C - 1), 2): (i, c) of each margin row

    @property
    def n(self) -> int:
        return int(self.at.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.onehot.shape[0])

    @property
    def size(self) -> int:
        return int(self.cls.shape[0])

    @classmethod
    def build(cls, X: Array, y: Index, n_classes: int | None) -> SupportProblem:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if X.ndim != 2 or y.shape != (X.shape[0],) or X.shape[0] == 0:
            raise InvalidValueError(
                f"X must be (n, d) and y (n,) with n >= 1, got X {X.shape} and y {y.shape}"
            )
        if not np.isfinite(X).all():
            raise InvalidValueError("X holds NaN or infinite values")
        if not np.issubdtype(y.dtype, np.integer):
            raise InvalidValueError(f"y must hold integer class labels, got dtype {y.dtype}")
        y = y.astype(np.int64)
        n_cls = int(y.max()) + 1 if n_classes is None else int(n_classes)
        if n_cls < 2 or y.min() < 0 or y.max() >= n_cls:
            raise InvalidValueError(
                f"labels must lie in 0..{n_cls - 1} with at least 2 classes, "
                f"got labels {int(y.min())}..{int(y.max())} and {n_cls} classes"
            )
        n, d = X.shape
        a = np.hstack([X, np.ones((n, 1))])
        classes = np.concatenate([np.repeat(np.arange(n_cls), d), np.arange(n_cls)])
        cols = np.concatenate([np.tile(np.arange(d), n_cls), np.full(n_cls, d)])
        onehot = (np.arange(n_cls)[:, None] == y[None, :]).astype(np.float64)
        # Margin rows: m_ic(theta) = z_ic - z_{i y_i}; parameter k enters z_ic when cls_k = c.
        pair_index = np.array(
            [(i, c) for i in range(n) for c in range(n_cls) if c != y[i]], dtype=np.int64
        ).reshape(-1, 2)
        pi, pc = pair_index[:, 0], pair_index[:, 1]
        pairs = a[pi][:, cols] * (
            (classes[None, :] == pc[:, None]).astype(np.float64)
            - (classes[None, :] == y[pi][:, None]).astype(np.float64)
        )
        return cls(
            at=np.ascontiguousarray(a.T),
            y=y,
            onehot=onehot,
            cls=classes,
            col=cols,
            ya=(onehot[classes] * a.T[cols]).sum(axis=1),
            pairs=pairs,
            pair_index=pair_index,
        )

    def logits(self, theta: Array, sup: Index) -> Array:
        """(K, C, n) logits of the parameter vectors theta (K, s) on the supports sup (K, s)."""
        k = theta.shape[0]
        v = np.zeros((k, self.n_classes, self.at.shape[0]))
        v[np.arange(k)[:, None], self.cls[sup], self.col[sup]] = theta
        return (v.reshape(k * self.n_classes, -1) @ self.at).reshape(k, self.n_classes, self.n)

    def _softmax(self, z: Array, active: Mask | None) -> tuple[Array, Array]:
        """Probabilities (K, C, n) and log-sum-exp (K, n); inactive classes get p = 0."""
        if active is not None:
            z = np.where(active, z, -np.inf)
        top = z.max(axis=1, keepdims=True)
        e = np.exp(z - top)
        total = e.sum(axis=1, keepdims=True)
        return e / total, (top + np.log(total))[:, 0, :]

    def loss(self, theta: Array, sup: Index, active: Mask | None) -> Array:
        """(K,) mean cross-entropy (without the inactive wrong classes, when given)."""
        z = self.logits(theta, sup)
        true = (z * self.onehot).sum(axis=1)  # before masking
        _, lse = self._softmax(z, active)
        return np.asarray((lse - true).mean(axis=1))

    def derivatives(
        self, theta: Array, sup: Index, active: Mask | None, *, hessian: bool
    ) -> tuple[Array, Array, Array, Array | None, Array]:
        """Loss (K,), p (K, C, n), gradient (K, s), Hessian (K, s, s) or None, and the
        worst margin max_{i, c != y_i} m_ic (K,) minus a rounding allowance."""
        k, n = theta.shape[0], self.n
        z = self.logits(theta, sup)
        true = (z * self.onehot).sum(axis=1)
        p, lse = self._softmax(z, active)
        loss = (lse - true).mean(axis=1)
        # grad_k = (1/n) sum_i (p_{i, cls_k} - [y_i = cls_k]) a_{i, col_k}: one GEMM for all k.
        g_all = ((p - self.onehot).reshape(k * self.n_classes, n) @ self.at.T) / n
        rows = np.arange(k)[:, None]
        grad = g_all.reshape(k, self.n_classes, -1)[rows, self.cls[sup], self.col[sup]]
        wrong = np.where(self.onehot > 0, -np.inf, z).max(axis=1)  # (K, n)
        worst = (wrong - true).max(axis=1) + 1e-9 * (1.0 + np.abs(z).max(axis=(1, 2)))
        if not hessian:
            return loss, p, grad, None, worst
        # With u_k[i] = p_{i, cls_k} a_{i, col_k}: H_kl = (1/n) sum_i a_{i col_k} a_{i col_l}
        # (p_{i cls_k} [cls_k = cls_l] - p_{i cls_k} p_{i cls_l}) = ([same] u_k.a_l - u_k.u_l)/n.
        feats = self.at[self.col[sup]]  # (K, s, n)
        u = p[rows, self.cls[sup], :] * feats
        same = self.cls[sup][:, :, None] == self.cls[sup][:, None, :]
        h = np.where(same, u @ feats.transpose(0, 2, 1), 0.0) - u @ u.transpose(0, 2, 1)
        return loss, p, grad, h / n, worst


# ----------------------------------------------------------------------------------------
# Batched damped Newton
# ----------------------------------------------------------------------------------------
@dataclass
class _NewtonResult:
    theta: Array  # (K, s) on the support
    loss: Array
    grad: Array  # (K, s)
    grad_norm: Array
    p: Array  # (K, C, n)
    iterations: Index
    separated: Mask  # every margin < 0 at theta (complete separation proved)


def _newton(
    problem: SupportProblem,
    sup: Index,
    active: Mask | None,
    theta0: Array,
    *,
    gtol: float,
    max_iter: int,
) -> _NewtonResult:
    """Minimise f on each support by damped Newton with Armijo backtracking.

    A support leaves the batch when ||grad_S|| <= gtol, when theta separates the training
    set (every margin < 0: the infimum is 0, no need to go on), or when no step decreases f.
    """
    k, s = sup.shape
    eps = float(np.finfo(np.float64).eps)
    theta = theta0.copy()
    iterations = np.zeros(k, dtype=np.int64)
    loss = np.zeros(k)
    grad = np.zeros((k, s))
    gnorm = np.zeros(k)
    p = np.zeros((k, problem.n_classes, problem.n))
    separated = np.zeros(k, dtype=bool)
    todo = np.arange(k)
    eye = np.eye(s)
    for it in range(max_iter + 1):
        if len(todo) == 0:
            break
        th, sp = theta[todo], sup[todo]
        act = None if active is None else active[todo]
        f, p_t, g, h, worst = problem.derivatives(th, sp, act, hessian=it < max_iter)
        loss[todo], p[todo], grad[todo] = f, p_t, g
        gn = np.linalg.norm(g, axis=1)
        gnorm[todo] = gn
        if active is None:
            separated[todo] = worst < 0
        go = (gn > gtol) & ~separated[todo]
        if h is None or not go.any():
            break
        todo, th, sp, f, g, h, gn = todo[go], th[go], sp[go], f[go], g[go], h[go], gn[go]
        act = None if act is None else act[go]
        # Levenberg-Marquardt: lambda ~ ||g||^2 keeps the local rate quadratic; the floor,
        # relative to the curvature scale, makes H_SS + lambda I positive definite where H
        # is singular (the gauge directions of softmax, or a direction of separation).
        scale = np.maximum(np.diagonal(h, axis1=1, axis2=2).max(axis=1), 1e-300)
        lam = np.minimum(gn**2, 1.0) + 1e-10 * scale
        step = -np.linalg.solve(h + lam[:, None, None] * eye, g[:, :, None])[:, :, 0]
        slope = (g * step).sum(axis=1)
        t = np.ones(len(todo))
        accepted = np.zeros(len(todo), dtype=bool)
        new = th.copy()
        for _ in range(60):
            pending = np.flatnonzero(~accepted)
            if len(pending) == 0:
                break
            cand = th[pending] + t[pending, None] * step[pending]
            f_new = problem.loss(cand, sp[pending], None if act is None else act[pending])
            # Near the optimum the decrease is below float64 resolution of f: allow rounding.
            slack = 8 * eps * np.abs(f[pending])
            ok = f_new <= f[pending] + 1e-4 * t[pending] * slope[pending] + slack
            new[pending[ok]] = cand[ok]
            accepted[pending[ok]] = True
            t[pending[~ok]] *= 0.5
        theta[todo] = new
        iterations[todo] += 1
        # No step decreases f any more (the float64 floor): this support is as good as it
        # gets; its stored loss and gradient are those of theta, which did not move.
        todo = todo[accepted]
    return _NewtonResult(theta, loss, grad, gnorm, p, iterations, separated)


# ----------------------------------------------------------------------------------------
# Certificates and the linear program
# ----------------------------------------------------------------------------------------
def _stiemke(
    problem: SupportProblem, sup: Index, p: Array, active: Mask | None, grad: Array
) -> Mask:
    """True where the Newton point proves that the (reduced) minimum is attained.

    Stiemke's alternative: exactly one holds, (a) some d has M d <= 0 with M d != 0 (a
    separating direction), or (b) some lambda > 0 (every entry) has M^T lambda = 0. Here M
    holds the margin rows of the active pairs restricted to S. The wrong-class probabilities
    p > 0 give M^T p = n grad_S, nearly 0. Let B be the pairs with p >= tau; if M_B has the
    rank of M, n grad_S lies in the range of M_B^T and delta_B = -M_B (M_B^T M_B)^+ n grad_S
    makes lambda = p + delta (delta = 0 off B) satisfy M^T lambda = 0 exactly; lambda > 0
    holds when p_B + delta_B > 0 (|delta| <= n ||grad_S|| / sigma_min(M_B) << tau). That is
    (b): no separating direction exists and the minimum is attained. Up to rounding, which
    the rank threshold and the margin tau / 2 absorb. tau = 1e-3, 1e-6, 1e-9 are tried in
    turn (a smaller tau keeps more pairs in B, so the rank test passes more often, with a
    smaller margin).
    """
    k = sup.shape[0]
    if k == 0:
        return np.zeros(0, dtype=bool)
    pi, pc = problem.pair_index[:, 0], problem.pair_index[:, 1]
    lam = p[:, pc, pi]  # (K, pairs)
    act = np.ones_like(lam, dtype=bool) if active is None else active[:, pc, pi]
    m = problem.pairs[:, sup].transpose(1, 0, 2)  # (K, pairs, s)
    mt = m.transpose(0, 2, 1)

    def gram(weights: Mask) -> Array:
        return np.asarray((mt * weights[:, None, :]) @ m)

    eig_all = np.linalg.eigvalsh(gram(act))
    top = np.maximum(eig_all[:, -1], 1e-300)
    rank_all = (eig_all > 1e-12 * top[:, None]).sum(axis=1)
    n_grad = problem.n * grad
    rounding = (lam * act).sum(axis=1) * np.abs(problem.pairs).max() * 1e-12
    ok = rank_all == 0  # every active margin is identically 0 on S: f is constant
    for tau in (1e-3, 1e-6, 1e-9):
        in_b = act & (lam >= tau)
        evals, evecs = np.linalg.eigh(gram(in_b))
        keep = evals > 1e-12 * top[:, None]
        rank_ok = keep.sum(axis=1) == rank_all
        inv = np.where(keep, 1.0 / np.maximum(evals, 1e-300), 0.0)
        coef = evecs @ (inv * (evecs.transpose(0, 2, 1) @ n_grad[:, :, None])[:, :, 0])[:, :, None]
        delta = -(m @ coef)[:, :, 0] * in_b
        new_lam = lam + delta
        # M^T lambda must vanish (it does when the ranks agree) ...
        resid = np.linalg.norm(((new_lam * act)[:, None, :] @ m)[:, 0, :], axis=1)
        # ... and every multiplier of B stay positive, with room for rounding.
        positive = np.where(in_b, new_lam, np.inf).min(axis=1)
        ok |= rank_ok & (resid <= rounding) & (positive > 0.5 * tau)
    return np.asarray(ok)


def _separating_pairs(problem: SupportProblem, support: Index) -> Mask:
    """T: the pairs that some separating direction in the support makes negative (an LP).

    maximise sum u subject to M_S d + u <= 0, 0 <= u <= 1, d free. At every optimum u = 1
    exactly on T and u = 0 elsewhere: a pair of T with u < 1 could be raised by adding a
    multiple of a direction that separates it, and a pair outside T has u <= -m_ic(d) = 0.
    """
    from scipy.optimize import linprog  # type: ignore[import-untyped]
    from scipy.sparse import csr_matrix, eye, hstack  # type: ignore[import-untyped]

    rows = problem.pairs[:, support]
    n_pairs, s = rows.shape
    cost = np.concatenate([np.zeros(s), -np.ones(n_pairs)])
    a_ub = hstack([csr_matrix(rows), eye(n_pairs, format="csr")], format="csr")
    bounds = [(None, None)] * s + [(0.0, 1.0)] * n_pairs
    res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(n_pairs), bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(
            f"the separability LP failed on support {support.tolist()}: {res.message}"
        )
    return np.asarray(res.x[s:] > 0.5)


# ----------------------------------------------------------------------------------------
# Solving supports
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SupportSolutions:
    """The restricted optimum of every support given (one entry per support).

    Attributes:
        supports: (K, s) sorted parameter indices of each support.
        value: (K,) the infimum of f over the theta supported on S (attained or not).
        status: (K,) ``attained``, ``separable``, ``partly separable`` or ``unconverged``
            (see the module docstring).
        theta: (K, P) a minimiser (attained); a minimiser of the reduced loss f_T (partly
            separable); a point with every margin < 0 (separable, when Newton found one).
        grad_norm: (K,) ||grad_S|| of f (attained) or of f_T (partly separable) at theta.
        separated_pairs: (K, n (C - 1)) bool, the set T: the (point, wrong class) pairs
            some direction in the support separates, listed point by point, classes in
            increasing order, the true class skipped. Empty when attained, full when
            separable.
        iterations: (K,) Newton iterations spent on the support.
        n_lp: how many supports needed the linear program.
    """

    supports: Index
    value: Array
    status: NDArray[np.str_]
    theta: Array
    grad_norm: Array
    separated_pairs: Mask
    iterations: Index
    n_lp: int

    @property
    def attained(self) -> Mask:
        """True where a minimiser exists (status ``attained``)."""
        return np.asarray(self.status == ATTAINED)

    def position(self, support: Sequence[int]) -> int:
        """The row of ``support`` (any order) among :attr:`supports`.

        Raises:
            ValueError: the support was not solved here.
        """
        found = np.flatnonzero(_bits(self.supports) == _bits(np.array([sorted(support)]))[0])
        if not len(found):
            raise InvalidValueError(f"support {sorted(support)} is not among the solved supports")
        return int(found[0])


def all_supports(size: int, s: int) -> Index:
    """Every support of size s of range(size), in lexicographic order: (C(size, s), s)."""
    if not 0 <= s <= size:
        raise InvalidValueError(f"s must be in 0..{size}, got {s}")
    combos = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(size), s)),
        dtype=np.int64,
        count=math.comb(size, s) * s,
    )
    return combos.reshape(math.comb(size, s), s)


def check_settings(gtol: float, max_iter: int, chunk: int) -> None:
    """Refuse solver settings out of range: gtol finite > 0, max_iter >= 1, chunk >= 1."""
    if not (gtol > 0 and math.isfinite(gtol)):
        raise InvalidValueError(f"gtol must be a finite number > 0, got {gtol}")
    if max_iter < 1:
        raise InvalidValueError(f"max_iter must be >= 1, got {max_iter}")
    if chunk < 1:
        raise InvalidValueError(f"chunk must be >= 1, got {chunk}")


def _check_supports(problem: SupportProblem, supports: Index | Sequence[Sequence[int]]) -> Index:
    sup = np.asarray(supports, dtype=np.int64)
    if sup.ndim != 2 or sup.shape[1] < 1:
        raise InvalidValueError(
            f"supports must be a (K, s) array with s >= 1, got shape {sup.shape}"
        )
    if sup.size and (sup.min() < 0 or sup.max() >= problem.size):
        raise InvalidValueError(
            f"support indices must lie in 0..{problem.size - 1} (P = {problem.size})"
        )
    sup = np.sort(sup, axis=1)
    if (np.diff(sup, axis=1) == 0).any():
        raise InvalidValueError("a support repeats a parameter index")
    return sup


def solve_supports(
    X: Array,
    y: Index,
    supports: Index | Sequence[Sequence[int]],
    *,
    n_classes: int | None = None,
    gtol: float = 1e-9,
    max_iter: int = 100,
    chunk: int = 2048,
) -> SupportSolutions:
    """Minimise the linear-softmax training loss on each given support (all of one size).

    f(theta) = (1/n) sum_i CE(W x_i + b, y_i), theta = W (C x d, row-major) then b (the
    order of ``nn.Linear(d, C).parameters()``), minimised over theta with theta_k = 0 off S,
    for every support S given. Batched damped Newton in float64 to ||grad_S|| <= gtol, and
    a certificate for every verdict (see the module docstring): ``attained`` (value = the
    minimum), ``separable`` (value = 0, no minimiser), ``partly separable`` (value = the
    infimum min f_T, no minimiser) or ``unconverged`` (no certificate held; not expected,
    and reported rather than hidden).

    Args:
        X: (n, d) features as the model sees them (the study standardises them first).
        y: (n,) integer labels in 0..C-1.
        supports: (K, s) parameter indices in 0..P-1, P = C (d + 1).
        n_classes: C (default: max(y) + 1).
        gtol: stopping test on ||grad_S||_2.
        max_iter: most Newton iterations of the first round (later rounds are shorter,
            the reduced problems get 4 max_iter).
        chunk: supports per batch (memory: a few times chunk * n * max(C, s) * 8 bytes).

    Returns:
        A :class:`SupportSolutions`, in the order of ``supports`` (each row sorted).

    Raises:
        ValueError: bad shapes, labels, support indices or settings.

    Example:
        >>> sol = solve_supports(X, y, [[0, 4], [1, 7]])                    # doctest: +SKIP
        >>> sol.value, sol.status                                           # doctest: +SKIP
    """
    check_settings(gtol, max_iter, chunk)
    return solve_on(
        SupportProblem.build(X, y, n_classes), supports, gtol=gtol, max_iter=max_iter, chunk=chunk
    )


def solve_on(
    problem: SupportProblem,
    supports: Index | Sequence[Sequence[int]],
    *,
    gtol: float = 1e-9,
    max_iter: int = 100,
    chunk: int = 2048,
) -> SupportSolutions:
    """:func:`solve_supports` on a problem already built (:meth:`SupportProblem.build`)."""
    return _solve(problem, _check_supports(problem, supports), None, gtol, max_iter, chunk)


@dataclass(frozen=True)
class _Seed:
    """What the level below knows about each support (see :func:`_from_subsets`)."""

    lower_t: Mask  # (K, pairs): inside T
    start: Array  # (K, s): a starting point (the best subset's solution, 0 on the new index)

    def __getitem__(self, rows: slice) -> _Seed:
        return _Seed(self.lower_t[rows], self.start[rows])


def _solve(
    problem: SupportProblem,
    sup: Index,
    seed: _Seed | None,
    gtol: float,
    max_iter: int,
    chunk: int,
) -> SupportSolutions:
    starts = range(0, sup.shape[0], chunk) if sup.shape[0] else range(1)
    parts = [
        _solve_chunk(
            problem,
            sup[i : i + chunk],
            None if seed is None else seed[i : i + chunk],
            gtol=gtol,
            max_iter=max_iter,
        )
        for i in starts
    ]
    return SupportSolutions(
        supports=sup,
        value=np.concatenate([p.value for p in parts]),
        status=np.concatenate([p.status for p in parts]),
        theta=np.concatenate([p.theta for p in parts]),
        grad_norm=np.concatenate([p.grad_norm for p in parts]),
        separated_pairs=np.concatenate([p.separated_pairs for p in parts]),
        iterations=np.concatenate([p.iterations for p in parts]),
        n_lp=sum(p.n_lp for p in parts),
    )


@dataclass
class _Work:
    """The per-support results of one chunk, filled in stage by stage."""

    value: Array
    theta: Array  # (K, s)
    gnorm: Array
    status: NDArray[np.object_]
    t_sets: Mask  # (K, pairs)
    iters: Index

    def record(self, rows: Index, res: _NewtonResult) -> None:
        self.value[rows], self.theta[rows], self.gnorm[rows] = res.loss, res.theta, res.grad_norm
        self.iters[rows] += res.iterations

    def mark(self, rows: Index, status: str, t_sets: Mask | None = None) -> None:
        self.status[rows] = status
        if status == SEPARABLE:
            self.t_sets[rows] = True
        elif status == ATTAINED:
            self.t_sets[rows] = False
        elif t_sets is not None:
            self.t_sets[rows] = t_sets


def _solve_chunk(
    problem: SupportProblem, sup: Index, seed: _Seed | None, *, gtol: float, max_iter: int
) -> SupportSolutions:
    """Certified restricted optima of a chunk of supports (see the module docstring).

    Stages, each only on the supports still without a certificate:

    0. ``seed.lower_t`` (the union of T over the support's subsets, each inside T): if it
       holds every pair the support is separable; otherwise minimise f_{lower_t}, and a
       Stiemke certificate there proves T = lower_t. Newton starts from ``seed.start``.
    1. Newton on f; a point with every margin < 0 proves ``separable``, a Stiemke
       certificate proves ``attained``.
    2. A few more Newton steps: the pairs whose margins keep falling name T_hat; a direction
       that separates exactly T_hat proves T_hat inside T, and a Stiemke certificate of
       f_{T_hat} proves T inside T_hat.
    3. The LP finds T exactly for what is left.
    """
    k, s = sup.shape
    n_pairs = problem.pairs.shape[0]
    work = _Work(
        value=np.zeros(k),
        theta=np.zeros((k, s)),
        gnorm=np.zeros(k),
        status=np.full(k, UNCONVERGED, dtype=object),
        t_sets=np.zeros((k, n_pairs), dtype=bool),
        iters=np.zeros(k, dtype=np.int64),
    )

    # Stage 0: T of the subsets.
    start = np.zeros((k, s)) if seed is None else seed.start
    if seed is not None:
        lower_t = seed.lower_t
        work.mark(np.flatnonzero(lower_t.all(axis=1)), SEPARABLE)
        rows = np.flatnonzero(lower_t.any(axis=1) & ~lower_t.all(axis=1))
        _reduce(
            problem, sup, rows, lower_t[rows], work, gtol=gtol, max_iter=max_iter, start=start[rows]
        )

    # Stage 1: Newton on f.
    rows = np.flatnonzero(work.status == UNCONVERGED)
    res = _newton(problem, sup[rows], None, start[rows], gtol=gtol, max_iter=max_iter)
    work.record(rows, res)
    work.mark(rows[res.separated], SEPARABLE)
    done = np.flatnonzero((res.grad_norm <= gtol) & ~res.separated)
    cert = _stiemke(problem, sup[rows[done]], res.p[done], None, res.grad[done])
    work.mark(rows[done[cert]], ATTAINED)

    # Stage 2: a few more steps. An attained support gains Stiemke margin as its gradient
    # shrinks; on a partly separable one the margins of T keep falling while the others
    # have converged.
    rows = np.flatnonzero(work.status == UNCONVERGED)
    if len(rows):
        before = work.theta[rows].copy()
        more = _newton(problem, sup[rows], None, before, gtol=0.0, max_iter=_ROUND2)
        work.record(rows, more)
        work.mark(rows[more.separated], SEPARABLE)
        done = np.flatnonzero(~more.separated & (more.grad_norm <= gtol))
        cert = _stiemke(problem, sup[rows[done]], more.p[done], None, more.grad[done])
        work.mark(rows[done[cert]], ATTAINED)
        moved = _pair_margins(problem, sup[rows], more.theta - before)
        drop = np.maximum(-moved.min(axis=1, initial=0.0), 0.0)
        t_hat = moved < -np.maximum(1e-3 * drop, 1e-6)[:, None]
        cand = np.flatnonzero((work.status[rows] == UNCONVERGED) & t_hat.any(axis=1))
        sep = _separates(problem, sup[rows[cand]], more.theta[cand] - before[cand], t_hat[cand])
        cand = cand[sep]
        work.mark(rows[cand[t_hat[cand].all(axis=1)]], SEPARABLE)
        cand = cand[~t_hat[cand].all(axis=1)]
        _reduce(problem, sup, rows[cand], t_hat[cand], work, gtol=gtol, max_iter=max_iter)

    # Stage 3: the LP decides the rest exactly. T empty: attained (the LP is the
    # certificate; the value needs a converged Newton point); T = every pair: separable.
    rest = np.flatnonzero(work.status == UNCONVERGED)
    partly, partly_t = [], []
    for r in rest:
        t_pairs = _separating_pairs(problem, sup[r])
        if not t_pairs.any():
            if work.gnorm[r] <= gtol:
                work.mark(np.array([r]), ATTAINED)
        elif t_pairs.all():
            work.mark(np.array([r]), SEPARABLE)
        else:
            partly.append(r)
            partly_t.append(t_pairs)
    if partly:
        _reduce(
            problem,
            sup,
            np.array(partly),
            np.array(partly_t),
            work,
            gtol=gtol,
            max_iter=max_iter,
            trusted=True,
        )

    work.value[work.status == SEPARABLE] = 0.0
    full = np.zeros((k, problem.size))
    full[np.arange(k)[:, None], sup] = work.theta
    return SupportSolutions(
        supports=sup,
        value=work.value,
        status=work.status.astype(str),
        theta=full,
        grad_norm=work.gnorm,
        separated_pairs=work.t_sets,
        iterations=work.iters,
        n_lp=len(rest),
    )


def _reduce(
    problem: SupportProblem,
    sup: Index,
    rows: Index,
    t_sets: Mask,
    work: _Work,
    *,
    gtol: float,
    max_iter: int,
    trusted: bool = False,
    start: Array | None = None,
) -> None:
    """Minimise f_T (the pairs of T left out) on the supports ``sup[rows]``.

    Each T given is known to lie inside the support's true T. A Stiemke certificate of f_T
    at the converged point proves the converse, so T is exact and min f_T is the infimum:
    status ``partly separable``. Without it the support is left as it was for the next
    stage, unless ``trusted`` (T from the LP), when it is marked ``unconverged``.
    """
    if len(rows) == 0:
        return
    active = np.ones((len(rows), problem.n_classes, problem.n), dtype=bool)
    for j, t in enumerate(t_sets):
        ti = problem.pair_index[t]
        active[j, ti[:, 1], ti[:, 0]] = False
    red = _newton(
        problem,
        sup[rows],
        active,
        np.zeros((len(rows), sup.shape[1])) if start is None else start,
        gtol=gtol,
        max_iter=4 * max_iter,
    )
    cert = _stiemke(problem, sup[rows], red.p, active, red.grad) & (red.grad_norm <= gtol)
    keep = cert | trusted
    work.record(rows[keep], _subset(red, keep))
    work.mark(rows[cert], PARTLY_SEPARABLE, t_sets[cert])
    if trusted:
        work.mark(rows[~cert], UNCONVERGED, t_sets[~cert])


def _subset(res: _NewtonResult, keep: Mask) -> _NewtonResult:
    return _NewtonResult(
        res.theta[keep],
        res.loss[keep],
        res.grad[keep],
        res.grad_norm[keep],
        res.p[keep],
        res.iterations[keep],
        res.separated[keep],
    )


def _pair_margins(problem: SupportProblem, sup: Index, theta: Array) -> Array:
    """(K, pairs) margins m_ic of theta (K, s) on the supports sup."""
    m = problem.pairs[:, sup]  # (pairs, K, s)
    return np.asarray(np.einsum("qks,ks->kq", m, theta))


def _separates(problem: SupportProblem, sup: Index, v: Array, t_hat: Mask) -> Mask:
    """True where a direction d in span(S) has m_ic(d) < 0 on T_hat and = 0 off T_hat.

    d is v projected on the null space of the margin rows off T_hat; the check allows
    rounding (1e-10 relative) on the zero margins and asks for a clear negative margin
    (1e-6 relative) on T_hat. Such a d is a separating direction that makes exactly the
    pairs of T_hat negative, so T_hat is inside T.
    """
    if len(sup) == 0:
        return np.zeros(0, dtype=bool)
    m = problem.pairs[:, sup].transpose(1, 0, 2)  # (K, pairs, s)
    keep = ~t_hat
    gram = (m.transpose(0, 2, 1) * keep[:, None, :]) @ m
    evals, evecs = np.linalg.eigh(gram)
    top = np.maximum(evals[:, -1:], 1e-300)
    basis = evecs * (evals <= 1e-12 * top)[:, None, :]
    d = (basis @ (basis.transpose(0, 2, 1) @ v[:, :, None]))[:, :, 0]
    md = (m @ d[:, :, None])[:, :, 0]
    size = np.linalg.norm(d, axis=1) * np.abs(problem.pairs).max()
    zero_ok = np.where(keep, np.abs(md), 0.0).max(axis=1) <= 1e-10 * size
    neg_ok = np.where(t_hat, md, -np.inf).max(axis=1) < -1e-6 * size
    return np.asarray(zero_ok & neg_ok & (size > 0))


def solve_all_supports(
    X: Array,
    y: Index,
    s: int,
    *,
    n_classes: int | None = None,
    gtol: float = 1e-9,
    max_iter: int = 100,
    chunk: int = 2048,
) -> SupportSolutions:
    """:func:`solve_supports` on every support of size s (C(P, s) of them, lexicographic).

    Example:
        >>> sol = solve_all_supports(X_std_train, y_train, 5)          # doctest: +SKIP
        >>> sol.supports[sol.value.argmin()], sol.value.min()          # doctest: +SKIP
    """
    check_settings(gtol, max_iter, chunk)
    problem = SupportProblem.build(X, y, n_classes)
    if not 1 <= s <= problem.size:
        raise InvalidValueError(f"s must be in 1..{problem.size} (P = {problem.size}), got {s}")
    return _solve(problem, all_supports(problem.size, s), None, gtol, max_iter, chunk)


def _bits(sup: Index) -> NDArray[np.int64]:
    """Each support as a bit mask (P <= 62)."""
    return np.asarray((np.int64(1) << sup).sum(axis=1), dtype=np.int64)


def _from_subsets(prev: SupportSolutions, sup: Index) -> _Seed:
    """What the (s-1)-subsets of each support tell about it.

    ``lower_t``: the union of their T, inside the support's T (a direction that separates
    pairs on a subset's support lies in the larger support too; subsets without a
    certified T count for nothing). ``start``: the solution of the best subset with a
    finite solution (attained or partly separable), 0 on the added index: a feasible point
    whose loss is already that subset's optimum.
    """
    prev_bits = _bits(prev.supports)
    order = np.argsort(prev_bits)
    bits = _bits(sup)
    k, s = sup.shape
    lower = np.zeros((k, prev.separated_pairs.shape[1]), dtype=bool)
    known = prev.status != UNCONVERGED
    finite = np.isin(prev.status, [ATTAINED, PARTLY_SEPARABLE])
    best_value = np.full(k, np.inf)
    best_pos = np.full(k, -1)
    for j in range(s):
        sub = bits - (np.int64(1) << sup[:, j])
        pos = order[np.searchsorted(prev_bits, sub, sorter=order)]
        lower |= prev.separated_pairs[pos] & known[pos, None]
        better = finite[pos] & (prev.value[pos] < best_value)
        best_value[better], best_pos[better] = prev.value[pos[better]], pos[better]
    start = np.zeros((k, s))
    has = best_pos >= 0
    start[has] = prev.theta[best_pos[has][:, None], sup[has]]
    return _Seed(lower, start)


def _polish(problem: SupportProblem, sol: SupportSolutions, rows: Index, steps: int = 5) -> None:
    """A few more Newton steps (to the float64 floor) on the supports ``rows``, in place.

    ||grad_S|| <= gtol = 1e-9 leaves f about ||grad||^2 / (2 mu) above its infimum, which
    on a nearly separable support (small curvature mu) can reach 1e-9: as large as the
    tolerances that compare values. The values that are compared (the optimum and the
    supports near it) are therefore taken further, where Newton converges quadratically.
    """
    for status in (ATTAINED, PARTLY_SEPARABLE):
        sel = rows[sol.status[rows] == status]
        if len(sel) == 0:
            continue
        sup = sol.supports[sel]
        active = None
        if status == PARTLY_SEPARABLE:
            active = np.ones((len(sel), problem.n_classes, problem.n), dtype=bool)
            for j, r in enumerate(sel):
                ti = problem.pair_index[sol.separated_pairs[r]]
                active[j, ti[:, 1], ti[:, 0]] = False
        start = sol.theta[sel[:, None], sup]
        res = _newton(problem, sup, active, start, gtol=0.0, max_iter=steps)
        better = res.loss < sol.value[sel]
        upd = sel[better]
        sol.value[upd] = res.loss[better]
        sol.grad_norm[upd] = res.grad_norm[better]
        sol.theta[upd[:, None], sup[better]] = res.theta[better]


def solve_levels(
    problem: SupportProblem,
    levels: Sequence[int],
    *,
    gtol: float,
    max_iter: int,
    chunk: int,
    on_level: Any = None,
) -> dict[int, tuple[SupportSolutions, float]]:
    """Every support of every level 1..max(levels), each level seeded by the one below.

    Returns (solutions, seconds) by level, for the levels asked. Levels below the smallest
    one asked are solved too (they are the cheap ones) because what their supports know
    (separating pairs, solutions) makes the levels above fast: most supports then need a
    single reduced solve from a good start. At the levels asked, the supports within 1e-6
    of the best value are polished (:func:`_polish`).
    """
    out: dict[int, tuple[SupportSolutions, float]] = {}
    prev: SupportSolutions | None = None
    for s in range(1, max(levels) + 1):
        t0 = time.perf_counter()
        sup = all_supports(problem.size, s)
        seed = None if prev is None or problem.size > 62 else _from_subsets(prev, sup)
        prev = _solve(problem, sup, seed, gtol, max_iter, chunk)
        if s in levels:
            _polish(problem, prev, np.flatnonzero(prev.value <= prev.value.min() + _NEAR))
            out[s] = (prev, time.perf_counter() - t0)
        if on_level is not None:
            on_level(s, len(sup))
    return out


def level_summary(sol: SupportSolutions, s: int, seconds: float, tie_tol: float) -> dict[str, Any]:
    """One level's row of :func:`oracle` (see there for the columns)."""
    value = sol.value
    best = float(value.min())
    optimal = value <= best + tie_tol
    first = int(np.flatnonzero(optimal)[0])
    attained_opt = optimal & sol.attained
    pick = int(np.flatnonzero(attained_opt)[0]) if attained_opt.any() else first
    others = value[~optimal]
    runner_up = float(others.min()) if len(others) else math.nan
    solved = np.isin(sol.status, [ATTAINED, PARTLY_SEPARABLE])
    return {
        "s": s,
        "n_supports": len(value),
        "value": best,
        "attained": bool(attained_opt.any()),
        "status": str(sol.status[pick]),
        "support": sol.supports[pick].tolist(),
        "theta": sol.theta[pick].tolist(),
        "n_optimal": int(optimal.sum()),
        "optimal_supports": sol.supports[optimal].tolist(),
        "runner_up": runner_up,
        "gap": runner_up - best,
        "n_attained": int((sol.status == ATTAINED).sum()),
        "n_separable": int((sol.status == SEPARABLE).sum()),
        "n_partly_separable": int((sol.status == PARTLY_SEPARABLE).sum()),
        "n_unconverged": int((sol.status == UNCONVERGED).sum()),
        "n_lp": sol.n_lp,
        "max_grad_norm": float(sol.grad_norm[solved].max()) if solved.any() else math.nan,
        "seconds": seconds,
    }


def oracle(
    X: Array,
    y: Index,
    levels: Sequence[int],
    *,
    n_classes: int | None = None,
    gtol: float = 1e-9,
    tie_tol: float = 1e-9,
    max_iter: int = 100,
    chunk: int = 2048,
) -> list[dict[str, Any]]:
    """The exact optimum of min f(theta) s.t. ||theta||_0 <= s, for each s in ``levels``.

    Solves every support of size s (the optimum over ||theta||_0 <= s is the best of them),
    with a certificate for each; see the module docstring. Levels 1..max(levels) are all
    solved, each seeded by the one below.

    Args:
        X: (n, d) features as the model sees them (standardised for the study).
        y: (n,) integer labels in 0..C-1.
        levels: sparsity levels in 1..P.
        n_classes: C (default max(y) + 1).
        gtol: Newton's stopping test on ||grad_S||.
        tie_tol: supports within this of the best value count as optimal.
        max_iter: most Newton iterations of the first round.
        chunk: supports per batch.

    Returns:
        One row (a dict) per level, by s: ``s``, ``n_supports`` = C(P, s), ``value`` (the optimum,
        an infimum when not attained), ``attained`` (some optimal support has a
        minimiser), ``status`` and ``support`` (sorted indices) and ``theta`` (P values) of
        one optimal support (an attained one when there is one, else the first in
        lexicographic order), ``n_optimal`` and ``optimal_supports`` (all supports within
        tie_tol), ``runner_up`` (best value of the other supports) and ``gap`` =
        runner_up - value (NaN when every support is optimal), the count of supports by
        status (``n_attained``, ``n_separable``, ``n_partly_separable``,
        ``n_unconverged``), ``n_lp`` (supports that needed the LP), ``max_grad_norm`` (the
        largest final ||grad|| of a solved support) and ``seconds``.

    Raises:
        ValueError: bad data, levels or settings.

    Example:
        >>> rows = oracle(X_std_train, y_train, levels=range(1, 15))       # doctest: +SKIP
        >>> rows[4]["value"], rows[4]["support"]                           # doctest: +SKIP
    """
    check_settings(gtol, max_iter, chunk)
    if not (tie_tol >= 0 and math.isfinite(tie_tol)):
        raise InvalidValueError(f"tie_tol must be a finite number >= 0, got {tie_tol}")
    problem = SupportProblem.build(X, y, n_classes)
    asked = check_levels(levels, problem.size)
    solved = solve_levels(problem, asked, gtol=gtol, max_iter=max_iter, chunk=chunk)
    rows = [level_summary(sol, s, sec, tie_tol) for s, (sol, sec) in sorted(solved.items())]
    return rows


def check_levels(levels: Sequence[int], size: int) -> list[int]:
    """The distinct levels, sorted; each must lie in 1..size."""
    asked = sorted({int(s) for s in levels})
    if not asked or asked[0] < 1 or asked[-1] > size:
        raise InvalidValueError(
            f"levels must be sparsity levels in 1..{size} (P = {size}), got {levels!r}"
        )
    return asked
