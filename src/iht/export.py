"""Sparse export: save a trained sparse model in torch's sparse formats and run it sparse.

A model trained under a budget of s nonzeros is mostly zeros; stored densely it costs as much
as the dense model. :func:`save_sparse` stores every parameter as a torch sparse tensor (CSR for
matrices, COO otherwise) with its shape and dtype; :func:`load_sparse` puts the values back
into a model of the same architecture; :func:`sparsify_linear_layers` swaps each ``nn.Linear``
for a :class:`SparseLinear` that multiplies with a CSR weight, for sparse inference.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InvalidValueError

__all__ = [
    "FORMAT",
    "SparseLinear",
    "load_sparse",
    "save_sparse",
    "sparse_payload",
    "sparsify_linear_layers",
]

FORMAT = "iht-sparse-v1"


def _csr(matrix: Tensor) -> Tensor:
    with warnings.catch_warnings():
        # torch flags CSR as "beta" on every conversion; the format itself is stable.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return matrix.to_sparse_csr()


def _to_sparse(t: Tensor) -> Tensor:
    dense = t.detach().cpu()
    return _csr(dense) if dense.dim() == 2 else dense.to_sparse_coo().coalesce()


def sparse_payload(model: nn.Module) -> dict[str, Any]:
    """What :func:`save_sparse` writes: every parameter as a sparse tensor, by name."""
    return {
        "format": FORMAT,
        "tensors": {name: _to_sparse(p) for name, p in model.named_parameters()},
    }


def save_sparse(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, int]:
    """Write every parameter of ``model`` as a sparse tensor to ``path`` (``torch.save``).

    Returns the number of stored nonzeros per parameter name.
    """
    payload = sparse_payload(model)
    torch.save(payload, path)
    return {name: int(t._nnz()) for name, t in payload["tensors"].items()}


@torch.no_grad()
def load_sparse(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a file written by :func:`save_sparse` into ``model`` (same architecture).

    Raises:
        ValueError: the file is not an iht sparse export, or names/shapes do not match.
    """
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise InvalidValueError(f"{path} is not a readable iht sparse export: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InvalidValueError(f"{path} is not an iht sparse export (format {FORMAT})")
    tensors: dict[str, Tensor] = payload["tensors"]
    params = dict(model.named_parameters())
    if set(tensors) != set(params):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise InvalidValueError(
            f"{path} does not match the model: missing {missing}, unexpected {extra}"
        )
    for name, sparse in tensors.items():
        if tuple(sparse.shape) != tuple(params[name].shape):
            raise InvalidValueError(
                f"{name}: stored shape {tuple(sparse.shape)} != model shape {tuple(params[name].shape)}"
            )
        params[name].copy_(sparse.to_dense().to(params[name].dtype))
    return model


class SparseLinear(nn.Module):
    """y = x W^T + b with W stored as a CSR matrix (inference only, no gradients)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = _csr(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        # (out, in) @ (in, n) keeps the sparse matrix on the left, where torch's CSR kernel is.
        y = torch.sparse.mm(self.weight, flat.T).T
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def sparsify_linear_layers(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` in ``model`` by a :class:`SparseLinear`, in place."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, SparseLinear(child))
        else:
            sparsify_linear_layers(child)
    return model
