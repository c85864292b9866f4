"""IHT on FSDP2-sharded models (``fully_shard``, DTensors), 2 gloo processes on CPU: bit for
bit the one-process run, the budget exact after every step, no DTensor gather in the step,
and a ``torch.distributed.checkpoint`` round trip that resumes equal.

Both ranks train on the same full batch, so FSDP2's gradient average is exactly the
one-process gradient ((g + g) / 2 = g in floating point) and the comparison can be exact.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.multiprocessing.spawn import start_processes

import iht

WORLD, STEPS, RESUME_AT, BUDGET = 2, 25, 10, 200
F64 = torch.float64
LAUNCH_TIMEOUT = 120.0

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


def _launch(worker: Callable[..., None], tmp_path: Path) -> None:
    context = start_processes(
        worker, args=(str(tmp_path),), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"FSDP workers did not finish within {LAUNCH_TIMEOUT} s")


def _sparse_start(model: nn.Sequential) -> nn.Sequential:
    """The paper's start: a random support of the budget (drawn before sharding)."""
    iht.sparse_init_(model.parameters(), BUDGET, generator=torch.Generator().manual_seed(2))
    return model


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return _sparse_start(nn.Sequential(nn.Linear(16, 33), nn.ReLU(), nn.Linear(33, 4)).to(F64))


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(1, 7, 5, padding=2), nn.ReLU(), nn.Conv1d(7, 5, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(5 * 10, 4),
    ).to(F64)  # fmt: skip
    return _sparse_start(model)


def _regression() -> tuple[Tensor, Tensor]:
    X, _ = _data("mlp")
    return X, X[:, :1] * 0.5 - X[:, 1:2] + 0.1


def _data(kind: str) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(48, 16, generator=gen, dtype=F64)
    if kind == "cnn":
        X = torch.randn(48, 1, 12, generator=gen, dtype=F64)
    return X, torch.randint(0, 4, (48,), generator=gen)


def _optimizer(kind: str, model: nn.Module) -> torch.optim.Optimizer:
    if kind == "iht":
        return iht.IHT(model.parameters(), lr=0.5, sparsity=BUDGET)
    if kind == "per-layer":  # per-layer pools, a budget schedule, re-selection every 3 steps
        budget = iht.plan_budget(model, BUDGET, per_layer=True, exclude_biases=True)
        return budget.wrap(
            model,
            lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9),
            schedule=iht.schedules.Cubic(start=2, end=15, initial_density=0.6),
            threshold_every=3,
        )
    return iht.SparseOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), sparsity=BUDGET)


def _certificate(model: nn.Module, kind: str, X: Tensor, y: Tensor) -> Any:
    lr = 0.5 if kind == "iht" else 1e-2
    return iht.certify(
        model,
        lambda m: nn.functional.cross_entropy(m(X), y),
        lr=lr,
        sparsity=BUDGET,
        inputs=X,
        dense_loss=0.5,
    )


