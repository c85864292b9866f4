"""IHT across 2 processes (gloo, CPU): DDP replicas agree, sharded H_s equals the single-process one.

Every test starts 2 worker processes (spawn; a FileStore in tmp_path, so no port is needed),
the workers compute and save what they saw, and the assertions run here against a
single-process computation. Collectives time out after 15 s and the launcher kills the workers
after 45 s, so a bug cannot hang the suite.
"""

from __future__ import annotations

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
from torch.nn.parallel import DistributedDataParallel

import iht
from iht import distributed
from iht.distributed import Method, replicas_agree, sharded_iht_step_, sharded_threshold_mask
from iht.threshold import flatten

WORLD = 2
F64 = torch.float64
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=15)
LAUNCH_TIMEOUT = 45.0

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


def _launch(worker: Callable[..., None], tmp_path: Path, *args: Any) -> None:
    """Run ``worker(rank, tmp_dir, *args)`` on WORLD spawned processes; fail on error or hang."""
    context = start_processes(
        worker, args=(str(tmp_path), *args), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not context.join(timeout=1.0):  # raises if a worker raised
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"distributed workers did not finish within {LAUNCH_TIMEOUT} s")


def _init(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)  # 2 workers on 2 busy cores
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/store",
        rank=rank,
        world_size=WORLD,
        timeout=COLLECTIVE_TIMEOUT,
    )


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- DDP

N_ROWS, N_STEPS, DDP_LR, DDP_BUDGET = 24, 10, 0.5, 20


def _ddp_problem() -> tuple[nn.Module, Tensor, Tensor]:
    """A 5 -> 7 -> 3 tanh MLP (P = 66) with a sparse start, and 24 labelled points."""
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(F64)
    gen = _gen(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=F64))
    iht.sparse_init_(model.parameters(), DDP_BUDGET, generator=gen)
    X = torch.randn(N_ROWS, 5, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (N_ROWS,), generator=gen)
    return model, X, y


