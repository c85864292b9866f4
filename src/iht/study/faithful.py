"""One study run the obvious way: the reference the many-runs engine is tested against.

``nn.Linear`` + cross-entropy + autograd + :class:`iht.IHT`, one run, one step at a time, with
the same seeds and maths as :func:`iht.study.chunks.run_chunk`; also the baseline of
``benchmarks/iris_engine.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..certify import certify
from ..data import load_builtin, random_split, standardise
from ..init import linear_init, sparse_init_
from ..lipschitz import estimate_l2s
from ..optim import IHT as IHTOptimizer
from ..threshold import flatten, unflatten_
from .config import DENSE, N_CLASSES, N_FEATURES, StudyConfig
from .schema import RunRow
from .seeds import RunSpec, generator

__all__ = ["run_one_faithful"]


def run_one_faithful(
    config: StudyConfig, spec: RunSpec, dense_train_loss: float = float("nan")
) -> RunRow:
    """One run: ``nn.Linear`` + cross-entropy + autograd + :class:`iht.IHT`, as a :class:`RunRow`.

    Args:
        config: the study (its max_steps, tol, n_monte, dtype, grad_tol).
        spec: the run's identity and seeds.
        dense_train_loss: the dense run's training loss on the same split, for epsilon.
    """
    dtype = config.torch_dtype
    data = load_builtin(config.dataset)
    train, test = random_split(len(data.y), config.n_train, seed=spec.data_seed)
    x = torch.tensor(standardise(data.X, train), dtype=dtype)
    y = torch.tensor(data.y)
    model = nn.Linear(N_FEATURES, N_CLASSES).to(dtype)
    params = list(model.parameters())
    with torch.no_grad():
        unflatten_(
            linear_init(1, N_FEATURES, N_CLASSES, generator=generator(spec.init_seed))[0], params
        )
    sparsity = None if spec.kind == DENSE else spec.sparsity
    if sparsity is not None:
        sparse_init_(params, sparsity, generator=generator(spec.support_seed))
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
        generator=generator(spec.mc_seed),
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
    train_loss = float(nll[train].mean())
    dense_loss = train_loss if spec.kind == DENSE else dense_train_loss
    return RunRow(
        **spec.identity(),
        train_idx=train.tolist(),
        l_hat=estimate.estimate,
        lr=estimate.lr,
        steps=steps,
        reached_tol=reached,
        nonzeros=int((theta != 0).sum()),
        support=torch.nonzero(theta != 0).squeeze(1).tolist(),
        theta_init=theta_init.tolist(),
        theta_final=theta.tolist(),
        grad_final=grad.tolist(),
        train_loss=train_loss,
        test_loss=float(nll[test].mean()),
        train_acc=float(correct[train].mean()),
        test_acc=float(correct[test].mean()),
        max_grad_on_support=cert.max_grad_on_support,
        max_grad_off_support=cert.max_grad_off_support,
        off_support_ratio=cert.off_support_ratio,
        residual=cert.residual,
        tie=cert.tie,
        stable=cert.stable,
        dense_train_loss=dense_loss,
        epsilon=train_loss - dense_loss,
    )
