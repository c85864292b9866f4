"""``iht train`` end to end through ``iht.cli.main``: outputs, budgets, CSV errors, refusals."""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from iht.certify import instability_reasons
from iht.cli import main
from iht.cli.train import train_command
from iht.experiments.config import TrainConfig
from iht.experiments.train import OUTPUT_FILES, read_train_run
from iht.report.train import REPORT_FIGURES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--no-progress", "--n-monte", "5"]


@pytest.fixture(autouse=True, scope="module")
def registered() -> Iterator[None]:
    """The command is registered by iht.cli; tests run torch on one thread."""
    from iht.cli import cli

    assert cli.commands["train"] is train_command
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(
    capsys: pytest.CaptureFixture[str], out: Path, *args: str, code: int = 0, report: bool = False
) -> tuple[str, str]:
    """Run ``iht train ARGS --out OUT`` in-process; figures only when asked (they cost ~1 s)."""
    argv = ["train", *args, *FAST, "--out", str(out)]
    if not report:
        argv.append("--no-report")
    result = main(argv)
    captured = capsys.readouterr()
    assert result == code, captured.err
    return captured.out, captured.err


def load(out: Path, name: str) -> Any:
    return json.loads((out / name).read_text())


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One small end-to-end run, shared by the tests that only read its files."""
    out = tmp_path_factory.mktemp("train") / "iris"
    code = main(
        [
            "train",
            "--data",
            "iris",
            "--sparsity",
            "5",
            "--steps",
            "60",
            "--out",
            str(out),
            "--dense-reference",
            *FAST,
        ]
    )
    assert code == 0
    return out, (out / "report.html").read_text()


# -- outputs ----------------------------------------------------------------------------
def test_train_writes_every_output_file(iris_run: tuple[Path, str]) -> None:
    out, _ = iris_run
    for name in (*OUTPUT_FILES, "report.html"):
        assert (out / name).is_file(), name
    for name in REPORT_FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)

    config = load(out, "config.json")
    assert config["budget"]["sparsity"] == 5 and config["budget"]["mode"] == "global"
    assert config["data"]["n_train"] == 120 and config["data"]["n_test"] == 30
    assert config["training"]["steps"] == 60 and config["config"]["lr"] is None

    history = pd.read_parquet(out / "history.parquet")
    assert len(history) == 60 and history["step"].tolist() == list(range(60))
    assert (history["nonzeros"] <= 5).all()
    assert {
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "entered",
        "left",
        "nonzeros.0",
    } <= set(history.columns)

    metrics = load(out, "metrics.json")
    assert metrics["nonzeros"] <= 5 and metrics["n_params"] == 15 and metrics["steps"] == 60
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["time_s"]["total"] > 0
    assert metrics["dense"]["train_loss"] > 0

    cert = load(out, "certificate.json")
    assert cert["sparsity"] == 5 and cert["lr"] == pytest.approx(config["lr"]["value"])
    assert cert["epsilon"] == pytest.approx(cert["loss"] - metrics["dense"]["train_loss"])

    state = torch.load(out / "model.pt")
    masks = torch.load(out / "mask.pt")
    assert set(state) == set(masks) == {"0.weight", "0.bias"}
    assert sum(int(m.sum()) for m in masks.values()) == metrics["nonzeros"]
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and torch.equal(mask, state[name] != 0)


def test_report_is_self_contained_with_its_figures(iris_run: tuple[Path, str]) -> None:
    _, page = iris_run
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(REPORT_FIGURES)
    assert all(base64.b64decode(image).startswith(PNG_MAGIC) for image in images)
    for name in REPORT_FIGURES:
        assert f'<figure id="{name}">' in page
    assert "Certificate" in page and "epsilon" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched


def test_iht_report_redraws_the_run_from_its_files(
    iris_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, page = iris_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "figures")
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert capsys.readouterr().err == f"report: {copy / 'report.html'}\n"
    assert (copy / "report.html").read_text() == page  # the same page, from the files alone
    for name in REPORT_FIGURES:
        assert (copy / "figures" / f"{name}.png").read_bytes() == (
            out / "figures" / f"{name}.png"
        ).read_bytes()


def test_the_stored_config_is_the_config_given(iris_run: tuple[Path, str]) -> None:
    run = read_train_run(iris_run[0])
    assert run.record.config == TrainConfig(
        data="iris", sparsity="5", steps=60, dense_reference=True, n_monte=5
    )
    assert run.record.budget.sparsity == 5 and run.metrics.steps == 60


def test_summary_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = train(capsys, tmp_path / "o", "--data", "iris", "--sparsity", "5", "--steps", "5")
    assert "test accuracy" in out and "nonzeros " in out and "/ 15" in out
    assert "certificate: stable=" in out and str(tmp_path / "o") in out


def test_no_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    train(capsys, out, "--data", "iris", "--sparsity", "5", "--steps", "2", "--lr", "0.5")
    assert {p.name for p in out.iterdir()} == set(OUTPUT_FILES) - {"report.html"} | {".lock"}


def test_digits_mlp_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "digits"
    train(capsys, out, "--data", "digits", "--hidden", "8", "--sparsity", "0.1", "--steps", "10")
    config, metrics = load(out, "config.json"), load(out, "metrics.json")
    p = 64 * 8 + 8 + 8 * 10 + 10
    assert config["model"]["n_params"] == p and config["budget"]["sparsity"] == round(0.1 * p)
    assert metrics["nonzeros"] <= round(0.1 * p)
    assert [layer["kind"] for layer in metrics["layers"]] == ["Linear 64->8", "Linear 8->10"]


# -- budgets through the command --------------------------------------------------------
@pytest.mark.parametrize(("given", "expected"), [("5", 5), ("0.2", 3), ("15", 15), ("0.01", 1)])
def test_sparsity_as_count_or_fraction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str, expected: int
) -> None:
    out = tmp_path / "o"
    train(capsys, out, "--data", "iris", "--sparsity", given, "--steps", "3", "--lr", "0.5")
    assert load(out, "config.json")["budget"]["sparsity"] == expected
    assert load(out, "metrics.json")["nonzeros"] <= expected


def test_per_layer_budgets_every_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    train(
        capsys,
        out,
        "--data",
        "wine",
        "--hidden",
        "6",
        "--sparsity",
        "0.25",
        "--per-layer",
        "--steps",
        "40",
        "--lr",
        "0.3",
    )
    budget = load(out, "config.json")["budget"]
    pools = {p["name"]: p for p in budget["pools"]}
    assert set(pools) == {"0", "2"}
    assert sum(p["sparsity"] for p in pools.values()) == budget["sparsity"] == round(0.25 * 105)
    history = pd.read_parquet(out / "history.parquet")
    for name, pool in pools.items():
        assert (history[f"nonzeros.{name}"] <= pool["sparsity"]).all()
    layers = {layer["name"]: layer for layer in load(out, "metrics.json")["layers"]}
    assert all(layers[n]["budget"] == pools[n]["sparsity"] for n in pools)


def test_exclude_biases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    train(
        capsys,
        out,
        "--data",
        "iris",
        "--hidden",
        "5",
        "--sparsity",
        "6",
        "--exclude-biases",
        "--steps",
        "30",
        "--lr",
        "0.5",
    )
    masks = torch.load(out / "mask.pt")
    assert masks["0.bias"].all() and masks["2.bias"].all()
    assert int(masks["0.weight"].sum() + masks["2.weight"].sum()) <= 6
    metrics = load(out, "metrics.json")
    assert (
        metrics["budgeted_nonzeros"] <= 6
        and metrics["nonzeros"] == metrics["budgeted_nonzeros"] + 8
    )
    history = pd.read_parquet(out / "history.parquet")
    # Each step: the dense biases (5 + 3) plus at most 6 weights.
    assert (history["nonzeros"] <= 6 + 8).all()


def test_lr_auto_or_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train(capsys, tmp_path / "a", "--data", "iris", "--sparsity", "5", "--steps", "3")
    train(
        capsys, tmp_path / "n", "--data", "iris", "--sparsity", "5", "--steps", "3", "--lr", "0.25"
    )
    auto, given = (
        load(tmp_path / "a", "config.json")["lr"],
        load(tmp_path / "n", "config.json")["lr"],
    )
    assert auto["l2s_estimate"] > 0 and auto["value"] == pytest.approx(1 / auto["l2s_estimate"])
    assert auto["n_monte"] == 5
    assert load(tmp_path / "n", "config.json")["config"]["lr"] == 0.25
    assert given == {
        "value": 0.25,
        "l2s_estimate": None,
        "n_monte": None,
        "estimated_with_sparsity": None,
        "source": "given",
    }
    assert load(tmp_path / "n", "certificate.json")["lr"] == 0.25


def test_minibatch_covering_every_row_equals_full_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        "--data",
        "iris",
        "--sparsity",
        "6",
        "--steps",
        "25",
        "--lr",
        "0.5",
        "--dtype",
        "float64",
    ]
    train(capsys, tmp_path / "full", *common)
    train(capsys, tmp_path / "mini", *common, "--batch-size", "500")
    train(capsys, tmp_path / "sgd", *common, "--batch-size", "16")
    full, mini = (
        torch.load(tmp_path / "full" / "model.pt"),
        torch.load(tmp_path / "mini" / "model.pt"),
    )
    sgd = torch.load(tmp_path / "sgd" / "model.pt")
    assert all(torch.equal(full[k], mini[k]) for k in full)
    assert not all(torch.equal(full[k], sgd[k]) for k in full)
    assert load(tmp_path / "sgd", "config.json")["training"]["algorithm"].startswith("SIHT")


def test_epochs_set_the_step_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    train(
        capsys,
        out,
        "--data",
        "iris",
        "--sparsity",
        "5",
        "--epochs",
        "2",
        "--batch-size",
        "50",
        "--lr",
        "0.5",
    )
    assert load(out, "config.json")["training"]["steps"] == 2 * 3  # ceil(120 / 50) = 3
    assert len(pd.read_parquet(out / "history.parquet")) == 6


# -- CSV files --------------------------------------------------------------------------
def test_csv_example_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["x1,x2,kind"] + [
        f"{i % 7 - 3},{(i * 5) % 11 - 5},{'left' if (i % 7 - 3) + ((i * 5) % 11 - 5) < 0 else 'right'}"
        for i in range(40)
    ]
    path = tmp_path / "points.csv"
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "o"
    stdout, _ = train(
        capsys,
        out,
        "--data",
        str(path),
        "--target",
        "kind",
        "--sparsity",
        "3",
        "--steps",
        "100",
        "--lr",
        "1",
        report=True,
    )
    config = load(out, "config.json")
    assert config["data"]["class_names"] == ["left", "right"] and config["data"]["n_test"] == 8
    assert "data points:" in stdout and "report: " in stdout
    assert (out / "report.html").is_file() and (out / "figures" / "layers.png").is_file()
    assert load(out, "metrics.json")["train_accuracy"] > 0.8


CSV_CASES = {
    "empty": ("", "is empty"),
    "header only": ("a,b,y\n", "no data rows"),
    "one class": ("a,b,y\n1,2,x\n3,4,x\n", "single class"),
    "strings in a feature": (
        "a,b,y\n1,oops,x\n3,4,z\n",
        "'b' is not numeric (line 2 holds 'oops')",
    ),
    "NaN": ("a,b,y\n1,NaN,x\n3,4,z\n", "'b' has 1 missing value"),
    "empty cell": ("a,b,y\n1,2,x\n,4,z\n", "'a' has 1 missing value"),
    "single row": ("a,b,y\n1,2,x\n", "only 1 data row"),
    "missing target": ("a,b,label\n1,2,x\n3,4,z\n", "target column 'y' is not in"),
    "no header": ("1,2,3\n4,5,6\n", "no header row"),
    "one column": ("y\nx\nz\n", "1 column"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_csv_errors_are_one_line_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    text, message = CSV_CASES[case]
    path = tmp_path / "bad.csv"
    path.write_text(text)
    out = tmp_path / "o"
    _, err = train(capsys, out, "--data", str(path), "--target", "y", "--sparsity", "2", code=2)
    assert err.startswith("iht: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # nothing written for bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "iris", "--sparsity", "0"], "count of nonzeros must be in 1..15"),
        (["--data", "iris", "--sparsity", "16"], "1..15"),
        (["--data", "iris", "--sparsity", "1.5"], "parameters must be in (0, 1]"),
        (["--data", "iris", "--sparsity", "1.5%x"], "not a count (100), a fraction (0.1)"),
        (["--data", "iris", "--sparsity", "5", "--lr", "-1"], "'--lr': '-1' is not 'auto' or a"),
        (["--data", "iris", "--sparsity", "5", "--lr", "fast"], "'--lr': 'fast' is not"),
        (["--data", "iris", "--sparsity", "5", "--steps", "3", "--epochs", "2"], "not both"),
        (["--data", "iris", "--sparsity", "5", "--steps", "0"], "'--steps': 0 is not in the"),
        (["--data", "iris", "--sparsity", "5", "--target", "y"], "only for CSV"),
        (["--data", "iris", "--sparsity", "5", "--test-fraction", "1"], "'--test-fraction'"),
        (["--data", "iris", "--sparsity", "5", "--hidden", "4,x"], "hidden sizes"),
        (["--data", "nope.csv", "--target", "y", "--sparsity", "5"], "no such file"),
        (
            [
                "--data",
                "iris",
                "--sparsity",
                "5",
                "--exclude-biases",
                "--per-layer",
                "--sparsity",
                "13",
            ],
            "1..12",
        ),
    ],
)
def test_bad_settings_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    _, err = train(capsys, tmp_path / "o", *args, code=2)
    assert err.count("\n") == 1 and message in err, err


# -- the output directory ---------------------------------------------------------------
def test_non_empty_out_is_refused_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    args = ["--data", "iris", "--sparsity", "5", "--steps", "3", "--lr", "0.5"]
    train(capsys, out, *args)
    first = (out / "metrics.json").read_text()
    # the same run again: it is there already, its report is drawn (nothing is recomputed)
    stdout, _ = train(capsys, out, *args)
    assert "holds this run already" in stdout
    assert (out / "metrics.json").read_text() == first
    # another run: refused
    _, err = train(capsys, out, *args[:-1], "0.25", code=2)
    assert "is not empty" in err and "--overwrite" in err and err.count("\n") == 1
    assert (out / "metrics.json").read_text() == first

    stdout, _ = train(capsys, out, *args, "--overwrite")
    moved = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert len(moved) == 1 and (moved[0] / "metrics.json").read_text() == first
    assert (out / "metrics.json").is_file() and "moved the earlier contents" in stdout


def test_default_out_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "iris", "--sparsity", "0.3", "--steps", "2", *FAST]) == 0
    capsys.readouterr()
    assert (tmp_path / "results" / "train-iris-linear-s0.3-seed0" / "report.html").is_file()


def test_non_finite_training_stops_and_keeps_what_was_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    _, err = train(
        capsys, out, "--data", "iris", "--sparsity", "5", "--lr", "1e300", "--steps", "20", code=2
    )
    assert err.startswith("iht: error: training stopped at step") and err.count("\n") == 1
    assert "Traceback" not in err and "history.parquet" in err
    assert (out / "config.json").is_file() and (out / "history.parquet").is_file()
    assert not (out / "metrics.json").exists()


def test_per_layer_budget_of_zero_is_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stdout, _ = train(
        capsys,
        tmp_path / "o",
        "--data",
        "iris",
        "--hidden",
        "5",
        "--sparsity",
        "1",
        "--per-layer",
        "--steps",
        "2",
        "--lr",
        "0.5",
    )
    assert "warning: layer(s) 2 get a budget of 0" in stdout


def test_instability_reasons() -> None:
    cert = {
        "stable": False,
        "grad_tol": 1e-3,
        "max_grad_on_support": 5e-3,
        "off_support_ratio": 1.5,
        "tie": True,
    }
    reasons = instability_reasons(cert)
    assert len(reasons) == 3 and "5.00e-03 > grad_tol" in reasons[0]
    assert "would enter" in reasons[1] and "tie" in reasons[2]
    assert instability_reasons({**cert, "stable": True}) == []


# -- deep-network recipes: a CNN, other optimizers, schedules --------------------------------
def test_a_cnn_on_mnist1d_with_the_recipe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = train(
        capsys,
        tmp_path / "o",
        "--data",
        "mnist1d",
        "--model",
        "cnn",
        "--sparsity",
        "10%",
        "--steps",
        "60",
        "--eval-every",
        "20",
    )
    config, metrics = load(tmp_path / "o", "config.json"), load(tmp_path / "o", "metrics.json")
    assert config["model"]["n_params"] == 5210 and config["budget"]["sparsity"] == 521
    assert config["data"]["n_train"] == 4000 and config["data"]["n_test"] == 1000  # its split
    training = config["training"]
    assert (training["optimizer"], training["schedule"], training["batch_size"]) == (
        "adam",
        "cubic",
        100,
    )
    assert config["lr"]["source"] == "recipe" and config["lr"]["value"] == 0.01
    assert metrics["nonzeros"] <= 521
    history = pd.read_parquet(tmp_path / "o" / "history.parquet")
    assert history["train_loss"].notna().sum() == 4  # steps 0, 20, 40 and the last
    # the cubic schedule: dense for the first 1/6, then shrinking to s by 2/3 of the run
    assert history["nonzeros"].iloc[5] == 5210 and (history["nonzeros"].iloc[40:] <= 521).all()
    assert "this run took adam steps" in out and "model CNN 40-10 (25 channels" in out


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adamw"])
def test_every_optimizer_keeps_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], optimizer: str
) -> None:
    out = tmp_path / optimizer
    train(
        capsys,
        out,
        "--data",
        "digits",
        "--hidden",
        "16",
        "--sparsity",
        "0.2",
        "--steps",
        "30",
        "--optimizer",
        optimizer,
        "--schedule",
        "constant",
        "--lr",
        "0.05",
        "--batch-size",
        "64",
    )
    history = pd.read_parquet(out / "history.parquet")
    budget = load(out, "config.json")["budget"]["sparsity"]
    assert (history["nonzeros"] <= budget).all()


def test_sgd_through_the_wrapper_is_the_iht_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data", "iris", "--sparsity", "5", "--steps", "40"]
    train(capsys, tmp_path / "iht", *args)
    train(capsys, tmp_path / "sgd", *args, "--optimizer", "sgd")
    a = pd.read_parquet(tmp_path / "iht" / "history.parquet")
    b = pd.read_parquet(tmp_path / "sgd" / "history.parquet")
    assert a.equals(b)  # the same lr (1 / L_hat_2s), the same steps, bit for bit


def test_the_default_out_directory_names_a_cnn() -> None:
    from iht.experiments.config import TrainConfig
    from iht.experiments.train import default_out

    cnn = TrainConfig(data="mnist1d", sparsity=0.1, model="cnn")
    assert default_out(cnn).name == "train-mnist1d-cnn-s0.1-seed0"  # it said "linear"
    wide = TrainConfig(data="mnist1d", sparsity=0.1, model="cnn", hidden=(32,))
    assert default_out(wide).name == "train-mnist1d-cnn32-s0.1-seed0"
    mlp = TrainConfig(data="digits", sparsity=0.1, hidden=(64, 64))
    assert default_out(mlp).name == "train-digits-h64-64-s0.1-seed0"
