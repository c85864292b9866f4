"""The price of thresholding: an IHT training step against a plain SGD step, ~10M parameters.

    python benchmarks/iht_step_overhead.py [--width 2048] [--batch 256] [--density 0.1]
                                           [--steps 10] [--rounds 5]

Model: Linear(784, W) -> ReLU -> Linear(W, W) -> ReLU -> Linear(W, W) -> ReLU -> Linear(W, 10)
(W = 2048: 10.0M parameters), random data, cross-entropy. One step = forward + backward +
optimizer step. Compares torch.optim.SGD with iht.IHT at s = density * P: the compiled step
(``kernel="auto"``, the default at this size) re-selecting the support every step and every
k steps (``threshold_every=k``), and the torch reference step (``kernel="torch"``).

The variants take turns within each round (this machine is shared and noisy); the figures are
medians over rounds, and each overhead is against SGD's median measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import iht


def timer(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[int], float]:
    def step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    def run(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps

    step()  # warm-up (and the compiled kernels' first call)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
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
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; P = {size:,}, s = {s:,}, "
        f"batch {args.batch}; {args.rounds} rounds of {args.steps} steps"
    )
    params = list(model.parameters())
    variants: dict[str, Callable[[int], float]] = {
        "SGD step": timer(model, torch.optim.SGD(params, lr=1e-3), x, y),
    }
    for every in (1, 10, 100):
        opt = iht.IHT(params, lr=1e-3, sparsity=s, threshold_every=every)
        variants[f"IHT compiled, select every {every:>3}"] = timer(model, opt, x, y)
    torch_opt = iht.IHT(params, lr=1e-3, sparsity=s, kernel="torch")
    variants["IHT torch reference, every   1"] = timer(model, torch_opt, x, y)

    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            # Every-k variants run a whole period per round, so that the selection is counted.
            every = int(name.rsplit(" ", 1)[1]) if "every" in name else 1
            times[name].append(run(max(args.steps, every)))
    sgd = statistics.median(times["SGD step"])
    for name, samples in times.items():
        t = statistics.median(samples)
        extra = "" if name == "SGD step" else f"   overhead {t / sgd - 1:+7.1%}"
        print(f"{name:32s} {t * 1e3:8.1f} ms{extra}")

    mag = torch.randn(size)
    start = time.perf_counter()
    iht.hard_threshold(mag, s)
    print(f"hard_threshold alone on P entries: {(time.perf_counter() - start) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
