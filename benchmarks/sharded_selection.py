"""The sharded global top-s against gathering the vector: time and bytes, 2 gloo processes.

    python benchmarks/sharded_selection.py [--sizes 1e5,1e6,1e7,1e8] [--reps 5]

Each of the 2 ranks (spawned processes, CPU, gloo over localhost, 1 thread each) holds half of
a float32 vector of P entries, as FSDP2 shards a parameter. Measured in the same run, the two
ways of finding the mask of the global H_s (ties: the smaller global index):

- sharded: ``iht.distributed.sharded_threshold_masks`` (what ``iht.IHT`` does on DTensors):
  local work on the shard and a few small collectives;
- gather: ``all_gather`` the shards into the whole vector on every rank, then
  ``iht.threshold.top_s_mask`` on it (what selecting on the concatenated DTensors amounts to).

Budgets: s = 10% of P (the count search: its traffic does not grow with s) and s = 1,000 (the
candidates: one all_gather of 16 x W x s bytes). Bytes are what one rank *receives*, counted
by wrapping the collectives: all_gather (W - 1) x the buffer, all_reduce 2 (W - 1) / W x the
buffer (a ring). Printed: median seconds over ``--reps`` and bytes per rank, and the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import start_processes

WORLD = 2


def _counting() -> dict[str, int]:
    """Wrap the collectives iht.distributed uses so that each adds the bytes it receives."""
    from iht import distributed

    received = {"bytes": 0}
    all_gather, all_reduce = dist.all_gather, dist.all_reduce

    def gather(out: list[torch.Tensor], tensor: torch.Tensor, **kw: Any) -> Any:
        received["bytes"] += (len(out) - 1) * tensor.numel() * tensor.element_size()
        return all_gather(out, tensor, **kw)

    def reduce(tensor: torch.Tensor, *args: Any, **kw: Any) -> Any:
        world = dist.get_world_size(kw.get("group"))
        received["bytes"] += 2 * (world - 1) * tensor.numel() * tensor.element_size() // world
        return all_reduce(tensor, *args, **kw)

    distributed.dist.all_gather = gather  # type: ignore[attr-defined]
    distributed.dist.all_reduce = reduce  # type: ignore[attr-defined]
    return received


def _worker(rank: int, tmp: str, sizes: list[int], reps: int) -> None:
    from iht.distributed import sharded_threshold_masks
    from iht.threshold import top_s_mask

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/store",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=600),
    )
    received = _counting()
    rows = []
    for size in sizes:
        n = size // WORLD
        local = torch.randn(n, generator=torch.Generator().manual_seed(rank))
        offset = rank * n
        for s in (max(1, size // 10), 1000):
            times = {"sharded": [], "gather": []}
            sent = {}
            for rep in range(reps + 1):  # the first is a warm-up
                received["bytes"] = 0
                dist.barrier()
                start = time.perf_counter()
                (mask,) = sharded_threshold_masks([(local, offset)], s)
                elapsed = time.perf_counter() - start
                sent["sharded"] = received["bytes"]
                dist.barrier()
                start = time.perf_counter()
                parts = [torch.empty_like(local) for _ in range(WORLD)]
                dist.all_gather(parts, local)
                full_mask = top_s_mask(torch.cat(parts), s)[offset : offset + n]
                gathered = time.perf_counter() - start
                sent["gather"] = (WORLD - 1) * local.numel() * local.element_size()
                assert torch.equal(full_mask, mask)
                if rep:
                    times["sharded"].append(elapsed)
                    times["gather"].append(gathered)
            rows.append(
                (size, s, statistics.median(times["sharded"]), sent["sharded"],
                 statistics.median(times["gather"]), sent["gather"])
            )  # fmt: skip
    if rank == 0:
        torch.save(rows, f"{tmp}/rows.pt")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7,1e8")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(float(x)) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        start_processes(
            _worker, args=(tmp, sizes, args.reps), nprocs=WORLD, join=True, start_method="spawn"
        )
        rows = torch.load(Path(tmp) / "rows.pt")
    print(f"{WORLD} gloo processes on this machine, float32, median of {args.reps}")
    print("| P | s | sharded: s, bytes/rank | gather: s, bytes/rank | time ratio | bytes ratio |")
    print("|---|---|---|---|---|---|")
    for size, s, t_sh, b_sh, t_ga, b_ga in rows:
        print(
            f"| {size:.0e} | {s:,} | {t_sh:.4f} s, {b_sh:,} | {t_ga:.4f} s, {b_ga:,} "
            f"| {t_sh / t_ga:.2f}x | {b_sh / b_ga:.2g}x |"
        )


if __name__ == "__main__":
    main()
