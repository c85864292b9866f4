"""The compiled two-pass IHT step against the torch reference (H_s of the concatenated update).

Values are small dyadic rationals (k / 4) and steps powers of two, so theta - lr * grad is exact
in every precision and in both implementations: results must agree bit for bit, ties included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import iht
from iht._kernels import iht_step as compiled_step

DTYPES = [torch.float32, torch.float64]


def _dyadic(
    shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, top: int = 8
) -> Tensor:
    return (torch.randint(-top, top + 1, shape, generator=gen) / 4).to(dtype)


def _pool(
    sizes: list[int], seed: int, dtype: torch.dtype, top: int = 8
) -> tuple[list[Tensor], list[float]]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for n in sizes:
        p = _dyadic((n,), gen, dtype, top)
        p.grad = _dyadic((n,), gen, dtype, top)
        params.append(p)
    lrs = [0.5 if k % 2 else 0.25 for k in range(len(sizes))]
    return params, lrs


def _grads(params: list[Tensor]) -> list[Tensor | None]:
    return [p.grad for p in params]


def _expected(params: list[Tensor], lrs: list[float], s: int) -> tuple[Tensor, Tensor]:
    x = torch.cat([(p - lr * p.grad).reshape(-1) for p, lr in zip(params, lrs, strict=True)])  # type: ignore[operator]
    return iht.hard_threshold(x, s), iht.threshold_mask(x, s)


def _run(
    params: list[Tensor], lrs: list[float], s: int, previous: float | None, width: float
) -> tuple[Tensor, Tensor, compiled_step.Plan]:
    plan = compiled_step.plan_step(params, _grads(params), lrs, s, previous=previous, width=width)
    assert plan is not None
    keep = compiled_step.write_step_(params, _grads(params), lrs, plan)
    return torch.cat([p.reshape(-1) for p in params]), keep, plan


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(DTYPES),
    top=st.sampled_from([1, 2, 8, 1000]),
    budget_fraction=st.floats(0.0, 1.0),
    previous=st.one_of(st.none(), st.floats(1e-3, 300.0)),
    width=st.floats(2.0**-24, 0.5),
)
def test_equals_hard_threshold_of_the_update(
    sizes: list[int],
    seed: int,
    dtype: torch.dtype,
    top: int,
    budget_fraction: float,
    previous: float | None,
    width: float,
) -> None:
    params, lrs = _pool(sizes, seed, dtype, top)
    size = sum(sizes)
    if size < 2:
        return
    s = min(size - 1, max(1, round(budget_fraction * size)))
    want, want_mask = _expected(params, lrs, s)
    got, keep, plan = _run(params, lrs, s, previous, width)
    assert torch.equal(got, want)
    assert torch.equal(keep, want_mask)  # ties (zeros included) to the smaller flat index
    assert int(keep.sum()) == s
    assert plan.nonfinite == 0 and 0 < plan.width <= 0.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_brackets_warm_then_sample_then_histogram(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(50_000, generator=gen, dtype=dtype)
    theta.grad = torch.randn(50_000, generator=gen, dtype=dtype)
    s = 5_000
    x = theta - 1e-3 * theta.grad
    exact = float(x.abs().topk(s).values.min())
    first = compiled_step.plan_step([theta], [theta.grad], [1e-3], s)  # no previous t: the sample
    assert first is not None and first.bracket == "sample" and first.threshold == exact
    warm = compiled_step.plan_step(
        [theta], [theta.grad], [1e-3], s, previous=exact * 1.001, width=0.005
    )
    assert warm is not None and warm.bracket == "warm" and warm.threshold == exact
    missed = compiled_step.plan_step(
        [theta], [theta.grad], [1e-3], s, previous=exact * 3, width=0.01
    )
    assert missed is not None and missed.bracket == "sample" and missed.threshold == exact
    assert missed.width >= 4 * 0.01  # widened after the miss
    wide = compiled_step.plan_step([theta], [theta.grad], [1e-3], s, previous=exact, width=0.2)
    assert wide is not None and wide.bracket == "sample"  # too wide to be worth it
    # A sample that misses t leaves the histogram to decide.
    far = np.linspace(50.0, 60.0, 9).astype(x.numpy().dtype)  # |x| never gets there
    monkeypatch.setattr(compiled_step, "_sample_edges", lambda *args: far)
    last = compiled_step.plan_step([theta], [theta.grad], [1e-3], s)
    assert last is not None and last.bracket == "histogram" and last.threshold == exact


def _mlp(dtype: torch.dtype, seed: int, width: int = 40) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, 3)).to(dtype)


@pytest.mark.parametrize("every", [1, 3])
def test_optimizer_compiled_equals_torch_in_float64(every: int) -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=gen)
    models = [_mlp(torch.float64, 0), _mlp(torch.float64, 0)]
    opts = [
        iht.IHT(m.parameters(), lr=0.3, sparsity=60, threshold_every=every, kernel=k)
        for m, k in zip(models, ["compiled", "torch"], strict=True)
    ]
    for _ in range(25):
        for model, opt in zip(models, opts, strict=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        first = [p.detach() for p in models[0].parameters()]
        second = [p.detach() for p in models[1].parameters()]
        for a, b in zip(first, second, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        masks = [opt.pool_states["global"].mask for opt in opts]
        assert torch.equal(masks[0], masks[1])
        assert sum(int((p != 0).sum()) for p in first) <= 60
    assert opts[0].pool_states["global"].threshold is not None


def test_auto_takes_the_compiled_step_for_large_pools_only() -> None:
    small, large = _mlp(torch.float32, 1, width=8), _mlp(torch.float32, 1, width=7000)
    for model, compiled in ((small, False), (large, True)):
        size = sum(p.numel() for p in model.parameters())
        assert (size >= iht.optim.COMPILED_MIN_SIZE) is compiled
        opt = iht.IHT(model.parameters(), lr=0.1, sparsity=size // 10)
        nn.functional.cross_entropy(model(torch.randn(4, 6)), torch.tensor([0, 1, 2, 0])).backward()
        opt.step()
        assert (opt.pool_states["global"].threshold is not None) is compiled
        assert sum(int((p != 0).sum()) for p in model.parameters()) <= size // 10


def test_optimizer_same_bits_as_torch_with_dyadic_values() -> None:
    """float32, per-group budgets and global pool, exact arithmetic: identical tensors."""
    results = []
    for kernel in ("compiled", "torch"):
        params, _ = _pool([300, 41, 7, 500], seed=11, dtype=torch.float32, top=3)
        groups = [
            {"params": params[:2], "sparsity": 50},
            {"params": params[2:], "lr": 0.5},
        ]
        opt = iht.IHT(groups, lr=0.25, sparsity=100, kernel=kernel)
        for step in range(4):
            opt.step()
            gen = torch.Generator().manual_seed(step)
            for p in params:
                p.grad = _dyadic(tuple(p.shape), gen, torch.float32, 3)
        results.append(torch.cat([p.reshape(-1) for p in params]))
        assert sum(int((p != 0).sum()) for p in params[:2]) <= 50
        assert sum(int((p != 0).sum()) for p in params[2:]) <= 100
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_update_changes_nothing(every: int, bad: float) -> None:
    params, _ = _pool([400, 300], seed=2, dtype=torch.float32)
    opt = iht.IHT(params, lr=0.5, sparsity=100, threshold_every=every, kernel="compiled")
    opt.step()  # the first step selects; with every = 2 the second applies the stored mask
    params[1].grad[7] = bad  # type: ignore[index]
    before = [p.clone() for p in params]
    with pytest.raises(iht.NonFiniteError, match="non-finite gradient"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))


def test_overflowing_update_changes_nothing() -> None:
    params, _ = _pool([400], seed=2, dtype=torch.float32)
    params[0].data[3] = 3e38
    params[0].grad[3] = -3e38  # type: ignore[index]
    before = params[0].clone()
    opt = iht.IHT(params, lr=1.0, sparsity=10, kernel="compiled")
    with pytest.raises(iht.NonFiniteError, match="overflows"):
        opt.step()
    assert torch.equal(before, params[0])


def test_a_mass_of_ties_takes_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled_step, "MAX_CANDIDATES", 16)
    results = []
    for kernel in ("compiled", "torch"):
        params, _ = _pool([200, 200], seed=4, dtype=torch.float64, top=1)
        opt = iht.IHT(params, lr=0.5, sparsity=150, kernel=kernel)
        opt.step()
        results.append((torch.cat([p.reshape(-1) for p in params]), opt.pool_states["global"].mask))
    tied, tied_lrs = _pool([200, 200], 4, torch.float64, 1)
    assert compiled_step.plan_step(tied, _grads(tied), tied_lrs, 150) is None
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_ineligible_pools() -> None:
    p = torch.zeros(4, 4)
    assert compiled_step.eligible([p], _grads([p]))  # no gradient: read as it is (x = theta)
    p.grad = torch.zeros(4, 4)
    assert compiled_step.eligible([p], _grads([p]))
    assert not compiled_step.eligible([p.t()], _grads([p.t()]))  # not contiguous
    p.grad = torch.zeros(4, 4).t()
    assert not compiled_step.eligible([p], _grads([p]))  # a gradient that is not contiguous
    p.grad = torch.zeros(4, 4)
    q = torch.zeros(3, dtype=torch.float64)
    q.grad = torch.zeros(3, dtype=torch.float64)
    assert not compiled_step.eligible([p, q], _grads([p, q]))  # mixed dtypes
    h = torch.zeros(3, dtype=torch.float16)
    h.grad = torch.zeros(3, dtype=torch.float16)
    assert not compiled_step.eligible([h], _grads([h]))


def test_bad_kernel_is_refused() -> None:
    with pytest.raises(
        ValueError, match="kernel must be one of auto, compiled, torch, got 'numba'"
    ):
        iht.IHT(nn.Linear(2, 1).parameters(), lr=0.1, sparsity=1, kernel="numba")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("values", ["normal", "ties", "tiny"])
def test_kth_largest_magnitude_equals_topk(dtype: torch.dtype, values: str) -> None:
    gen = torch.Generator().manual_seed(8)
    n = 300_001
    if values == "normal":
        x = torch.randn(n, generator=gen, dtype=dtype)
    elif values == "ties":
        x = torch.randint(-40, 41, (n,), generator=gen).to(dtype)
    else:  # subnormal and zero magnitudes share the lowest histogram bins
        x = torch.randint(-3, 4, (n,), generator=gen).to(dtype) * torch.finfo(dtype).tiny / 8
    for s in (1, 7, n // 10, n // 2, n - 1):
        t = compiled_step.kth_largest_magnitude(x, s)
        assert t is not None
        assert t == float(x.abs().topk(s).values.min())


def test_kth_largest_magnitude_declines_infinities() -> None:
    x = torch.randn(5000)
    x[10] = float("inf")
    assert compiled_step.kth_largest_magnitude(x, 100) is None
    long = torch.randn(iht.threshold.SAMPLING_THRESHOLD)
    long[3] = -float("inf")
    assert torch.equal(iht.threshold_mask(long, 100), iht.threshold_mask(long.double(), 100))
    assert bool(iht.hard_threshold(long, 1)[3] == -float("inf"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("values", ["normal", "ties", "bimodal"])
def test_fine_sample_bracket_on_a_large_pool(
    dtype: torch.dtype, values: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pools from FINE_MIN_SIZE entries split the sampled bracket into 8: same exact result."""
    monkeypatch.setattr(compiled_step, "FINE_MIN_SIZE", 1000)
    gen = torch.Generator().manual_seed(6)
    params, _ = _pool([3000, 50, 7000], seed=6, dtype=dtype, top=40)
    if values == "normal":
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))
    elif values == "bimodal":  # kept weights and tiny new candidates, as in IHT with mini-batches
        for p in params:
            p.mul_(torch.rand(p.shape, generator=gen, dtype=dtype) < 0.1)
            p.grad.mul_(1e-3)  # type: ignore[union-attr]
    lrs = [0.5, 0.25, 0.5]
    for s in (1, 17, 1000, 5025, 10049):
        trial = [p.clone() for p in params]
        for t, p in zip(trial, params, strict=True):
            t.grad = p.grad
        want, want_mask = _expected(trial, lrs, s)
        got, keep, plan = _run(trial, lrs, s, None, 0.01)
        assert plan.bracket == "sample" or values == "ties"  # ties may need the histogram
        assert torch.equal(got, want) and torch.equal(keep, want_mask)


