"""The exact best s-sparse network: solver against independent brute force, certificates,
the unattained cases, IHT never better, and ``iht oracle`` on a stored study."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp
from torch import nn

import iht
from iht.cli import main
from iht.data import load_builtin, random_split, standardise
from iht.oracle import (
    ATTAINED,
    PARTLY_SEPARABLE,
    SEPARABLE,
    SupportProblem,
    _separating_pairs,
    all_supports,
    solve_all_supports,
    solve_supports,
)
from iht.oracle import oracle as oracle_rows
from iht.report.study import write_study_report as write_report
from iht.report.study_figures import FIGURE_NAMES
from iht.study.config import StudyConfig
from iht.study.oracle import ORACLE_FILE, comparison_table
from iht.study.runner import run_study


def oracle(X: np.ndarray, y: np.ndarray, levels: list[int], **kwargs: Any) -> pd.DataFrame:
    """The solver's rows as a table."""
    return pd.DataFrame(oracle_rows(X, y, levels, **kwargs))


# ----------------------------------------------------------------------------- helpers
def ce_loss(theta: np.ndarray, X: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Mean cross-entropy of nn.Linear(d, C) with parameters theta = W (row-major), b."""
    d = X.shape[1]
    W = theta[: n_classes * d].reshape(n_classes, d)
    z = X @ W.T + theta[n_classes * d :]
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]))


def brute_force(X: np.ndarray, y: np.ndarray, n_classes: int, support: tuple[int, ...]) -> float:
    """min f on one support by scipy's BFGS, numerical gradient: nothing shared with iht."""
    size = n_classes * (X.shape[1] + 1)

    def f(v: np.ndarray) -> float:
        theta = np.zeros(size)
        theta[list(support)] = v
        return ce_loss(theta, X, y, n_classes)

    res = minimize(f, np.zeros(len(support)), method="BFGS", options={"gtol": 1e-10})
    return float(res.fun)


def overlapping(n: int, d: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes with close means: no direction in any support separates them."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    means = rng.normal(scale=0.5, size=(n_classes, d))
    return means[y] + rng.normal(size=(n, d)), y


# ----------------------------------------------------------------------------- the solver
@pytest.mark.parametrize(("d", "n_classes"), [(2, 2), (2, 3)])
def test_every_support_matches_brute_force(d: int, n_classes: int) -> None:
    X, y = overlapping(40, d, n_classes, seed=d + n_classes)
    size = n_classes * (d + 1)
    rng = np.random.default_rng(0)
    for s in range(1, size + 1):
        sol = solve_all_supports(X, y, s)
        assert sol.supports.shape == (math.comb(size, s), s)
        assert (sol.status == ATTAINED).all()
        assert sol.n_lp == 0
        # Every support for P = 6; for P = 9, 12 of them per level (brute force is slow).
        rows = np.arange(len(sol.value))
        if len(rows) > 12:
            rows = rng.choice(rows, 12, replace=False)
        for r in rows:
            support, value, theta = sol.supports[r], sol.value[r], sol.theta[r]
            expected = brute_force(X, y, n_classes, tuple(support))
            assert value == pytest.approx(expected, abs=1e-6)
            # theta is a minimiser on its support: zero off it, f(theta) = value.
            off = np.setdiff1d(np.arange(size), support)
            assert (theta[off] == 0).all()
            assert ce_loss(theta, X, y, n_classes) == pytest.approx(value, abs=1e-12)


def test_oracle_is_the_best_support() -> None:
    X, y = overlapping(50, 2, 3, seed=3)
    table = oracle(X, y, levels=[1, 2, 4, 9])
    assert table["s"].tolist() == [1, 2, 4, 9]
    for row in table.itertuples():
        values = {sup: brute_force(X, y, 3, sup) for sup in itertools.combinations(range(9), row.s)}
        best = min(values, key=lambda k: values[k])
        assert row.value == pytest.approx(values[best], abs=1e-6)
        assert row.attained and row.status == ATTAINED
        assert row.n_supports == math.comb(9, row.s)
        assert tuple(row.support) in {tuple(o) for o in row.optimal_supports}
        assert ce_loss(np.asarray(row.theta), X, y, 3) == pytest.approx(row.value, abs=1e-12)
        if row.n_optimal == 1:
            assert tuple(row.support) == best
        others = sorted(v for k, v in values.items() if k not in map(tuple, row.optimal_supports))
        if others:
            assert row.runner_up == pytest.approx(others[0], abs=1e-6)
            assert row.gap == pytest.approx(others[0] - row.value, abs=1e-6)
    # More parameters never hurt: the optimum is non-increasing in s.
    assert (np.diff(table["value"]) <= 1e-12).all()


def test_loss_gradient_hessian_match_autograd() -> None:
    """The closed form in the layout of nn.Linear(d, C).parameters(), against torch."""
    X, y = overlapping(30, 3, 3, seed=0)
    problem = SupportProblem.build(X, y, None)
    rng = np.random.default_rng(1)
    sup = np.array([[0, 2, 5, 8, 9, 11], [1, 3, 4, 6, 7, 10]])
    theta = rng.normal(size=(2, 6))
    loss, _, grad, hess, _ = problem.derivatives(theta, sup, None, hessian=True)
    assert hess is not None
    model = nn.Linear(3, 3).double()
    xt, yt = torch.tensor(X), torch.tensor(y)
    for r in range(2):

        def f(v: torch.Tensor, r: int = r) -> torch.Tensor:
            full = torch.zeros(12, dtype=torch.float64).index_put((torch.tensor(sup[r]),), v)
            params = {"weight": full[:9].reshape(3, 3), "bias": full[9:]}
            logits = torch.func.functional_call(model, params, (xt,))
            return nn.functional.cross_entropy(logits, yt)

        v = torch.tensor(theta[r])
        assert loss[r] == pytest.approx(float(f(v)), abs=1e-13)
        np.testing.assert_allclose(grad[r], torch.func.grad(f)(v).numpy(), atol=1e-13)
        np.testing.assert_allclose(hess[r], torch.func.hessian(f)(v).numpy(), atol=1e-13)


def test_separable_data_is_not_attained() -> None:
    """Two clusters a line separates: the infimum is 0 and no network attains it."""
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    X = np.where(y[:, None] == 0, -3.0, 3.0) + rng.normal(scale=0.5, size=(40, 2))
    full = solve_supports(X, y, [list(range(6))])
    assert full.status[0] == SEPARABLE and not full.attained[0]
    assert full.value[0] == 0.0
    assert full.separated_pairs[0].all()
    # The point it returns classifies every training point correctly, and scaling it up
    # drives the loss to 0: the infimum, never reached.
    theta = full.theta[0]
    losses = [ce_loss(t * theta, X, y, 2) for t in (1.0, 2.0, 4.0)]
    assert losses[0] > losses[1] > losses[2] > 0
    # Biases alone separate nothing: attained, at log 2 (equal class sizes).
    bias = solve_supports(X, y, [[4, 5]])
    assert bias.status[0] == ATTAINED
    assert bias.value[0] == pytest.approx(math.log(2), abs=1e-12)
    # At the level of the oracle.
    table = oracle(X, y, levels=[1, 6])
    row = table.set_index("s").loc[6]
    assert row["status"] == SEPARABLE and not row["attained"] and row["value"] == 0.0


def partly_separable() -> tuple[np.ndarray, np.ndarray]:
    """Class 0 far from classes 1 and 2, which overlap: a direction separates class 0."""
    rng = np.random.default_rng(4)
    y = np.arange(60) % 3
    X = rng.normal(size=(60, 2))
    X[y == 0, 0] -= 8.0
    return X, y


def test_partly_separable_infimum() -> None:
    """The infimum is the loss of the part no direction separates, here a binary problem.

    With class 0 separated, only the points of classes 1 and 2 keep a loss, and for them
    only the competition between classes 1 and 2 remains: a binary logistic regression on
    (w, c) = (W_2 - W_1, b_2 - b_1), scaled by their share of the points.
    """
    X, y = partly_separable()
    sol = solve_supports(X, y, [list(range(9))])
    assert sol.status[0] == PARTLY_SEPARABLE and not sol.attained[0]
    # T: every pair of a class-0 point, and the pair (class 1 or 2 point, class 0).
    problem = SupportProblem.build(X, y, None)
    pi, pc = problem.pair_index[:, 0], problem.pair_index[:, 1]
    expected_t = (y[pi] == 0) | (pc == 0)
    np.testing.assert_array_equal(sol.separated_pairs[0], expected_t)
    np.testing.assert_array_equal(_separating_pairs(problem, np.arange(9)), expected_t)

    keep = y > 0
    sign = np.where(y[keep] == 2, 1.0, -1.0)

    def binary(v: np.ndarray) -> float:
        margin = sign * (X[keep] @ v[:2] + v[2])
        return float(np.mean(np.logaddexp(0.0, -margin)))

    best = minimize(binary, np.zeros(3), method="BFGS", options={"gtol": 1e-11}).fun
    assert sol.value[0] == pytest.approx(keep.mean() * best, abs=1e-8)
    # Any finite network is above it, and a long plain minimisation approaches it.
    approach = minimize(
        lambda t: ce_loss(t, X, y, 3), np.zeros(9), method="BFGS", options={"gtol": 1e-12}
    ).fun
    assert sol.value[0] - 1e-12 <= approach <= sol.value[0] + 1e-4


def test_certificates_agree_with_the_lp_on_iris() -> None:
    """On IRIS (a real split, s = 3: attained and partly separable supports), the set T of
    every support found by the certificates equals the LP's, and so do values."""
    data = load_builtin("iris")
    train, _ = random_split(150, 120, seed=7)
    X, y = standardise(data.X, train)[train], data.y[train]
    sol = solve_all_supports(X, y, 3)
    assert set(sol.status) == {ATTAINED, PARTLY_SEPARABLE}
    problem = SupportProblem.build(X, y, None)
    for support, t_set in zip(sol.supports, sol.separated_pairs, strict=True):
        np.testing.assert_array_equal(_separating_pairs(problem, support), t_set)
    # The levels of the oracle (seeded by the subsets) agree with solving each level alone.
    table = oracle(X, y, levels=[3])
    assert table["value"].iloc[0] == pytest.approx(sol.value.min(), abs=1e-12)


def test_iht_is_never_better_than_the_oracle() -> None:
    X, y = overlapping(60, 3, 3, seed=5)
    table = oracle(X, y, levels=[2, 4, 7]).set_index("s")
    xt, yt = torch.tensor(X), torch.tensor(y)
    for s in (2, 4, 7):
        for seed in range(3):
            gen = torch.Generator().manual_seed(seed)
            model = nn.Linear(3, 3).double()

            def loss_fn(m: nn.Module) -> torch.Tensor:
                return nn.functional.cross_entropy(m(xt), yt)

            iht.reset_parameters_(model, generator=gen)
            iht.sparse_init_(model.parameters(), s, generator=gen)
            opt = iht.IHT(model.parameters(), lr=0.5, sparsity=s)
            for _ in range(400):
                opt.zero_grad()
                loss_fn(model).backward()
                opt.step()
            final = float(loss_fn(model).detach())
            assert final >= table.at[s, "value"] - 1e-9
            theta = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
            support = np.flatnonzero(theta)
            if len(support):
                own = solve_supports(X, y, [support.tolist()], n_classes=3)
                assert final >= own.value[0] - 1e-9  # nor better than its own support's optimum


def test_all_supports_and_bad_input() -> None:
    sup = all_supports(5, 2)
    assert sup.shape == (10, 2) and sup[0].tolist() == [0, 1] and sup[-1].tolist() == [3, 4]
    assert all_supports(4, 0).shape == (1, 0)
    X, y = overlapping(20, 2, 2, seed=0)
    with pytest.raises(ValueError, match=r"s must be in 1\.\.6"):
        solve_all_supports(X, y, 7)
    with pytest.raises(ValueError, match=r"support indices must lie in 0\.\.5"):
        solve_supports(X, y, [[0, 6]])
    with pytest.raises(ValueError, match="repeats"):
        solve_supports(X, y, [[1, 1]])
    with pytest.raises(ValueError, match="gtol"):
        solve_supports(X, y, [[1]], gtol=0.0)
    with pytest.raises(ValueError, match="NaN"):
        solve_supports(np.full((3, 2), np.nan), np.array([0, 1, 0]), [[0]])
    with pytest.raises(ValueError, match="levels"):
        oracle(X, y, levels=[0])
    with pytest.raises(ValueError, match="labels"):
        solve_supports(X, np.full(20, 0), [[0]])


# ----------------------------------------------------------------------------- the study
STUDY = StudyConfig(runs=2, chunk_runs=2, max_steps=200, n_monte=5, levels=(1, 2, 3))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("oracle") / "study"
    run_study(STUDY, directory, progress=False, log=lambda _: None)
    return directory


def test_oracle_command_on_a_stored_study(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["oracle", str(study), "--splits", "2", "--no-progress"]) == 0
    out = capsys.readouterr()
    table = pd.read_parquet(study / ORACLE_FILE)
    assert sorted(zip(table["index"], table["s"], strict=True)) == [
        (i, s) for i in (0, 1) for s in (1, 2, 3)
    ]
    runs = pd.concat(pd.read_parquet(p) for p in sorted((study / "parts").glob("s*.parquet")))
    for row in table.itertuples():
        run = runs[(runs["index"] == row.index) & (runs["sparsity"] == row.s)].iloc[0]
        assert row.iht_run_id == run["run_id"]
        assert row.iht_train_loss == run["train_loss"]
        assert row.iht_loss_float64 == pytest.approx(run["train_loss"], abs=1e-12)
        assert row.iht_gap >= -1e-9 and not row.iht_violation
        assert row.iht_support_value <= row.iht_train_loss + 1e-9
        assert row.iht_found == (tuple(row.iht_support) in map(tuple, row.optimal_supports))
        assert row.data_seed == run["data_seed"]
        assert list(row.train_idx) == list(run["train_idx"])
        if row.s == 1:
            # The optimum of the split, from its data, independently of the store.
            iris, train = load_builtin("iris"), np.asarray(row.train_idx)
            X, y = standardise(iris.X, train)[train], iris.y[train]
            best = min(brute_force(X, y, 3, (k,)) for k in range(15))
            assert row.value == pytest.approx(best, abs=1e-6)
    comp = comparison_table(table)
    assert comp["s"].tolist() == [1, 2, 3] and (comp["violations"] == 0).all()
    assert "found opt. support" in out.out
    # The report gained the figure, embedded in the page.
    assert (study / "figures" / "oracle.png").exists()
    page = (study / "report.html").read_text(encoding="utf-8")
    assert 'id="oracle"' in page and "exact optimum" in page

    # Again: nothing recomputed, the file is unchanged.
    before = (study / ORACLE_FILE).read_bytes()
    assert main(["oracle", str(study), "--splits", "2", "--no-progress", "--no-report"]) == 0
    assert "already stored" in capsys.readouterr().err
    assert (study / ORACLE_FILE).read_bytes() == before
    # Other settings are refused without --overwrite, then the old file is moved aside.
    args = ["oracle", str(study), "--splits", "1", "--tie-tol", "1e-6", "--no-progress"]
    assert main(args) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert len(list(study.glob("oracle-replaced-*.parquet"))) == 1
    assert sorted(pd.read_parquet(study / ORACLE_FILE)["index"].unique()) == [0]

    # Without oracle results the report has no oracle figure (the old one is removed).
    (study / ORACLE_FILE).unlink()
    write_report(study, print_summary=False)
    assert {p.stem for p in (study / "figures").glob("*.png")} == set(FIGURE_NAMES)


def test_oracle_command_bad_input(study: Path, tmp_path: Path) -> None:
    assert main(["oracle", str(tmp_path / "none"), "--no-progress"]) == 2
    assert main(["oracle", str(study), "--splits", "3", "--no-progress"]) == 2  # 2 runs only
    assert main(["oracle", str(study), "--levels", "15", "--no-progress"]) == 2