def _pool_certificate(model: nn.Module, X: Tensor, y: Tensor) -> dict[str, Any]:
    """certify_budget with a per-layer budget, biases dense (several pools)."""
    from iht.certify import certify_budget

    budget = iht.plan_budget(model, BUDGET // 2, per_layer=True, exclude_biases=True)
    return certify_budget(
        model, lambda m: nn.functional.cross_entropy(m(X), y), lr=0.5, budget=budget
    )


def _steps(
    model: nn.Module, opt: torch.optim.Optimizer, X: Tensor, y: Tensor, n: int, record: Any = None
) -> None:
    for _ in range(n):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
        if record is not None:
            record(model)


def _worker(rank: int, tmp: str) -> None:
    _train_all(rank, tmp)
    # FSDP2's state sits in reference cycles; free it before its process group is destroyed,
    # or gloo's threads may abort the process at exit ("terminate called without an active
    # exception", seen 1 run in 4 without this).
    gc.collect()
    dist.destroy_process_group()


def _train_all(rank: int, tmp: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.debug import CommDebugMode

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/store",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),
    )

    def sharded(build: Callable[[], nn.Sequential]) -> nn.Sequential:
        model = build()
        for layer in model:
            if any(True for _ in layer.parameters(recurse=False)):
                fully_shard(layer)
        fully_shard(model)
        return model

    out: dict[str, Any] = {}
    for arch, build in (("mlp", _mlp), ("cnn", _cnn)):
        X, y = _data(arch)
        for kind in ("iht", "adamw", "per-layer"):
            model = sharded(build)
            opt = _optimizer(kind, model)
            trajectory, nonzeros, gathers = [], [], []
            for _ in range(STEPS):
                opt.zero_grad()
                nn.functional.cross_entropy(model(X), y).backward()
                with CommDebugMode() as comm:
                    opt.step()
                counts = comm.get_comm_counts()
                gathers.append(
                    sum(n for op, n in counts.items() if "all_gather_into_tensor" in str(op))
                )
                local = torch.tensor(
                    [sum(int((p.to_local() != 0).sum()) for p in model.parameters())]
                )
                dist.all_reduce(local)
                nonzeros.append(int(local))
                trajectory.append(
                    torch.cat([p.full_tensor().reshape(-1) for p in model.parameters()])
                )
            out[arch, kind] = {
                "trajectory": torch.stack(trajectory),
                "nonzeros": nonzeros,
                "gathers": gathers,
            }
            if kind == "per-layer":
                continue
            out[arch, kind]["certificate"] = dataclasses.asdict(_certificate(model, kind, X, y))
            out[arch, kind]["pools"] = _pool_certificate(model, X, y)

    # The L_2s estimate on a sharded linear regression, whose ratios the maths bounds.
    torch.manual_seed(3)
    linear = nn.Linear(16, 1).to(F64)
    fully_shard(linear)
    Xl, target = _regression()
    estimate = iht.estimate_l2s(
        linear,
        lambda m: nn.functional.mse_loss(m(Xl), target),
        sparsity=8,
        n_samples=30,
        generator=torch.Generator().manual_seed(0),
    )
    both = [torch.zeros(1, dtype=F64) for _ in range(WORLD)]
    dist.all_gather(both, torch.tensor([estimate.estimate], dtype=F64))
    out["estimate"] = {"ratios": estimate.ratios, "by rank": [float(b) for b in both]}
    try:
        iht.estimate_l2s(linear, lambda m: m(Xl).sum(), sparsity=None, init_fn=lambda n, g: Xl)
    except ValueError as error:
        out["estimate refused"] = str(error)

    # torch.distributed.checkpoint: save after RESUME_AT steps, resume in a new model.
    X, y = _data("mlp")
    model = sharded(_mlp)
    opt = _optimizer("adamw", model)
    base = opt.optimizer  # type: ignore[attr-defined]
    _steps(model, opt, X, y, RESUME_AT)
    state = {
        "model": get_model_state_dict(model),
        "optim": get_optimizer_state_dict(model, base),
    }
    dcp.save(state, checkpoint_id=f"{tmp}/dcp")
    clock = opt.steps_taken  # type: ignore[attr-defined]
    _steps(model, opt, X, y, STEPS - RESUME_AT)
    uninterrupted = torch.cat([p.full_tensor().reshape(-1) for p in model.parameters()])
    fresh = sharded(_mlp)
    fresh_opt = _optimizer("adamw", fresh)
    fresh_base = fresh_opt.optimizer  # type: ignore[attr-defined]
    _steps(fresh, fresh_opt, X, y, 1)  # materialise the base optimizer's state to load into
    loaded = {
        "model": get_model_state_dict(fresh),
        "optim": get_optimizer_state_dict(fresh, fresh_base),
    }
    dcp.load(loaded, checkpoint_id=f"{tmp}/dcp")
    set_model_state_dict(fresh, loaded["model"])
    set_optimizer_state_dict(fresh, fresh_base, loaded["optim"])
    fresh_opt.steps_taken = clock  # type: ignore[attr-defined]
    _steps(fresh, fresh_opt, X, y, STEPS - RESUME_AT)
    resumed = torch.cat([p.full_tensor().reshape(-1) for p in fresh.parameters()])
    out["resume"] = {"uninterrupted": uninterrupted, "resumed": resumed}
    if rank == 0:
        torch.save(out, f"{tmp}/fsdp.pt")


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    tmp_path = tmp_path_factory.mktemp("fsdp")
    _launch(_worker, tmp_path)
    return torch.load(tmp_path / "fsdp.pt")


def _dense_size(arch: str) -> int:
    """The biases: dense under the per-layer budget."""
    model = _mlp() if arch == "mlp" else _cnn()
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith("bias"))