def test_switching_between_compiled_and_torch_steps_keeps_the_support_right() -> None:
    """A pool can change path between steps (here: a gradient that is not contiguous)."""
    results = []
    for switch in (True, False):
        params, _ = _pool([300, 200], seed=9, dtype=torch.float64, top=5)
        opt = iht.IHT(params, lr=0.5, sparsity=120, threshold_every=2, kernel="compiled")
        for step in range(12):
            gen = torch.Generator().manual_seed(100 + step)
            for p in params:
                g = _dyadic((p.numel(), 2), gen, torch.float64, 5)[:, 0]
                p.grad = g if switch and step % 3 == 1 else g.contiguous()
            opt.step()
            assert sum(int((p != 0).sum()) for p in params) <= 120
        results.append(torch.cat([p.reshape(-1) for p in params]))
    assert torch.equal(results[0], results[1])


def test_kernels_follow_torch_thread_count_and_restore_numba_setting() -> None:
    import numba

    before_numba, before_torch = numba.get_num_threads(), torch.get_num_threads()
    results = []
    try:
        for threads in (1, before_torch):
            torch.set_num_threads(threads)
            params, lrs = _pool([5000, 3000], seed=12, dtype=torch.float32)
            want, _ = _expected(params, lrs, 800)
            got, _, _ = _run(params, lrs, 800, None, 0.01)
            assert torch.equal(got, want)
            assert numba.get_num_threads() == before_numba
            results.append(got)
    finally:
        torch.set_num_threads(before_torch)
    assert torch.equal(results[0], results[1])


