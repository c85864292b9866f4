"""Sparse export: round trip, sparse inference equals dense, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import iht
from iht.export import load_sparse, save_sparse, sparsify_linear_layers


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
