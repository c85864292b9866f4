"""The paper's IRIS study: configuration, presets, per-run seeds and the work of one chunk.

The study (PAPER_NOTES.md, "The experiment"): a single linear layer 4 -> 3 (P = 15) on IRIS,
``runs`` dense GD runs and ``runs`` IHT runs at each s in ``levels``, each run with its own
random 120/30 split, initialisation, initial support and its own L_hat_2s -> lr = 1/L_hat.

Seeds. Every seed derives from one master seed through ``numpy.random.SeedSequence``, so any
run can be re-created alone:

- data seed of run i: SeedSequence(seed, spawn_key=(1, i)); shared by the dense run i and
  the IHT runs i of every level **[our choice]**: each IHT run has a dense run on the same
  split, which is what epsilon = f(theta_s) - f(theta_dense) on the same split needs;
- init, support and Monte Carlo seeds of run i at level s (s = 0 for dense):
  SeedSequence(seed, spawn_key=(2, s, i)).

One extra "showcase" run, with the paper's init seed 21 and support seed 84, gives the figure of
one run's parameters before and after training.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .certify import DEFAULT_GRAD_TOL, stability_figures
from .data import load_builtin, random_split
from .engine import EngineResult, run_many
from .errors import NonFiniteError
from .init import linear_init, random_support
from .lipschitz import (
    DEFAULT_N_SAMPLES,
    L2sEstimate,
    draw_pairs,
    lipschitz_ratios,
    ratios_to_estimate,
)
from .problems import LinearSoftmax, SplitData

__all__ = [
    "PRESETS",
    "Chunk",
    "RunSpec",
    "StudyConfig",
    "plan_chunks",
    "run_chunk",
    "run_one_faithful",
    "run_seeds",
]

N_FEATURES, N_CLASSES = 4, 3
P = N_CLASSES * (N_FEATURES + 1)  # 15
DENSE = "dense"
IHT = "iht"
SHOWCASE = "showcase"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
ENGINES = ("numba", "torch")


@dataclass(frozen=True)
class StudyConfig:
    """Everything that determines a study's numbers (chunking included)."""

    runs: int = 100
    levels: tuple[int, ...] = tuple(range(1, P))
    max_steps: int = 10_000
    tol: float = 0.05
    n_monte: int = DEFAULT_N_SAMPLES
    seed: int = 0
    dtype: str = "float64"
    engine: str = "numba"
    n_train: int = 120
    grad_tol: float = DEFAULT_GRAD_TOL
    chunk_runs: int = 500
    showcase_init_seed: int = 21
    showcase_support_seed: int = 84
    showcase_sparsity: int = 5
    dataset: str = field(default="iris")

    def __post_init__(self) -> None:
        def fail(name: str, value: object, allowed: str) -> None:
            raise ValueError(f"{name} must be {allowed}, got {value!r}")

        if self.runs < 1:
            fail("runs", self.runs, "an integer >= 1")
        if not self.levels or any(not 1 <= s < P for s in self.levels):
            fail("levels", self.levels, f"sparsity levels in 1..{P - 1}")
        if len(set(self.levels)) != len(self.levels):
            fail("levels", self.levels, "distinct levels")
        if self.max_steps < 1:
            fail("max_steps", self.max_steps, "an integer >= 1")
        if not (self.tol >= 0 and np.isfinite(self.tol)):
            fail("tol", self.tol, "a finite number >= 0")
        if self.n_monte < 1:
            fail("n_monte", self.n_monte, "an integer >= 1")
        if self.engine not in ENGINES:
            fail("engine", self.engine, f"one of {', '.join(ENGINES)}")
        if self.dtype not in DTYPES:
            fail("dtype", self.dtype, f"one of {', '.join(DTYPES)}")
        if not 1 < self.n_train < 150:
            fail("n_train", self.n_train, "in 2..149 (IRIS has 150 points)")
        if self.chunk_runs < 1:
            fail("chunk_runs", self.chunk_runs, "an integer >= 1")
        if not 1 <= self.showcase_sparsity < P:
            fail("showcase_sparsity", self.showcase_sparsity, f"in 1..{P - 1}")
        if self.dataset != "iris":
            fail("dataset", self.dataset, "'iris' (the paper's study)")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown study settings: {', '.join(sorted(unknown))}")
        values = dict(data)
        if "levels" in values:
            values["levels"] = tuple(int(s) for s in values["levels"])
        return cls(**values)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


#: ``paper``: the paper's full study. ``quick``: the same structure, fewer runs per level.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"runs": 100},
    "paper": {"runs": 1000},
}


