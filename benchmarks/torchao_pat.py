"""torchao's PAT ``PruneOptimizer`` as an outside peer on the runs of deep_comparison.py.

    pip install torchao==0.18.0          # not a dependency of iht; this script needs it
    python benchmarks/torchao_pat.py --setting mnist1d-cnn [--out results/deep]
    python benchmarks/deep_comparison.py --table results/deep   # PAT appears as "pat"

PAT (torchao.prototype.pat) keeps a dense latent copy of the weights, lets the base optimizer
update the latent copy, and shows the network its projection; here the projection is
``GlobalMinSparsityConstraint`` with ``ElemGrouper`` (the globally smallest entries zeroed,
over every parameter, biases included, as the budget s of deep_comparison.py counts them),
its cubic ramp of the sparsity (``min_sparsity_schedule``) from ``warmup_steps`` = 1/6 of the
run to ``healing_start_step`` = 2/3 of the run (the same window as GMP's and IHT's), then
"healing": the mask frozen, the kept weights fine-tuned.

Same data, splits, initialisation, batches, base optimizer (Adam), steps, budget and lr
grid (chosen on the same validation split, at 90% sparsity, seeds 0 and 1) as every method
of deep_comparison.py, through the same private pieces of ``iht.experiments.compare`` (so
a change there changes both). Results go to ``OUT/<setting>/pat-tuning.parquet`` and
``OUT/<setting>/pat-runs.parquet`` as method ``pat`` (a run already stored is not run again;
files of their own, so this can run beside deep_comparison.py).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from deep_comparison import DENSITIES, LRS, SEEDS, TUNE_DENSITY, TUNE_SEEDS, _append, _config

from iht.baselines import nonzeros
from iht.budget import parse_sparsity_list
from iht.data import load_dataset
from iht.experiments.compare import _INIT, _generator, _Problem, compared_model
from iht.init import reset_parameters_


def _pat_run(
    setting: str, lr: float, density: float, seed: int, validation: bool
) -> dict[str, Any]:
    from torchao.prototype.pat.optim import PruneOptimizer

    config = _config(
        setting, "dense", lr, str(density), 1, validation_fraction=0.2 if validation else None
    )
    dataset = load_dataset(config.data)
    problem = _Problem(dataset, config, seed, torch.float32)
    model = compared_model(config, dataset)
    reset_parameters_(model, generator=_generator(seed, _INIT))
    size = sum(p.numel() for p in model.parameters())
    (s,) = parse_sparsity_list(str(density), size)
    steps = config.steps
    base = torch.optim.Adam(
        [
            {
                "params": list(model.parameters()),
                "prox_type": "GlobalMinSparsityConstraint",
                "group_type": "ElemGrouper",
                "min_sparsity": 1 - s / size,
                "min_sparsity_schedule": True,
            }
        ],
        lr=lr,
    )
    optimizer = PruneOptimizer(
        base, warmup_steps=steps // 6, healing_start_step=2 * steps // 3, reg_lambda=0.0
    )
    batches = problem.batches()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        problem.loss(model, next(batches)).backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    metrics = problem.evaluate(model)
    count = nonzeros(model)
    if count > s:  # PAT's own bookkeeping, checked as every method's is
        raise RuntimeError(f"pat ended with {count} nonzeros > s = {s} (seed {seed})")
    return {
        "method": "pat",
        "sparsity": s,
        "seed": seed,
        "n_params": size,
        "lr": lr,
        "steps": steps,
        **metrics,
        "nonzeros": count,
        "seconds": seconds,
        "setting": setting,
    }


def run(setting: str, out: Path) -> None:
    torch.set_num_threads(1)
    directory = out / setting
    directory.mkdir(parents=True, exist_ok=True)
    tuning_path, runs_path = directory / "pat-tuning.parquet", directory / "pat-runs.parquet"
    tuned = pd.read_parquet(tuning_path) if tuning_path.exists() else pd.DataFrame()
    for lr in LRS:
        if len(tuned) and ((tuned["method"] == "pat") & (tuned["lr"] == lr)).any():
            continue
        start = time.perf_counter()
        rows = [_pat_run(setting, lr, TUNE_DENSITY, seed, True) for seed in range(TUNE_SEEDS)]
        for row in rows:  # a diverged lr is a candidate that lost
            row["test_acc"] = row["test_acc"] if math.isfinite(row["train_loss"]) else 0.0
        _append(tuning_path, pd.DataFrame(rows))
        tuned = pd.read_parquet(tuning_path)
        acc = statistics.median(r["test_acc"] for r in rows)
        print(
            f"{setting} tune pat lr {lr:g}: validation acc {acc:.3f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    pat = tuned[tuned["method"] == "pat"]
    best = float(pat.groupby("lr")["test_acc"].median().idxmax())  # type: ignore[arg-type]
    print(f"{setting}: chosen lr for pat {best:g}", flush=True)
    done = pd.read_parquet(runs_path) if runs_path.exists() else pd.DataFrame()
    if len(done) and (done["method"] == "pat").any():
        return
    start = time.perf_counter()
    rows = [_pat_run(setting, best, d, seed, False) for seed in range(SEEDS) for d in DENSITIES]
    _append(runs_path, pd.DataFrame(rows))
    print(f"{setting} pat: {len(rows)} runs in {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--setting", required=True, choices=("mnist1d-cnn", "mnist1d-mlp", "digits-mlp")
    )
    parser.add_argument("--out", type=Path, default=Path("results/deep"))
    args = parser.parse_args()
    run(args.setting, args.out)


if __name__ == "__main__":
    main()
