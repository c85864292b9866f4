r"""``iht compare``: IHT against the usual ways of getting s nonzero parameters, side by side.

On one data set, one seeded split, one model (``--hidden``, default linear) and one budget s
(biases counted, as the paper counts them), five methods are trained and compared:

``dense``
    Plain gradient descent (Alg. 2), the reference. It does not depend on s: it is trained
    once per seed and its row is repeated for every s.
``oneshot``
    One-shot global magnitude pruning: the first ``steps // 2`` dense GD steps, then
    ``torch.nn.utils.prune.global_unstructured(..., pruning_method=L1Unstructured,
    amount=P - s)`` over every weight **and bias** (so the budget counts what IHT counts),
    then ``steps - steps // 2`` GD steps with prune's forward-hook masks keeping the pruned
    entries at zero, and ``prune.remove`` at the end. Its pre-training is the dense run's
    state after ``steps // 2`` steps (same start, same step size), so it is computed once per
    seed; its cost is counted in the one-shot rows (gradient evaluations and seconds).
``gmp``
    Gradual magnitude pruning (Zhu & Gupta 2017): at the pruning steps
    t in {t0, t0 + dt, ..., t0 + n dt} the fraction of zeroed parameters is

    .. math:: s_t = s_f + (s_i - s_f) \left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3,

    with s_i = 0 and s_f = 1 - s/P (density s/P), and the mask keeps the largest magnitudes
    among the entries still unpruned (global over all weights and biases; a pruned entry never
    comes back). Defaults: t0 = steps // 6 (dense warm-up), the schedule ends at
    t0 + n dt <= 2 steps / 3, dt = ceil((2 steps / 3 - t0) / 100) (about 100 pruning events),
    then masked GD with the final mask fixed until ``steps``. See
    :func:`iht.baselines.gmp_plan`, :func:`iht.baselines.gmp_sparsity`.
``l1``
    L1-regularised training of f(theta) + lambda ||theta||_1 for ``steps // 2`` steps by
    proximal gradient (ISTA: a GD step on f, then soft thresholding by lr * lambda; a plain
    subgradient step on the penalty never lands on 0 and oscillates around it), then keep the
    s largest magnitudes (``iht.hard_threshold``'s choice) and ``steps - steps // 2`` masked
    GD steps. The pre-training does not depend on s and is computed once per seed, counted in
    every s's row. lambda is ``--l1`` (default 1e-3).
``iht``
    This project: lr = ``iht.estimate_l2s(..., sparsity=s).lr``, theta^0 = the dense
    initialisation restricted to a random support (``iht.sparse_init_``), then ``steps``
    full-batch ``iht.IHT`` steps.

**Equal budgets.** Every method takes exactly ``steps`` full-batch gradient evaluations of the
training loss (counted, stored as ``grad_evals``). The step size of the four non-IHT methods is
the principled one of gradient descent, 1 / L_hat of the dense network
(``estimate_l2s(..., sparsity=None)``), shared within a seed; IHT uses its own 1 / L_hat_2s.
Both estimates cost ``2 * n_monte`` extra gradient evaluations (``estimate_grad_evals``).
``--lr`` replaces every step size, IHT's included. Every run starts from the same
initialisation theta^0 of its seed (IHT from theta^0 restricted to a random support).

**Seeds.** Seed i draws a new train/test split, a new theta^0, new Monte Carlo draws and new IHT
supports, all derived from i with ``numpy.random.SeedSequence``; every method of seed i shares
them. Features are standardised with the training rows' statistics.

Files written by :meth:`CompareResult.save` to ``DIR`` (a non-empty DIR is refused unless
``overwrite``, which moves its contents to ``DIR/replaced-TIMESTAMP/``)::

    DIR/results.parquet   one row per method x s x seed
    DIR/config.json       the CompareRecord: the config and what it resolved to (P, split sizes,
                          the budgets as counts, the GMP schedule, versions)

The page ``DIR/compare.html`` is drawn from these files by :mod:`iht.report.compare`.

Example::

    >>> result = run_compare(CompareConfig(data="iris", sparsity="3,5,8", seeds=5))  # doctest: +SKIP
    >>> result.save(Path("results/compare-iris"))                                      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import prune

from .. import __version__
from ..baselines import (
    GmpPlan,
    gmp_plan,
    gmp_train_,
    gradient_descent_,
    iht_train_,
    magnitude_masks,
    nonzeros,
    prune_global_,
)
from ..budget import parse_sparsity_list
from ..data import Dataset, load_dataset, n_test_rows, random_split, standardise
from ..errors import NonFiniteError
from ..init import reset_parameters_, sparse_init_
from ..lipschitz import estimate_l2s
from ..models import build_model
from ..storage.files import (
    atomic_write_bytes,
    check_output_dir,
    make_dir,
    move_aside,
    parquet_bytes,
    read_json,
    write_json,
)
from ..storage.records import from_dict, reading_stored, to_dict
from .config import METHODS, CompareConfig
from .progress import run_bar
from .threads import torch_threads

__all__ = [
    "OUTPUT_FILES",
    "CompareRecord",
    "CompareResult",
    "model_size",
    "read_comparison",
    "run_compare",
]

#: What :meth:`CompareResult.save` writes (the report adds compare.html).
OUTPUT_FILES = ("results.parquet", "config.json")

# Purposes of the seeds derived from a run's seed (see _seed).
_SPLIT, _INIT, _L2S, _SUPPORT = 0, 1, 2, 3


def _seed(seed: int, *path: int) -> int:
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def _generator(seed: int, *path: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(seed, *path))


class _Problem:
    """One seed's standardised split, and a gradient-evaluation counter factory."""

    def __init__(self, dataset: Dataset, *, seed: int, test_fraction: float) -> None:
        n = len(dataset.y)
        n_test = n_test_rows(n, test_fraction)
        train, test = random_split(n, n - n_test, seed=_seed(seed, _SPLIT))
        X = torch.from_numpy(standardise(dataset.X, train))
        y = torch.from_numpy(dataset.y)
        self.X_train, self.y_train = X[train], y[train]
        self.X_test, self.y_test = X[test], y[test]

    def counter(self) -> _LossCounter:
        return _LossCounter(self.X_train, self.y_train)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for split, X, y in (
            ("train", self.X_train, self.y_train),
            ("test", self.X_test, self.y_test),
        ):
            logits = model(X)
            metrics[f"{split}_loss"] = float(F.cross_entropy(logits, y))
            metrics[f"{split}_acc"] = float((logits.argmax(dim=1) == y).double().mean())
        return metrics


