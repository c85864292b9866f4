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
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

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
    magnitude_masks,
    nonzeros,
    prune_global_,
    rigl_fraction,
    rigl_mask,
)
from ..budget import Budget, parse_sparsity_list, plan_budget, plan_structured_budget
from ..data import Dataset, load_dataset, n_test_rows, random_split, standardise
from ..errors import DataError, NonFiniteError, StoreError
from ..init import reset_parameters_, sparse_init_
from ..lipschitz import estimate_l2s
from ..models import build_model
from ..optim import IHT
from ..schedules import schedule_named
from ..sparse_optimizer import SparseOptimizer
from ..storage.files import (
    atomic_write_bytes,
    check_output_dir,
    json_text,
    make_dir,
    make_own_dir,
    move_aside,
    parquet_bytes,
    printable,
    read_json,
    read_parquet,
    write_json,
)
from ..storage.records import from_dict, reading_stored, to_dict
from ..threshold import flatten, split_like, threshold_mask
from .config import DEFAULT_LR, METHODS, CompareConfig
from .progress import run_bar
from .threads import torch_threads

__all__ = [
    "OUTPUT_FILES",
    "CompareRecord",
    "CompareResult",
    "compare_levels",
    "compared_model",
    "model_size",
    "read_comparison",
    "run_compare",
]

#: What :meth:`CompareResult.save` writes (the report adds compare.html).
OUTPUT_FILES = ("results.parquet", "config.json")

# Purposes of the seeds derived from a run's seed (see _seed).
_SPLIT, _INIT, _L2S, _SUPPORT, _SHUFFLE, _VALIDATION = 0, 1, 2, 3, 4, 5


def _seed(seed: int, *path: int) -> int:
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def _generator(seed: int, *path: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(seed, *path))


class _Problem:
    """One seed's standardised split (its test rows, or a validation split carved from its
    training rows), its batches, and a gradient-evaluation counter."""

    def __init__(
        self, dataset: Dataset, config: CompareConfig, seed: int, dtype: torch.dtype
    ) -> None:
        n = len(dataset.y)
        if dataset.split is not None:  # the data set's own split (MNIST-1D's 4,000 / 1,000)
            train, test = dataset.split
        else:
            n_test = n_test_rows(n, config.test_fraction)
            train, test = random_split(n, n - n_test, seed=_seed(seed, _SPLIT))
        if config.validation_fraction is not None:
            # Hyperparameters are chosen on rows carved from the training rows, never the test.
            n_val = n_test_rows(len(train), config.validation_fraction)
            order = torch.randperm(len(train), generator=_generator(seed, _VALIDATION)).numpy()
            train, test = np.sort(train[order[n_val:]]), np.sort(train[order[:n_val]])
        X = torch.from_numpy(standardise(dataset.X, train)).to(dtype)
        y = torch.from_numpy(dataset.y)
        self.X_train, self.y_train = X[train], y[train]
        self.X_test, self.y_test = X[test], y[test]
        self.batch_size, self.seed = config.batch_size, seed
        self.count = 0

    def loss(self, model: nn.Module, rows: Tensor | None = None) -> Tensor:
        """The training loss on ``rows`` (all rows when None), counting the evaluation."""
        self.count += 1
        if rows is None:
            return F.cross_entropy(model(self.X_train), self.y_train)
        return F.cross_entropy(model(self.X_train[rows]), self.y_train[rows])

    def batches(self) -> Iterator[Tensor | None]:
        """Every method's batches of this seed, the same sequence for each (None: all rows)."""
        n = len(self.y_train)
        if self.batch_size is None or self.batch_size >= n:
            while True:
                yield None
        gen = _generator(self.seed, _SHUFFLE)
        while True:
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, self.batch_size):
                yield order[start : start + self.batch_size].sort().values

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


