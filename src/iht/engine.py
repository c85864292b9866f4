"""Many runs at once: R parameter vectors stacked as (R, P), advanced together.

A *problem* maps stacked parameters to per-run losses and gradients,
``loss_and_grad(theta: (R, P), rows: (R,)) -> (loss: (R,), grad: (R, P))``, where ``rows``
are the indices of the runs in ``theta`` (so a problem can keep per-run data such as each
run's training split). :func:`run_many` applies the IHT map (or GD) to every active run, with
each run's own learning rate, and freezes a run as soon as its loss at the current point is at
or below the tolerance. Finished runs are dropped from the working set (not recomputed).

Per run this is exactly the faithful loop::

    for k in range(max_steps):
        loss = f(theta)
        if loss <= tol: break
        theta = H_s(theta - lr * grad f(theta))

so ``steps`` counts the updates applied and ``loss`` is f at the returned point. A run that used
every step is also counted as having reached the tolerance if its final point satisfies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .errors import NonFiniteError
from .optim import iht_update

__all__ = ["EngineResult", "Problem", "run_many"]


class Problem(Protocol):
    """Stacked loss and gradient of R independent runs."""

    def loss_and_grad(self, theta: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Per-run training loss (R,) and gradient (R, P) at ``theta`` for runs ``rows``."""
        ...


@dataclass(frozen=True)
class EngineResult:
    """Final state of R runs.

    Attributes:
        theta: final parameters (R, P).
        steps: updates applied per run (R,).
        reached_tol: whether the run stopped by the tolerance (R,).
        loss: training loss at ``theta`` (R,).
    """

    theta: Tensor
    steps: Tensor
    reached_tol: Tensor
    loss: Tensor


def run_many(
    problem: Problem,
    theta0: Tensor,
    lr: Tensor,
    *,
    sparsity: int | None,
    max_steps: int,
    tol: float,
    compact_every: int = 64,
    on_step: Callable[[int, int], None] | None = None,
) -> EngineResult:
    """Run IHT (or GD when ``sparsity`` is None) for R runs at once.

    Args:
        problem: the stacked loss and gradient.
        theta0: initial parameters (R, P), already s-sparse for IHT.
        lr: per-run learning rates (R,).
        sparsity: the budget s, or None for dense GD.
        max_steps: the most updates per run.
        tol: a run stops when its loss is <= tol.
        compact_every: drop finished runs from the working set every this many steps.
        on_step: called as ``on_step(steps_done, active_runs)`` at each compaction, for progress.

    Raises:
        NonFiniteError: a run's loss or gradient became NaN or infinite.
    """
    n_runs = theta0.shape[0]
    theta_out = theta0.clone()
    steps = torch.zeros(n_runs, dtype=torch.int64)
    reached = torch.zeros(n_runs, dtype=torch.bool)
    loss_out = torch.full((n_runs,), float("nan"), dtype=theta0.dtype)

    rows = torch.arange(n_runs)
    theta = theta0.clone()
    lr_col = lr.to(theta.dtype).reshape(-1, 1).clone()
    active = torch.ones(n_runs, dtype=torch.bool)
    # Step of each active run at which it stopped, -1 while running.
    stopped_at = torch.full((n_runs,), -1, dtype=torch.int64)
    last_loss = torch.zeros(n_runs, dtype=theta0.dtype)

    step = 0
    while step < max_steps and rows.numel() > 0:
        loss, grad = problem.loss_and_grad(theta, rows)
        if not bool(torch.isfinite(loss).all()) or not bool(torch.isfinite(grad).all()):
            bad = rows[~(torch.isfinite(loss) & torch.isfinite(grad).all(dim=1))]
            raise NonFiniteError(
                f"non-finite loss or gradient at step {step} in runs {bad.tolist()[:10]}"
            )
        done = active & (loss <= tol)
        if bool(done.any()):
            stopped_at = torch.where(done, torch.full_like(stopped_at, step), stopped_at)
            last_loss = torch.where(done, loss, last_loss)
            active = active & ~done
        candidate = iht_update(theta, grad, lr=lr_col, sparsity=sparsity)
        # Frozen runs keep their parameters until the next compaction removes them.
        theta = torch.where(active.unsqueeze(1), candidate, theta)
        step += 1
        if step % compact_every == 0 or step == max_steps or not bool(active.any()):
            _flush(rows, ~active, theta, stopped_at, last_loss, theta_out, steps, reached, loss_out)
            keep = active
            rows, theta, lr_col = rows[keep], theta[keep], lr_col[keep]
            active, stopped_at, last_loss = active[keep], stopped_at[keep], last_loss[keep]
            if on_step is not None:
                on_step(step, int(rows.numel()))

    if rows.numel() > 0:  # used every step: record them, loss at the final point below
        theta_out[rows] = theta
        steps[rows] = max_steps
    unfinished = ~reached
    if bool(unfinished.any()):
        idx = torch.nonzero(unfinished).squeeze(1)
        final_loss, _ = problem.loss_and_grad(theta_out[idx], idx)
        loss_out[idx] = final_loss
        reached[idx] = final_loss <= tol
    return EngineResult(theta=theta_out, steps=steps, reached_tol=reached, loss=loss_out)


def _flush(
    rows: Tensor,
    finished: Tensor,
    theta: Tensor,
    stopped_at: Tensor,
    last_loss: Tensor,
    theta_out: Tensor,
    steps: Tensor,
    reached: Tensor,
    loss_out: Tensor,
) -> None:
    """Write the finished runs of the working set into the output tensors."""
    if not bool(finished.any()):
        return
    idx = rows[finished]
    theta_out[idx] = theta[finished]
    steps[idx] = stopped_at[finished]
    reached[idx] = True
    loss_out[idx] = last_loss[finished]
