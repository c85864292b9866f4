"""The price of the budget on top of a real optimizer: SparseOptimizer(base) against base, ~10M parameters.

    python benchmarks/sparse_optimizer_overhead.py [--width 2048] [--batch 256] [--density 0.1]
                                                   [--rounds 3] [--same-batch]

Model: Linear(784, W) -> ReLU -> Linear(W, W) -> ReLU -> Linear(W, W) -> ReLU -> Linear(W, 10)
(W = 2048: 10.0M parameters), random data, cross-entropy, a new random batch every step
(``--same-batch`` for full-batch training). One step = forward + backward + optimizer step.
Bases: SGD with momentum 0.9 and AdamW (torch's default foreach implementations); each is
timed alone and wrapped in ``iht.SparseOptimizer`` at s = density * P: projecting every step
(the compiled kernel, the default at this size, with the base's state zeroed off the
support), every 10 steps, with ``state="keep"`` (no zeroing), and with
``selection="fisher"`` (the s largest F theta^2: Adam's second moment, or for SGD the
wrapper's own running mean of squared gradients). Each variant trains its own
copy; the variants take turns step by step (see ``timing.interleaved``); the overhead of a
round is against its base's time in the same round; medians over rounds.
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

ROUND = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3, help=f"rounds of {ROUND} steps")
    parser.add_argument("--same-batch", action="store_true", help="one batch for every step")
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
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; P = {size:,}, s = {s:,}, "
        f"batch {args.batch} ({'the same every step' if args.same_batch else 'a new one every step'}); "
        f"{args.rounds} rounds of {ROUND} steps per variant"
    )
    bases: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
        "SGD momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
        "AdamW": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3),
    }
    wrappers: dict[str, Callable[[torch.optim.Optimizer], torch.optim.Optimizer]] = {
        "": lambda base: base,
        " + IHT every 1": lambda base: iht.SparseOptimizer(base, sparsity=s),
        " + IHT every 10": lambda base: iht.SparseOptimizer(base, sparsity=s, threshold_every=10),
        " + IHT every 1, state kept": lambda base: iht.SparseOptimizer(
            base, sparsity=s, state="keep"
        ),
        " + IHT every 1, Fisher": lambda base: iht.SparseOptimizer(
            base, sparsity=s, selection="fisher"
        ),
    }
    runs: dict[str, tuple[nn.Module, torch.optim.Optimizer, str]] = {}
    for base_name, make_base in bases.items():
        for suffix, wrap in wrappers.items():
            twin = copy.deepcopy(model)
            runs[base_name + suffix] = (twin, wrap(make_base(twin)), base_name)

    gen = torch.Generator().manual_seed(1)
    batch = {
        "x": torch.randn(args.batch, 784, generator=gen),
        "y": torch.randint(0, 10, (args.batch,)),
    }

    def new_batch() -> None:
        if not args.same_batch:  # every variant sees the same batches
            batch["x"] = torch.randn(args.batch, 784, generator=gen)
            batch["y"] = torch.randint(0, 10, (args.batch,), generator=gen)

    def stepper(net: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], float]:
        def step() -> float:
            opt.zero_grad()
            nn.functional.cross_entropy(net(batch["x"]), batch["y"]).backward()
            start = time.perf_counter()
            opt.step()
            return time.perf_counter() - start

        return step

    whole, alone = interleaved(
        {name: stepper(net, opt) for name, (net, opt, _) in runs.items()},
        rounds=args.rounds,
        steps=ROUND,
        before_step=new_batch,
    )
    print(f"{'':36s} {'whole step':>10s} {'overhead':>9s} {'opt.step() alone':>17s}")
    for name, (net, _, base_name) in runs.items():
        overhead = statistics.median(
            mine / base - 1 for mine, base in zip(whole[name], whole[base_name], strict=True)
        )
        extra = "" if name == base_name else f"{overhead:+9.1%}"
        nonzeros = sum(int(p.count_nonzero()) for p in net.parameters())
        print(
            f"{name:36s} {statistics.median(whole[name]) * 1e3:7.1f} ms {extra:>9s} "
            f"{statistics.median(alone[name]) * 1e3:14.2f} ms   nonzeros {nonzeros:,}"
        )


if __name__ == "__main__":
    main()