class _Policy:
    """What a method does around each step of the shared loop (the default: nothing)."""

    def before_step(self, t: int) -> None:
        """Before the gradient of step t (GMP's and one-shot pruning)."""

    def before_update(self, t: int) -> None:
        """After the gradient of step t, before the optimizer's update (RigL)."""

    def after_update(self, t: int) -> None:
        """After the optimizer's update (masks, soft thresholding)."""

    def finish(self) -> None:
        """After the last step."""


class _Masked(_Policy):
    """Keep a model's parameters (and its optimizer's state) on a set of masks."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.params = list(model.parameters())
        self.optimizer = optimizer
        self.masks: list[Tensor] | None = None

    def apply(self) -> None:
        if self.masks is None:
            return
        with torch.no_grad():
            for p, mask in zip(self.params, self.masks, strict=True):
                p.mul_(mask)
                for name, value in self.optimizer.state.get(p, {}).items():
                    if name != "step" and isinstance(value, Tensor) and value.shape == p.shape:
                        value.mul_(mask)

    def after_update(self, t: int) -> None:
        self.apply()

    def keep_only(self, keep: Tensor) -> None:
        """Mask every parameter to the flat bool ``keep`` (parameter order), from now on."""
        self.masks = [
            m.to(p.dtype) for m, p in zip(split_like(keep, self.params), self.params, strict=True)
        ]
        self.apply()


class _Gmp(_Masked):
    """Gradual magnitude pruning on the cubic schedule (a pruned entry never returns)."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, s: int, plan: GmpPlan
    ) -> None:
        super().__init__(model, optimizer)
        self.s, self.plan = s, plan
        self.size = sum(p.numel() for p in self.params)
        self.keep = torch.ones(self.size, dtype=torch.bool)

    def before_step(self, t: int) -> None:
        if not self.plan.prunes_at(t):
            return
        k = self.plan.kept(t, self.size, self.s)
        with torch.no_grad():
            # Pruned entries are exactly 0, so the k largest magnitudes lie among the unpruned
            # ones; "& keep" makes sure a pruned entry never returns.
            self.keep = self.keep & threshold_mask(flatten(p.detach() for p in self.params), k)
            self.keep_only(self.keep)


class _OneShot(_Policy):
    """Dense until ``at``, then ``torch.nn.utils.prune.global_unstructured`` to s, fine-tuned."""

    def __init__(self, model: nn.Module, s: int, at: int) -> None:
        self.model, self.s, self.at = model, s, at
        self.slots: list[tuple[nn.Module, str]] = []

    def before_step(self, t: int) -> None:
        if t == self.at:
            self.slots = prune_global_(self.model, self.s)

    def finish(self) -> None:
        for module, name in self.slots:
            prune.remove(module, name)


