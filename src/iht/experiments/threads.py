"""The number of torch CPU threads while an experiment trains."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, then restore the previous setting.

    Why the commands train on one thread by default: their tensors are small (at most a few
    thousand rows times tens of columns), so intra-op parallelism has little to gain, and on a
    busy 2-core machine its fork-join synchronisation made each step about 10x slower
    (measured: ``iht compare --data iris --sparsity 5`` took 214 s with torch's 2 threads and
    24 s with 1, the same numbers out). ``n=None`` leaves the setting alone.
    """
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
