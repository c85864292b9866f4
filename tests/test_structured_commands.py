"""``iht train`` and ``iht compare`` with a structured budget (``--structure``): whole
neurons / channels, N:M patterns, the exported model, the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from commands import compare_cli, one_thread, train_cli  # noqa: F401 (the fixture)


def test_iht_train_neuron_budget_writes_a_smaller_model_that_computes_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from iht.models import build_model
    from iht.shrink import shrink

    out = tmp_path / "neuron"
    printed = train_cli(
        capsys, out, "--data", "digits", "--hidden", "32", "--structure", "neuron",
        "--sparsity", "25%", "--steps", "150", "--no-report",
    )  # fmt: skip
    assert "budget s = 8 of 32 rows" in printed and "kept rows: 0 8/32" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    layer0 = next(x for x in metrics["layers"] if x["name"] == "0")
    assert (layer0["rows"], layer0["kept_rows"]) == (32, 8)
    cost = metrics["export"]
    assert cost["file"] == "model_shrunk.pt" and cost["params"] == 64 * 8 + 8 + 8 * 10 + 10
    assert cost["bytes"] < cost["dense_bytes"] == (out / "model.pt").stat().st_size
    # the stored small model is the shrunk trained model, and computes what it computes
    model = build_model(64, 10, (32,))
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    small = shrink(model)
    stored = torch.load(out / "model_shrunk.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in stored.items()} == {
        k: tuple(v.shape) for k, v in small.state_dict().items()
    }
    small.load_state_dict(stored)
    x = torch.randn(50, 64)
    assert torch.allclose(small(x), model(x), atol=1e-5)


def test_iht_train_2_4_keeps_the_pattern(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nm"
    printed = train_cli(
        capsys, out, "--data", "digits", "--hidden", "32", "--structure", "2:4",
        "--steps", "100", "--no-report",
    )  # fmt: skip
    assert "2:4 pattern in 0" in printed
    state = torch.load(out / "model.pt", weights_only=True)
    w = state["0.weight"]
    assert bool(((w.reshape(-1, 4) != 0).sum(dim=1) <= 2).all())
    cert = json.loads((out / "certificate.json").read_text())
    assert cert["structure"] == "2:4"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--structure", "2:4", "--sparsity", "5"], "an N:M pattern fixes the budget"),
        (["--structure", "neuron"], "--sparsity is required"),
        (["--structure", "neuron", "--sparsity", "5", "--per-layer"], "shape entry budgets"),
        (["--structure", "diagonal", "--sparsity", "5"], "structure must be entry, neuron"),
        (["--structure", "5:4"], "1 <= N <= M"),
    ],
)
def test_iht_train_structure_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    printed = train_cli(capsys, tmp_path / "x", "--data", "digits", "--hidden", "8", *args, code=2)
    assert message in printed and "Traceback" not in printed
    assert len(printed.strip().splitlines()) == 1


def test_iht_compare_with_a_neuron_budget_keeps_every_method_on_whole_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    printed = compare_cli(
        capsys, out, "--data", "digits", "--hidden", "16", "--structure", "neuron",
        "--sparsity", "4", "--seeds", "1", "--steps", "60", "--n-monte", "5",
    )  # fmt: skip
    assert "methods dense, oneshot, gmp, iht" in printed  # the structure's own methods
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame["method"]) == {"dense", "oneshot", "gmp", "iht"}
    # 4 of 16 hidden neurons with their biases, the output layer dense: 4 x 65 + 16 x 10 + 10
    sparse = frame[frame["method"] != "dense"]
    assert (sparse["nonzeros"] <= 4 * 65 + 170).all() and (sparse["sparsity"] == 4).all()


def test_iht_compare_structure_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = compare_cli(
        capsys, tmp_path / "a", "--data", "digits", "--hidden", "8", "--structure", "neuron",
        "--sparsity", "4", "--methods", "iht,rigl", code=2,
    )  # fmt: skip
    assert "rigl have no neuron form here; with --structure neuron choose from" in printed
    printed = compare_cli(
        capsys, tmp_path / "b", "--data", "digits", "--structure", "2:4", "--sparsity", "4",
        code=2,
    )  # fmt: skip
    assert "leave out --sparsity" in printed
    printed = compare_cli(capsys, tmp_path / "c", "--data", "diabetes", "--sparsity", "5", code=2)
    assert printed.strip() == (
        "iht: error: iht compare compares classifiers; diabetes is a regression data set "
        "(train it with iht train --task regression)"
    )