def test_autograd_sees_the_in_place_write() -> None:
    """As after torch.optim.SGD: a backward through a graph that saved the old values fails."""
    w = nn.Parameter(torch.randn(300, 300))
    loss = w.pow(2).sum()  # saves w for the backward
    w.grad = torch.randn(300, 300)
    iht.IHT([w], lr=0.1, sparsity=1000, kernel="compiled").step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 400), min_size=2, max_size=4),
    seed=st.integers(0, 2**31 - 1),
    every=st.integers(1, 3),
    steps=st.integers(1, 5),
    own_fraction=st.floats(0.05, 0.95),
    global_fraction=st.floats(0.05, 0.95),
    dtype=st.sampled_from(DTYPES),
)
def test_optimizer_compiled_equals_torch_property(
    sizes: list[int],
    seed: int,
    every: int,
    steps: int,
    own_fraction: float,
    global_fraction: float,
    dtype: torch.dtype,
) -> None:
    """Any pools, budgets and re-selection period: the compiled step is the torch step, exactly."""
    first = sizes[0]
    rest = sum(sizes[1:])
    own = max(1, min(first - 1, round(own_fraction * first))) if first > 1 else None
    shared = max(1, min(rest - 1, round(global_fraction * rest))) if rest > 1 else None
    outcomes = []
    for kernel in ("compiled", "torch"):
        params, _ = _pool(sizes, seed, dtype, top=6)
        groups: list[dict[str, object]] = [{"params": params[1:]}]
        if own is not None:
            groups.append({"params": params[:1], "sparsity": own, "lr": 0.5})
        else:
            groups[0]["params"] = params
        opt = iht.IHT(groups, lr=0.25, sparsity=shared, threshold_every=every, kernel=kernel)
        for step in range(steps):
            opt.step()
            gen = torch.Generator().manual_seed(seed + step)
            for p in params:
                p.grad = _dyadic(tuple(p.shape), gen, dtype, 6)
        outcomes.append(torch.cat([p.reshape(-1) for p in params]))
    assert torch.equal(outcomes[0], outcomes[1])