class _LossCounter:
    """The full training loss f(model), counting its evaluations (one per gradient step)."""

    def __init__(self, X: Tensor, y: Tensor) -> None:
        self.X, self.y, self.count = X, y, 0

    def __call__(self, model: nn.Module) -> Tensor:
        self.count += 1
        return F.cross_entropy(model(self.X), self.y)


@dataclass
class _Trained:
    """A trained (or pre-trained) model with its cost so far."""

    model: nn.Module
    grad_evals: int
    seconds: float


def _run_seed(
    config: CompareConfig,
    levels: tuple[int, ...],
    dataset: Dataset,
    seed: int,
    report: Callable[[int], None],
) -> list[dict[str, Any]]:
    problem = _Problem(dataset, seed=seed, test_fraction=config.test_fraction)
    model0 = build_model(
        dataset.n_features, dataset.n_classes, config.hidden, activation=config.activation
    ).to(torch.float64)
    reset_parameters_(model0, generator=_generator(seed, _INIT))
    size = sum(p.numel() for p in model0.parameters())
    steps, pre = config.steps, config.pretrain_steps
    fine = steps - pre
    methods = set(config.methods)
    rows: list[dict[str, Any]] = []

    def row(
        method: str, s: int, done: _Trained, *, lr: float, est: tuple[float, int], **extra: Any
    ) -> None:
        model = done.model
        count = nonzeros(model)
        if method != "dense" and count > s:  # an invariant, checked on every run
            raise RuntimeError(f"{method} ended with {count} nonzeros > s = {s} (seed {seed})")
        metrics = problem.evaluate(model)
        if not math.isfinite(metrics["train_loss"]):
            raise NonFiniteError(
                f"{method} diverged at s = {s}, seed {seed} (training loss "
                f"{metrics['train_loss']}); use a smaller --lr"
            )
        rows.append(
            {
                "method": method,
                "sparsity": s,
                "seed": seed,
                "n_params": size,
                "n_train": len(problem.y_train),
                "n_test": len(problem.y_test),
                "lr": lr,
                "steps": steps,
                "grad_evals": done.grad_evals,
                "estimate_grad_evals": est[1],
                **metrics,
                "nonzeros": count,
                "seconds": done.seconds,
                "estimate_seconds": est[0],
                "l1_nonzeros": extra.get("l1_nonzeros", -1),
            }
        )

    def step_size(s: int | None) -> tuple[float, tuple[float, int]]:
        if config.lr is not None:
            return config.lr, (0.0, 0)
        counter = problem.counter()
        start = time.perf_counter()
        est = estimate_l2s(
            model0,
            counter,
            sparsity=s,
            n_samples=config.n_monte,
            generator=_generator(seed, _L2S, 0 if s is None else s),
        )
        return est.lr, (time.perf_counter() - start, counter.count)

    def train(
        start: nn.Module,
        fn: Callable[[nn.Module, _LossCounter], None],
        before: _Trained | None = None,
    ) -> _Trained:
        model = copy.deepcopy(start)
        counter = problem.counter()
        t = time.perf_counter()
        fn(model, counter)
        seconds = time.perf_counter() - t
        if before is not None:
            return _Trained(model, before.grad_evals + counter.count, before.seconds + seconds)
        return _Trained(model, counter.count, seconds)

    # The dense network's step size serves every method but IHT.
    dense_lr, dense_est = step_size(None) if methods - {"iht"} else (math.nan, (0.0, 0))

    # Dense GD; its state after `pre` steps is the one-shot method's pre-training.
    pretrained: _Trained | None = None
    if methods & {"dense", "oneshot"}:
        pretrained = train(model0, lambda m, f: gradient_descent_(m, f, lr=dense_lr, steps=pre))
    if "dense" in methods:
        assert pretrained is not None
        dense = train(
            pretrained.model,
            lambda m, f: gradient_descent_(m, f, lr=dense_lr, steps=fine),
            pretrained,
        )
        for s in levels:
            row("dense", s, dense, lr=dense_lr, est=dense_est)
        report(len(levels))

    l1_pre: _Trained | None = None
    if "l1" in methods:
        l1_pre = train(
            model0, lambda m, f: gradient_descent_(m, f, lr=dense_lr, steps=pre, l1=config.l1)
        )
    plan = gmp_plan(steps, start=config.gmp_start, end=config.gmp_end, events=config.gmp_events)

    for s in levels:
        if "oneshot" in methods:
            assert pretrained is not None

            def oneshot(m: nn.Module, f: _LossCounter, s: int = s) -> None:
                slots = prune_global_(m, s)
                gradient_descent_(m, f, lr=dense_lr, steps=fine)
                for module, name in slots:
                    prune.remove(module, name)

            row(
                "oneshot",
                s,
                train(pretrained.model, oneshot, pretrained),
                lr=dense_lr,
                est=dense_est,
            )
            report(1)
        if "gmp" in methods:

            def gmp(m: nn.Module, f: _LossCounter, s: int = s) -> None:
                gmp_train_(m, f, lr=dense_lr, steps=steps, s=s, plan=plan)

            row("gmp", s, train(model0, gmp), lr=dense_lr, est=dense_est)
            report(1)
        if "l1" in methods:
            assert l1_pre is not None
            before_prune = nonzeros(l1_pre.model)

            def l1_finetune(m: nn.Module, f: _LossCounter, s: int = s) -> None:
                masks = magnitude_masks(m, s)
                with torch.no_grad():
                    for p, mask in zip(m.parameters(), masks, strict=True):
                        p.mul_(mask)
                gradient_descent_(m, f, lr=dense_lr, steps=fine, masks=masks)

            done = train(l1_pre.model, l1_finetune, l1_pre)
            row("l1", s, done, lr=dense_lr, est=dense_est, l1_nonzeros=before_prune)
            report(1)
        if "iht" in methods:
            lr_s, est_s = step_size(s)

            def iht_run(m: nn.Module, f: _LossCounter, s: int = s, lr_s: float = lr_s) -> None:
                sparse_init_(m.parameters(), s, generator=_generator(seed, _SUPPORT, s))
                iht_train_(m, f, lr=lr_s, steps=steps, s=s)

            row("iht", s, train(model0, iht_run), lr=lr_s, est=est_s)
            report(1)
    return rows


