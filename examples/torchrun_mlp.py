"""IHT under DistributedDataParallel: an MLP on scikit-learn's digits at 10% of its parameters.

    torchrun --nproc_per_node 2 examples/torchrun_mlp.py [--steps 3000]

CPU and the gloo backend; each rank holds an interleaved shard of the training rows. DDP
averages the gradients, so every rank takes the same IHT step and keeps the same mask; the run
ends by checking that bit for bit. The learning rate 1 / L_hat_2s is estimated on rank 0 and
broadcast. Nothing is downloaded (digits ships with scikit-learn).
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import iht
from iht.data import load_builtin, random_split, standardise
from iht.distributed import replicas_agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="full-batch IHT steps")
    args = parser.parse_args()

    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    train(args.steps)
    # DDP's reducer sits in reference cycles; it must be freed before its process group is
    # destroyed, or gloo's threads may abort the process at exit.
    gc.collect()
    dist.destroy_process_group()


def train(steps: int) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()

    data = load_builtin("digits")
    train, test = random_split(len(data.y), int(0.8 * len(data.y)), seed=0)
    X = torch.tensor(standardise(data.X, train), dtype=torch.float32)
    y = torch.tensor(data.y)
    shard = train[rank::world]  # shard sizes differ by at most one row

    def shard_loss(m: nn.Module) -> Tensor:
        # Sum over the shard, scaled so that DDP's mean over ranks is the full-batch mean
        # gradient even when the shards differ in size: (1/W) sum_r W/N sum_{i in r} = mean.
        logits = m(X[shard])
        return nn.functional.cross_entropy(logits, y[shard], reduction="sum") * world / len(train)

    def full_loss(m: nn.Module) -> Tensor:
        return nn.functional.cross_entropy(m(X[train]), y[train])

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    n_params = sum(p.numel() for p in model.parameters())
    budget = n_params // 10
    # The same seeded start on every rank (DDP would also broadcast rank 0's parameters).
    init_generator = torch.Generator().manual_seed(1)
    iht.reset_parameters_(model, generator=init_generator)

    lr = torch.zeros(1, dtype=torch.float64)
    if rank == 0:
        estimate = iht.estimate_l2s(
            model,
            full_loss,
            sparsity=budget,
            n_samples=100,
            generator=torch.Generator().manual_seed(0),  # as examples/quickstart.py
        )
        lr[0] = estimate.lr
        print(
            f"{world} ranks, {len(train)} training rows ({len(shard)} on rank 0); "
            f"P = {n_params}, budget s = {budget}; L_hat_2s = {estimate.estimate:.3f}, "
            f"lr = {estimate.lr:.3f}",
            flush=True,
        )
    dist.broadcast(lr, src=0)

    iht.sparse_init_(model.parameters(), budget, generator=init_generator)
    ddp = DistributedDataParallel(model)
    optimizer = iht.IHT(ddp.parameters(), lr=float(lr[0]), sparsity=budget)
    start = time.perf_counter()
    for step in range(steps):
        optimizer.zero_grad()
        loss = shard_loss(ddp)
        loss.backward()
        optimizer.step()
        if step % 500 == 0 or step == steps - 1:
            total = loss.detach().clone()
            dist.all_reduce(total)  # sum over ranks of W/N * shard sums = W * full mean
            if rank == 0:
                print(f"step {step:5d}  train loss {float(total) / world:.4f}", flush=True)
    elapsed = time.perf_counter() - start

    mask = optimizer.pool_states["global"].mask  # the support of the one global pool
    assert mask is not None
    masks_agree = replicas_agree([mask])
    params_agree = replicas_agree(model.parameters())
    if rank == 0:
        with torch.no_grad():
            accuracy = (model(X[test]).argmax(dim=1) == y[test]).float().mean().item()
        nonzeros = sum(int((p != 0).sum()) for p in model.parameters())
        print(f"trained {steps} IHT steps under DDP in {elapsed:.1f} s")
        print(f"test accuracy {accuracy:.3f}, nonzeros {nonzeros} / {n_params}")
        print(
            f"all {world} ranks hold the same mask: {masks_agree}, same parameters: {params_agree}"
        )


if __name__ == "__main__":
    main()
