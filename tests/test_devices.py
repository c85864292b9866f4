"""Device-agnostic code: the step runs on the ``meta`` device (no values: any host sync or
tensor made on the wrong device fails there), and CUDA tests that skip without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import iht
from iht.threshold import threshold_mask, top_s_mask

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def _meta_model() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).to("meta")


@pytest.mark.parametrize("kind", ["iht", "adamw", "per-layer", "fisher", "fisher-momentum"])
def test_the_step_runs_on_the_meta_device_and_makes_nothing_elsewhere(kind: str) -> None:
    model = _meta_model()
    if kind == "iht":
        opt: torch.optim.Optimizer = iht.IHT(model.parameters(), lr=0.1, sparsity=20)
    elif kind == "adamw":
        opt = iht.SparseOptimizer(torch.optim.AdamW(model.parameters(), lr=0.1), sparsity=20)
    elif kind == "fisher":
        base: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        opt = iht.SparseOptimizer(base, sparsity=20, selection="fisher")
    elif kind == "fisher-momentum":  # the wrapper's own running mean of squared gradients
        base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        opt = iht.SparseOptimizer(base, sparsity=20, selection="fisher")
    else:
        opt = iht.plan_budget(model, 20, per_layer=True).optimizer(model, lr=0.1)
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    assert {p.device.type for p in model.parameters()} == {"meta"}
    pools = opt.pool_states  # type: ignore[attr-defined]
    assert pools and all(state.mask.device.type == "meta" for state in pools.values())


def test_hard_threshold_and_its_mask_stay_on_the_meta_device() -> None:
    x = torch.randn(4, 50, device="meta")
    assert iht.hard_threshold(x, 7).device.type == "meta"
    assert top_s_mask(x, 7).device.type == "meta"


@CUDA
def test_the_cuda_mask_equals_the_cpu_mask_with_ties() -> None:  # pragma: no cover - no GPU
    x = torch.randint(-2, 3, (8, 300)).double()
    for s in (0, 1, 57, 150, 299, 300):
        assert torch.equal(top_s_mask(x.cuda(), s).cpu(), threshold_mask(x, s))


@CUDA
@pytest.mark.parametrize("kind", ["iht", "adamw", "fisher"])
def test_a_cuda_run_equals_the_cpu_run(kind: str) -> None:  # pragma: no cover - no GPU
    def run(device: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).double().to(device)
        X = torch.randn(32, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))
        X, y = X.to(device), y.to(device)
        if kind == "iht":
            opt: torch.optim.Optimizer = iht.IHT(model.parameters(), lr=0.3, sparsity=40)
        else:
            base = torch.optim.AdamW(model.parameters(), lr=1e-2)
            selection = "fisher" if kind == "fisher" else "magnitude"
            opt = iht.SparseOptimizer(base, sparsity=40, selection=selection)
        for _ in range(20):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X), y).backward()
            opt.step()
        return [p.detach().cpu() for p in model.parameters()]

    for a, b in zip(run("cuda"), run("cpu"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert torch.equal(a != 0, b != 0)
