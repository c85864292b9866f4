"""Run-steps per second: the many-runs engine against the faithful one-run-at-a-time loop.

    python benchmarks/iris_engine.py [--level 5] [--runs 1000] [--steps 2000] [--dtype float32]

Both do the same work, IHT runs of the IRIS study at one sparsity level with the same seeds;
the faithful loop (nn.Linear + cross-entropy + autograd + iht.IHT, one run at a time) runs only
a few of them since it is slow, and the figure compared is run-steps per second, measured in
this same process. The tolerance is set to 0 so that no run stops early and both count full
steps. Prints both rates and their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from iht.study.chunks import Chunk, run_chunk
from iht.study.config import StudyConfig
from iht.study.faithful import run_one_faithful
from iht.study.seeds import run_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1000, help="runs through the engine")
    parser.add_argument("--faithful-runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--engine", default="numba", choices=["numba", "torch"])
    args = parser.parse_args()

    config = StudyConfig(
        runs=args.runs,
        chunk_runs=args.runs,
        max_steps=args.steps,
        tol=0.0,
        dtype=args.dtype,
        engine=args.engine,
        levels=(args.level,),
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {args.dtype}, "
        f"engine {args.engine}"
    )
    print(f"level s={args.level}, {args.steps} steps per run, tolerance 0 (no early stop)")

    warm = StudyConfig(**{**config.__dict__, "max_steps": 5})
    run_one_faithful(warm, run_seeds(warm, "iht", args.level, 0))  # warm-up (lazy init)
    start = time.perf_counter()
    for i in range(args.faithful_runs):
        run_one_faithful(config, run_seeds(config, "iht", args.level, i))
    faithful_time = time.perf_counter() - start
    faithful_rate = args.faithful_runs * args.steps / faithful_time

    chunk = Chunk("bench", "iht", args.level, tuple(range(args.runs)))
    run_chunk(StudyConfig(**{**config.__dict__, "max_steps": 5}), chunk)  # warm-up (JIT, caches)
    start = time.perf_counter()
    rows = run_chunk(config, chunk)
    engine_time = time.perf_counter() - start
    engine_steps = sum(r["steps"] for r in rows)
    engine_rate = engine_steps / engine_time

    print(
        f"faithful loop: {args.faithful_runs} runs in {faithful_time:.2f} s -> "
        f"{faithful_rate:,.0f} run-steps/s ({1e6 / faithful_rate:.1f} us per run-step)"
    )
    print(
        f"engine:        {args.runs} runs in {engine_time:.2f} s -> "
        f"{engine_rate:,.0f} run-steps/s ({1e6 / engine_rate:.2f} us per run-step), "
        "L_2s estimates and metrics included"
    )
    print(f"ratio engine / faithful: {engine_rate / faithful_rate:.0f}x")


if __name__ == "__main__":
    main()