class _L1(_Masked):
    """Proximal L1 (soft thresholding by lr * lambda after each step) until ``at``; then keep
    the s largest magnitudes and fine-tune on that mask."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, s: int, at: int, shrink: float
    ) -> None:
        super().__init__(model, optimizer)
        self.model, self.s, self.at, self.shrink = model, s, at, shrink
        self.before_prune = -1

    def before_step(self, t: int) -> None:
        if t == self.at:
            self.before_prune = nonzeros(self.model)
            self.masks = magnitude_masks(self.model, self.s)
            self.apply()

    def after_update(self, t: int) -> None:
        if t < self.at and self.shrink > 0:
            with torch.no_grad():
                for p in self.params:
                    p.copy_(F.softshrink(p, self.shrink))
        self.apply()


class _RigL(_Masked):
    """RigL (Evci et al. 2020): an ERK-allocated random sparse start; every ``every`` steps
    until ``end``, each layer drops its smallest weights and grows the same number where the
    dense gradient is largest (grown weights start at 0, their optimizer state zeroed);
    the gradients off the mask are not applied."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        budget: Budget,
        config: CompareConfig,
        generator: torch.Generator,
    ) -> None:
        super().__init__(model, optimizer)
        named = dict(model.named_parameters())
        self.pools = [[named[n] for n in pool.params] for pool in budget.pools]
        index = {id(p): i for i, p in enumerate(self.params)}
        self.pool_index = [[index[id(p)] for p in pool] for pool in self.pools]
        budget.sparse_init_(model, generator=generator)
        with torch.no_grad():  # the random support drawn (default inits have no exact zeros)
            self.masks = [(p != 0).to(p.dtype) for p in self.params]
        self.every, self.fraction = config.rigl_every, config.rigl_fraction
        self.end = int(config.rigl_end * config.steps)

    def before_update(self, t: int) -> None:
        with torch.no_grad():
            if t > 0 and t % self.every == 0 and t < self.end:
                fraction = rigl_fraction(t, fraction=self.fraction, end=self.end)
                for pool in self.pool_index:
                    tensors = [self.params[i] for i in pool]
                    masks = [self.masks[i] > 0 for i in pool]  # type: ignore[index]
                    active = flatten(masks)
                    k = int(fraction * int(active.sum()))
                    grads = flatten(
                        torch.zeros_like(p) if p.grad is None else p.grad for p in tensors
                    )
                    new = rigl_mask(flatten(p.detach() for p in tensors), grads, active, k)
                    for i, part, p in zip(pool, split_like(new, tensors), tensors, strict=True):
                        grown = part & ~(self.masks[i] > 0)  # type: ignore[index]
                        p.masked_fill_(grown, 0.0)  # a grown connection starts at 0
                        for name, value in self.optimizer.state.get(p, {}).items():
                            if (
                                name != "step"
                                and isinstance(value, Tensor)
                                and value.shape == p.shape
                            ):
                                value.masked_fill_(grown, 0.0)
                        self.masks[i] = part.to(p.dtype)  # type: ignore[index]
            for p, mask in zip(self.params, self.masks, strict=True):  # type: ignore[arg-type]
                if p.grad is not None:
                    p.grad.mul_(mask)  # only the active connections are trained


class _StructuredPrune(_Masked):
    """One-shot (at ``at``) or gradual (on the GMP plan, each pool's kept rows following the
    cubic schedule) pruning onto a structured budget: the rows (N:M entries) of largest
    magnitude are kept, and a pruned one never returns."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        budget: Budget,
        *,
        at: int | None = None,
        plan: GmpPlan | None = None,
    ) -> None:
        super().__init__(model, optimizer)
        self.model, self.budget, self.at, self.plan = model, budget, at, plan
        self.keep = torch.ones(sum(p.numel() for p in self.params), dtype=torch.bool)

    def before_step(self, t: int) -> None:
        if self.plan is not None:
            if not self.plan.prunes_at(t):
                return
            budget = self._gradual(t)
        elif t == self.at:
            budget = self.budget
        else:
            return
        with torch.no_grad():
            theta = flatten(p.detach() for p in self.params)
            # Pruned rows are exactly 0, so the kept ones lie among the unpruned.
            self.keep = self.keep & budget.masks(self.model, theta[None], random=False)[0]
            self.keep_only(self.keep)

    def _gradual(self, t: int) -> Budget:
        """The budget at step t: each pool's rows on the cubic schedule to its final count."""
        assert self.plan is not None
        pools = []
        for pool in self.budget.pools:
            if pool.dense:
                pools.append(pool)
                continue
            rows = self.plan.kept(t, pool.units, pool.sparsity)
            pools.append(replace(pool, sparsity=rows))
        return replace(self.budget, pools=tuple(pools))


def _train_structured(
    method: str,
    budget: Budget,
    model: nn.Module,
    problem: _Problem,
    config: CompareConfig,
    lr: float,
    plan: GmpPlan,
) -> _Trained:
    """A sparse method under a structured budget, in the shared loop."""
    params = list(model.parameters())
    policy: _Policy = _Policy()
    if method == "iht":  # from the dense initialisation: its first projection picks the rows
        if config.optimizer == "gd":
            optimizer: torch.optim.Optimizer = budget.optimizer(model, lr=lr)
        else:
            optimizer = budget.wrap(
                model,
                lambda groups: _base_optimizer(config, groups, lr),
                schedule=schedule_named(config.iht_schedule, config.steps),
            )
    else:
        optimizer = _base_optimizer(config, params, lr)
        if method == "oneshot":
            policy = _StructuredPrune(model, optimizer, budget, at=config.pretrain_steps)
        else:
            policy = _StructuredPrune(model, optimizer, budget, plan=plan)
    problem.count = 0
    batches = problem.batches()
    start = time.perf_counter()
    for t in range(config.steps):
        policy.before_step(t)
        optimizer.zero_grad(set_to_none=True)
        problem.loss(model, next(batches)).backward()
        policy.before_update(t)
        optimizer.step()
        policy.after_update(t)
    policy.finish()
    return _Trained(model, problem.count, time.perf_counter() - start)


