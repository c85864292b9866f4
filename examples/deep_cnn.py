"""A deep network in your own training loop: the MNIST-1D CNN at 10% of its weights.

    python examples/deep_cnn.py [--steps 6000]

Adam does the steps; ``iht.SparseOptimizer`` projects onto the budget after each one (Adam's
moments of the entries that leave the support are zeroed, so nothing regrows through them),
on a cubic schedule from dense to s between 1/6 and 2/3 of the run; after that the budget
holds at every step. ``selection="fisher"`` projects in the norm of Adam's second moment v:
it keeps the s largest v_i theta_i^2 (the loss a weight's removal costs under the diagonal
quadratic model) rather than the s largest |theta_i|. ``iht.make_budget`` budgets the conv and linear weights and keeps the biases
dense. The certificate at the end tests the paper's fixed point at the step size it reports.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

import iht
from iht.certify import certify_budget, instability_reasons
from iht.data import load_mnist1d
from iht.models import build_cnn

BATCH = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    steps_total = parser.parse_args().steps
    torch.manual_seed(0)
    data = load_mnist1d()  # generated offline by the mnist1d package, cached on disk
    train, test = data.split  # type: ignore[misc]
    X = torch.tensor(data.X, dtype=torch.float32)
    X = (X - X[train].mean(0)) / X[train].std(0)
    y = torch.tensor(data.y)
    X_train, y_train, X_test, y_test = X[train], y[train], X[test], y[test]

    model = build_cnn((1, 40), 10)  # Conv1d x 3 (25 channels) + Linear: P = 5,210
    budget = iht.make_budget(model, "10%")  # 10% of the conv/linear weights; biases dense
    schedule = iht.Cubic(start=steps_total // 6, end=2 * steps_total // 3)
    opt = budget.wrap(
        model,
        lambda groups: torch.optim.Adam(groups, lr=1e-2),
        schedule=schedule,
        selection="fisher",
    )
    size = sum(p.numel() for p in model.parameters())
    print(f"P = {size}; s = {budget.sparsity} of the {budget.budgeted} weights, biases dense")

    start = time.perf_counter()
    for step in range(steps_total):
        rows = torch.randint(len(y_train), (BATCH,))
        opt.zero_grad()
        F.cross_entropy(model(X_train[rows]), y_train[rows]).backward()
        opt.step()
        if step % max(steps_total // 4, 1) == 0 or step == steps_total - 1:
            kept = sum(int((p != 0).sum()) for p in model.parameters())
            print(f"step {step:5d}  nonzeros {kept:5d}")
    print(f"{steps_total} steps of Adam + projection in {time.perf_counter() - start:.0f} s")

    with torch.no_grad():
        acc = float((model(X_test).argmax(1) == y_test).float().mean())
    print(f"test accuracy {acc:.3f}; nonzeros per tensor {budget.nonzeros(model)}")
    cert = certify_budget(
        model,
        lambda m: F.cross_entropy(m(X_train), y_train),
        budget=budget,
        lr=1e-2,
        inputs=X_train,
    )
    print(
        f"certificate at lr 1e-2: stable={cert['stable']}", *instability_reasons(cert), sep="\n  "
    )


if __name__ == "__main__":
    main()
