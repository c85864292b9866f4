"""Regression: the task's loss and score, the diabetes data, honest targets, ``iht train``
end to end with ``--task regression``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from commands import one_thread, train_cli  # noqa: F401 (the fixture)
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import r2_score

from iht.certify import certify_budget, constant_output_loss
from iht.cli import main
from iht.data import MAX_GUESSED_CLASSES, DataError, load_csv, load_dataset
from iht.experiments.train import read_train_run
from iht.tasks import CLASSIFICATION, REGRESSION, Task
from iht.training import History


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30), st.integers(0, 2**31 - 1))
def test_r2_is_sklearns(values: list[float], seed: int) -> None:
    y = torch.tensor(values, dtype=torch.float64)
    if float(y.max() - y.min()) < 1e-6:
        assert math.isnan(REGRESSION.score(torch.zeros(len(y), 1, dtype=torch.float64), y)) or (
            float(((y - y.mean()) ** 2).sum()) > 0
        )
        return
    pred = torch.randn(
        len(y), 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    assert REGRESSION.score(pred, y) == pytest.approx(
        r2_score(y.numpy(), pred.squeeze(1).numpy()), rel=1e-9, abs=1e-9
    )


def test_regression_loss_is_the_mse_of_one_output() -> None:
    out = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    y = torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64)
    assert float(REGRESSION.loss(out, y)) == pytest.approx((1 + 0 + 9) / 3)
    # the best constant prediction, the mean, reaches the variance and R^2 = 0
    mean = torch.full((3, 1), float(y.mean()), dtype=torch.float64)
    assert float(REGRESSION.loss(mean, y)) == pytest.approx(REGRESSION.constant_loss(y))
    assert REGRESSION.score(mean, y) == pytest.approx(0.0, abs=1e-12)


def test_classification_constant_loss_is_the_label_entropy() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    assert CLASSIFICATION.constant_loss(labels) == pytest.approx(constant_output_loss(labels))


def test_unknown_task_is_refused() -> None:
    with pytest.raises(ValueError, match="task must be one of classification, regression"):
        Task("ranking")


def test_diabetes_ships_as_a_regression_set() -> None:
    data = load_dataset("diabetes")
    assert data.task == "regression" and data.X.shape == (442, 10) and data.n_outputs == 1
    assert data.y.dtype == np.float64 and len(np.unique(data.y)) == 214
    with pytest.raises(DataError, match="diabetes is a regression data set"):
        load_dataset("diabetes", task="classification")
    with pytest.raises(DataError, match="iris is a classification data set"):
        load_dataset("iris", task="regression")


def _write(path: Path, target: list[str]) -> Path:
    rng = np.random.default_rng(0)
    lines = ["a,b,y"] + [f"{rng.normal():.4f},{rng.normal():.4f},{t}" for t in target]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_numeric_target_with_many_values_is_never_guessed_into_classes(tmp_path: Path) -> None:
    many = _write(tmp_path / "many.csv", [str(i) for i in range(MAX_GUESSED_CLASSES + 1)])
    with pytest.raises(DataError, match=r"21 distinct numbers in 21 rows; pass --task regression"):
        load_csv(many, target="y")
    assert load_csv(many, target="y", task="classification").n_classes == MAX_GUESSED_CLASSES + 1
    assert load_csv(many, target="y", task="regression").task == "regression"
    few = _write(tmp_path / "few.csv", [str(i % 3) for i in range(30)])
    assert load_csv(few, target="y").n_classes == 3  # labels 0, 1, 2 are still classes
    real = _write(tmp_path / "real.csv", ["1.5", "2.25", "3"])
    with pytest.raises(
        DataError,
        match=r"holds the number '1.5' on line 2, not a class label; pass --task regression",
    ):
        load_csv(real, target="y")
    with pytest.raises(DataError, match="for a numeric target pass --task regression"):
        load_csv(real, target="y", task="classification")


def test_regression_targets_must_be_numbers_that_vary(tmp_path: Path) -> None:
    words = _write(tmp_path / "words.csv", ["low", "high", "low"])
    with pytest.raises(DataError, match=r"holds 'low' on line 2; a regression target must be"):
        load_csv(words, target="y", task="regression")
    flat = _write(tmp_path / "flat.csv", ["7", "7", "7"])
    with pytest.raises(DataError, match="is the constant '7'; there is nothing to regress"):
        load_csv(flat, target="y", task="regression")


def test_a_regression_history_names_its_score() -> None:
    history = History(layers=("0",), score="r2")
    history.step.append(0)
    for name in ("train_loss", "batch_loss", "test_loss"):
        getattr(history, name).append(0.5)
    history.train_score.append(0.25)
    history.test_score.append(0.125)
    for name in ("entered", "left", "nonzeros"):
        getattr(history, name).append(1)
    history.layer_nonzeros["0"] = [1]
    columns = history.columns()
    assert "train_r2" in columns and "train_accuracy" not in columns
    back = History.from_columns(("0",), columns, score="r2")
    assert back == history
    with pytest.raises(ValueError, match="missing"):
        History.from_columns(("0",), columns)  # read as a classification history


def test_a_constant_regression_output_is_not_certified(tmp_path: Path) -> None:
    """A network whose output ignores the input sits at the target's variance: degenerate."""
    from iht import plan_budget

    gen = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = X[:, 0] * 2.0
    y = (y - y.mean()) / y.std(unbiased=False)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    budget = plan_budget(model, 4)
    cert = certify_budget(
        model,
        lambda m: REGRESSION.loss(m(X), y),
        lr=0.1,
        budget=budget,
        inputs=X,
        constant_loss=REGRESSION.constant_loss(y),
    )
    assert cert["stable"] is False and cert["degenerate"]