@dataclass
class _Trained:
    """A trained model with its cost."""

    model: nn.Module
    grad_evals: int
    seconds: float
    l1_nonzeros: int = -1


def _base_optimizer(config: CompareConfig, params: Any, lr: float) -> torch.optim.Optimizer:
    """Every method's base optimizer (gd: plain gradient steps) over ``params`` (tensors or
    param groups)."""
    if config.optimizer in ("gd", "sgd"):
        return torch.optim.SGD(params, lr=lr, foreach=True)
    if config.optimizer == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.AdamW(params, lr=lr)


def _train_method(
    method: str,
    s: int,
    model0: nn.Module,
    problem: _Problem,
    config: CompareConfig,
    lr: float,
    plan: GmpPlan,
) -> _Trained:
    """One method at budget s from ``model0``: the shared loop with the method's policy."""
    model = copy.deepcopy(model0)
    params = list(model.parameters())
    steps, pre = config.steps, config.pretrain_steps
    budget = None if method == "dense" else structured_budget(config, model, s)
    if budget is not None:
        return _train_structured(method, budget, model, problem, config, lr, plan)
    if method == "iht":
        schedule = config.iht_schedule
        if schedule == "constant":  # the paper's start: a random support of size s
            sparse_init_(params, s, generator=_generator(problem.seed, _SUPPORT, s))
        if config.optimizer == "gd":
            optimizer: torch.optim.Optimizer = IHT(params, lr=lr, sparsity=s)
        else:
            optimizer = SparseOptimizer(
                _base_optimizer(config, params, lr),
                sparsity=s,
                schedule=schedule_named(schedule, steps),
                selection=config.iht_selection,
            )
        policy: _Policy = _Policy()
    else:
        optimizer = _base_optimizer(config, params, lr)
        if method == "dense":
            policy = _Policy()
        elif method == "oneshot":
            policy = _OneShot(model, s, pre)
        elif method == "gmp":
            policy = _Gmp(model, optimizer, s, plan)
        elif method == "l1":
            policy = _L1(model, optimizer, s, pre, lr * config.l1)
        else:
            budget = plan_budget(model, s, allocation="erk")
            policy = _RigL(model, optimizer, budget, config, _generator(problem.seed, _SUPPORT, s))
    problem.count = 0
    batches = problem.batches()
    start = time.perf_counter()
    for t in range(steps):
        policy.before_step(t)
        optimizer.zero_grad(set_to_none=True)
        problem.loss(model, next(batches)).backward()
        policy.before_update(t)
        optimizer.step()
        policy.after_update(t)
    policy.finish()
    seconds = time.perf_counter() - start
    l1_nonzeros = policy.before_prune if isinstance(policy, _L1) else -1
    return _Trained(model, problem.count, seconds, l1_nonzeros)