def _ddp_worker(rank: int, tmp: str, kernel: str) -> None:
    _init(rank, tmp)
    model, X, y = _ddp_problem()
    shard = slice(rank * N_ROWS // WORLD, (rank + 1) * N_ROWS // WORLD)  # equal shards
    ddp = DistributedDataParallel(model)
    optimizer = iht.IHT(ddp.parameters(), lr=DDP_LR, sparsity=DDP_BUDGET, kernel=kernel)
    first = next(iter(model.parameters()))
    params, masks, agree = [], [], []
    for _ in range(N_STEPS):
        optimizer.zero_grad()
        nn.functional.cross_entropy(ddp(X[shard]), y[shard]).backward()
        optimizer.step()
        flat = flatten(p.detach() for p in model.parameters())
        mask = optimizer.pool_states["global"].mask
        flat_all = [torch.empty_like(flat) for _ in range(WORLD)]
        mask_all = [torch.empty_like(mask) for _ in range(WORLD)]
        dist.all_gather(flat_all, flat)
        dist.all_gather(mask_all, mask)
        params.append(torch.stack(flat_all))
        masks.append(torch.stack(mask_all))
        agree.append(replicas_agree(model.parameters()))
    # The check must also see the smallest difference: one ulp in one entry of one replica.
    with torch.no_grad():
        if rank == 1:
            entry = first.view(-1)[:1]
            entry.copy_(torch.nextafter(entry, torch.full_like(entry, float("inf"))))
    detects = not replicas_agree(model.parameters())
    if rank == 0:
        torch.save(
            {
                "params": torch.stack(params),
                "masks": torch.stack(masks),
                "agree": agree,
                "detects": detects,
            },
            f"{tmp}/ddp.pt",
        )
    # DDP's reducer sits in reference cycles; free it before its process group is destroyed,
    # or gloo's threads may abort the process at exit.
    del ddp, optimizer
    gc.collect()
    dist.destroy_process_group()


def _single_process_run(kernel: str) -> tuple[Tensor, Tensor]:
    model, X, y = _ddp_problem()
    optimizer = iht.IHT(model.parameters(), lr=DDP_LR, sparsity=DDP_BUDGET, kernel=kernel)
    params, masks = [], []
    for _ in range(N_STEPS):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()  # the full batch
        optimizer.step()
        params.append(flatten(p.detach() for p in model.parameters()))
        masks.append(optimizer.pool_states["global"].mask.clone())
    return torch.stack(params), torch.stack(masks)


# "compiled": the compiled step (iht._kernels.iht_step) must be as deterministic across replicas.
@pytest.mark.parametrize("kernel", ["torch", "compiled"])
def test_ddp_ranks_hold_one_mask_and_match_the_full_batch_run(tmp_path: Path, kernel: str) -> None:
    _launch(_ddp_worker, tmp_path, kernel)
    out = torch.load(tmp_path / "ddp.pt")
    params, masks = out["params"], out["masks"]  # (steps, world, P)
    assert params.shape == (N_STEPS, WORLD, 66)
    # Bit-identical replicas after every step.
    assert torch.equal(params[:, 0], params[:, 1])
    assert torch.equal(masks[:, 0], masks[:, 1])
    assert out["agree"] == [True] * N_STEPS
    assert out["detects"]
    # Mean of equal-size shard means = the full-batch mean: the single-process trajectory.
    ref_params, ref_masks = _single_process_run(kernel)
    assert torch.equal(masks[:, 0], ref_masks)
    torch.testing.assert_close(params[:, 0], ref_params, rtol=0, atol=1e-10)
    assert ((params[:, 0] != 0).sum(dim=1) <= DDP_BUDGET).all()
    assert (masks.sum(dim=-1) == DDP_BUDGET).all()
    # Training moved the support at least once, so the masks were really compared.
    assert not torch.equal(masks[0, 0], masks[-1, 0])


# --------------------------------------------------------------------------- sharded H_s

P = 1000
BUDGETS = (0, 1, 2, 7, 100, 403, 404, 597, 998, 999, 1000)
METHODS: tuple[Method, ...] = ("candidates", "count", "auto")
# (start, stop) of each rank's slice of the flat vector: uneven, reversed, one rank empty.
SPLITS = (((0, 403), (403, 1000)), ((597, 1000), (0, 597)), ((0, 0), (0, 1000)))


def _vectors() -> dict[str, Tensor]:
    gen = _gen(1)
    return {
        "normal64": torch.randn(P, generator=gen, dtype=F64),
        "ties32": torch.randint(-2, 3, (P,), generator=gen).to(torch.float32),
        "half16": torch.randn(P, generator=gen).to(torch.float16),  # many exact repeats
        "bf16": torch.randn(P, generator=gen).to(torch.bfloat16),  # even more
        "zeros": torch.zeros(P, dtype=F64),
        "sparse_inf": torch.where(
            torch.rand(P, generator=gen) < 0.05,
            torch.tensor([1.0, -float("inf")], dtype=F64)[torch.randint(0, 2, (P,), generator=gen)],
            torch.zeros((), dtype=F64),
        ),
    }


LS_ROWS, LS_STEPS, LS_BUDGET = 60, 5, 50


def _least_squares() -> tuple[Tensor, Tensor, Tensor, float]:
    gen = _gen(2)
    A = torch.randn(LS_ROWS, P, generator=gen, dtype=F64)
    b = torch.randn(LS_ROWS, generator=gen, dtype=F64)
    theta = iht.hard_threshold(0.01 * torch.randn(P, generator=gen, dtype=F64), LS_BUDGET)
    lr = LS_ROWS / float(torch.linalg.matrix_norm(A, ord=2)) ** 2  # 1 / L of f below
    return A, b, theta, lr


def _ls_grad(A: Tensor, b: Tensor, theta: Tensor) -> Tensor:
    """Gradient of f(theta) = ||A theta - b||^2 / (2 n)."""
    return A.T @ (A @ theta - b) / LS_ROWS


def _outcome(fn: Callable[[], object]) -> tuple[str, str]:
    try:
        fn()
    except Exception as error:  # the test compares what each rank raised
        return type(error).__name__, str(error)
    return "ok", ""


def _sharded_worker(rank: int, tmp: str) -> None:
    _init(rank, tmp)
    # So that "auto" takes both paths here: candidates for s <= 250, the count search above.
    distributed.CANDIDATE_LIMIT = 500
    results: dict[str, Any] = {"masks": {}, "ls": {}, "errors": {}}
    for name, x in _vectors().items():
        for split_id, split in enumerate(SPLITS):
            start, stop = split[rank]
            for s in BUDGETS:
                for method in METHODS:
                    results["masks"][name, split_id, s, method] = sharded_threshold_mask(
                        x[start:stop], s, offset=start, method=method
                    )

    A, b, theta0, lr = _least_squares()
    start, stop = SPLITS[0][rank]
    ls_methods: tuple[Method, ...] = ("candidates", "count")
    for method in ls_methods:
        theta = theta0[start:stop].clone()
        trajectory = []
        for _ in range(LS_STEPS):
            # Model parallel: A theta is the sum of every shard's A[:, shard] theta[shard].
            prediction = A[:, start:stop] @ theta
            dist.all_reduce(prediction)
            grad = A[:, start:stop].T @ (prediction - b) / LS_ROWS
            sharded_iht_step_(theta, grad, lr=lr, sparsity=LS_BUDGET, offset=start, method=method)
            trajectory.append(theta.clone())
        results["ls"][method] = torch.stack(trajectory)

    # Bad input on one rank must raise the same error on every rank, never hang.
    local = torch.randn(500, generator=_gen(3), dtype=F64)
    offset = 500 * rank
    errors = results["errors"]
    errors["s differs"] = _outcome(lambda: sharded_threshold_mask(local, 3 + rank, offset=offset))
    errors["overlap"] = _outcome(lambda: sharded_threshold_mask(local, 3, offset=0))
    errors["gap"] = _outcome(lambda: sharded_threshold_mask(local, 3, offset=600 * rank))
    errors["s > P"] = _outcome(lambda: sharded_threshold_mask(local, 1001, offset=offset))
    errors["s float"] = _outcome(lambda: sharded_threshold_mask(local, 3.0, offset=offset))  # type: ignore[arg-type]
    nan = local.clone()
    if rank == 1:
        nan[7] = float("nan")
    errors["nan"] = _outcome(lambda: sharded_threshold_mask(nan, 3, offset=offset))
    errors["dtype"] = _outcome(
        lambda: sharded_threshold_mask(local.float() if rank else local, 3, offset=offset)
    )
    errors["2-D"] = _outcome(
        lambda: sharded_threshold_mask(local.reshape(2, 250) if rank else local, 3, offset=offset)
    )
    params = local.clone()
    grad = torch.zeros_like(local)
    if rank == 0:
        grad[3] = float("inf")
    errors["non-finite step"] = _outcome(
        lambda: sharded_iht_step_(params, grad, lr=0.1, sparsity=3, offset=offset)
    )
    results["untouched"] = torch.equal(params, local)
    # After all that, the group still works.
    results["after"] = sharded_threshold_mask(local, 3, offset=offset)
    dense = local.clone()
    sharded_iht_step_(dense, torch.ones_like(dense), lr=0.5, sparsity=None, offset=offset)
    results["dense"] = torch.equal(dense, local - 0.5)
    torch.save(results, f"{tmp}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each rank computed in one launch (masks, least-squares steps, errors)."""
    tmp_path = tmp_path_factory.mktemp("sharded")
    _launch(_sharded_worker, tmp_path)
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]


def test_sharded_mask_equals_threshold_mask_exactly(sharded: list[dict[str, Any]]) -> None:
    checked = 0
    for name, x in _vectors().items():
        for split_id, split in enumerate(SPLITS):
            order = sorted(range(WORLD), key=lambda rank: split[rank][0])
            for s in BUDGETS:
                expected = iht.threshold_mask(x, s)
                for method in METHODS:
                    key = (name, split_id, s, method)
                    parts = [sharded[rank]["masks"][key] for rank in order]
                    for rank in range(WORLD):
                        start, stop = split[rank]
                        assert sharded[rank]["masks"][key].shape == (stop - start,)
                    got = torch.cat(parts)
                    assert torch.equal(got, expected), key
                    checked += 1
    assert checked == 6 * len(SPLITS) * len(BUDGETS) * len(METHODS)


def test_sharded_iht_steps_equal_single_process_steps(sharded: list[dict[str, Any]]) -> None:
    A, b, theta, lr = _least_squares()
    start = theta != 0
    expected = []
    for _ in range(LS_STEPS):
        theta = iht.iht_update(theta, _ls_grad(A, b, theta), lr=lr, sparsity=LS_BUDGET)
        expected.append(theta)
    reference = torch.stack(expected)
    for method in ("candidates", "count"):
        got = torch.cat([sharded[rank]["ls"][method] for rank in range(WORLD)], dim=1)
        assert torch.equal(got != 0, reference != 0), method
        torch.testing.assert_close(got, reference, rtol=0, atol=1e-12)
    assert ((reference != 0).sum(dim=1) == LS_BUDGET).all()
    assert not torch.equal(start, reference[1] != 0)  # the support moved, twice
    assert not torch.equal(reference[0] != 0, reference[1] != 0)


EXPECTED_ERRORS = {
    "s differs": ("InvalidValueError", "same on every rank"),
    "overlap": ("InvalidValueError", "tile"),
    "gap": ("InvalidValueError", "tile"),
    "s > P": ("InvalidValueError", "0..1000"),
    "s float": ("InvalidTypeError", "integer"),
    "nan": ("InvalidValueError", "rank(s) [1] hold NaN"),
    "dtype": ("InvalidTypeError", "one dtype"),
    "2-D": ("InvalidValueError", "1-D"),
    "non-finite step": ("NonFiniteError", "rank(s) [0]"),
}


@pytest.mark.parametrize("case", sorted(EXPECTED_ERRORS))
def test_bad_input_on_one_rank_raises_on_every_rank(
    sharded: list[dict[str, Any]], case: str
) -> None:
    kind, fragment = EXPECTED_ERRORS[case]
    outcomes = [sharded[rank]["errors"][case] for rank in range(WORLD)]
    assert outcomes[0] == outcomes[1]  # the same error on both ranks
    assert outcomes[0][0] == kind
    assert fragment in outcomes[0][1]


def test_group_survives_errors_and_dense_step(sharded: list[dict[str, Any]]) -> None:
    assert all(result["untouched"] for result in sharded)  # a failed step changes nothing
    assert all(result["dense"] for result in sharded)
    local = [torch.randn(500, generator=_gen(3), dtype=F64)] * WORLD
    expected = iht.threshold_mask(torch.cat(local), 3)
    assert torch.equal(torch.cat([result["after"] for result in sharded]), expected)


def test_arguments_checked_before_communicating() -> None:
    x = torch.ones(3)
    with pytest.raises(ValueError, match="method"):
        sharded_threshold_mask(x, 1, offset=0, method="gather")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        sharded_iht_step_(x, x, lr=0.0, sparsity=1, offset=0)
    with pytest.raises(ValueError, match="shape"):
        sharded_iht_step_(x, torch.ones(4), lr=0.1, sparsity=1, offset=0)
