"""Quickstart: your own MLP on scikit-learn's digits, trained with IHT at 10% of its parameters.

    python examples/quickstart.py

The learning rate comes from the Monte Carlo estimate of L_2s; the run ends with the test
accuracy, the nonzero count and the HT-stability certificate of the point found.
"""

from __future__ import annotations

import time

import torch
from torch import nn

import iht
from iht.data import load_builtin, random_split, standardise


def main() -> None:
    torch.manual_seed(0)
    data = load_builtin("digits")
    train, test = random_split(len(data.y), int(0.8 * len(data.y)), seed=0)
    X = torch.tensor(standardise(data.X, train), dtype=torch.float32)
    y = torch.tensor(data.y)

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    n_params = sum(p.numel() for p in model.parameters())
    budget = n_params // 10

    def loss_fn(m: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(m(X[train]), y[train])

    generator = torch.Generator().manual_seed(0)
    estimate = iht.estimate_l2s(model, loss_fn, sparsity=budget, n_samples=100, generator=generator)
    print(
        f"P = {n_params} parameters, budget s = {budget}; "
        f"L_hat_2s = {estimate.estimate:.3f}, lr = {estimate.lr:.3f}"
    )

    iht.sparse_init_(model.parameters(), budget, generator=generator)
    optimizer = iht.IHT(model.parameters(), lr=estimate.lr, sparsity=budget)
    start = time.perf_counter()
    for step in range(3000):
        optimizer.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        optimizer.step()
        if step % 500 == 0:
            print(f"step {step:5d}  train loss {loss.item():.4f}")
    elapsed = time.perf_counter() - start

    with torch.no_grad():
        accuracy = (model(X[test]).argmax(dim=1) == y[test]).float().mean().item()
    nonzeros = sum(int((p != 0).sum()) for p in model.parameters())
    certificate = iht.certify(model, loss_fn, lr=estimate.lr, sparsity=budget)
    print(f"trained 3000 full-batch IHT steps in {elapsed:.1f} s")
    print(f"test accuracy {accuracy:.3f}, nonzeros {nonzeros} / {n_params}")
    print(
        f"certificate: stable={certificate.stable}, "
        f"max|grad| on support={certificate.max_grad_on_support:.2e}, "
        f"off-support ratio={certificate.off_support_ratio:.3f}, "
        f"fixed-point residual={certificate.residual:.2e}, tie={certificate.tie}"
    )


if __name__ == "__main__":
    main()