def _run_seed(
    config: CompareConfig,
    levels: tuple[int, ...],
    dataset: Dataset,
    seed: int,
    report: Callable[[int], None],
) -> list[dict[str, Any]]:
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    problem = _Problem(dataset, config, seed, dtype)
    model0 = compared_model(config, dataset).to(dtype)
    reset_parameters_(model0, generator=_generator(seed, _INIT))
    size = sum(p.numel() for p in model0.parameters())
    plan = gmp_plan(
        config.steps, start=config.gmp_start, end=config.gmp_end, events=config.gmp_events
    )
    rows: list[dict[str, Any]] = []

    def step_size(s: int | None) -> tuple[float, tuple[float, int]]:
        if config.lr is not None:
            return config.lr, (0.0, 0)
        if config.optimizer not in ("gd", "sgd"):
            return DEFAULT_LR[config.optimizer], (0.0, 0)
        problem.count = 0
        start = time.perf_counter()
        budget = None if s is None else structured_budget(config, model0, s)
        est = estimate_l2s(
            model0,
            problem.loss,
            sparsity=s if budget is None else None,
            budget=budget,
            n_samples=config.n_monte,
            generator=_generator(seed, _L2S, 0 if s is None else s),
        )
        return est.lr, (time.perf_counter() - start, problem.count)

    def row(method: str, s: int, done: _Trained, lr: float, est: tuple[float, int]) -> None:
        model = done.model
        count = nonzeros(model)
        budget = None if method == "dense" else structured_budget(config, model, s)
        if method != "dense" and budget is None and count > s:  # checked on every run
            raise RuntimeError(f"{method} ended with {count} nonzeros > s = {s} (seed {seed})")
        if method != "dense" and budget is not None:
            theta = flatten(p.detach() for p in model.parameters())
            if bool((theta[~budget.masks(model, theta[None], random=False)[0]] != 0).any()):
                raise RuntimeError(
                    f"{method} ended off its {config.structure} budget (seed {seed})"
                )
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
                "steps": config.steps,
                "grad_evals": done.grad_evals,
                "estimate_grad_evals": est[1],
                **metrics,
                "nonzeros": count,
                "seconds": done.seconds,
                "estimate_seconds": est[0],
                "l1_nonzeros": done.l1_nonzeros,
            }
        )

    methods = [m for m in METHODS if m in config.methods]
    # The dense network's step size serves every method but IHT.
    dense_lr, dense_est = step_size(None) if set(methods) - {"iht"} else (math.nan, (0.0, 0))
    if "dense" in methods:  # it does not depend on s: trained once, a row for every s
        dense = _train_method("dense", size, model0, problem, config, dense_lr, plan)
        for s in levels:
            row("dense", s, dense, dense_lr, dense_est)
        report(len(levels))
    for s in levels:
        for method in methods:
            if method == "dense":
                continue
            lr, est = step_size(s) if method == "iht" else (dense_lr, dense_est)
            row(method, s, _train_method(method, s, model0, problem, config, lr, plan), lr, est)
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
    #: IHT's support selection as run (records written before it existed ran magnitude).
    iht_selection: str = "magnitude"


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
        partial = directory / PARTIAL
        only_partial = holds_only_partial(directory)
        if not only_partial:  # a comparison's own finished seeds are not in the way
            check_output_dir(directory, overwrite=overwrite)
        make_dir(directory)
        if not only_partial:
            move_aside(directory)
        atomic_write_bytes(directory / "results.parquet", parquet_bytes(self.frame))
        write_json(directory / "config.json", to_dict(self.record))
        if partial.is_dir() and not partial.is_symlink():  # superseded by results.parquet
            shutil.rmtree(partial)


def compared_model(config: CompareConfig, dataset: Dataset) -> nn.Module:
    """The model every method of ``config`` trains on ``dataset`` (default initialisation).

    Raises:
        DataError: ``dataset`` is not a classification data set.
    """
    if dataset.task != "classification":
        raise DataError(
            f"iht compare compares classifiers; {dataset.name} is a {dataset.task} data set "
            "(train it with iht train --task regression)"
        )
    return build_model(
        dataset.n_features,
        dataset.n_classes,
        config.hidden,
        activation=config.activation,
        kind=config.model,
        input_shape=dataset.input_shape,
    )


def model_size(config: CompareConfig, dataset: Dataset) -> int:
    """P, the parameters of the model ``config`` builds for ``dataset`` (biases counted)."""
    return sum(p.numel() for p in compared_model(config, dataset).parameters())