@dataclass(frozen=True)
class RunSpec:
    """One run's identity and seeds."""

    kind: str  # "dense", "iht" or "showcase"
    sparsity: int  # P for dense runs
    index: int
    data_seed: int
    init_seed: int
    support_seed: int
    mc_seed: int

    @property
    def run_id(self) -> str:
        if self.kind == DENSE:
            return f"dense-{self.index:05d}"
        if self.kind == SHOWCASE:
            return "showcase"
        return f"s{self.sparsity:02d}-{self.index:05d}"


def _seeds(master: int, key: tuple[int, ...], n: int) -> list[int]:
    return [int(v) for v in np.random.SeedSequence(master, spawn_key=key).generate_state(n)]


def run_seeds(config: StudyConfig, kind: str, sparsity: int, index: int) -> RunSpec:
    """The seeds of one run, derived from the master seed (see module docstring)."""
    (data_seed,) = _seeds(config.seed, (1, index), 1)
    level = 0 if kind == DENSE else sparsity
    init_seed, support_seed, mc_seed = _seeds(config.seed, (2, level, index), 3)
    if kind == SHOWCASE:
        init_seed, support_seed = config.showcase_init_seed, config.showcase_support_seed
        (mc_seed,) = _seeds(config.seed, (3, sparsity), 1)
    return RunSpec(kind, sparsity, index, data_seed, init_seed, support_seed, mc_seed)


@dataclass(frozen=True)
class Chunk:
    """A group of runs computed and stored together (one Parquet part)."""

    key: str
    kind: str
    sparsity: int
    indices: tuple[int, ...]

    def specs(self, config: StudyConfig) -> list[RunSpec]:
        return [run_seeds(config, self.kind, self.sparsity, i) for i in self.indices]


def plan_chunks(config: StudyConfig) -> list[Chunk]:
    """Every chunk of the study, dense first (IHT rows need the dense loss of their split)."""
    chunks = []
    for kind, level in [(DENSE, P), *((IHT, s) for s in config.levels)]:
        tag = "dense" if kind == DENSE else f"s{level:02d}"
        for start in range(0, config.runs, config.chunk_runs):
            stop = min(start + config.chunk_runs, config.runs)
            chunks.append(Chunk(f"{tag}-{start:05d}", kind, level, tuple(range(start, stop))))
    chunks.append(Chunk("showcase", SHOWCASE, config.showcase_sparsity, (0,)))
    return chunks


def iter_train_masks(config: StudyConfig, specs: list[RunSpec]) -> Iterator[np.ndarray]:
    for spec in specs:
        train, _ = random_split(150, config.n_train, seed=spec.data_seed)
        mask = np.zeros(150, dtype=bool)
        mask[train] = True
        yield mask


def run_chunk(
    config: StudyConfig,
    chunk: Chunk,
    dense_loss: dict[int, float] | None = None,
    *,
    on_step: Any = None,
) -> list[dict[str, Any]]:
    """Compute one chunk's runs; return one dict (a table row) per run.

    Args:
        config: the study.
        chunk: which runs.
        dense_loss: training loss of dense run i by index i, for epsilon (IHT rows).
        on_step: progress callback ``on_step(steps_done, active_runs)``.
    """
    data = load_builtin(config.dataset)
    specs = chunk.specs(config)
    train = np.stack(list(iter_train_masks(config, specs)))
    problem = LinearSoftmax(SplitData(data.X, data.y, train), dtype=config.torch_dtype)
    dtype = config.torch_dtype
    sparsity = None if chunk.kind == DENSE else chunk.sparsity
    s_eff = P if sparsity is None else sparsity

    theta_init = torch.cat(
        [linear_init(1, N_FEATURES, N_CLASSES, generator=_gen(spec.init_seed)) for spec in specs]
    )
    if sparsity is not None:
        masks = torch.stack(
            [random_support(P, sparsity, generator=_gen(spec.support_seed)) for spec in specs]
        )
        theta_init = torch.where(masks, theta_init, torch.zeros_like(theta_init))
    if config.engine == "numba":
        result, estimates = _train_numba(config, data, train, specs, theta_init, sparsity)
    else:
        estimates = [_estimate(problem, spec, r, s_eff, config) for r, spec in enumerate(specs)]
        lr_torch = torch.tensor([e.lr for e in estimates], dtype=dtype)
        result = run_many(
            problem,
            theta_init.to(dtype),
            lr_torch,
            sparsity=sparsity,
            max_steps=config.max_steps,
            tol=config.tol,
            on_step=on_step,
        )
    lr = torch.tensor([e.lr for e in estimates], dtype=torch.float64)
    rows = torch.arange(len(specs))
    metrics = problem.metrics(result.theta, rows)
    _, grad = problem.loss_and_grad(result.theta, rows)
    cert = stability_figures(
        result.theta, grad, lr=lr.to(dtype), sparsity=s_eff, grad_tol=config.grad_tol
    )

    out = []
    for r, spec in enumerate(specs):
        theta = result.theta[r].double()
        row: dict[str, Any] = {
            "run_id": spec.run_id,
            "kind": spec.kind,
            "sparsity": spec.sparsity,
            "index": spec.index,
            "data_seed": spec.data_seed,
            "init_seed": spec.init_seed,
            "support_seed": spec.support_seed,
            "mc_seed": spec.mc_seed,
            "train_idx": np.flatnonzero(train[r]).astype(np.int16).tolist(),
            "l_hat": estimates[r].estimate,
            "lr": estimates[r].lr,
            "steps": int(result.steps[r]),
            "reached_tol": bool(result.reached_tol[r]),
            "nonzeros": int((theta != 0).sum()),
            "support": torch.nonzero(theta != 0).squeeze(1).tolist(),
            "theta_init": theta_init[r].double().tolist(),
            "theta_final": theta.tolist(),
            "grad_final": grad[r].double().tolist(),
        }
        for name in ("train_loss", "test_loss", "train_acc", "test_acc"):
            row[name] = float(metrics[name][r])
        for name in (
            "max_grad_on_support",
            "max_grad_off_support",
            "off_support_ratio",
            "residual",
        ):
            row[name] = float(cert[name][r])
        row["tie"] = bool(cert["tie"][r])
        row["stable"] = bool(cert["stable"][r])
        if spec.kind == DENSE:
            row["dense_train_loss"] = row["train_loss"]
        else:
            row["dense_train_loss"] = (dense_loss or {}).get(spec.index, float("nan"))
        row["epsilon"] = row["train_loss"] - row["dense_train_loss"]
        out.append(row)
    return out


