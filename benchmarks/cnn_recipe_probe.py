"""One IHT variant on the MNIST-1D CNN, scored on the validation split (probing the recipe).

    python benchmarks/cnn_recipe_probe.py VARIANT DENSITY SEED LR

VARIANT is ``iht`` then comma-separated options: ``alloc=global|erk|uniform|proportional``,
``budgeted=all|weights`` (weights: biases dense, s still counting them), ``mpt=N`` (minimum
nonzeros per tensor), ``sched=constant|warmup|cubic|acdc``, ``start=sparse`` (a random support
of each pool's budget before the first step, as RigL), ``every=K`` (``threshold_every``),
``state=zero|keep``, ``opt=adam|adamw|momentum|sgd`` (the base optimizer, default adam),
``select=magnitude|fisher`` (the projection's selection, default
magnitude), ``log=1`` (training accuracy every 1,000 steps, and how many entries entered
the support since the last line). E.g.

    python benchmarks/cnn_recipe_probe.py iht,alloc=erk,sched=constant,start=sparse 0.05 0 0.03

The data, split (20% of the training rows held out; the test rows are never touched), batches
(100 rows), 6,000 Adam steps and initialisation are those of ``deep_comparison.py``'s tuning
runs, through ``iht.experiments.compare``. Prints one JSON line: validation and training
accuracy, the nonzeros per tensor, their total and s.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from iht.budget import plan_budget
from iht.data import load_dataset
from iht.experiments.compare import (
    _INIT,
    _SUPPORT,
    _base_optimizer,
    _generator,
    _Problem,
    compare_levels,
    compared_model,
)
from iht.experiments.config import CompareConfig
from iht.init import reset_parameters_
from iht.schedules import schedule_named

STEPS = 6000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant")
    parser.add_argument("density", type=float)
    parser.add_argument("seed", type=int)
    parser.add_argument("lr", type=float)
    args = parser.parse_args()
    torch.set_num_threads(1)
    kind, *options = args.variant.split(",")
    if kind != "iht":
        parser.error(f"variant must start with iht, got {kind!r}")
    opts = dict(o.split("=", 1) for o in options)
    config = CompareConfig(
        data="mnist1d",
        model="cnn",
        sparsity=str(args.density),
        methods=("iht",),
        steps=STEPS,
        batch_size=100,
        optimizer=opts.get("opt", "adam"),
        lr=args.lr,
        seeds=1,
        dtype="float32",
        validation_fraction=0.2,
    )
    dataset = load_dataset("mnist1d")
    problem = _Problem(dataset, config, args.seed, torch.float32)
    model = compared_model(config, dataset)
    reset_parameters_(model, generator=_generator(args.seed, _INIT))
    (s,) = compare_levels(config, dataset)  # as deep_comparison's levels: biases counted
    budgeted = opts.get("budgeted", "all")
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))
    budget = plan_budget(
        model,
        s - biases if budgeted == "weights" else s,
        allocation=opts.get("alloc", "global"),
        budgeted=budgeted,
        min_per_tensor=int(opts.get("mpt", 0)),
    )
    if opts.get("start") == "sparse":
        budget.sparse_init_(model, generator=_generator(args.seed, _SUPPORT, s))
    optimizer = budget.wrap(
        model,
        lambda groups: _base_optimizer(config, groups, args.lr),
        schedule=schedule_named(opts.get("sched", "cubic"), STEPS),
        threshold_every=int(opts.get("every", 1)),
        state=opts.get("state", "zero"),
        selection=opts.get("select", "magnitude"),
    )
    batches = problem.batches()
    start = time.perf_counter()
    support = torch.cat([p.detach().reshape(-1) != 0 for p in model.parameters()])
    entered = 0
    for t in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        problem.loss(model, next(batches)).backward()
        optimizer.step()
        if opts.get("log"):
            now = torch.cat([p.detach().reshape(-1) != 0 for p in model.parameters()])
            entered += int((now & ~support).sum())
            support = now
            if t % 1000 == 999:
                accuracy = problem.evaluate(model)["train_acc"]
                print(f"step {t + 1}: training accuracy {accuracy:.3f}, {entered} entered")
                entered = 0
    metrics = problem.evaluate(model)
    counts = [int((p != 0).sum()) for p in model.parameters()]
    print(
        json.dumps(
            {
                "variant": args.variant,
                "density": args.density,
                "seed": args.seed,
                "lr": args.lr,
                "validation_acc": round(metrics["test_acc"], 3),
                "train_acc": round(metrics["train_acc"], 3),
                "nonzeros_per_tensor": counts,
                "nonzeros": sum(counts),
                "s": s,
                "seconds": round(time.perf_counter() - start),
            }
        )
    )


if __name__ == "__main__":
    main()
