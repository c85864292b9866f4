"""IHT against the sparsification methods people use, on deep models, tuned alike on a validation split.

    python benchmarks/deep_comparison.py --setting mnist1d-cnn [--out results/deep]
    python benchmarks/deep_comparison.py --setting mnist1d-mlp
    python benchmarks/deep_comparison.py --setting digits-mlp
    python benchmarks/deep_comparison.py --table results/deep     # print the tables + figure

``--methods rigl,iht`` runs a subset (the others' stored runs are kept and shown);
``--methods iht --selection magnitude`` runs IHT's recipe with H_s instead of the Fisher
selection, stored and shown as ``iht-magnitude``.

Settings: MNIST-1D (4,000 / 1,000, generated offline) with the benchmark's CNN (P = 5,210) or
an MLP 40-100-100-10 (P = 15,210); digits (scikit-learn, 80/20 split) with an MLP 64-64-10.
Every method gets the same data, splits, initialisation, base optimizer (Adam), batches
(100 rows), steps (6,000) and budget s, through ``iht.experiments.compare``:

- dense (no budget), one-shot magnitude pruning at mid-run then fine-tuning, gradual
  magnitude pruning (cubic, 1/6 to 2/3 of the run), L1 (proximal, lambda 1e-3) then pruning,
  RigL (ERK, drop/grow every 100 steps, 0.3 cosine-decayed, to 3/4 of the run), and IHT's
  recipe (Adam + the Fisher projection, ``iht compare``'s default after Adam, on a cubic
  schedule from dense, 1/6 to 2/3 of the run, exact at every step).
- Tuning, the same for every method: the learning rate from {3e-3, 1e-2, 3e-2}, chosen by
  the median validation accuracy of seeds 0 and 1 at 90% sparsity, on 20% of the training
  rows held out (the test rows are never used for it).
- Then each method with its lr at 80%, 90%, 95% and 98% sparsity (s = round-half-up of the
  density times P, biases counted), seeds 0, 1, 2, scored on the test rows.

Results go to ``OUT/<setting>/tuning.parquet`` and ``OUT/<setting>/runs.parquet`` (a run
already stored is not run again); ``--table`` prints median [min, max] test accuracy, the
exact nonzeros and the seconds per run, and writes ``OUT/accuracy.png``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from iht.errors import NonFiniteError
from iht.experiments.compare import run_compare
from iht.experiments.config import CompareConfig

SETTINGS = {
    "mnist1d-cnn": {"data": "mnist1d", "model": "cnn", "hidden": ()},
    "mnist1d-mlp": {"data": "mnist1d", "model": "mlp", "hidden": (100, 100)},
    "digits-mlp": {"data": "digits", "model": "mlp", "hidden": (64, 64)},
}
METHODS = ("dense", "oneshot", "gmp", "l1", "rigl", "iht")
PEERS = ("pat",)  # outside peers that other scripts add (torchao_pat.py)
#: IHT's recipe with the magnitude selection (H_s) instead of the Fisher one: --selection magnitude
MAGNITUDE = "iht-magnitude"
LRS = (3e-3, 1e-2, 3e-2)
DENSITIES = (0.2, 0.1, 0.05, 0.02)
TUNE_DENSITY, TUNE_SEEDS, SEEDS = 0.1, 2, 3
STEPS, BATCH = 6000, 100
CHANCE = 0.15  # every setting has 10 classes: below this a median is at chance


def _config(
    setting: str, method: str, lr: float, sparsity: str, seeds: int, **extra: object
) -> CompareConfig:
    return CompareConfig(
        **SETTINGS[setting],  # type: ignore[arg-type]
        sparsity=sparsity,
        methods=(method,),
        steps=STEPS,
        batch_size=BATCH,
        optimizer="adam",
        lr=lr,
        seeds=seeds,
        dtype="float32",
        **extra,  # type: ignore[arg-type]
    )


def _append(path: Path, frame: pd.DataFrame) -> None:
    old = pd.read_parquet(path) if path.exists() else None
    both = frame if old is None else pd.concat([old, frame], ignore_index=True)
    tmp = path.with_suffix(".tmp")
    both.to_parquet(tmp, index=False)
    tmp.replace(path)


def _label(method: str, selection: str | None) -> str:
    """The name a method's rows are stored under (IHT with H_s is told apart)."""
    return MAGNITUDE if method == "iht" and selection == "magnitude" else method


