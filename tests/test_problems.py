"""Stacked problems: the closed-form linear softmax, the generic vmap module and a plain loop agree.

``VmapModule`` is the generic reference (any ``nn.Module`` through functional_call + vmap +
autograd); it is checked here against the obvious loop over runs (one ``nn.Module``, one
split, ``cross_entropy`` and ``torch.autograd.grad``), and the closed form ``LinearSoftmax``
is checked against it, all in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from iht.data import load_builtin, random_split
from iht.problems import LinearSoftmax, SplitData, VmapModule

F64 = torch.float64
N_RUNS = 5


def _iris_splits(n_runs: int = N_RUNS, n_train: int = 120) -> SplitData:
    data = load_builtin("iris")
    train = np.zeros((n_runs, len(data.y)), dtype=bool)
    for r in range(n_runs):
        idx, _ = random_split(len(data.y), n_train, seed=100 + r)
        train[r, idx] = True
    return SplitData(data.X, data.y, train)


def _thetas(size: int, n_runs: int = N_RUNS, seed: int = 0) -> Tensor:
    theta = torch.randn(n_runs, size, generator=torch.Generator().manual_seed(seed), dtype=F64)
    theta[:, ::3] = 0.0  # sparse points, as IHT visits them
    return theta


def _loop(module: nn.Module, data: SplitData, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per run: standardise with its training rows, mean CE on them, autograd; test CE too."""
    names = [n for n, _ in module.named_parameters()]
    shapes = [p.shape for _, p in module.named_parameters()]
    losses, grads, test_losses = [], [], []
    y = torch.as_tensor(data.y)
    for r in range(theta.shape[0]):
        train = data.train[r]
        mean = data.X[train].mean(axis=0)
        std = data.X[train].std(axis=0)
        x = torch.as_tensor((data.X - mean) / np.where(std > 0, std, 1.0), dtype=F64)
        flat = theta[r].clone().requires_grad_(True)
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = flat[offset : offset + shape.numel()].reshape(shape)
            offset += shape.numel()
        logits = functional_call(module, params, (x,))
        loss = nn.functional.cross_entropy(logits[train], y[train])
        (grad,) = torch.autograd.grad(loss, flat)
        losses.append(loss.detach())
        grads.append(grad)
        test_losses.append(nn.functional.cross_entropy(logits[~train], y[~train]).detach())
    return torch.stack(losses), torch.stack(grads), torch.stack(test_losses)


@pytest.mark.parametrize("hidden", [(), (6,)])
def test_vmap_module_equals_a_plain_loop_over_runs(hidden: tuple[int, ...]) -> None:
    data = _iris_splits()
    layers: list[nn.Module] = []
    width = 4
    for h in hidden:
        layers += [nn.Linear(width, h), nn.Tanh()]
        width = h
    module = nn.Sequential(*layers, nn.Linear(width, 3)).to(F64)
    problem = VmapModule(module, data)
    theta = _thetas(problem.size)
    rows = torch.arange(N_RUNS)
    loss, grad = problem.loss_and_grad(theta, rows)
    ref_loss, ref_grad, ref_test = _loop(module, data, theta)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    metrics = problem.metrics(theta, rows)
    torch.testing.assert_close(metrics["train_loss"], ref_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(metrics["test_loss"], ref_test, rtol=0, atol=1e-12)


def test_linear_softmax_closed_form_equals_vmap_module() -> None:
    data = _iris_splits()
    closed = LinearSoftmax(data, dtype=F64)
    generic = VmapModule(nn.Linear(4, 3).to(F64), data)
    assert closed.size == generic.size == 15
    theta = _thetas(15)
    rows = torch.arange(N_RUNS)
    for a, b in zip(
        closed.loss_and_grad(theta, rows), generic.loss_and_grad(theta, rows), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    ma, mb = closed.metrics(theta, rows), generic.metrics(theta, rows)
    assert ma.keys() == mb.keys() == {"train_loss", "test_loss", "train_acc", "test_acc"}
    for key in ma:
        torch.testing.assert_close(ma[key], mb[key], rtol=0, atol=1e-12)
    # accuracies are exact shares of the 120 / 30 points
    assert torch.all(torch.round(ma["test_acc"] * 30) == ma["test_acc"] * 30)


def test_a_subset_of_runs_is_the_same_rows_of_the_whole() -> None:
    """The engine drops finished runs: ``rows`` must pick each run's own split and data."""
    data = _iris_splits()
    theta = _thetas(15)
    rows = torch.tensor([4, 1, 3])
    for problem in (LinearSoftmax(data, dtype=F64), VmapModule(nn.Linear(4, 3).to(F64), data)):
        loss, grad = problem.loss_and_grad(theta, torch.arange(N_RUNS))
        sub_loss, sub_grad = problem.loss_and_grad(theta[rows], rows)
        torch.testing.assert_close(sub_loss, loss[rows], rtol=0, atol=1e-13)
        torch.testing.assert_close(sub_grad, grad[rows], rtol=0, atol=1e-13)


def test_moments_take_the_training_rows_and_leave_constant_columns_unscaled() -> None:
    X = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0], [100.0, 7.0]])
    train = np.array([[True, True, True, False]])
    data = SplitData(X, np.array([0, 1, 0, 1]), train)
    mean, std = data.moments()
    np.testing.assert_allclose(mean, [[3.0, 5.0]])
    np.testing.assert_allclose(std, [[np.sqrt(8 / 3), 1.0]])  # population std; constant -> 1
    assert data.n_classes == 2
