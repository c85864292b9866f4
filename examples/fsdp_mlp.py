"""IHT on an FSDP2-sharded MLP: digits at 10% of its parameters, every parameter sharded.

    torchrun --nproc_per_node 2 examples/fsdp_mlp.py [--steps 1000]

CPU and gloo. ``fully_shard`` makes each parameter a DTensor sharded on dim 0: every rank
holds half of each weight. ``iht.SparseOptimizer`` over AdamW projects onto one global budget
of s = 10% of the parameters after each step with the sharded selection: each rank selects on
its own shards and a few small collectives decide the global threshold and its ties, so no
rank ever holds the whole parameter vector. Every rank trains on its own half of the rows and
FSDP2 averages the gradients. The run ends with the certificate (its figures reduced across
ranks) and the exact count of nonzeros. Nothing is downloaded (digits ships with scikit-learn).
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import iht
from iht.certify import certify_budget
from iht.data import load_builtin, random_split, standardise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="AdamW steps, full batch")
    args = parser.parse_args()
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    torch.set_num_threads(1)
    train(args.steps)
    # FSDP2's state sits in reference cycles; free it before its process group is destroyed,
    # or gloo's threads may abort the process at exit.
    gc.collect()
    dist.destroy_process_group()


def train(steps: int) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()

    data = load_builtin("digits")
    train, test = random_split(len(data.y), int(0.8 * len(data.y)), seed=0)
    X = torch.tensor(standardise(data.X, train), dtype=torch.float32)
    y = torch.tensor(data.y)
    half = len(train) // world
    shard = train[rank * half : (rank + 1) * half]  # equal halves: FSDP2's mean is the full mean

    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    iht.reset_parameters_(model, generator=torch.Generator().manual_seed(1))  # same on every rank
    n_params = sum(p.numel() for p in model.parameters())
    budget = iht.make_budget(model, "10%")  # Linear weights budgeted, biases dense
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = budget.wrap(
        model,
        lambda groups: torch.optim.AdamW(groups, lr=1e-2),
        schedule=iht.schedules.Cubic(start=steps // 10, end=max(steps * 3 // 5, 2)),
    )
    local = sum(p.to_local().numel() for p in model.parameters())
    if rank == 0:
        print(
            f"{world} ranks; P = {n_params}, rank 0 holds {local} of them; budget s = "
            f"{budget.sparsity} of the {budget.budgeted} Linear weights (cubic schedule)",
            flush=True,
        )
    start = time.perf_counter()
    for step in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X[shard]), y[shard])
        loss.backward()
        opt.step()
        if rank == 0 and (step % 500 == 0 or step == steps - 1):
            print(f"step {step:5d}  loss on rank 0's rows {float(loss.detach()):.4f}", flush=True)
    elapsed = time.perf_counter() - start

    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    kept = torch.tensor([sum(int(p.to_local().count_nonzero()) for p in weights)])
    dist.all_reduce(kept)  # the budget: exact, summed over the shards
    with torch.no_grad():
        accuracy = float((model(X[test]).argmax(dim=1) == y[test]).float().mean())
    cert = certify_budget(
        model,
        lambda m: nn.functional.cross_entropy(m(X[train]), y[train]),
        lr=1e-2,
        budget=budget,
    )
    if rank == 0:
        print(f"trained {steps} steps in {elapsed:.1f} s on {world} ranks")
        print(
            f"test accuracy {accuracy:.3f}; Linear weights kept {int(kept)} (budget {budget.sparsity})"
        )
        print(
            f"certificate at lr 1e-2: stable={cert['stable']}, max|grad| on support "
            f"{cert['max_grad_on_support']:.2e}, residual {cert['residual']:.2e}"
        )


if __name__ == "__main__":
    main()