@dataclass(frozen=True)
class CompareRecord:
    """A comparison's ``config.json``: the config and what it resolved to on the data."""

    config: CompareConfig
    dataset: str
    n_params: int
    n_train: int
    n_test: int
    levels: tuple[int, ...]
    pretrain_steps: int
    gmp_plan: GmpPlan
    versions: dict[str, str]
    command: str = "iht compare"


@dataclass(frozen=True)
class CompareResult:
    """Every run of a comparison (one row per method x s x seed) and its record.

    The columns of ``frame``: method, sparsity (the budget s of the row; dense rows repeat the
    one dense run), seed, n_params (P), n_train, n_test, lr, steps, grad_evals (gradient
    evaluations of training, = steps for every method), estimate_grad_evals (of the step-size
    estimate), train_loss, train_acc, test_loss, test_acc (mean cross-entropy without
    penalty, accuracy), nonzeros, seconds (training wall time, shared pre-training included),
    estimate_seconds (the step-size estimate's), l1_nonzeros (L1 rows: nonzeros after the L1
    phase, before pruning; -1 elsewhere).
    """

    record: CompareRecord
    frame: pd.DataFrame

    def save(self, directory: Path, *, overwrite: bool = False) -> None:
        """Write ``results.parquet`` and ``config.json`` into ``directory``.

        Earlier contents are moved to ``directory/replaced-TIMESTAMP/`` when ``overwrite``;
        otherwise a non-empty directory is refused.

        Raises:
            StoreError: the directory is not empty (without ``overwrite``), or not writable.
        """
        check_output_dir(directory, overwrite=overwrite)
        make_dir(directory)
        move_aside(directory)
        atomic_write_bytes(directory / "results.parquet", parquet_bytes(self.frame))
        write_json(directory / "config.json", to_dict(self.record))