def _train_numba(
    config: StudyConfig,
    data: Any,
    train: np.ndarray,
    specs: list[RunSpec],
    theta_init: torch.Tensor,
    sparsity: int | None,
) -> tuple[EngineResult, list[L2sEstimate]]:
    """The compiled fast path: L_hat of every run and its training, in :mod:`iht.fastpath`."""
    from . import fastpath

    np_dtype = np.float64 if config.dtype == "float64" else np.float32
    standardised = SplitData(data.X, data.y, train).standardised()  # (R, 150, 4)
    idx = np.stack([np.flatnonzero(m) for m in train])  # (R, n_train)
    x_train = np.ascontiguousarray(
        np.take_along_axis(standardised, idx[:, :, None], axis=1).transpose(0, 2, 1), dtype=np_dtype
    )
    y_train = data.y[idx]
    s_eff = P if sparsity is None else sparsity

    def init_fn(n: int, gen: torch.Generator | None) -> torch.Tensor:
        return linear_init(n, N_FEATURES, N_CLASSES, generator=gen)

    pairs = [
        draw_pairs(
            init_fn, sparsity=s_eff, size=P, n_samples=config.n_monte, generator=_gen(spec.mc_seed)
        )
        for spec in specs
    ]
    sparse = torch.cat([a for a, _ in pairs]).numpy()
    perturbed = torch.cat([b for _, b in pairs]).numpy()
    run_of_row = np.repeat(np.arange(len(specs)), config.n_monte)
    _, g_sparse = fastpath.loss_and_grad_rows(x_train, y_train, run_of_row, sparse)
    _, g_perturbed = fastpath.loss_and_grad_rows(x_train, y_train, run_of_row, perturbed)
    ratios = np.linalg.norm(g_sparse.astype(np.float64) - g_perturbed, axis=1) / np.linalg.norm(
        sparse - perturbed, axis=1
    )
    estimates = [
        ratios_to_estimate(
            torch.from_numpy(ratios[r * config.n_monte : (r + 1) * config.n_monte]), s_eff
        )
        for r in range(len(specs))
    ]
    lr = np.array([e.lr for e in estimates])
    theta, steps, loss = fastpath.train_runs(
        x_train,
        y_train,
        lr,
        theta_init.numpy(),
        sparsity=sparsity,
        max_steps=config.max_steps,
        tol=config.tol,
    )
    if not np.isfinite(loss).all() or not np.isfinite(theta).all():
        bad = np.flatnonzero(~np.isfinite(loss) | ~np.isfinite(theta).all(axis=1))
        raise NonFiniteError(
            f"runs {[specs[i].run_id for i in bad[:10]]} diverged (non-finite loss)"
        )
    result = EngineResult(
        theta=torch.from_numpy(theta),
        steps=torch.from_numpy(steps),
        reached_tol=torch.from_numpy(loss <= config.tol),
        loss=torch.from_numpy(loss),
    )
    return result, estimates


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _estimate(problem: LinearSoftmax, spec: RunSpec, r: int, s: int, config: StudyConfig) -> Any:
    """This run's L_hat_2s: draws from its own generator, gradients on its own split."""

    def init_fn(n: int, gen: torch.Generator | None) -> torch.Tensor:
        return linear_init(n, N_FEATURES, N_CLASSES, generator=gen)

    sparse, perturbed = draw_pairs(
        init_fn, sparsity=s, size=P, n_samples=config.n_monte, generator=_gen(spec.mc_seed)
    )
    rows = torch.full((config.n_monte,), r, dtype=torch.int64)

    def grad_fn(theta: torch.Tensor) -> torch.Tensor:
        return problem.loss_and_grad(theta.to(problem.dtype), rows)[1].double()

    return ratios_to_estimate(lipschitz_ratios(grad_fn, sparse, perturbed), s)


