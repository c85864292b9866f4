"""Sparse export: save a trained sparse model in torch's sparse formats and run it sparse.

A model trained under a budget of s nonzeros is mostly zeros; stored densely it costs as much
as the dense model. :func:`save_sparse` stores every parameter as a torch sparse tensor (CSR for
matrices, COO otherwise) with its shape and dtype; :func:`load_sparse` puts the values back
into a model of the same architecture; :func:`sparsify_linear_layers` swaps each ``nn.Linear``
for a :class:`SparseLinear` that multiplies with a CSR weight, for sparse inference, and
:func:`sparsify_layers` also each zero-padded ``nn.Conv1d`` / ``nn.Conv2d`` for a
:class:`SparseConv` (the input unfolded into columns, then the CSR weight times them).
:func:`semi_structured` puts 2:4-sparse Linear weights in torch's semi-structured format,
which has kernels on CUDA GPUs only; on a CPU it says so instead of pretending.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any, cast

import torch
from torch import Tensor, nn

from .errors import InvalidValueError
from .untrusted import Refused, read_regular_file

__all__ = [
    "FORMAT",
    "SparseConv",
    "SparseLinear",
    "load_sparse",
    "max_export_bytes",
    "save_sparse",
    "semi_structured",
    "sparse_payload",
    "sparsify_layers",
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


class SparseConv(nn.Module):
    """A Conv1d or Conv2d (zero padding, ``groups=1``) with its weight as a CSR matrix of
    shape (out, in x kernel): y = W unfold(x) + b (inference only, no gradients). The input's
    patches are unfolded into columns (``torch.nn.functional.unfold``; a Conv1d as a Conv2d of
    height 1), so its cost is that of the CSR product plus the unfolding."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d) -> None:
        super().__init__()
        if not _sparsifiable_conv(conv):
            raise InvalidValueError(
                "SparseConv takes a Conv1d/Conv2d with numeric zero padding and groups=1"
            )
        self.one_d = isinstance(conv, nn.Conv1d)
        self.out_channels = conv.out_channels

        def pair(value: tuple[int, ...]) -> tuple[int, int]:
            return (1, value[0]) if self.one_d else (value[0], value[1])

        self.kernel_size = pair(tuple(conv.kernel_size))
        self.stride = pair(tuple(conv.stride))
        self.dilation = pair(tuple(conv.dilation))
        padding = cast(tuple[int, ...], conv.padding)
        self.padding = (0, padding[0]) if self.one_d else (padding[0], padding[1])
        self.weight = _csr(conv.weight.detach().reshape(conv.out_channels, -1))
        self.bias = None if conv.bias is None else conv.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        images = x.unsqueeze(2) if self.one_d else x
        n, height = images.shape[0], images.shape[2]
        cols = nn.functional.unfold(
            images,
            self.kernel_size,
            dilation=self.dilation,
            padding=self.padding,
            stride=self.stride,
        )  # (n, in x kernel, positions)
        positions = cols.shape[-1]
        flat = cols.transpose(0, 1).reshape(cols.shape[1], n * positions)
        y = torch.sparse.mm(self.weight, flat).reshape(self.out_channels, n, positions)
        y = y.transpose(0, 1)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1)
        out_h = (
            height + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1
        ) // self.stride[0] + 1
        out_w = positions // out_h
        y = y.reshape(n, self.out_channels, out_h, out_w)
        return y.squeeze(2) if self.one_d else y


def _sparsifiable_conv(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv1d | nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def sparsify_layers(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` by a :class:`SparseLinear` and every zero-padded, ungrouped
    ``nn.Conv1d`` / ``nn.Conv2d`` by a :class:`SparseConv`, in place (other convolutions stay
    as they are)."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, SparseLinear(child))
        elif _sparsifiable_conv(child):
            setattr(model, name, SparseConv(cast(nn.Conv1d | nn.Conv2d, child)))
        else:
            sparsify_layers(child)
    return model


def semi_structured(model: nn.Module) -> nn.Module:
    """Store every 2:4-sparse ``nn.Linear`` weight of ``model`` in torch's semi-structured
    format (``torch.sparse.to_sparse_semi_structured``), in place, for the GPU's sparse tensor
    cores; weights that are not 2:4 are left dense.

    Raises:
        InvalidValueError: the weights are not on a CUDA device in float16 or bfloat16: torch
            has semi-structured kernels only there (compute capability 8.0 or newer); on a CPU
            a 2:4 model runs dense, as fast as the dense model and no faster.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    bad = [
        m.weight for m in linears if m.weight.device.type != "cuda" or m.weight.dtype not in (
            torch.float16, torch.bfloat16
        )
    ]  # fmt: skip
    if bad:
        raise InvalidValueError(
            f"2:4 semi-structured kernels need the weights on a CUDA GPU in float16 or bfloat16; "
            f"got {bad[0].device.type} {str(bad[0].dtype).removeprefix('torch.')} (on a CPU a 2:4 "
            "model has no sparse kernel: run it dense)"
        )
    from torch.sparse import to_sparse_semi_structured

    for module in linears:
        w = module.weight.detach()
        blocks = (w.reshape(-1, 4) != 0).sum(dim=1) if w.shape[-1] % 4 == 0 else None
        if blocks is not None and bool((blocks <= 2).all()):
            module.weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
    return model
