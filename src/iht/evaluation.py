"""Evaluate a model for a certificate or an estimate without changing it: eval mode, buffers kept.

:func:`evaluating` switches a model to eval mode (dropout off, batch norm on its running
statistics) for the block and restores, afterwards, every module's mode and every buffer
exactly (a loss closure may still update batch-norm statistics in train mode elsewhere).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["evaluating"]


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode; restore its modes and buffers afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