def run(
    setting: str, out: Path, methods: tuple[str, ...] = METHODS, selection: str | None = None
) -> None:
    torch.set_num_threads(1)
    extra = {} if selection is None else {"selection": selection}
    directory = out / setting
    directory.mkdir(parents=True, exist_ok=True)
    tuning_path, runs_path = directory / "tuning.parquet", directory / "runs.parquet"
    tuned = pd.read_parquet(tuning_path) if tuning_path.exists() else pd.DataFrame()
    for method in methods:
        label = _label(method, selection)
        for lr in LRS:
            if len(tuned) and ((tuned["method"] == label) & (tuned["lr"] == lr)).any():
                continue
            start = time.perf_counter()
            config = _config(
                setting,
                method,
                lr,
                str(TUNE_DENSITY),
                TUNE_SEEDS,
                validation_fraction=0.2,
                **extra,
            )
            try:
                frame = run_compare(config).frame
                frame = frame[frame["method"] == method].assign(method=label)
            except NonFiniteError:  # a diverged lr is a candidate that lost, not a crash
                frame = pd.DataFrame(
                    {
                        "method": [label] * TUNE_SEEDS,
                        "lr": lr,
                        "test_acc": 0.0,
                        "seed": range(TUNE_SEEDS),
                    }
                )
            _append(tuning_path, frame)
            tuned = pd.read_parquet(tuning_path)
            acc = statistics.median(frame["test_acc"])
            print(
                f"{setting} tune {label:8s} lr {lr:g}: validation acc {acc:.3f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    labels = {_label(m, selection): m for m in methods}
    best = {
        labels[str(m)]: float(g.groupby("lr")["test_acc"].median().idxmax())  # type: ignore[arg-type]
        for m, g in tuned.groupby("method")
        if m in labels
    }
    print(f"{setting}: chosen lr {best}", flush=True)
    done = pd.read_parquet(runs_path) if runs_path.exists() else pd.DataFrame()
    for method in methods:
        label = _label(method, selection)
        if len(done) and (done["method"] == label).any():
            continue
        sparsity = ",".join(str(d) for d in DENSITIES)
        start = time.perf_counter()
        config = _config(setting, method, best[method], sparsity, SEEDS, **extra)
        frame = run_compare(config).frame
        frame = frame[frame["method"] == method].assign(setting=setting, method=label)
        _append(runs_path, frame)
        done = pd.read_parquet(runs_path)
        print(
            f"{setting} {label}: {len(frame)} runs in {time.perf_counter() - start:.0f} s",
            flush=True,
        )


def _methods(runs: pd.DataFrame) -> list[str]:
    return [m for m in (*METHODS[1:], MAGNITUDE, *PEERS) if (runs["method"] == m).any()]


def table(out: Path) -> None:
    """Print one Markdown table per setting (for the README) and draw the figure."""
    frames = [pd.read_parquet(p) for p in sorted(out.glob("*/*runs.parquet"))]
    if not frames:
        raise SystemExit(f"no runs in {out}")
    runs = pd.concat(frames, ignore_index=True)
    for setting, g in runs.groupby("setting", sort=False):
        size = int(g["n_params"].iloc[0])
        levels = sorted(g["sparsity"].unique(), reverse=True)
        d = g[g["method"] == "dense"].drop_duplicates("seed")["test_acc"]
        print(
            f"\n**{setting}** (P = {size:,}; dense: {d.median():.3f} [{d.min():.3f}, {d.max():.3f}])\n"
        )
        print(
            "| method | "
            + " | ".join(f"{1 - s / size:.0%} (s = {s:,})" for s in levels)
            + " | nonzeros | s per run |"
        )
        print("|---|" + "---|" * (len(levels) + 2))
        for m in _methods(g):
            rows = g[g["method"] == m]
            cells = []
            for s in levels:
                acc = rows[rows["sparsity"] == s]["test_acc"]
                best = all(
                    acc.median()
                    >= g[(g["method"] == o) & (g["sparsity"] == s)]["test_acc"].median()
                    for o in _methods(g)
                )
                text = f"{acc.median():.3f} [{acc.min():.3f}, {acc.max():.3f}]" if len(acc) else "-"
                chance = acc.median() < CHANCE  # a tie at chance is no win
                cells.append(f"**{text}**" if best and len(acc) and not chance else text)
            exact = (rows["nonzeros"] == rows["sparsity"]).all()
            under = (rows["nonzeros"] <= rows["sparsity"]).all()
            nnz = "= s" if exact else ("<= s" if under else "**> s**")
            lr = float(rows["lr"].iloc[0])
            print(
                f"| {m} (lr {lr:g}) | "
                + " | ".join(cells)
                + f" | {nnz} | {rows['seconds'].median():.1f} |"
            )
    _figure(runs, out / "accuracy.png")


def _figure(runs: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    settings = list(dict.fromkeys(runs["setting"]))
    fig = Figure(figsize=(5 * len(settings), 4), layout="constrained")
    axes = fig.subplots(1, len(settings), squeeze=False)[0]
    for ax, setting in zip(axes, settings, strict=True):
        g = runs[runs["setting"] == setting]
        size = int(g["n_params"].iloc[0])
        for method in _methods(g):
            m = g[g["method"] == method]
            if m.empty:
                continue
            by = m.groupby("sparsity")["test_acc"]
            x = [100 * (1 - s / size) for s in by.median().index]
            ax.errorbar(
                x,
                by.median(),
                yerr=[by.median() - by.min(), by.max() - by.median()],
                marker="o",
                ms=4,
                capsize=3,
                label=method,
            )
        dense = g[g["method"] == "dense"]["test_acc"]
        ax.axhline(dense.median(), color="0.4", ls="--", label="dense")
        ax.set_title(f"{setting} (P = {size:,})")
        ax.set_xlabel("sparsity (% of parameters zero)")
        ax.set_ylabel("test accuracy (median [min, max], 3 seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS))
    parser.add_argument("--out", type=Path, default=Path("results/deep"))
    parser.add_argument("--table", type=Path, help="print the tables of a results folder")
    parser.add_argument(
        "--selection",
        choices=("magnitude", "fisher"),
        help=f"IHT's selection (default: iht compare's); magnitude is stored as {MAGNITUDE}",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated subset of the methods to run (default: all)",
    )
    args = parser.parse_args()
    if args.table:
        table(args.table)
    elif args.setting:
        methods = tuple(m for m in args.methods.split(",") if m)
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
        run(args.setting, args.out, methods, args.selection)
    else:
        parser.error("give --setting or --table")


if __name__ == "__main__":
    main()
