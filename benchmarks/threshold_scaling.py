"""How the cost of H_s grows with the vector: topk vs kthvalue vs sort vs compiled, 1e5 to 1e8.

    python benchmarks/threshold_scaling.py [--sizes 1e5,1e6,1e7,1e8] [--density 0.1]

Each way finds the s-th largest magnitude t of float32 entries (the rest of H_s, a comparison
and a select, is common to all and timed separately); "compiled" is the library's histogram
selection (`iht._kernels.iht_step.kth_largest_magnitude`), and the library's `hard_threshold`
(which uses it from 2^20 entries on the CPU) is timed end to end.
Prints milliseconds per call (best of a few) and each way's time relative to `topk`.
"""

from __future__ import annotations

import argparse

import torch
from timing import best_of

from iht import hard_threshold
from iht._kernels import iht_step as compiled_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7,1e8")
    parser.add_argument("--density", type=float, default=0.1, help="s / P")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, s = {args.density} P"
    )
    print(
        f"{'P':>10} {'topk':>10} {'kthvalue':>10} {'sort':>10} {'compiled':>10} {'mask+select':>12} "
        f"{'hard_threshold':>15}   (ms)"
    )
    for size in (int(float(v)) for v in args.sizes.split(",")):
        x = torch.randn(size, generator=torch.Generator().manual_seed(0))
        s = max(1, int(args.density * size))
        mag = x.abs()
        repeats = 5 if size <= 10**7 else 2
        t_topk = best_of(lambda: torch.topk(mag, s, sorted=False).values.min(), repeats)
        t_kth = best_of(lambda: torch.kthvalue(mag, size - s + 1).values, repeats)
        t_sort = (
            best_of(lambda: torch.sort(mag, descending=True).values[s - 1], repeats)
            if size <= 10**7
            else float("nan")
        )
        t_compiled = best_of(lambda: compiled_step.kth_largest_magnitude(mag, s), repeats)
        kth = torch.kthvalue(mag, size - s + 1).values
        assert compiled_step.kth_largest_magnitude(mag, s) == float(kth)
        t_select = best_of(lambda: torch.where(mag >= kth, x, 0.0), repeats)
        t_ht = best_of(lambda: hard_threshold(x, s), repeats)
        print(
            f"{size:>10.0e} {t_topk * 1e3:>10.1f} {t_kth * 1e3:>10.1f} {t_sort * 1e3:>10.1f} "
            f"{t_compiled * 1e3:>10.1f} {t_select * 1e3:>12.1f} {t_ht * 1e3:>15.1f}   "
            f"kthvalue/topk = {t_kth / t_topk:.2f}, compiled/topk = {t_compiled / t_topk:.3f}"
        )


if __name__ == "__main__":
    main()