def run_one_faithful(
    config: StudyConfig, spec: RunSpec, dense_train_loss: float = float("nan")
) -> dict[str, Any]:
    """One run the obvious way: ``nn.Linear`` + cross-entropy + autograd + :class:`iht.IHT`.

    The reference the many-runs engine is tested against, and the baseline of the speed
    benchmark. Same seeds, same maths, one run, one step at a time.
    """
    from torch import nn

    from .certify import certify
    from .data import standardise
    from .init import sparse_init_
    from .lipschitz import estimate_l2s
    from .optim import IHT as IHTOptimizer
    from .threshold import flatten, unflatten_

    dtype = config.torch_dtype
    data = load_builtin(config.dataset)
    train, test = random_split(len(data.y), config.n_train, seed=spec.data_seed)
    x = torch.tensor(standardise(data.X, train), dtype=dtype)
    y = torch.tensor(data.y)
    model = nn.Linear(N_FEATURES, N_CLASSES).to(dtype)
    params = list(model.parameters())
    with torch.no_grad():
        unflatten_(linear_init(1, N_FEATURES, N_CLASSES, generator=_gen(spec.init_seed))[0], params)
    sparsity = None if spec.kind == DENSE else spec.sparsity
    if sparsity is not None:
        sparse_init_(params, sparsity, generator=_gen(spec.support_seed))
    theta_init = flatten(p.detach() for p in params).double().clone()

    def loss_fn(m: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(m(x[train]), y[train])

    def init_fn(n: int, gen: torch.Generator | None) -> torch.Tensor:
        return linear_init(n, N_FEATURES, N_CLASSES, generator=gen).to(dtype)

    estimate = estimate_l2s(
        model,
        loss_fn,
        sparsity=sparsity,
        n_samples=config.n_monte,
        generator=_gen(spec.mc_seed),
        init_fn=init_fn,
    )
    optimizer = IHTOptimizer(params, lr=estimate.lr, sparsity=sparsity)
    steps, reached = 0, False
    for _ in range(config.max_steps + 1):
        optimizer.zero_grad()
        loss = loss_fn(model)
        if float(loss.detach()) <= config.tol:
            reached = True
            break
        if steps == config.max_steps:
            break
        loss.backward()
        optimizer.step()
        steps += 1

    cert = certify(model, loss_fn, lr=estimate.lr, sparsity=sparsity, grad_tol=config.grad_tol)
    model.zero_grad()
    loss_fn(model).backward()
    grad = flatten(p.grad for p in params if p.grad is not None).double()
    theta = flatten(p.detach() for p in params).double()
    with torch.no_grad():
        logits = model(x)
        nll = nn.functional.cross_entropy(logits, y, reduction="none").double()
        correct = (logits.argmax(dim=1) == y).double()
    row: dict[str, Any] = {
        "run_id": spec.run_id,
        "kind": spec.kind,
        "sparsity": spec.sparsity,
        "index": spec.index,
        "data_seed": spec.data_seed,
        "init_seed": spec.init_seed,
        "support_seed": spec.support_seed,
        "mc_seed": spec.mc_seed,
        "train_idx": train.tolist(),
        "l_hat": estimate.estimate,
        "lr": estimate.lr,
        "steps": steps,
        "reached_tol": reached,
        "nonzeros": int((theta != 0).sum()),
        "support": torch.nonzero(theta != 0).squeeze(1).tolist(),
        "theta_init": theta_init.tolist(),
        "theta_final": theta.tolist(),
        "grad_final": grad.tolist(),
        "train_loss": float(nll[train].mean()),
        "test_loss": float(nll[test].mean()),
        "train_acc": float(correct[train].mean()),
        "test_acc": float(correct[test].mean()),
        "max_grad_on_support": cert.max_grad_on_support,
        "max_grad_off_support": cert.max_grad_off_support,
        "off_support_ratio": cert.off_support_ratio,
        "residual": cert.residual,
        "tie": cert.tie,
        "stable": cert.stable,
        "dense_train_loss": float(nll[train].mean()) if spec.kind == DENSE else dense_train_loss,
    }
    row["epsilon"] = row["train_loss"] - row["dense_train_loss"]
    return row
