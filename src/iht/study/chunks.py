"""The work of one chunk of the IRIS study: many runs at once, each with its own seeds.

A chunk is a group of runs of one kind and level, computed together and stored as one Parquet
part (:mod:`iht.study.store`). :func:`run_chunk` estimates every run's L_hat_2s, trains all the
runs at once (the compiled kernel of :mod:`iht._kernels.iris`, or the stacked torch engine of
:mod:`iht.engine`), certifies them and returns one :class:`~iht.study.schema.RunRow` each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from ..certify import stability_figures
from ..data import Dataset, load_builtin, random_split
from ..engine import EngineResult, run_many
from ..errors import NonFiniteError
from ..init import linear_init, random_support
from ..lipschitz import L2sEstimate, draw_pairs, lipschitz_ratios, ratios_to_estimate
from ..problems import LinearSoftmax, SplitData
from .config import DENSE, IHT, N_CLASSES, N_FEATURES, N_POINTS, SHOWCASE, P, StudyConfig
from .schema import RunRow
from .seeds import RunSpec, generator, run_seeds

__all__ = ["Chunk", "plan_chunks", "run_chunk", "train_masks"]


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


def train_masks(config: StudyConfig, specs: list[RunSpec]) -> NDArray[np.bool_]:
    """(R, 150) bool: the training points of each run's split (drawn from its data seed)."""
    masks = np.zeros((len(specs), N_POINTS), dtype=bool)
    for r, spec in enumerate(specs):
        train, _ = random_split(N_POINTS, config.n_train, seed=spec.data_seed)
        masks[r, train] = True
    return masks


def run_chunk(
    config: StudyConfig,
    chunk: Chunk,
    dense_loss: dict[int, float] | None = None,
    *,
    on_step: Callable[[int, int], None] | None = None,
) -> list[RunRow]:
    """Compute one chunk's runs; return one :class:`~iht.study.schema.RunRow` per run.

    Args:
        config: the study.
        chunk: which runs.
        dense_loss: training loss of dense run i by index i, for epsilon (IHT rows).
        on_step: progress callback ``on_step(steps_done, active_runs)``.
    """
    data = load_builtin(config.dataset)
    specs = chunk.specs(config)
    train = train_masks(config, specs)
    problem = LinearSoftmax(SplitData(data.X, data.y, train), dtype=config.torch_dtype)
    dtype = config.torch_dtype
    sparsity = None if chunk.kind == DENSE else chunk.sparsity
    s_eff = P if sparsity is None else sparsity

    theta_init = torch.cat(
        [
            linear_init(1, N_FEATURES, N_CLASSES, generator=generator(spec.init_seed))
            for spec in specs
        ]
    )
    if sparsity is not None:
        masks = torch.stack(
            [random_support(P, sparsity, generator=generator(spec.support_seed)) for spec in specs]
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
        train_loss = float(metrics["train_loss"][r])
        if spec.kind == DENSE:
            dense_train_loss = train_loss
        else:
            dense_train_loss = (dense_loss or {}).get(spec.index, float("nan"))
        out.append(
            RunRow(
                **spec.identity(),
                train_idx=np.flatnonzero(train[r]).tolist(),
                l_hat=estimates[r].estimate,
                lr=estimates[r].lr,
                steps=int(result.steps[r]),
                reached_tol=bool(result.reached_tol[r]),
                nonzeros=int((theta != 0).sum()),
                support=torch.nonzero(theta != 0).squeeze(1).tolist(),
                theta_init=theta_init[r].double().tolist(),
                theta_final=theta.tolist(),
                grad_final=grad[r].double().tolist(),
                train_loss=train_loss,
                test_loss=float(metrics["test_loss"][r]),
                train_acc=float(metrics["train_acc"][r]),
                test_acc=float(metrics["test_acc"][r]),
                max_grad_on_support=float(cert["max_grad_on_support"][r]),
                max_grad_off_support=float(cert["max_grad_off_support"][r]),
                off_support_ratio=float(cert["off_support_ratio"][r]),
                residual=float(cert["residual"][r]),
                tie=bool(cert["tie"][r]),
                stable=bool(cert["stable"][r]),
                dense_train_loss=dense_train_loss,
                epsilon=train_loss - dense_train_loss,
            )
        )
    return out


def _train_numba(
    config: StudyConfig,
    data: Dataset,
    train: NDArray[np.bool_],
    specs: list[RunSpec],
    theta_init: torch.Tensor,
    sparsity: int | None,
) -> tuple[EngineResult, list[L2sEstimate]]:
    """The compiled fast path: L_hat of every run and its training, in :mod:`iht._kernels.iris`."""
    from .._kernels import iris as fastpath

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
            init_fn,
            sparsity=s_eff,
            size=P,
            n_samples=config.n_monte,
            generator=generator(spec.mc_seed),
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


def _estimate(
    problem: LinearSoftmax, spec: RunSpec, r: int, s: int, config: StudyConfig
) -> L2sEstimate:
    """This run's L_hat_2s: draws from its own generator, gradients on its own split."""

    def init_fn(n: int, gen: torch.Generator | None) -> torch.Tensor:
        return linear_init(n, N_FEATURES, N_CLASSES, generator=gen)

    sparse, perturbed = draw_pairs(
        init_fn, sparsity=s, size=P, n_samples=config.n_monte, generator=generator(spec.mc_seed)
    )
    rows = torch.full((config.n_monte,), r, dtype=torch.int64)

    def grad_fn(theta: torch.Tensor) -> torch.Tensor:
        return problem.loss_and_grad(theta.to(problem.dtype), rows)[1].double()

    return ratios_to_estimate(lipschitz_ratios(grad_fn, sparse, perturbed), s)
