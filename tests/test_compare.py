"""Tests of ``iht compare``: budgets, the GMP schedule, equal step budgets, one-shot pruning, CLI."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import iht
from iht import data as data_module
from iht.baselines import gmp_plan, gmp_sparsity, prune_global_
from iht.budget import parse_sparsity_list as parse_sparsity
from iht.cli import cli, main
from iht.cli.compare import compare_command
from iht.experiments.compare import run_compare
from iht.experiments.config import METHODS, SPARSE_METHODS, CompareConfig, parse_methods
from iht.experiments.threads import torch_threads
from iht.report.compare import format_table, summarise

assert cli.commands["compare"] is compare_command  # registered by iht.cli

STEPS, N_MONTE = 40, 4


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # As the command line does: tiny tensors, no gain from intra-op threads (see torch_threads).
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def iris_runs() -> pd.DataFrame:
    config = CompareConfig(data="iris", sparsity=(1, 5, 15), seeds=2, steps=STEPS, n_monte=N_MONTE)
    return run_compare(config, progress=False).frame


# -- budgets ----------------------------------------------------------------------------
def test_every_sparse_method_ends_within_budget(iris_runs: pd.DataFrame) -> None:
    assert len(iris_runs) == len(METHODS) * 3 * 2
    sparse = iris_runs[iris_runs["method"].isin(SPARSE_METHODS)]
    assert (sparse["nonzeros"] <= sparse["sparsity"]).all()
    dense = iris_runs[iris_runs["method"] == "dense"]
    assert (dense["nonzeros"] == 15).all()
    assert iris_runs[["train_loss", "test_loss"]].notna().all().all()


def test_budget_holds_for_an_mlp_and_a_strong_l1_penalty() -> None:
    # Two layers: global selection across tensors; lambda so large that L1 zeroes everything.
    config = CompareConfig(
        data="iris", sparsity=(3, 40), hidden=(6,), seeds=1, l1=50.0, steps=STEPS, n_monte=N_MONTE
    )
    frame = run_compare(config, progress=False).frame
    assert set(frame["n_params"]) == {4 * 6 + 6 + 6 * 3 + 3}
    sparse = frame[frame["method"].isin(SPARSE_METHODS)]
    assert (sparse["nonzeros"] <= sparse["sparsity"]).all()
    assert (frame.loc[frame["method"] == "l1", "l1_nonzeros"] == 0).all()


def test_equal_gradient_budgets_are_counted(iris_runs: pd.DataFrame) -> None:
    # grad_evals is a counter incremented by every evaluation of the training loss used for
    # a gradient (shared pre-training included), not a number computed from the config.
    assert (iris_runs["grad_evals"] == STEPS).all()
    assert set(iris_runs.groupby("method")["grad_evals"].unique().map(tuple)) == {(40,)}
    assert (iris_runs["estimate_grad_evals"] == 2 * N_MONTE).all()


def test_odd_steps_and_lr_override() -> None:
    config = CompareConfig(data="iris", sparsity=(4,), seeds=1, steps=7, lr=0.3, n_monte=2)
    frame = run_compare(config, progress=False).frame
    assert (frame["grad_evals"] == 7).all()
    assert (frame["lr"] == 0.3).all()
    assert (frame["estimate_grad_evals"] == 0).all()


def test_seeds_share_nothing_but_methods_share_the_seed(iris_runs: pd.DataFrame) -> None:
    dense = iris_runs[iris_runs["method"] == "dense"]
    # The dense run is trained once per seed and repeated for each s.
    assert dense.groupby("seed")["train_loss"].nunique().eq(1).all()
    assert dense.groupby("sparsity")["train_loss"].nunique().eq(2).all()
    # At s = P nothing is pruned: one-shot and L1 (lambda 1e-3 aside) track dense.
    full = iris_runs[iris_runs["sparsity"] == 15].set_index(["method", "seed"])["train_loss"]
    assert full["oneshot"].to_numpy() == pytest.approx(full["dense"].to_numpy(), rel=1e-12)


# -- GMP schedule ---------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [2, 3, 7, 60, 2000, 2001])
def test_gmp_plan_fits_in_training(steps: int) -> None:
    plan = gmp_plan(steps)
    assert 0 <= plan.t0 <= plan.end <= max(steps - 1, 0)
    assert plan.end <= steps * 2 / 3 or steps < 4
    assert plan.dt >= 1 and plan.n >= 0


def test_gmp_plan_default() -> None:
    assert gmp_plan(2000) == gmp_plan(2000, start=1 / 6, end=2 / 3, events=100)
    plan = gmp_plan(2000)
    assert (plan.t0, plan.dt, plan.n, plan.end) == (333, 10, 100, 1333)


@pytest.mark.parametrize(("initial", "final"), [(0.0, 0.8), (0.0, 1 - 5 / 15), (0.2, 0.99)])
def test_gmp_schedule_is_the_cubic_of_zhu_and_gupta(initial: float, final: float) -> None:
    t0, dt, n = 30, 7, 20
    values = [
        gmp_sparsity(t, initial=initial, final=final, t0=t0, dt=dt, n=n)
        for t in range(t0 + n * dt + 50)
    ]
    # Starts at the initial sparsity (before and at t0), reaches the final one at t0 + n dt.
    assert values[0] == values[t0] == initial
    assert values[t0 + n * dt] == final
    assert all(v == pytest.approx(final, abs=0) for v in values[t0 + n * dt :])
    # Monotone, and constant between pruning steps.
    assert all(a <= b for a, b in itertools.pairwise(values))
    for k in range(n):
        assert len(set(values[t0 + k * dt : t0 + (k + 1) * dt])) == 1
    # Cubic: (s_t - s_f) / (s_i - s_f) = (1 - k/n)^3 at the pruning steps.
    for k in range(n + 1):
        ratio = (values[t0 + k * dt] - final) / (initial - final)
        assert ratio == pytest.approx((1 - k / n) ** 3, abs=1e-12)
    # Pruning is fastest at the start: the increments shrink.
    jumps = [values[t0 + (k + 1) * dt] - values[t0 + k * dt] for k in range(n)]
    assert all(a >= b - 1e-15 for a, b in itertools.pairwise(jumps))


def test_gmp_schedule_with_a_single_event() -> None:
    assert gmp_sparsity(4, initial=0.0, final=0.9, t0=5, dt=1, n=0) == 0.0
    assert gmp_sparsity(5, initial=0.0, final=0.9, t0=5, dt=1, n=0) == 0.9


# -- one-shot pruning -----------------------------------------------------------------------
@pytest.mark.parametrize(("hidden", "s"), [((), 5), ((), 1), ((), 15), ((7,), 12)])
def test_oneshot_keeps_the_s_largest_magnitudes(hidden: tuple[int, ...], s: int) -> None:
    torch.manual_seed(3)
    layers: list[nn.Module] = []
    width = 4
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, 3)).double()
    slots = [(m, n) for m in model.modules() for n, _ in m.named_parameters(recurse=False)]
    dense = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x = torch.randn(9, 4, dtype=torch.float64)
    expected = iht.hard_threshold(dense, s)  # continuous values: no ties

    pruned = prune_global_(model, s)
    assert pruned == slots
    # While the hooks are on, the forward pass uses the pruned parameters.
    with torch.no_grad():
        hooked = model(x)
    for module, name in pruned:
        prune.remove(module, name)
    after = torch.cat([getattr(m, n).detach().reshape(-1) for m, n in slots])
    assert torch.equal(after, expected)
    assert int(torch.count_nonzero(after)) == s
    with torch.no_grad():
        assert torch.equal(model(x), hooked)


# -- parsing ----------------------------------------------------------------------------
def test_parse_sparsity() -> None:
    assert parse_sparsity("3,5,8", 15) == (3, 5, 8)
    assert parse_sparsity("8, 3,3", 15) == (3, 8)
    assert parse_sparsity("1-3,12", 15) == (1, 2, 3, 12)
    assert parse_sparsity("10%,0.5,1.0", 650) == (65, 325, 650)
    assert parse_sparsity("0.01", 15) == (1,)  # a fraction never rounds to 0
    for bad, message in [
        ("0", "1..15"),
        ("16", "1..15"),
        ("-2", "1..15"),
        ("1.5", "(0, 1]"),
        ("0%", "(0%, 100%]"),
        ("five", "not a count"),
        ("5-3", "empty"),
        ("", "not a count"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
            parse_sparsity(bad, 15)


def test_parse_methods() -> None:
    assert parse_methods("iht, dense") == ("dense", "iht")
    with pytest.raises(ValueError, match="unknown method 'sgd'"):
        parse_methods("iht,sgd")


# -- summary ----------------------------------------------------------------------------
def test_summary_shows_dense_once_and_every_sparse_method_per_s(iris_runs: pd.DataFrame) -> None:
    table = summarise(iris_runs)
    assert list(table["method"]) == ["dense"] + [m for _ in (1, 5, 15) for m in SPARSE_METHODS]
    assert (table["runs"] == 2).all()
    text = format_table(table)
    assert len(text.splitlines()) == 1 + len(table)
    assert text.splitlines()[1].split()[:2] == ["dense", "dense"]


def test_torch_threads_restores_the_setting() -> None:
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


# -- command line ---------------------------------------------------------------------------
ARGS = ["--steps", "30", "--n-monte", "3", "--no-progress"]


def test_cli_writes_results_config_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    code = main(
        ["compare", "--data", "iris", "--sparsity", "2,5", "--seeds", "2", "--out", str(out), *ARGS]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) == len(METHODS) * 2 * 2
    counts = frame.groupby(["method", "sparsity"]).size()
    assert set(counts.index) == {(m, s) for m in METHODS for s in (2, 5)}
    assert (counts == 2).all()
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["sparsity"] == "2,5" and config["levels"] == [2, 5]
    assert config["n_params"] == 15 and config["command"] == "iht compare"
    assert config["gmp_plan"] == {"t0": 5, "dt": 1, "n": 15}
    page = (out / "compare.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    # The table is printed: a header, dense once, every sparse method at each s.
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 + 1 + len(SPARSE_METHODS) * 2

    # The page is drawn from the stored files: iht report draws the same page again.
    (out / "compare.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "compare.html").read_text() == page
    capsys.readouterr()

    # A second run into the same directory is refused, then moved aside with --overwrite.
    again = ["compare", "--sparsity", "3", "--seeds", "1", "--out", str(out), *ARGS]
    assert main(again) == 2
    err = capsys.readouterr().err.strip()
    assert "not empty" in err and len(err.splitlines()) == 1
    assert main([*again, "--overwrite"]) == 0
    replaced = list(out.glob("replaced-*"))
    assert len(replaced) == 1
    assert len(pd.read_parquet(replaced[0] / "results.parquet")) == len(METHODS) * 2 * 2
    assert len(pd.read_parquet(out / "results.parquet")) == len(METHODS)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sparsity", "0"], "sparsity 0 is out of range: a count of nonzeros must be in 1..15"),
        (["--sparsity", "16"], "must be in 1..15"),
        (["--sparsity", "3", "--hidden", "5", "--sparsity", "99"], "1..43"),
        (["--sparsity", "3", "--methods", "iht,magic"], "unknown method 'magic'"),
        (["--sparsity", "3", "--data", "mnist"], "mnist"),
        (["--sparsity", "3", "--steps", "1"], "'--steps': 1 is not in the range x>=2"),
        (["--sparsity", "3", "--lr", "-1"], "'--lr': '-1' is not 'auto' or a positive number"),
        (["--sparsity", "x"], "not a count"),
        (["--sparsity", "3", "--threads", "-1"], "'--threads': -1 is not in the range x>=0"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "never"
    code = main(["compare", "--out", str(out), *ARGS, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_reads_a_csv_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    iris = data_module.load_builtin("iris")
    csv = tmp_path / "flowers.csv"
    frame = pd.DataFrame(iris.X, columns=["a", "b", "c", "d"]).assign(kind=iris.y)
    frame.to_csv(csv, index=False)
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--data",
            str(csv),
            "--target",
            "kind",
            "--sparsity",
            "4",
            "--seeds",
            "1",
            "--methods",
            "dense,iht",
            "--out",
            str(out),
            *ARGS,
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert len(pd.read_parquet(out / "results.parquet")) == 2


# -- any base optimizer, mini-batches, RigL --------------------------------------------------
#: (method, s) -> (train loss, test accuracy) of seed 0, iris, 40 steps, n_monte 4, from the
#: code before every method moved into one loop (commit dba6815, full-batch GD).
BEFORE_THE_LOOP = {
    ("dense", 2): (0.11805684824834942, 0.9333333333333333),
    ("oneshot", 2): (0.7166617267879765, 0.5333333333333333),
    ("gmp", 2): (0.41669977285430776, 0.5333333333333333),
    ("l1", 2): (0.7166443822002173, 0.5333333333333333),
    ("iht", 2): (0.5140600433997824, 0.6666666666666666),
    ("oneshot", 5): (0.15649759058339996, 0.9333333333333333),
    ("gmp", 5): (0.15193238762973485, 0.9333333333333333),
    ("l1", 5): (0.15739400504625842, 0.9333333333333333),
    ("iht", 5): (0.15644243418813258, 0.9),
}


def test_the_one_loop_gives_the_earlier_full_batch_numbers() -> None:
    """Every method now trains on its own in one loop (any optimizer, any batches); the
    full-batch GD numbers of the methods that were there before are the same, to float64
    rounding: the recorded losses came from one set of package builds, and a later set (numpy
    2.4.6, scikit-learn 1.9.1) moved one of them by one unit in the last place."""
    config = CompareConfig(data="iris", sparsity=(2, 5), seeds=1, steps=STEPS, n_monte=N_MONTE)
    frame = run_compare(config).frame.set_index(["method", "sparsity"])
    for key, (train_loss, test_acc) in BEFORE_THE_LOOP.items():
        assert frame.loc[key, "train_loss"] == pytest.approx(train_loss, rel=1e-12, abs=0), key
        assert frame.loc[key, "test_acc"] == test_acc, key
    # IHT over plain gradient steps equals the wrapper over SGD with the same lr: the same row
    wrapped = run_compare(
        CompareConfig(
            data="iris",
            sparsity=(2,),
            seeds=1,
            steps=STEPS,
            n_monte=N_MONTE,
            methods=("iht",),
            optimizer="sgd",
            lr=float(frame.loc[("iht", 2), "lr"]),
        )
    ).frame
    assert float(wrapped["train_loss"].iloc[0]) == BEFORE_THE_LOOP[("iht", 2)][0]


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_every_method_keeps_its_budget_with_another_optimizer_and_batches(optimizer: str) -> None:
    config = CompareConfig(
        data="digits",
        sparsity="0.1",
        hidden=(8,),
        seeds=1,
        steps=120,
        optimizer=optimizer,
        batch_size=64,
        rigl_every=20,
        dtype="float32",
    )
    frame = run_compare(config).frame
    sparse = frame[frame["method"] != "dense"]
    assert (sparse["nonzeros"] <= sparse["sparsity"]).all()
    assert set(frame["method"]) == set(METHODS)
    assert (frame["grad_evals"] == 120).all()
    assert (frame["lr"] == (0.05 if optimizer == "momentum" else 0.01)).all()


def test_validation_scores_never_see_the_test_rows() -> None:
    base = dict(data="iris", sparsity=(5,), seeds=1, steps=20, n_monte=N_MONTE, methods=("dense",))
    test = run_compare(CompareConfig(**base)).frame  # type: ignore[arg-type]
    val = run_compare(CompareConfig(**base, validation_fraction=0.25)).frame  # type: ignore[arg-type]
    assert int(test["n_train"].iloc[0]) == 120 and int(test["n_test"].iloc[0]) == 30
    assert int(val["n_train"].iloc[0]) == 90 and int(val["n_test"].iloc[0]) == 30  # from the 120


def test_rigl_mask_drops_the_smallest_and_grows_the_largest_gradients() -> None:
    from iht.baselines import rigl_fraction, rigl_mask

    w = torch.tensor([5.0, 0.1, 3.0, 0.0, 0.0, 0.0])
    g = torch.tensor([0.0, 0.0, 0.0, 2.0, -7.0, 1.0])
    active = w != 0
    new = rigl_mask(w, g, active, 1)
    assert new.tolist() == [True, False, True, False, True, False]  # 0.1 out, |-7| in
    assert int(new.sum()) == int(active.sum())
    tied = rigl_mask(torch.ones(4), torch.ones(4), torch.tensor([True, True, False, False]), 1)
    assert tied.tolist() == [True, False, True, False]  # the smaller indices win ties
    assert rigl_fraction(0, fraction=0.3, end=100) == pytest.approx(0.3)
    assert rigl_fraction(50, fraction=0.3, end=100) == pytest.approx(0.15)
    assert rigl_fraction(100, fraction=0.3, end=100) == 0.0


def test_a_fraction_of_a_cnn_counts_the_cnn_parameters() -> None:
    # s = 10% of the model that is trained, not of the MLP the same options would build.
    config = CompareConfig(
        data="digits",
        sparsity="0.1",
        model="cnn",
        methods=("iht",),
        seeds=1,
        steps=4,
        optimizer="adam",
        batch_size=64,
        dtype="float32",
    )
    frame = run_compare(config).frame
    size = int(frame["n_params"].iloc[0])
    cnn = iht.models.build_cnn((1, 8, 8), 10)
    assert size == sum(p.numel() for p in cnn.parameters())
    s = int(frame["sparsity"].iloc[0])
    assert s == (size + 5) // 10  # round half up of 10% of P
    assert int(frame["nonzeros"].iloc[0]) <= s
