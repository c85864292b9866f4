"""The price of thresholding: an IHT training step against a plain SGD step, ~10M parameters.

    python benchmarks/iht_step_overhead.py [--width 2048] [--batch 256] [--density 0.1]

Model: Linear(784, W) -> ReLU -> Linear(W, W) -> ReLU -> Linear(W, W) -> ReLU -> Linear(W, 10)
(W = 2048: 10.0M parameters), random data, cross-entropy. One step = forward + backward +
optimizer step. Compares torch.optim.SGD with iht.IHT at s = density * P, re-selecting the
support every step and every k steps (threshold_every=k), and prints the overhead ratios.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import iht


def time_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> float:
    def step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    w = args.width
    model = nn.Sequential(
        nn.Linear(784, w),
        nn.ReLU(),
        nn.Linear(w, w),
        nn.ReLU(),
        nn.Linear(w, w),
        nn.ReLU(),
        nn.Linear(w, 10),
    )
    size = sum(p.numel() for p in model.parameters())
    s = int(args.density * size)
    x, y = torch.randn(args.batch, 784), torch.randint(0, 10, (args.batch,))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; P = {size:,}, s = {s:,}, batch {args.batch}"
    )

    sgd = time_steps(model, torch.optim.SGD(model.parameters(), lr=1e-3), x, y, args.steps)
    print(f"SGD step:                   {sgd * 1e3:8.1f} ms")
    for every in (1, 10, 100):
        opt = iht.IHT(model.parameters(), lr=1e-3, sparsity=s, threshold_every=every)
        t = time_steps(model, opt, x, y, max(args.steps, every))
        print(
            f"IHT step, threshold every {every:>3}: {t * 1e3:8.1f} ms   overhead {t / sgd - 1:+6.1%}"
        )
    mag = torch.randn(size).abs()
    start = time.perf_counter()
    iht.hard_threshold(mag, s)
    print(f"hard_threshold alone on P entries: {(time.perf_counter() - start) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
