"""Dense vs sparse (CSR) inference of an MLP at 90%, 99% and 99.9% sparsity.

    python benchmarks/sparse_inference.py [--width 4096] [--batch 64]

The model is Linear(width, width) -> ReLU -> Linear(width, width) -> ReLU -> Linear(width, 10),
made sparse with iht.sparse_init_ (one global budget), exported with iht.export and run with
SparseLinear layers. Prints milliseconds per forward pass (best of several) and sparse/dense
ratios, including where sparse is slower.
"""

from __future__ import annotations

import argparse

import torch
from timing import best_of
from torch import nn

import iht
from iht.export import sparsify_linear_layers


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    x = torch.randn(args.batch, args.width)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; width {args.width}, batch {args.batch}"
    )
    print(
        f"{'sparsity':>9} {'nonzeros':>10} {'dense ms':>9} {'sparse ms':>10} {'sparse/dense':>13}"
    )
    for sparsity in (0.9, 0.99, 0.999):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(args.width, args.width),
            nn.ReLU(),
            nn.Linear(args.width, args.width),
            nn.ReLU(),
            nn.Linear(args.width, 10),
        )
        size = sum(p.numel() for p in model.parameters())
        budget = round((1 - sparsity) * size)
        iht.sparse_init_(model.parameters(), budget, generator=torch.Generator().manual_seed(0))
        dense_time = best_of(lambda: model(x))
        expected = model(x)
        sparse_model = sparsify_linear_layers(model)
        sparse_time = best_of(lambda: sparse_model(x))
        torch.testing.assert_close(sparse_model(x), expected, rtol=1e-4, atol=1e-4)
        print(
            f"{sparsity:>9.1%} {budget:>10,} {dense_time * 1e3:>9.2f} {sparse_time * 1e3:>10.2f} "
            f"{sparse_time / dense_time:>12.2f}x"
        )


if __name__ == "__main__":
    main()
