"""Sparse export: round trip, sparse inference equals dense, clear errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import iht
from iht.errors import InvalidValueError
from iht.export import (
    SparseConv,
    load_sparse,
    save_sparse,
    semi_structured,
    sparsify_layers,
    sparsify_linear_layers,
)


def _sparse_mlp(budget: int) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)).double()
    iht.sparse_init_(model.parameters(), budget, generator=torch.Generator().manual_seed(1))
    return model


def test_round_trip_restores_every_value(tmp_path: Path) -> None:
    model = _sparse_mlp(60)
    counts = save_sparse(model, tmp_path / "m.pt")
    assert sum(counts.values()) == 60
    fresh = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)).double()
    load_sparse(fresh, tmp_path / "m.pt")
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_sparse_file_is_smaller_than_dense(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(400, 400))
    iht.sparse_init_(model.parameters(), 1600, generator=torch.Generator().manual_seed(0))
    save_sparse(model, tmp_path / "sparse.pt")
    torch.save(model.state_dict(), tmp_path / "dense.pt")
    assert (tmp_path / "sparse.pt").stat().st_size < 0.2 * (tmp_path / "dense.pt").stat().st_size


def test_sparse_inference_equals_dense() -> None:
    model = _sparse_mlp(80)
    x = torch.randn(7, 20, dtype=torch.float64)
    expected = model(x)
    sparse = sparsify_linear_layers(model)
    assert not any(isinstance(m, nn.Linear) for m in sparse.modules())
    torch.testing.assert_close(sparse(x), expected, rtol=0, atol=1e-12)


def test_mismatched_model_and_foreign_file_are_refused(tmp_path: Path) -> None:
    save_sparse(_sparse_mlp(60), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="does not match the model"):
        load_sparse(nn.Sequential(nn.Linear(20, 30)).double(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="stored shape"):
        load_sparse(
            nn.Sequential(nn.Linear(20, 31), nn.ReLU(), nn.Linear(31, 5)), tmp_path / "m.pt"
        )
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable iht sparse export"):
        load_sparse(nn.Linear(2, 2), tmp_path / "junk.pt")
    torch.save({"a": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an iht sparse export"):
        load_sparse(nn.Linear(2, 2), tmp_path / "other.pt")


@settings(max_examples=40, deadline=None)
@given(
    two_d=st.booleans(),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    channels=st.tuples(st.integers(1, 4), st.integers(1, 5)),
    length=st.integers(9, 14),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_a_sparse_conv_computes_the_dense_conv(
    two_d: bool,
    kernel: int,
    stride: int,
    padding: int,
    dilation: int,
    channels: tuple[int, int],
    length: int,
    density: float,
    seed: int,
) -> None:
    """SparseConv (unfold + CSR product) equals the dense Conv1d/Conv2d in float64."""
    torch.manual_seed(seed)
    cls = nn.Conv2d if two_d else nn.Conv1d
    conv = cls(channels[0], channels[1], kernel, stride=stride, padding=padding, dilation=dilation)
    conv = conv.double()
    with torch.no_grad():
        conv.weight.mul_((torch.rand_like(conv.weight) < density).double())
    shape = (3, channels[0], length, length + 1) if two_d else (3, channels[0], length)
    x = torch.randn(shape, dtype=torch.float64)
    sparse = SparseConv(conv)
    with torch.no_grad():
        assert torch.allclose(sparse(x), conv(x), atol=1e-12, rtol=0)


def test_sparsify_layers_swaps_linear_and_conv_and_keeps_the_output() -> None:
    from iht.models import build_model

    model = build_model(40, 10, (8,), kind="cnn", input_shape=(1, 40)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_((torch.rand_like(p) < 0.3).double())
    x = torch.randn(5, 40, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        swapped = sparsify_layers(copy.deepcopy(model))
        kinds = {type(m).__name__ for m in swapped.modules()}
        assert {"SparseConv", "SparseLinear"} <= kinds and "Conv1d" not in kinds
        assert torch.allclose(swapped(x), expected, atol=1e-12, rtol=0)
    with pytest.raises(InvalidValueError, match="groups=1"):
        SparseConv(nn.Conv1d(4, 4, 3, groups=2))


def test_semi_structured_says_it_needs_a_gpu_on_cpu() -> None:
    model = nn.Linear(8, 4)
    with pytest.raises(InvalidValueError, match="need the weights on a CUDA GPU in float16"):
        semi_structured(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="semi-structured kernels need CUDA")
def test_semi_structured_runs_a_2_4_linear_on_cuda() -> None:  # pragma: no cover - no GPU here
    from iht.structured import nm_mask

    linear = nn.Linear(64, 32).half().cuda()
    with torch.no_grad():
        linear.weight.mul_(nm_mask(linear.weight, 2, 4))
    x = torch.randn(32, 64, dtype=torch.float16, device="cuda")
    expected = linear(x)
    semi_structured(linear)
    assert torch.allclose(linear(x), expected, atol=1e-2)