def compare_levels(config: CompareConfig, dataset: Dataset) -> tuple[int, ...]:
    """The budgets s of ``config`` as counts: of parameters (entry), of the hidden layers'
    rows (neuron / channel), or the one budget an N:M pattern implies."""
    if config.structure == "entry":
        return tuple(parse_sparsity_list(config.levels_text, model_size(config, dataset)))
    model = compared_model(config, dataset)
    if ":" in config.structure:
        return (plan_structured_budget(model, config.structure).sparsity,)
    rows = plan_structured_budget(model, config.structure, 1.0)
    units = sum(p.units for p in rows.pools if not p.dense)
    return tuple(parse_sparsity_list(config.levels_text, units))


def structured_budget(config: CompareConfig, model: nn.Module, s: int) -> Budget | None:
    """The structured budget of level s for ``model`` (None for an entry budget)."""
    if config.structure == "entry":
        return None
    return plan_structured_budget(model, config.structure, None if ":" in config.structure else s)


def run_compare(
    config: CompareConfig,
    *,
    dataset: Dataset | None = None,
    progress: bool = False,
    partial: Path | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> CompareResult:
    """Run every method of ``config`` at every s and seed (see :class:`CompareResult`).

    Args:
        config: the comparison.
        dataset: the data, if already loaded (else ``config.data`` is loaded).
        progress: show a progress bar over the runs.
        partial: a directory where each finished seed's rows are stored as it ends
            (``seed-NNNN.parquet``, beside the config they belong to); the seeds stored there
            for this config are read back instead of run again, so a stopped comparison
            resumes. A directory holding another config's seeds is refused; a seed file
            that is not this comparison's (:func:`check_rows`) is moved to ``corrupt/`` in
            it and run again.
        log: where those messages go.

    Raises:
        InvalidValueError, DataError: a level outside 1..P for this model; bad data.
        NonFiniteError: a method diverged (a too large ``lr``).
    """
    if dataset is None:
        dataset = load_dataset(config.data, target=config.target)
    levels = compare_levels(config, dataset)
    total = len(config.methods) * len(levels) * config.seeds
    rows: list[dict[str, Any]] = []
    stored = _open_partial(partial, config)
    per_seed = len([m for m in METHODS if m in config.methods]) * len(levels)
    with run_bar(total, "compare", enabled=progress) as bar, torch_threads(config.threads):
        for seed in range(config.seeds):
            path = None if partial is None else partial / f"seed-{seed:04d}.parquet"
            if path is not None and path.name in stored:
                kept = _stored_seed(path, config, levels, seed, per_seed, log)
                if kept is not None:
                    rows += kept
                    bar.update(len(kept))
                    continue
            seed_rows = _run_seed(config, levels, dataset, seed, bar.update)
            if path is not None:
                atomic_write_bytes(path, parquet_bytes(pd.DataFrame(seed_rows)))
            rows += seed_rows
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
        iht_selection=config.iht_selection,
    )
    return CompareResult(record, frame)


PARTIAL = "partial"

#: The columns of a comparison's rows (see :class:`CompareResult`), as stored.
ROW_COLUMNS = (
    "method",
    "sparsity",
    "seed",
    "n_params",
    "n_train",
    "n_test",
    "lr",
    "steps",
    "grad_evals",
    "estimate_grad_evals",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "nonzeros",
    "seconds",
    "estimate_seconds",
    "l1_nonzeros",
)


