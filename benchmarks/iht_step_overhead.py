"""The price of thresholding: an IHT training step against a plain SGD step, ~10M parameters.

    python benchmarks/iht_step_overhead.py [--width 2048] [--batch 256] [--density 0.1]
                                           [--rounds 3] [--fresh-batches]

Model: Linear(784, W) -> ReLU -> Linear(W, W) -> ReLU -> Linear(W, W) -> ReLU -> Linear(W, 10)
(W = 2048: 10.0M parameters), random data, cross-entropy. One step = forward + backward +
optimizer step. By default every step sees the same batch (full-batch IHT, as in the paper: the
threshold t moves little from step to step and the compiled step brackets it around the last
one); with ``--fresh-batches`` every step draws a new random batch (mini-batch IHT: t moves by
~20% a step and the compiled step brackets it from a sample instead). Compares torch.optim.SGD with iht.IHT at s = density * P: the compiled step
(``kernel="auto"``, the default at this size) re-selecting the support every step and every
k steps (``threshold_every=k``), and the torch reference step (``kernel="torch"``).

Each variant trains its own copy of the model; the variants take turns step by step (this
machine is shared and noisy, so they see the same background load). A round is 100 steps of
each variant, so every k in {1, 10, 100} completes its schedule; the overhead of a round is
against SGD's time in the same round, and the figures printed are medians over rounds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from timing import interleaved
from torch import nn

import iht

ROUND = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3, help=f"rounds of {ROUND} steps")
    parser.add_argument("--fresh-batches", action="store_true", help="a new batch every step")
    parser.add_argument("--lr", type=float, default=1e-3, help="step size of every variant")
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
        f"lr {args.lr}, "
        f"batch {args.batch} ({'a new one every step' if args.fresh_batches else 'the same every step'}); "
        f"{args.rounds} rounds of {ROUND} steps per variant"
    )

    makers: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
        "SGD": lambda m: torch.optim.SGD(m.parameters(), lr=args.lr),
        "IHT compiled, select every   1": lambda m: iht.IHT(m.parameters(), lr=args.lr, sparsity=s),
        "IHT compiled, select every  10": lambda m: iht.IHT(
            m.parameters(), lr=args.lr, sparsity=s, threshold_every=10
        ),
        "IHT compiled, select every 100": lambda m: iht.IHT(
            m.parameters(), lr=args.lr, sparsity=s, threshold_every=100
        ),
        "IHT torch reference, every   1": lambda m: iht.IHT(
            m.parameters(), lr=args.lr, sparsity=s, kernel="torch"
        ),
    }
    runs = {}
    for name, make in makers.items():
        twin = copy.deepcopy(model)
        runs[name] = (twin, make(twin))

    batch = {"x": x, "y": y}
    gen = torch.Generator().manual_seed(1)

    def new_batch() -> None:
        if args.fresh_batches:  # every variant sees the same batches
            batch["x"] = torch.randn(args.batch, 784, generator=gen)
            batch["y"] = torch.randint(0, 10, (args.batch,), generator=gen)

    def stepper(net: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], float]:
        def step() -> float:
            """One training step on the current batch; the seconds in ``opt.step()`` alone."""
            opt.zero_grad()
            nn.functional.cross_entropy(net(batch["x"]), batch["y"]).backward()
            start = time.perf_counter()
            opt.step()
            return time.perf_counter() - start

        return step

    whole, alone = interleaved(
        {name: stepper(net, opt) for name, (net, opt) in runs.items()},
        rounds=args.rounds,
        steps=ROUND,
        before_step=new_batch,
    )

    print(f"{'':32s} {'whole step':>10s} {'overhead':>9s} {'opt.step() alone':>17s}")
    for name in runs:
        t = statistics.median(whole[name])
        overhead = statistics.median(
            mine / sgd - 1 for mine, sgd in zip(whole[name], whole["SGD"], strict=True)
        )
        extra = "" if name == "SGD" else f"{overhead:+9.1%}"
        print(
            f"{name:32s} {t * 1e3:7.1f} ms {extra:>9s} {statistics.median(alone[name]) * 1e3:14.2f} ms"
        )


if __name__ == "__main__":
    main()