def test_iht_train_regression_on_diabetes_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "diabetes"
    printed = train_cli(
        capsys, out, "--data", "diabetes", "--hidden", "16", "--sparsity", "0.3", "--steps", "400"
    )
    assert "a numeric target (mean" in printed and "R²" in printed and "RMSE" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert metrics["task"] == "regression" and metrics["test_accuracy"] is None
    # the reported RMSE is the MSE of the standardised target, back in the target's units
    std = config["data"]["target_std"]
    assert metrics["test_rmse"] == pytest.approx(math.sqrt(metrics["test_loss"]) * std)
    assert 0.3 < metrics["test_r2"] < 0.7  # a linear model reaches ~0.45 on these rows
    assert metrics["nonzeros"] <= metrics["sparsity"]
    history = pd.read_parquet(out / "history.parquet")
    assert {"train_r2", "test_r2"} <= set(history.columns)
    assert "train_accuracy" not in history.columns
    assert (out / "report.html").exists() and "R²" in (out / "report.html").read_text()
    run = read_train_run(out)
    assert run.metrics.test_score == metrics["test_r2"]
    assert main(["report", str(out)]) == 0  # the report redraws from the stored files


def test_iht_train_with_a_task_its_data_lacks_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = train_cli(
        capsys, tmp_path / "x", "--data", "diabetes", "--task", "classification",
        "--sparsity", "5", code=2,
    )  # fmt: skip
    assert printed.strip() == (
        "iht: error: diabetes is a regression data set; --task classification does not apply to it"
    )
    assert not (tmp_path / "x").exists()


def test_iht_train_refuses_to_guess_a_csv_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    path = tmp_path / "diabetes.csv"
    frame.to_csv(path, index=False)
    printed = train_cli(
        capsys, tmp_path / "a", "--data", str(path), "--target", "target", "--sparsity", "5",
        code=2,
    )  # fmt: skip
    assert "214 distinct numbers in 442 rows; pass --task regression" in printed
    assert "Traceback" not in printed
    train_cli(
        capsys, tmp_path / "b", "--data", str(path), "--target", "target", "--task",
        "regression", "--sparsity", "5", "--steps", "50", "--no-report",
    )  # fmt: skip
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["test_r2"] > 0
