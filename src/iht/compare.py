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
    then masked GD with the final mask fixed until ``steps``. See :func:`gmp_plan`,
    :func:`gmp_sparsity`.
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

Files written to ``--out DIR`` (a non-empty DIR is refused unless ``--overwrite``, which moves its
contents to ``DIR/replaced-TIMESTAMP/``)::

    DIR/results.parquet   one row per method x s x seed
    DIR/config.json       the resolved configuration (P, split sizes, GMP schedule, versions)
    DIR/compare.html      one table and one figure, self-contained (PNG as a base64 data URI)

Example::

    $ iht compare --data iris --sparsity 3,5,8 --seeds 5 --out results/compare-iris
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import prune

from . import data as data_module
from .errors import NonFiniteError
from .html_report import PAGE_CSS, TABLE_CSS, escape, figure_png, html_page, html_table, img_tag
from .init import reset_parameters_, sparse_init_
from .lipschitz import DEFAULT_N_SAMPLES, estimate_l2s
from .models import ACTIVATIONS, build_model, parse_hidden
from .optim import IHT
from .results import _atomic_write_bytes as atomic_write
from .results import move_aside
from .threshold import flatten, split_like, threshold_mask

__all__ = [
    "METHODS",
    "CompareConfig",
    "GmpPlan",
    "compare_command",
    "format_table",
    "gmp_plan",
    "gmp_sparsity",
    "parse_methods",
    "parse_sparsity",
    "prune_global_",
    "run_compare",
    "summarise",
    "torch_threads",
    "write_outputs",
]

#: The methods, in table order; all but ``dense`` end with at most s nonzeros.
METHODS: tuple[str, ...] = ("dense", "oneshot", "gmp", "l1", "iht")
SPARSE_METHODS: tuple[str, ...] = METHODS[1:]
LABELS = {
    "dense": "dense (GD)",
    "oneshot": "one-shot prune + fine-tune",
    "gmp": "gradual magnitude pruning",
    "l1": "L1 + prune + fine-tune",
    "iht": "IHT",
}

# Purposes of the seeds derived from a run's seed (see _seed).
_SPLIT, _INIT, _L2S, _SUPPORT = 0, 1, 2, 3


