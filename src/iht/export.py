"""Sparse export: save a trained sparse model in torch's sparse formats and run it sparse.

A model trained under a budget of s nonzeros is mostly zeros; stored densely it costs as much
as the dense model. :func:`save_sparse` stores every parameter as a torch sparse tensor (CSR for
matrices, COO otherwise) with its shape and dtype; :func:`load_sparse` puts the values back
into a model of the same architecture; :func:`sparsify_linear_layers` swaps each ``nn.Linear``
for a :class:`SparseLinear` that multiplies with a CSR weight, for sparse inference.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InvalidValueError
from .untrusted import Refused, read_regular_file

__all__ = [
    "FORMAT",
    "SparseLinear",
    "load_sparse",
    "max_export_bytes",
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


#: Bytes a sparse export of a model of P parameters can take: CSR/COO store at most P values
#: and two int64 indices each, plus pickle framing. Larger files are refused unread.
def max_export_bytes(n_params: int) -> int:
    return 32 * n_params + (1 << 20)


@torch.no_grad()
def load_sparse(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a file written by :func:`save_sparse` into ``model`` (same architecture).

    The file is untrusted: it must be a regular file of a size such an export can have; it is
    unpickled with ``weights_only=True`` and torch's sparse-tensor invariant checks on (index
    ranges, CSR row pointers), and every tensor is checked against the model (names, layout,
    shape, a floating dtype, finite values) before any parameter is written. On any error
    the model is unchanged.

    Raises:
        ValueError: the file is not an iht sparse export, is malformed, or does not match.
    """
    params = dict(model.named_parameters())
    limit = max_export_bytes(sum(p.numel() for p in params.values()))
    try:
        data = read_regular_file(path, limit, follow_links=True)
    except FileNotFoundError:
        raise InvalidValueError(f"cannot read {path}: no such file") from None
    except Refused as exc:
        raise InvalidValueError(f"{path} {exc}") from None
    try:
        with torch.sparse.check_sparse_tensor_invariants(enable=True):
            payload = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged, foreign or hostile file
        raise InvalidValueError(
            f"{path} is not a readable iht sparse export: {_one_line(exc)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InvalidValueError(f"{path} is not an iht sparse export (format {FORMAT})")
    tensors = payload.get("tensors")
    if not isinstance(tensors, dict) or not all(isinstance(k, str) for k in tensors):
        raise InvalidValueError(f"{path}: 'tensors' is not a mapping of parameter names")
    if set(tensors) != set(params):
        missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        raise InvalidValueError(
            f"{path} does not match the model: missing {missing}, unexpected {extra}"
        )
    dense = {name: _checked_dense(path, name, tensors[name], params[name]) for name in params}
    for name, value in dense.items():  # every tensor checked: now write
        params[name].copy_(value)
    return model


def _checked_dense(path: object, name: str, stored: object, param: Tensor) -> Tensor:
    """``stored`` as a dense tensor for ``param``, or InvalidValueError naming what is wrong."""
    where = f"{path}: {name}"
    if not isinstance(stored, Tensor):
        raise InvalidValueError(f"{where} is a {type(stored).__name__}, not a tensor")
    if stored.layout not in (torch.sparse_coo, torch.sparse_csr, torch.strided):
        raise InvalidValueError(f"{where} has layout {stored.layout}; expected COO or CSR")
    if tuple(stored.shape) != tuple(param.shape):
        raise InvalidValueError(
            f"{where}: stored shape {tuple(stored.shape)} != model shape {tuple(param.shape)}"
        )
    if not stored.dtype.is_floating_point:
        raise InvalidValueError(f"{where} has dtype {stored.dtype}; expected a floating dtype")
    value = stored.to_dense() if stored.layout != torch.strided else stored
    if not bool(torch.isfinite(value).all()):
        raise InvalidValueError(f"{where} holds non-finite values")
    return value.to(device=param.device, dtype=param.dtype)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


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