def check_rows(
    frame: pd.DataFrame, config: CompareConfig, levels: Sequence[int], seeds: Sequence[int]
) -> str | None:
    """Why stored comparison rows are not those of ``config`` at ``levels`` and ``seeds``
    (None when they are): columns, one row per method, level and seed, the config's steps,
    and values in range (losses finite >= 0, accuracies in [0, 1], lr > 0, counts >= 0)."""
    if list(frame.columns) != list(ROW_COLUMNS):
        return "its columns are not a comparison's"
    methods = [m for m in METHODS if m in config.methods]
    expected = {(m, s, seed) for m in methods for s in levels for seed in seeds}
    try:
        found = list(
            zip(
                frame["method"],
                frame["sparsity"].astype(int),
                frame["seed"].astype(int),
                strict=True,
            )
        )
        numbers = frame[["lr", "train_loss", "test_loss", "train_acc", "test_acc"]].astype(float)
        counts = frame[["steps", "nonzeros", "n_params"]].astype(int)
    except (TypeError, ValueError):
        return "it holds values of the wrong type"
    if len(found) != len(expected) or set(found) != expected:
        return f"it does not hold one row per method, level and seed of this comparison ({len(found)} rows, {len(expected)} expected)"
    if (counts["steps"] != config.steps).any():
        return f"it holds runs of another number of steps than {config.steps}"
    losses = numbers[["train_loss", "test_loss"]].to_numpy()
    accs = numbers[["train_acc", "test_acc"]].to_numpy()
    if not (np.isfinite(losses).all() and (losses >= 0).all()):
        return "it holds a loss that is negative or not finite"
    if not ((accs >= 0) & (accs <= 1)).all():
        return "it holds an accuracy outside [0, 1]"
    if not (numbers["lr"].to_numpy() > 0).all() or (counts["nonzeros"] < 0).any():
        return "it holds a step size <= 0 or a negative count"
    if (counts["nonzeros"] > counts["n_params"]).any():
        return "it holds more nonzeros than parameters"
    return None


def holds_only_partial(directory: Path) -> bool:
    """Whether ``directory`` holds nothing but a comparison's finished seeds (and the
    earlier contents ``--overwrite`` moved aside)."""
    if not directory.is_dir():
        return False
    names = [p.name for p in directory.iterdir() if p.name != ".lock"]
    return PARTIAL in names and all(n == PARTIAL or n.startswith("replaced-") for n in names)


def _stored_seed(
    path: Path,
    config: CompareConfig,
    levels: tuple[int, ...],
    seed: int,
    per_seed: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]] | None:
    """A finished seed's stored rows, checked; a file that fails is moved aside (None)."""
    try:
        frame = read_parquet(path, max_rows=per_seed)
        why = check_rows(frame, config, levels, [seed])
    except StoreError as exc:
        why = str(exc)
    if why is None:
        log(f"seed {seed}: its {per_seed} finished runs are read from {path}")
        return cast(list[dict[str, Any]], frame.to_dict("records"))
    aside = path.parent / "corrupt"
    make_own_dir(aside)
    os.replace(path, aside / f"{path.name}.{time.time_ns()}")
    log(f"{printable(path.name)}: {why}; moved to {aside}, seed {seed} will be run again")
    return None


def _open_partial(partial: Path | None, config: CompareConfig) -> set[str]:
    """The seed files stored in ``partial`` for ``config`` (writing its config if new)."""
    if partial is None:
        return set()
    make_own_dir(partial)
    path = partial / "config.json"
    if not path.exists():
        write_json(path, to_dict(config))
        return set()
    try:
        same = read_json(path) == json.loads(json_text(to_dict(config)))
    except StoreError:
        same = False
    if not same:
        raise StoreError(
            f"{partial} holds the finished seeds of another comparison; use --overwrite to "
            "move them aside, or another --out"
        )
    return {p.name for p in partial.iterdir() if p.name.startswith("seed-")}


def read_comparison(directory: str | Path) -> CompareResult:
    """A saved comparison, read back typed.

    Raises:
        StoreError: a file is missing, unreadable or not what ``iht compare`` writes.
    """
    directory = Path(directory)
    with reading_stored(directory, "a saved comparison"):
        record = from_dict(CompareRecord, read_json(directory / "config.json"), where="config.json")
        n_rows = len(record.config.methods) * len(record.levels) * record.config.seeds
        frame = read_parquet(directory / "results.parquet", max_rows=n_rows)
    why = check_rows(frame, record.config, record.levels, range(record.config.seeds))
    if why is not None:
        raise StoreError(f"{directory / 'results.parquet'} is not this comparison's results: {why}")
    return CompareResult(record, frame)
