"""Smaller and faster, measured: a dense MLP against its structured-sparse shrink and CSR export.

    python benchmarks/structured_export.py [--width 1024] [--density 0.1] [--reps 30]

Model: an MLP 784-W-W-10 (random weights; latency does not depend on the values). Compared,
in the same run, the variants taking turns rep by rep so that background load hits them alike:

- dense: the model as it is;
- neurons: H_s over the hidden neurons (``iht.structured.group_mask``) keeping ``density`` of
  each hidden layer's rows, then ``iht.shrink.shrink``: a smaller dense model, same outputs;
- CSR: entry-wise H_s keeping ``density`` of every weight, then
  ``iht.export.sparsify_linear_layers`` (torch CSR matmuls).

Printed: median latency at batch 1 and 256 (ms, and the ratio to dense), parameters, and the
bytes of each saved file (``torch.save`` of the state dict; ``iht.export.save_sparse`` for CSR).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings

import torch
from torch import nn

from iht import hard_threshold
from iht.export import sparse_payload, sparsify_linear_layers
from iht.shrink import shrink
from iht.structured import group_mask


def _mlp(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


@torch.no_grad()
def _neurons(width: int, density: float) -> nn.Sequential:
    model = _mlp(width)
    for layer in (model[0], model[2]):  # the hidden layers: keep density of their neurons
        (mask,) = group_mask([layer.weight], max(1, round(density * layer.out_features)))
        layer.weight.mul_(mask)
    return shrink(model)


def _csr(width: int, density: float) -> nn.Module:
    model = _csr_source(width, density)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sparsify_linear_layers(model)


def _bytes(value: object) -> int:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getbuffer().nbytes


def _time(model: nn.Module, X: torch.Tensor) -> float:
    start = time.perf_counter()
    model(X)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    dense, neurons, csr = (
        _mlp(args.width),
        _neurons(args.width, args.density),
        _csr(args.width, args.density),
    )
    variants = {"dense": dense, "neurons (shrunk)": neurons, "CSR": csr}
    sizes = {
        "dense": _bytes(dense.state_dict()),
        "neurons (shrunk)": _bytes(neurons.state_dict()),
        "CSR": _bytes(sparse_payload(_csr_source(args.width, args.density))),
    }
    params = {
        "dense": sum(p.numel() for p in dense.parameters()),
        "neurons (shrunk)": sum(p.numel() for p in neurons.parameters()),
        "CSR": int(args.density * sum(p.numel() for p in dense.parameters())),
    }
    print(
        f"MLP 784-{args.width}-{args.width}-10, density {args.density}, {args.reps} reps, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"{'variant':18s} {'batch 1 (ms)':>14s} {'batch 256 (ms)':>16s} {'params':>10s} {'file (bytes)':>13s}"
    )
    results: dict[str, dict[int, float]] = {}
    with torch.inference_mode():
        for batch in (1, 256):
            X = torch.randn(batch, 784)
            for model in variants.values():  # warm-up
                model(X)
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.reps):
                for name, model in variants.items():
                    times[name].append(_time(model, X))
            for name in variants:
                results.setdefault(name, {})[batch] = statistics.median(times[name]) * 1e3
    for name in variants:
        r = results[name]
        ratio1, ratio256 = r[1] / results["dense"][1], r[256] / results["dense"][256]
        print(
            f"{name:18s} {r[1]:7.3f} ({ratio1:4.2f}x) {r[256]:8.3f} ({ratio256:4.2f}x) "
            f"{params[name]:10d} {sizes[name]:13d}"
        )


def _csr_source(width: int, density: float) -> nn.Sequential:
    """The entry-sparse MLP before the CSR swap (what save_sparse stores)."""
    model = _mlp(width)
    with torch.no_grad():
        for layer in (model[0], model[2], model[4]):
            w = layer.weight
            w.copy_(hard_threshold(w.reshape(-1), max(1, round(density * w.numel()))).view_as(w))
    return model


if __name__ == "__main__":
    main()
