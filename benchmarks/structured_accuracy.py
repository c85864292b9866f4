"""Accuracy against the budget's shape, with what the exported model costs, from real runs.

    python benchmarks/structured_accuracy.py --setting digits-mlp|mnist1d-cnn [--seeds 3]
        [--out results/structured]

For each shape of the budget, ``iht train``'s own recipe (``run_train``; digits MLP 64: the
paper's IHT at 1/L_hat_2s, full batch; MNIST-1D CNN of 24 channels (24 so that its rows, 24 x 5
inputs, fit 2:4): Adam + the cubic schedule, 6,000 steps of 100) is trained at every seed:

- entry: the s largest entries, s = 50%, 25%, 10% of the parameters;
- neuron / channel: whole hidden neurons (channels) with their biases, 50%, 25%, 10% of them;
- 2:4: two of every four inputs of every weight whose rows fit (the first conv's rows of 5 do
  not: it stays dense).

Each run is stored under ``OUT/SETTING/`` (an existing finished run is read back, not redone).
Printed: test accuracy median [min, max] over the seeds, nonzeros, the exported file against
the dense ``model.pt`` (bytes), and CPU latency of seed 0's model at batch 1 and 256 (median of
interleaved repetitions, ms, with the ratio to the dense model measured in the same run):
entry runs export their Linear and Conv layers to CSR (``iht.export.sparsify_layers``; a
conv as unfold + CSR product), neuron/channel runs to the shrunk dense model (``iht.shrink.shrink``), 2:4 has no
CPU kernel (``torch.sparse.to_sparse_semi_structured`` needs a CUDA GPU): it runs dense.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from iht.experiments.config import TrainConfig
from iht.experiments.train import read_train_run, run_train
from iht.export import sparsify_layers
from iht.models import build_model
from iht.shrink import shrink

SETTINGS = {
    "digits-mlp": dict(data="digits", hidden=(64,), model="mlp", features=64, shape=(1, 8, 8)),
    "mnist1d-cnn": dict(data="mnist1d", hidden=(24,), model="cnn", features=40, shape=(1, 40)),
}
SHAPES = [
    ("entry", "50%"),
    ("entry", "25%"),
    ("entry", "10%"),
    ("group", "50%"),
    ("group", "25%"),
    ("group", "10%"),
    ("2:4", None),
]


def _config(setting: str, structure: str, sparsity: str | None, seed: int) -> TrainConfig:
    spec = SETTINGS[setting]
    if structure == "group":
        structure = "channel" if spec["model"] == "cnn" else "neuron"
    return TrainConfig(
        data=str(spec["data"]),
        hidden=tuple(spec["hidden"]),  # type: ignore[arg-type]
        model=str(spec["model"]),
        sparsity=sparsity,
        structure=structure,
        seed=seed,
    )


def _run(config: TrainConfig, out: Path) -> dict[str, object]:
    if (out / "metrics.json").exists():
        result = read_train_run(out)
    else:
        result = run_train(config, out=out, log=lambda _: None)
    m = result.metrics
    assert m.export is not None
    return {
        "structure": config.structure,
        "sparsity": config.sparsity or config.structure,
        "seed": config.seed,
        "test_accuracy": m.test_accuracy,
        "nonzeros": m.nonzeros,
        "n_params": m.n_params,
        "export_file": m.export.file,
        "export_bytes": m.export.bytes,
        "export_params": m.export.params,
        "dense_bytes": m.export.dense_bytes,
        "seconds": m.time_s.total,
        "directory": str(out),
    }


def _exported(directory: Path, setting: str, structure: str) -> tuple[nn.Module, nn.Module]:
    """(the dense model of this architecture, the run's exported model)."""
    spec = SETTINGS[setting]
    model = build_model(
        int(spec["features"]),  # type: ignore[call-overload]
        10,
        tuple(spec["hidden"]),  # type: ignore[arg-type]
        kind=str(spec["model"]),
        input_shape=tuple(spec["shape"]),  # type: ignore[arg-type]
    )
    model.load_state_dict(torch.load(directory / "model.pt", weights_only=True))
    dense = build_model(
        int(spec["features"]),  # type: ignore[call-overload]
        10,
        tuple(spec["hidden"]),  # type: ignore[arg-type]
        kind=str(spec["model"]),
        input_shape=tuple(spec["shape"]),  # type: ignore[arg-type]
    )
    if structure in ("neuron", "channel"):
        return dense, shrink(model)
    if structure == "entry":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dense, sparsify_layers(model)
    return dense, model  # N:M: no CPU kernel, the model runs dense


def _latency(models: dict[str, nn.Module], features: int, reps: int) -> dict[str, dict[int, float]]:
    """Median ms per forward of each model at batch 1 and 256, the models taking turns."""
    out: dict[str, dict[int, float]] = {name: {} for name in models}
    with torch.inference_mode():
        for batch in (1, 256):
            X = torch.randn(batch, features)
            for model in models.values():
                model(X)
            times: dict[str, list[float]] = {name: [] for name in models}
            for _ in range(reps):
                for name, model in models.items():
                    start = time.perf_counter()
                    model(X)
                    times[name].append(time.perf_counter() - start)
            for name in models:
                out[name][batch] = statistics.median(times[name]) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("results/structured"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for structure, sparsity in SHAPES:
        for seed in range(args.seeds):
            config = _config(args.setting, structure, sparsity, seed)
            name = f"{config.structure}-{(sparsity or '').rstrip('%')}-seed{seed}".replace(
                "--", "-"
            )
            rows.append(_run(config, args.out / args.setting / name))
            print(f"  {name}: test accuracy {rows[-1]['test_accuracy']:.3f}", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_parquet(args.out / args.setting / "runs.parquet")
    # latency of seed 0's exported models, all measured in one interleaved run with dense
    first = frame[frame["seed"] == 0]
    models: dict[str, nn.Module] = {}
    for _, row in first.iterrows():
        dense, exported = _exported(Path(row["directory"]), args.setting, str(row["structure"]))
        models.setdefault("dense", dense)
        models[f"{row['structure']} {row['sparsity']}"] = exported
    latency = _latency(models, int(SETTINGS[args.setting]["features"]), args.reps)  # type: ignore[call-overload]
    base = latency["dense"]
    print(
        f"\n{args.setting}: {args.seeds} seeds, latency of seed 0 on {torch.get_num_threads()} "
        f"thread, dense {base[1]:.3f} ms (batch 1) / {base[256]:.3f} ms (batch 256)\n"
    )
    print(
        "| budget | test accuracy, median [min, max] | nonzeros | export | bytes (dense) "
        "| batch 1 ms (x dense) | batch 256 ms (x dense) |"
    )
    print("|---|---|---|---|---|---|---|")
    for (structure, sparsity), group in frame.groupby(["structure", "sparsity"], sort=False):
        acc = group["test_accuracy"]
        lat = latency[f"{structure} {sparsity}"]
        label = structure if structure == sparsity else f"{structure} {sparsity}"
        print(
            f"| {label} | {acc.median():.3f} [{acc.min():.3f}, {acc.max():.3f}] "
            f"| {int(group['nonzeros'].median())} / {int(group['n_params'].iloc[0])} "
            f"| {group['export_file'].iloc[0]} ({int(group['export_params'].median())} stored) "
            f"| {int(group['export_bytes'].median()):,} ({int(group['dense_bytes'].iloc[0]):,}) "
            f"| {lat[1]:.3f} ({lat[1] / base[1]:.2f}x) | {lat[256]:.3f} ({lat[256] / base[256]:.2f}x) |"
        )


if __name__ == "__main__":
    main()