def _reference(arch: str, kind: str) -> Tensor:
    """The one-process run, on one thread as the workers (a conv's reduction order, hence its
    last bits, depends on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _one_process(arch, kind)
    finally:
        torch.set_num_threads(threads)


def _one_process(arch: str, kind: str) -> Tensor:
    model = (_mlp if arch == "mlp" else _cnn)()
    X, y = _data(arch)
    opt = _optimizer(kind, model)
    trajectory: list[Tensor] = []
    _steps(
        model,
        opt,
        X,
        y,
        STEPS,
        record=lambda m: trajectory.append(
            torch.cat([p.detach().reshape(-1) for p in m.parameters()])
        ),
    )
    return torch.stack(trajectory)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("kind", ["iht", "adamw", "per-layer"])
def test_fsdp2_training_equals_one_process_bit_for_bit(
    fsdp: dict[Any, Any], arch: str, kind: str
) -> None:
    run = fsdp[arch, kind]
    reference = _reference(arch, kind)
    assert torch.equal(run["trajectory"], reference)  # every step, every parameter, float64
    if kind == "per-layer":  # the schedule's budget, exact at every step
        assert run["nonzeros"] == [int((r != 0).sum()) for r in reference]
        assert run["nonzeros"][-1] <= BUDGET + _dense_size(arch)
    else:
        assert run["nonzeros"] == [BUDGET] * STEPS  # the budget exact after every step
    assert not torch.equal(reference[0] != 0, reference[-1] != 0)  # the support moved
    assert run["gathers"] == [0] * STEPS  # no DTensor all-gather of parameters in the step


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("kind", ["iht", "adamw"])
def test_the_certificate_of_a_sharded_model_is_the_one_process_certificate(
    fsdp: dict[Any, Any], arch: str, kind: str
) -> None:
    model = (_mlp if arch == "mlp" else _cnn)()
    X, y = _data(arch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _steps(model, _optimizer(kind, model), X, y, STEPS)
        expected = dataclasses.asdict(_certificate(model, kind, X, y))
    finally:
        torch.set_num_threads(threads)
    got = fsdp[arch, kind]["certificate"]
    for key, value in expected.items():
        if key in ("residual", "loss", "epsilon"):  # a sum over shards: the last bits may move
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
        else:
            assert got[key] == value, key


def test_a_per_layer_certificate_of_a_sharded_model_is_the_one_process_one(
    fsdp: dict[Any, Any],
) -> None:
    model = _mlp()
    X, y = _data("mlp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _steps(model, _optimizer("iht", model), X, y, STEPS)
        expected = _pool_certificate(model, X, y)
    finally:
        torch.set_num_threads(threads)
    got = fsdp["mlp", "iht"]["pools"]
    assert len(got["pools"]) == len(expected["pools"]) == 3  # two layers and the biases
    for mine, theirs in zip(got["pools"], expected["pools"], strict=True):
        for key, value in theirs.items():
            if key == "residual":
                assert mine[key] == pytest.approx(value, rel=1e-12, abs=1e-15)
            else:
                assert mine[key] == value, (mine["name"], key)
    assert got["stable"] == expected["stable"] and got["nonzeros"] == expected["nonzeros"]


def test_the_l2s_estimate_on_a_sharded_model_obeys_the_hessian_bounds(
    fsdp: dict[Any, Any],
) -> None:
    """f = mean((X w + b - t)^2) has the constant Hessian H = 2/n [X 1]^T [X 1], so every
    sampled ratio ||H d|| / ||d|| lies in [lambda_min(H), lambda_max(H)]; every rank gets the
    same estimate, and an init_fn is refused on DTensors."""
    X, _ = _regression()
    A = torch.cat([X, torch.ones(len(X), 1, dtype=F64)], dim=1)
    eigenvalues = torch.linalg.eigvalsh(2 * A.T @ A / len(X))
    ratios = fsdp["estimate"]["ratios"]
    assert ratios.numel() == 30
    assert bool((ratios <= eigenvalues.max() * (1 + 1e-9)).all())
    assert bool((ratios >= eigenvalues.min() * (1 - 1e-9)).all())
    first, second = fsdp["estimate"]["by rank"]
    assert first == second == float(ratios.max())
    assert "no budget=, no init_fn=" in fsdp["estimate refused"]


def test_a_distributed_checkpoint_resumes_equal(fsdp: dict[Any, Any]) -> None:
    assert torch.equal(fsdp["resume"]["resumed"], fsdp["resume"]["uninterrupted"])


# --- the selection itself: several slices per rank, ties, both algorithms -----------------

SIZES = (300, 1, 0, 450, 249)  # the pool's tensors; each is split between the 2 ranks
SEG_BUDGETS = (0, 1, 5, 250, 500, 999, 1000)


def _segment_vectors() -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(5)
    return {
        "normal": torch.randn(sum(SIZES), generator=gen, dtype=F64),
        "ties": torch.randint(-2, 3, (sum(SIZES),), generator=gen).to(F64),  # zeros and ties
    }


def _slices(rank: int) -> list[tuple[int, int]]:
    """(start, stop) of this rank's slice of every tensor: rows split as torch.chunk does."""
    spans, base = [], 0
    for n in SIZES:
        half = (n + 1) // 2
        start, stop = (base, base + half) if rank == 0 else (base + half, base + n)
        spans.append((start, stop))
        base += n
    return spans


def _segments_worker(rank: int, tmp: str) -> None:
    from iht.distributed import sharded_threshold_masks

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),
    )  # fmt: skip
    out = {}
    spans = _slices(rank)[::-1]  # in any order
    for name, x in _segment_vectors().items():
        for s in SEG_BUDGETS:
            for method in ("candidates", "count"):
                masks = sharded_threshold_masks(
                    [(x[a:b], a) for a, b in spans],
                    s,
                    method=method,  # type: ignore[arg-type]
                )
                out[name, s, method] = [(a, b, m) for (a, b), m in zip(spans, masks, strict=True)]
    torch.save(out, f"{tmp}/segments{rank}.pt")
    dist.destroy_process_group()


def test_sharded_selection_over_several_slices_per_rank_equals_h_s(tmp_path: Path) -> None:
    _launch(_segments_worker, tmp_path)
    got = [torch.load(tmp_path / f"segments{rank}.pt") for rank in range(WORLD)]
    for name, x in _segment_vectors().items():
        for s in SEG_BUDGETS:
            expected = iht.threshold_mask(x, s)
            for method in ("candidates", "count"):
                whole = torch.zeros_like(expected)
                for rank in range(WORLD):
                    for a, b, mask in got[rank][name, s, method]:
                        whole[a:b] = mask
                assert torch.equal(whole, expected), (name, s, method)