# ----------------------------------------------------------------------------------------
# Configuration and parsing
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompareConfig:
    """Everything that decides a comparison's numbers (stored as ``config.json``).

    Attributes:
        data: a built-in data set name (``iris``, ``wine``, ``breast_cancer``, ``digits``) or,
            when :mod:`iht.data` reads CSV files, a CSV path.
        sparsity: the budgets s, counts in 1..P (biases counted), increasing.
        target: the label column of a CSV file.
        hidden: hidden layer widths; () is a linear model.
        activation: the hidden layers' activation.
        methods: which of :data:`METHODS` to run.
        steps: full-batch gradient evaluations per method (>= 2).
        seeds: seeds 0..seeds-1; each is a new split, initialisation and support.
        test_fraction: share of the rows held out for testing.
        l1: lambda of the L1 method.
        lr: one step size for every method, or None for 1/L_hat (dense) and 1/L_hat_2s (IHT).
        n_monte: Monte Carlo draws of each L_hat estimate.
        pretrain_fraction: share of ``steps`` before pruning in the one-shot and L1 methods.
        gmp_start, gmp_end: the GMP schedule runs from ``steps * gmp_start`` to at most
            ``steps * gmp_end`` (then fine-tuning with the mask fixed).
        gmp_events: about how many pruning events the GMP schedule has.
    """

    data: str
    sparsity: tuple[int, ...]
    target: str | None = None
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    methods: tuple[str, ...] = METHODS
    steps: int = 2000
    seeds: int = 5
    test_fraction: float = 0.2
    l1: float = 1e-3
    lr: float | None = None
    n_monte: int = DEFAULT_N_SAMPLES
    pretrain_fraction: float = 0.5
    gmp_start: float = 1 / 6
    gmp_end: float = 2 / 3
    gmp_events: int = 100

    def __post_init__(self) -> None:
        if not self.sparsity:
            raise ValueError("give at least one sparsity level with --sparsity")
        if any(s < 1 for s in self.sparsity):
            raise ValueError(f"sparsity levels must be >= 1, got {list(self.sparsity)}")
        parse_methods(",".join(self.methods))
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2 (pre-training and fine-tuning), got {self.steps}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test fraction must be in (0, 1), got {self.test_fraction}")
        if not (math.isfinite(self.l1) and self.l1 >= 0):
            raise ValueError(f"--l1 must be a finite number >= 0, got {self.l1}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive finite number, got {self.lr}")
        if self.n_monte < 1:
            raise ValueError(f"n_monte must be >= 1, got {self.n_monte}")
        if not 0 < self.pretrain_fraction < 1:
            raise ValueError(f"pretrain_fraction must be in (0, 1), got {self.pretrain_fraction}")
        if not 0 <= self.gmp_start <= self.gmp_end <= 1:
            raise ValueError(
                f"need 0 <= gmp_start <= gmp_end <= 1, got {self.gmp_start}, {self.gmp_end}"
            )
        if self.gmp_events < 1:
            raise ValueError(f"gmp_events must be >= 1, got {self.gmp_events}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )

    @property
    def pretrain_steps(self) -> int:
        """Steps before pruning in the one-shot and L1 methods (at least 1, at most steps-1)."""
        return min(max(int(self.steps * self.pretrain_fraction), 1), self.steps - 1)


def parse_sparsity(text: str, n_params: int) -> tuple[int, ...]:
    """Parse sparsity levels into counts in 1..P, sorted and without repeats.

    Each comma-separated item is a count (``5``), a range of counts (``1-5``), or a fraction of
    the P parameters (``0.1`` or ``10%``; rounded, at least 1). A bare integer is always a
    count, so ``1`` means one parameter and ``1.0`` means all P.

    Raises:
        ValueError: an item that is none of these, or a level outside 1..P.

    Example:
        >>> parse_sparsity("3,5,8", 15), parse_sparsity("10%,0.5", 650), parse_sparsity("1-3", 15)
        ((3, 5, 8), (65, 325), (1, 2, 3))
    """
    levels: list[int] = []
    for raw in text.split(","):
        levels.extend(_parse_level(raw.strip(), n_params))
    for s in levels:
        if not 1 <= s <= n_params:
            raise ValueError(
                f"sparsity must be in 1..{n_params} (P = {n_params} parameters of this model, "
                f"biases counted), got {s}"
            )
    return tuple(sorted(set(levels)))


def _parse_level(item: str, n_params: int) -> list[int]:
    """One item of :func:`parse_sparsity`: a count, a range or a fraction of P."""
    is_fraction = item.endswith("%") or "." in item or "e" in item.lower()
    try:
        if is_fraction:
            fraction = float(item[:-1]) / 100 if item.endswith("%") else float(item)
        elif "-" in item.lstrip("-"):
            lo, hi = (int(v) for v in item.split("-", 1))
        else:
            return [int(item)]
    except ValueError:
        raise ValueError(
            f"sparsity {item!r} is not a count (5), a range (1-5) or a fraction (0.1, 10%)"
        ) from None
    if is_fraction:
        if not 0 < fraction <= 1:
            raise ValueError(
                f"a sparsity fraction must be in (0, 1] (of P = {n_params}), got {item!r}"
            )
        return [max(1, round(fraction * n_params))]
    if lo > hi:
        raise ValueError(f"the sparsity range {item!r} is empty")
    return list(range(lo, hi + 1))


def parse_methods(text: str) -> tuple[str, ...]:
    """Parse ``--methods`` ("dense,iht"); kept in :data:`METHODS` order.

    Raises:
        ValueError: an unknown name, or no name at all.
    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(
            f"unknown method {', '.join(map(repr, unknown)) or repr(text)}; "
            f"choose from {', '.join(METHODS)}"
        )
    return tuple(m for m in METHODS if m in names)


# ----------------------------------------------------------------------------------------
# Gradual magnitude pruning schedule (Zhu & Gupta 2017)
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GmpPlan:
    """When GMP prunes: at steps t0, t0 + dt, ..., t0 + n dt (0-based step indices)."""

    t0: int
    dt: int
    n: int

    @property
    def end(self) -> int:
        """The step at which the final sparsity is reached."""
        return self.t0 + self.n * self.dt

    def prunes_at(self, t: int) -> bool:
        return self.t0 <= t <= self.end and (t - self.t0) % self.dt == 0


def gmp_plan(steps: int, *, start: float = 1 / 6, end: float = 2 / 3, events: int = 100) -> GmpPlan:
    """The pruning steps of GMP over ``steps`` training steps.

    t0 = floor(steps * start); the last pruning step t0 + n dt is at most
    floor(steps * end) (and at most steps - 1, so the final mask is always applied);
    dt = ceil((that - t0) / events), so there are about ``events`` pruning events.

    Example:
        >>> gmp_plan(2000)
        GmpPlan(t0=333, dt=10, n=100)
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t0 = min(int(steps * start), steps - 1)
    stop = max(min(int(steps * end), steps - 1), t0)
    dt = max(1, math.ceil((stop - t0) / events))
    return GmpPlan(t0=t0, dt=dt, n=(stop - t0) // dt)


def gmp_sparsity(t: int, *, initial: float, final: float, t0: int, dt: int, n: int) -> float:
    r"""The fraction of pruned parameters at step t (Zhu & Gupta 2017, eq. 1).

    .. math:: s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3

    at the pruning steps t = t0 + k dt (k = 0..n); constant in between (the mask only changes
    at pruning steps), ``initial`` before t0 and ``final`` from t0 + n dt on. With n = 0 the
    single pruning event at t0 goes straight to ``final``.

    Example:
        >>> gmp_sparsity(5, initial=0.0, final=0.8, t0=0, dt=1, n=10)
        0.7
    """
    if t < t0:
        return initial
    if n <= 0:
        return final
    k = min((t - t0) // dt, n)
    if k == 0:  # exact end points, whatever the rounding of the formula
        return initial
    if k == n:
        return final
    return final + (initial - final) * (1 - k / n) ** 3


def _kept(sparsity: float, size: int, s: int) -> int:
    """Entries kept at a pruned fraction: P - round(fraction * P), within s..P."""
    return min(size, max(s, size - round(sparsity * size)))


# ----------------------------------------------------------------------------------------
# Data, model, seeds
# ----------------------------------------------------------------------------------------
def _seed(seed: int, *path: int) -> int:
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def _generator(seed: int, *path: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(seed, *path))


def load_data(spec: str, target: str | None = None) -> data_module.Dataset:
    """A built-in data set by name, or a CSV file by path (with its ``target`` column)."""
    return data_module.load_dataset(spec, target=target)


class _Problem:
    """One seed's standardised split, and a gradient-evaluation counter factory."""

    def __init__(self, dataset: data_module.Dataset, *, seed: int, test_fraction: float) -> None:
        n = len(dataset.y)
        if n < 2:
            raise ValueError(f"{dataset.name} has {n} row(s); at least 2 are needed to split")
        n_test = min(max(math.floor(test_fraction * n + 0.5), 1), n - 1)
        train, test = data_module.random_split(n, n - n_test, seed=_seed(seed, _SPLIT))
        X = torch.from_numpy(data_module.standardise(dataset.X, train))
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


def _slots(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, name) of every trainable parameter, in ``model.parameters()`` order."""
    return [
        (module, name)
        for module in model.modules()
        for name, p in module.named_parameters(recurse=False)
        if p.requires_grad
    ]


def _nonzeros(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


# ----------------------------------------------------------------------------------------
# The training loops (full batch; nothing per step beyond the gradient and the update)
# ----------------------------------------------------------------------------------------
def _gd(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    *,
    lr: float,
    steps: int,
    masks: Sequence[Tensor] | None = None,
    l1: float = 0.0,
) -> None:
    """``steps`` GD steps; then soft thresholding by lr * l1 (ISTA) and the masks, if any."""
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr, foreach=True)
    shrink = lr * l1
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        opt.step()
        if shrink > 0 or masks is not None:
            with torch.no_grad():
                for i, p in enumerate(params):
                    if shrink > 0:
                        p.copy_(F.softshrink(p, shrink))
                    if masks is not None:
                        p.mul_(masks[i])


def _split_mask(mask: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    return [part.to(p.dtype) for part, p in zip(split_like(mask, params), params, strict=True)]


def _gmp(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    *,
    lr: float,
    steps: int,
    s: int,
    plan: GmpPlan,
) -> None:
    """GD with the cubic pruning schedule of :func:`gmp_sparsity`, then the mask fixed."""
    params = list(model.parameters())
    size = sum(p.numel() for p in params)
    final = 1 - s / size
    opt = torch.optim.SGD(params, lr=lr, foreach=True)
    keep = torch.ones(size, dtype=torch.bool)
    masks: list[Tensor] | None = None
    for t in range(steps):
        if plan.prunes_at(t):
            k = _kept(
                gmp_sparsity(t, initial=0.0, final=final, t0=plan.t0, dt=plan.dt, n=plan.n), size, s
            )
            with torch.no_grad():
                # Pruned entries are exactly 0, so the k largest magnitudes lie among the
                # unpruned ones; "& keep" makes sure a pruned entry never returns.
                keep = keep & threshold_mask(flatten(p.detach() for p in params), k)
                masks = _split_mask(keep, params)
                for p, m in zip(params, masks, strict=True):
                    p.mul_(m)
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        opt.step()
        if masks is not None:
            with torch.no_grad():
                for p, m in zip(params, masks, strict=True):
                    p.mul_(m)


def prune_global_(model: nn.Module, s: int) -> list[tuple[nn.Module, str]]:
    """One-shot global magnitude pruning of every weight and bias to s entries, with prune's hooks.

    Calls ``prune.global_unstructured(slots, pruning_method=prune.L1Unstructured,
    amount=P - s)`` over every trainable parameter (biases included). The model keeps
    ``*_orig`` parameters and ``*_mask`` buffers until ``prune.remove`` is called on each slot
    returned. Among equal magnitudes the choice is ``torch.topk``'s.

    Returns:
        The (module, name) pairs pruned, in ``model.parameters()`` order before pruning.
    """
    slots = _slots(model)
    size = sum(getattr(m, n).numel() for m, n in slots)
    prune.global_unstructured(slots, pruning_method=prune.L1Unstructured, amount=size - s)
    return slots


def _iht(
    model: nn.Module, loss_fn: Callable[[nn.Module], Tensor], *, lr: float, steps: int, s: int
) -> None:
    opt = IHT(model.parameters(), lr=lr, sparsity=s)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        opt.step()


# ----------------------------------------------------------------------------------------
# One seed: every method at every s
# ----------------------------------------------------------------------------------------
@dataclass
class _Trained:
    """A trained (or pre-trained) model with its cost so far."""

    model: nn.Module
    grad_evals: int
    seconds: float


def _run_seed(
    config: CompareConfig,
    dataset: data_module.Dataset,
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
        nonzeros = _nonzeros(model)
        if method != "dense" and nonzeros > s:  # an invariant, checked on every run
            raise RuntimeError(f"{method} ended with {nonzeros} nonzeros > s = {s} (seed {seed})")
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
                "nonzeros": nonzeros,
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
        pretrained = train(model0, lambda m, f: _gd(m, f, lr=dense_lr, steps=pre))
    if "dense" in methods:
        assert pretrained is not None
        dense = train(pretrained.model, lambda m, f: _gd(m, f, lr=dense_lr, steps=fine), pretrained)
        for s in config.sparsity:
            row("dense", s, dense, lr=dense_lr, est=dense_est)
        report(len(config.sparsity))

    l1_pre: _Trained | None = None
    if "l1" in methods:
        l1_pre = train(model0, lambda m, f: _gd(m, f, lr=dense_lr, steps=pre, l1=config.l1))
    plan = gmp_plan(steps, start=config.gmp_start, end=config.gmp_end, events=config.gmp_events)

    for s in config.sparsity:
        if "oneshot" in methods:
            assert pretrained is not None

            def oneshot(m: nn.Module, f: _LossCounter, s: int = s) -> None:
                slots = prune_global_(m, s)
                _gd(m, f, lr=dense_lr, steps=fine)
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
                _gmp(m, f, lr=dense_lr, steps=steps, s=s, plan=plan)

            row("gmp", s, train(model0, gmp), lr=dense_lr, est=dense_est)
            report(1)
        if "l1" in methods:
            assert l1_pre is not None
            before_prune = _nonzeros(l1_pre.model)

            def l1_finetune(m: nn.Module, f: _LossCounter, s: int = s) -> None:
                params = list(m.parameters())
                with torch.no_grad():
                    masks = _split_mask(
                        threshold_mask(flatten(p.detach() for p in params), s), params
                    )
                    for p, mask in zip(params, masks, strict=True):
                        p.mul_(mask)
                _gd(m, f, lr=dense_lr, steps=fine, masks=masks)

            done = train(l1_pre.model, l1_finetune, l1_pre)
            row("l1", s, done, lr=dense_lr, est=dense_est, l1_nonzeros=before_prune)
            report(1)
        if "iht" in methods:
            lr_s, est_s = step_size(s)

            def iht_run(m: nn.Module, f: _LossCounter, s: int = s, lr_s: float = lr_s) -> None:
                sparse_init_(m.parameters(), s, generator=_generator(seed, _SUPPORT, s))
                _iht(m, f, lr=lr_s, steps=steps, s=s)

            row("iht", s, train(model0, iht_run), lr=lr_s, est=est_s)
            report(1)
    return rows


def run_compare(
    config: CompareConfig,
    *,
    dataset: data_module.Dataset | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every method of ``config`` at every s and seed; one row per method x s x seed.

    Columns: method, sparsity (the budget s of the row; dense rows repeat the one dense run),
    seed, n_params (P), n_train, n_test, lr, steps, grad_evals (gradient evaluations of
    training, = steps for every method), estimate_grad_evals (of the step-size estimate),
    train_loss, train_acc, test_loss, test_acc (mean cross-entropy without penalty, accuracy),
    nonzeros, seconds (training wall time, shared pre-training included),
    estimate_seconds (the step-size estimate's), l1_nonzeros (L1 rows: nonzeros after the L1
    phase, before pruning; -1 elsewhere).

    Raises:
        ValueError: a level above P for this model; bad data.
        NonFiniteError: a method diverged (a too large ``lr``).
    """
    from tqdm import tqdm

    if dataset is None:
        dataset = load_data(config.data, config.target)
    size = _n_params(config, dataset)
    if max(config.sparsity) > size:
        raise ValueError(
            f"sparsity must be in 1..{size} (P = {size} parameters of this model, biases "
            f"counted), got {max(config.sparsity)}"
        )
    total = len(config.methods) * len(config.sparsity) * config.seeds
    rows: list[dict[str, Any]] = []
    with tqdm(
        total=total,
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
        desc="compare",
        bar_format="{l_bar}{bar}| {n:.0f}/{total} runs [{elapsed}<{remaining}, {rate_fmt}]",
    ) as bar:
        for seed in range(config.seeds):
            rows += _run_seed(config, dataset, seed, bar.update)
    frame = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(METHODS)}
    frame["_order"] = frame["method"].map(order)
    frame = frame.sort_values(["sparsity", "_order", "seed"], ignore_index=True)
    return frame.drop(columns="_order")


def _n_params(config: CompareConfig, dataset: data_module.Dataset) -> int:
    model = build_model(
        dataset.n_features, dataset.n_classes, config.hidden, activation=config.activation
    )
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------
# Summary, table, figure, HTML
# ----------------------------------------------------------------------------------------
SUMMARY_METRICS: tuple[str, ...] = ("test_acc", "train_loss", "test_loss", "nonzeros")


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Median, min and max over seeds of each metric, per (s, method); dense once (s = -1).

    Also: runs, lr (median), time = median of seconds + estimate_seconds.
    """
    frame = frame.assign(time=frame["seconds"] + frame["estimate_seconds"])
    dense = frame[frame["method"] == "dense"]
    if not dense.empty:
        # One dense run per seed, repeated in every s's rows: summarise it once.
        dense = dense[dense["sparsity"] == dense["sparsity"].min()].assign(sparsity=-1)
    sparse = frame[frame["method"] != "dense"]
    parts = pd.concat([f for f in (dense, sparse) if not f.empty], ignore_index=True)
    out = []
    for (_, method), group in parts.groupby(["sparsity", "method"], sort=False):
        entry: dict[str, Any] = {
            "sparsity": int(group["sparsity"].iloc[0]),
            "method": method,
            "runs": len(group),
        }
        for metric in SUMMARY_METRICS:
            values = group[metric].astype(float)
            entry[f"{metric}_median"] = float(values.median())
            entry[f"{metric}_min"] = float(values.min())
            entry[f"{metric}_max"] = float(values.max())
        entry["lr"] = float(group["lr"].median())
        entry["time"] = float(group["time"].median())
        out.append(entry)
    table = pd.DataFrame(out)
    order = {m: i for i, m in enumerate(METHODS)}
    table["_order"] = table["method"].map(order)
    return table.sort_values(["sparsity", "_order"], ignore_index=True).drop(columns="_order")


_COLUMNS = (
    ("test acc", "test_acc", ".3f"),
    ("train loss", "train_loss", ".4f"),
    ("test loss", "test_loss", ".4f"),
)


def _range(entry: pd.Series, metric: str, spec: str) -> str:
    return (
        f"{entry[f'{metric}_median']:{spec}} "
        f"[{entry[f'{metric}_min']:{spec}}, {entry[f'{metric}_max']:{spec}}]"
    )


def _table_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["s", "method", "runs"] + [f"{name}" for name, _, _ in _COLUMNS]
    header += ["nonzeros", "lr", "time s"]
    rows = []
    for _, entry in table.iterrows():
        s = "dense" if entry["sparsity"] < 0 else str(int(entry["sparsity"]))
        nnz = (
            f"{entry['nonzeros_median']:.0f}"
            if entry["nonzeros_min"] == entry["nonzeros_max"]
            else f"{entry['nonzeros_median']:.0f} [{entry['nonzeros_min']:.0f}, {entry['nonzeros_max']:.0f}]"
        )
        rows.append(
            [s, str(entry["method"]), str(int(entry["runs"]))]
            + [_range(entry, metric, spec) for _, metric, spec in _COLUMNS]
            + [nnz, f"{entry['lr']:.3g}", f"{entry['time']:.2f}"]
        )
    return header, rows


def format_table(table: pd.DataFrame) -> str:
    """The summary as aligned text: median [min, max] over seeds; dense once at the top."""
    header, rows = _table_rows(table)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 1 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([render(header), *(render(r) for r in rows)])


def _figure_png(frame: pd.DataFrame) -> bytes:
    """Test accuracy and training loss against s: median and [min, max] bars per method."""
    import matplotlib

    matplotlib.use("Agg")  # no display is ever needed; harmless when already selected
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    table = summarise(frame)
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    levels = sorted(int(s) for s in table["sparsity"] if s > 0)
    log_x = len(levels) > 1 and levels[-1] / levels[0] >= 10
    methods = [m for m in SPARSE_METHODS if m in set(table["method"])]
    colours = {"oneshot": "#1f77b4", "gmp": "#2ca02c", "l1": "#9467bd", "iht": "#d62728"}
    for ax, metric, title in zip(
        axes,
        ("test_acc", "train_loss"),
        ("Test accuracy", "Training loss (cross-entropy)"),
        strict=True,
    ):
        dense = table[table["method"] == "dense"]
        if not dense.empty:
            d = dense.iloc[0]
            ax.axhspan(d[f"{metric}_min"], d[f"{metric}_max"], color="0.85", zorder=0)
            ax.axhline(
                d[f"{metric}_median"], color="0.3", ls="--", lw=1.2, label="dense (GD) [min, max]"
            )
        for j, method in enumerate(methods):
            sub = table[table["method"] == method].sort_values("sparsity")
            x = sub["sparsity"].to_numpy(dtype=float)
            # Small horizontal offsets keep the bars of the methods apart.
            shift = (j - (len(methods) - 1) / 2) * 0.025
            x = x * (1 + shift) if log_x else x + shift * max(levels[-1] - levels[0], 1)
            med = sub[f"{metric}_median"].to_numpy(dtype=float)
            err = np.vstack(
                [
                    med - sub[f"{metric}_min"].to_numpy(dtype=float),
                    sub[f"{metric}_max"].to_numpy(dtype=float) - med,
                ]
            )
            ax.errorbar(
                x,
                med,
                yerr=err,
                marker="o",
                ms=4,
                capsize=3,
                lw=1.4,
                color=colours.get(method),
                label=LABELS[method],
            )
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks(levels, [str(s) for s in levels])
        ax.minorticks_off()
        if metric == "train_loss" and (table[f"{metric}_min"] > 0).all():
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel("budget s (nonzero parameters, biases counted)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    return figure_png(fig)


_CSS = PAGE_CSS + TABLE_CSS + "img { max-width: 100%; border: 1px solid #eee; }\n"


def _html(frame: pd.DataFrame, resolved: dict[str, Any]) -> str:
    e = escape
    header, rows = _table_rows(summarise(frame))
    table = html_table(header, [[e(c) for c in r] for r in rows], text_cols=(1,))
    img = img_tag(_figure_png(frame), "test accuracy and training loss against s")
    plan = resolved["gmp_plan"]
    model = "linear" if not resolved["hidden"] else "MLP " + "-".join(map(str, resolved["hidden"]))
    lr_rule = (
        f"lr = {resolved['lr']} for every method"
        if resolved["lr"] is not None
        else "lr = 1/L_hat of the dense network for dense, one-shot, GMP and L1; "
        "lr = 1/L_hat_2s at each s for IHT (Monte Carlo, "
        f"{resolved['n_monte']} draws)"
    )
    return html_page(
        "iht compare",
        _CSS,
        [
            f"<h1>Sparse training methods compared on {e(str(resolved['dataset']))}</h1>",
            f"<p>{e(model)} model, P = {resolved['n_params']} parameters (biases counted); "
            f"{resolved['n_train']} training / {resolved['n_test']} test rows per seed; "
            f"{resolved['seeds']} seeds (each a new split, initialisation and support); "
            f"{resolved['steps']} full-batch gradient evaluations per method; {e(lr_rule)}.</p>",
            "<ul>",
            f"<li>one-shot: {resolved['pretrain_steps']} dense GD steps, global magnitude pruning "
            "of all weights and biases to s (torch.nn.utils.prune, L1Unstructured), "
            f"{resolved['steps'] - resolved['pretrain_steps']} masked GD steps.</li>",
            "<li>GMP (Zhu &amp; Gupta 2017): pruned fraction s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))^3, "
            f"s_i = 0, s_f = 1 - s/P, t0 = {plan['t0']}, Δt = {plan['dt']}, n = {plan['n']} "
            f"(final mask at step {plan['t0'] + plan['n'] * plan['dt']}), then masked GD.</li>",
            f"<li>L1: {resolved['pretrain_steps']} proximal-gradient (ISTA) steps on "
            f"f + λ‖θ‖₁ with λ = {resolved['l1']}, keep the s largest magnitudes, "
            f"{resolved['steps'] - resolved['pretrain_steps']} masked GD steps.</li>",
            "<li>IHT: random support of size s on the same initialisation, then IHT steps.</li>",
            "</ul>",
            "<p>Median [min, max] over seeds. Dense does not depend on s (one run per seed). "
            "time = training + step-size estimate, seconds per run (median).</p>",
            table,
            f"<p>{img}</p>",
        ],
    )


# ----------------------------------------------------------------------------------------
# Output directory
# ----------------------------------------------------------------------------------------
OUTPUT_FILES = ("results.parquet", "config.json", "compare.html")


def check_out(directory: Path, *, overwrite: bool) -> None:
    """Refuse a non-empty ``directory`` unless ``overwrite`` (checked before any training)."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--out {directory} is a file, not a directory")
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise ValueError(
            f"{directory} is not empty; choose another --out, or --overwrite to move its "
            "contents aside (to DIR/replaced-TIMESTAMP/)"
        )


def resolved_config(config: CompareConfig, frame: pd.DataFrame) -> dict[str, Any]:
    """``config`` plus what follows from it and the data: P, split sizes, GMP plan, versions."""
    from . import __version__

    plan = gmp_plan(
        config.steps, start=config.gmp_start, end=config.gmp_end, events=config.gmp_events
    )
    first = frame.iloc[0]
    return {
        **dataclasses.asdict(config),
        "dataset": config.data,
        "n_params": int(first["n_params"]),
        "n_train": int(first["n_train"]),
        "n_test": int(first["n_test"]),
        "pretrain_steps": config.pretrain_steps,
        "gmp_plan": dataclasses.asdict(plan),
        "iht_version": __version__,
        "torch_version": torch.__version__,
    }


def write_outputs(
    directory: Path, frame: pd.DataFrame, config: CompareConfig, *, overwrite: bool = False
) -> Path:
    """Write results.parquet, config.json and compare.html into ``directory``; return the HTML path.

    Earlier contents are moved to ``directory/replaced-TIMESTAMP/`` when ``overwrite``,
    otherwise a non-empty directory is refused.
    """
    check_out(directory, overwrite=overwrite)
    directory.mkdir(parents=True, exist_ok=True)
    move_aside(directory)
    resolved = resolved_config(config, frame)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write(directory / "results.parquet", buffer.getvalue())
    atomic_write(directory / "config.json", (json.dumps(resolved, indent=2) + "\n").encode())
    html_path = directory / "compare.html"
    atomic_write(html_path, _html(frame, resolved).encode("utf-8"))
    return html_path


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, then restore the previous setting.

    Why the command line trains on one thread by default: every tensor here is tiny (at most a
    few thousand rows times tens of columns), so intra-op parallelism has nothing to gain, and
    on a busy 2-core machine its fork-join synchronisation made each step about 10x slower
    (measured: ``iht compare --data iris --sparsity 5`` took 214 s with torch's 2 threads and
    24 s with 1, the same numbers out). ``n=None`` leaves the setting alone.
    """
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------
@click.command("compare")
@click.option(
    "--data",
    default="iris",
    show_default=True,
    help="Data set: iris, wine, breast_cancer, digits (or a CSV file with --target, when supported).",
)
@click.option("--target", help="Label column of a CSV file.")
@click.option(
    "--sparsity",
    required=True,
    help="Budgets s: counts (3,5,8), ranges (1-5) or fractions of P (0.1, 10%); biases count.",
)
@click.option(
    "--hidden", default="", help="Hidden layer widths, e.g. 32 or 64,32.  [default: linear]"
)
@click.option("--activation", default="relu", show_default=True, help="Hidden activation.")
@click.option(
    "--methods",
    default=",".join(METHODS),
    show_default=True,
    help="Methods to run, comma-separated.",
)
@click.option(
    "--steps", type=int, default=2000, show_default=True, help="Gradient evaluations per method."
)
@click.option(
    "--seeds", type=int, default=5, show_default=True, help="Seeds 0..N-1 (split + init each)."
)
@click.option("--lr", type=float, help="One step size for every method.  [default: 1/L_hat]")
@click.option("--l1", type=float, default=1e-3, show_default=True, help="lambda of the L1 method.")
@click.option(
    "--n-monte",
    type=int,
    default=DEFAULT_N_SAMPLES,
    show_default=True,
    help="Monte Carlo draws per L_hat.",
)
@click.option(
    "--test-fraction", type=float, default=0.2, show_default=True, help="Share of rows for testing."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Output directory.  [default: results/compare-DATA]",
)
@click.option("--overwrite", is_flag=True, help="Move an earlier comparison in --out aside.")
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="torch intra-op threads while training (0: leave torch's setting alone).",
)
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def compare_command(
    data: str,
    target: str | None,
    sparsity: str,
    hidden: str,
    activation: str,
    methods: str,
    steps: int,
    seeds: int,
    lr: float | None,
    l1: float,
    n_monte: int,
    test_fraction: float,
    out: Path | None,
    overwrite: bool,
    threads: int,
    no_progress: bool,
) -> None:
    """Compare dense GD, one-shot pruning, gradual pruning, L1 and IHT at budgets s.

    Every method gets the same number of full-batch gradient steps on the same split and
    initialisation; prints a table (median [min, max] over seeds) and writes
    results.parquet, config.json and compare.html to --out.
    """
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0 leaves torch's setting alone), got {threads}")
    dataset = load_data(data, target)
    widths = parse_hidden(hidden)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    size = sum(
        p.numel()
        for p in build_model(
            dataset.n_features, dataset.n_classes, widths, activation=activation
        ).parameters()
    )
    config = CompareConfig(
        data=data,
        target=target,
        sparsity=parse_sparsity(sparsity, size),
        hidden=widths,
        activation=activation,
        methods=parse_methods(methods),
        steps=steps,
        seeds=seeds,
        test_fraction=test_fraction,
        l1=l1,
        lr=lr,
        n_monte=n_monte,
    )
    directory = out or Path("results") / f"compare-{Path(data).stem}"
    check_out(directory, overwrite=overwrite)
    click.echo(
        f"compare: {dataset.name}, P = {size}, s = {', '.join(map(str, config.sparsity))}, "
        f"methods {', '.join(config.methods)}, {steps} steps, {seeds} seed(s) -> {directory}",
        err=True,
    )
    start = time.perf_counter()
    try:
        with torch_threads(threads or None):
            frame = run_compare(config, dataset=dataset, progress=not no_progress)
    except KeyboardInterrupt:
        # Nothing is stored before every run is done, so there is nothing to resume.
        click.echo(f"iht compare: interrupted; nothing was written to {directory}", err=True)
        raise click.exceptions.Abort() from None
    html_path = write_outputs(directory, frame, config, overwrite=overwrite)
    click.echo(format_table(summarise(frame)))
    click.echo(f"report: {html_path} ({time.perf_counter() - start:.1f} s)", err=True)