def model_size(config: CompareConfig, dataset: Dataset) -> int:
    """P, the parameters of the model ``config`` builds for ``dataset`` (biases counted)."""
    model = build_model(
        dataset.n_features, dataset.n_classes, config.hidden, activation=config.activation
    )
    return sum(p.numel() for p in model.parameters())


def run_compare(
    config: CompareConfig, *, dataset: Dataset | None = None, progress: bool = False
) -> CompareResult:
    """Run every method of ``config`` at every s and seed (see :class:`CompareResult`).

    Args:
        config: the comparison.
        dataset: the data, if already loaded (else ``config.data`` is loaded).
        progress: show a progress bar over the runs.

    Raises:
        InvalidValueError, DataError: a level outside 1..P for this model; bad data.
        NonFiniteError: a method diverged (a too large ``lr``).
    """
    if dataset is None:
        dataset = load_dataset(config.data, target=config.target)
    size = model_size(config, dataset)
    levels = parse_sparsity_list(config.levels_text, size)
    total = len(config.methods) * len(levels) * config.seeds
    rows: list[dict[str, Any]] = []
    with run_bar(total, "compare", enabled=progress) as bar, torch_threads(config.threads):
        for seed in range(config.seeds):
            rows += _run_seed(config, levels, dataset, seed, bar.update)
    frame = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(METHODS)}
    frame["_order"] = frame["method"].map(order)
    frame = frame.sort_values(["sparsity", "_order", "seed"], ignore_index=True)
    frame = frame.drop(columns="_order")
    first = frame.iloc[0]
    record = CompareRecord(
        config=config,
        dataset=config.data,
        n_params=int(first["n_params"]),
        n_train=int(first["n_train"]),
        n_test=int(first["n_test"]),
        levels=levels,
        pretrain_steps=config.pretrain_steps,
        gmp_plan=gmp_plan(
            config.steps, start=config.gmp_start, end=config.gmp_end, events=config.gmp_events
        ),
        versions={"iht": __version__, "torch": torch.__version__},
    )
    return CompareResult(record, frame)


def read_comparison(directory: str | Path) -> CompareResult:
    """A saved comparison, read back typed.

    Raises:
        StoreError: a file is missing, unreadable or not what ``iht compare`` writes.
    """
    directory = Path(directory)
    with reading_stored(directory, "a saved comparison"):
        record = from_dict(CompareRecord, read_json(directory / "config.json"), where="config.json")
        frame = pd.read_parquet(directory / "results.parquet")
    return CompareResult(record, frame)
