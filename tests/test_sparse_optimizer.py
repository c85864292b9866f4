"""IHT over any torch optimizer: equal to IHT on plain SGD, no regrowth through momentum,
bit-exact resume in a new process, LR schedulers, the compiled kernel, the budget every step."""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import iht
from iht.errors import InvalidTypeError, InvalidValueError, NonFiniteError
from iht.schedules import ACDC, Constant, Cubic, DenseWarmup

F64 = torch.float64


def _mlp(seed: int = 0, widths: tuple[int, ...] = (5, 8, 3)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(F64)


def _data(seed: int = 1, n: int = 40, d: int = 5) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=F64)
    return X, (X @ torch.randn(d, 3, generator=gen, dtype=F64)).argmax(dim=1)


def _train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    *,
    after: Callable[[], None] = lambda: None,
) -> None:
    X, y = _data()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
        after()


def _nonzeros(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("per_group", [False, True])
def test_wrapped_plain_sgd_is_iht_exactly(every: int, per_group: bool) -> None:
    a, b = _mlp(), _mlp()
    if per_group:
        groups_a = [
            {"params": a[0].parameters(), "sparsity": 12},
            {"params": a[2].parameters(), "sparsity": 9},
        ]
        groups_b = [
            {"params": b[0].parameters(), "sparsity": 12},
            {"params": b[2].parameters(), "sparsity": 9},
        ]
        reference = iht.IHT(groups_a, lr=0.3, threshold_every=every, kernel="torch")
        wrapped = iht.SparseOptimizer(
            torch.optim.SGD(groups_b, lr=0.3), sparsity=None, threshold_every=every, kernel="torch"
        )
    else:
        reference = iht.IHT(
            a.parameters(), lr=0.3, sparsity=20, threshold_every=every, kernel="torch"
        )
        wrapped = iht.SparseOptimizer(
            torch.optim.SGD(b.parameters(), lr=0.3),
            sparsity=20,
            threshold_every=every,
            kernel="torch",
        )
    _train(a, reference, 25)
    _train(b, wrapped, 25)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    assert _nonzeros(b) <= 21


def test_the_budget_holds_after_every_step_with_momentum_and_adam() -> None:
    for make in (
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
        lambda ps: torch.optim.Adam(ps, lr=0.05),
        lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1),
    ):
        model = _mlp()
        opt = iht.SparseOptimizer(make(model.parameters()), sparsity=15)
        _train(model, opt, 30, after=lambda: None)
        assert _nonzeros(model) <= 15


@pytest.mark.parametrize("base", ["momentum", "adamw"])
def test_pruned_weights_never_return_through_momentum_alone(base: str) -> None:
    """Coordinate 3 gets one gradient push (a velocity) and is pruned in the same step; from
    then on no coordinate has a gradient and weight decay shrinks the kept ones. With the
    base optimizer's state zeroed off the support it stays pruned; kept, momentum alone
    brings it back."""
    returned = {}
    for policy in ("zero", "keep"):
        w = nn.Parameter(torch.tensor([1.0, 1.0, 1.0, 0.3], dtype=F64))
        if base == "momentum":
            inner: torch.optim.Optimizer = torch.optim.SGD(
                [w], lr=0.1, momentum=0.9, weight_decay=0.5
            )
        else:
            inner = torch.optim.AdamW([w], lr=0.1, weight_decay=2.0)
        opt = iht.SparseOptimizer(inner, sparsity=3, state=policy)
        values = []
        for step in range(40):
            opt.zero_grad()
            push = 3.0 if step == 0 else 0.0
            (push * w[3] + 0.0 * w.sum()).backward()
            opt.step()
            assert int((w != 0).sum()) <= 3
            values.append(float(w[3].detach()))
            if policy == "zero":
                for name, value in inner.state[w].items():
                    if name != "step":
                        assert value[3] == 0, name
        assert values[0] == 0.0  # pruned in the step of its push
        returned[policy] = any(v != 0 for v in values[1:])
    assert returned == {"zero": False, "keep": True}


_RESUME = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    import iht
    sys.path.insert(0, {tests!r})
    from test_sparse_optimizer import _make_run
    model, opt, train = _make_run({kind!r})
    saved = torch.load({path!r}, weights_only=False)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    train(model, opt, 15)
    torch.save([p.detach() for p in model.parameters()], {out!r})
    """
)


def _make_run(kind: str = "adamw") -> tuple[nn.Module, iht.SparseOptimizer, Callable[..., None]]:
    """AdamW + H_s, or (``momentum-fisher``) SGD momentum + the Fisher selection, whose running
    mean of squared gradients is the wrapper's own state."""
    model = _mlp(seed=3)
    if kind == "adamw":
        base: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=0.02, weight_decay=0.01
        )
    else:
        base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt = iht.SparseOptimizer(
        base,
        sparsity=14,
        threshold_every=2,
        schedule=Cubic(2, 12, 0.9),
        selection="magnitude" if kind == "adamw" else "fisher",
    )
    return model, opt, lambda m, o, steps: _train(m, o, steps)


@pytest.mark.parametrize("kind", ["adamw", "momentum-fisher"])
def test_resume_in_a_new_process_equals_an_uninterrupted_run(tmp_path: Path, kind: str) -> None:
    model, opt, train = _make_run(kind)
    train(model, opt, 25)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    model, opt, train = _make_run(kind)
    train(model, opt, 10)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    code = _RESUME.format(
        kind=kind,
        tests=str(Path(__file__).parent),
        path=str(tmp_path / "ckpt.pt"),
        out=str(tmp_path / "out.pt"),
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = torch.load(tmp_path / "out.pt")
    for a, b in zip(uninterrupted, resumed, strict=True):
        assert torch.equal(a, b)


def test_state_dict_round_trips_bit_exactly() -> None:
    model, opt, train = _make_run()
    train(model, opt, 7)
    saved = copy.deepcopy(opt.state_dict())  # torch's state dicts hold the live tensors
    fresh_model, fresh, _ = _make_run()
    fresh_model.load_state_dict(model.state_dict())
    fresh.load_state_dict(saved)
    assert fresh.steps_taken == 7 and fresh.pool_states.keys() == opt.pool_states.keys()
    for key, state in opt.pool_states.items():
        assert torch.equal(fresh.pool_states[key].mask, state.mask)  # type: ignore[arg-type]
        assert fresh.pool_states[key].step == state.step
    train(model, opt, 5)
    train(fresh_model, fresh, 5)
    for p, q in zip(model.parameters(), fresh_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_one_cycle_lr_cycles_momentum_on_the_wrapper() -> None:
    model = _mlp()
    opt = iht.SparseOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), sparsity=15
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=20)
    lrs, momenta = [], []

    def after() -> None:
        scheduler.step()
        lrs.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0]["momentum"])
        assert _nonzeros(model) <= 15

    _train(model, opt, 19, after=after)
    assert max(lrs) == pytest.approx(0.5, rel=0.05) and min(momenta) < 0.9
    assert opt.optimizer.param_groups[0]["lr"] == lrs[-1]  # one set of groups, shared


@pytest.mark.parametrize("base", ["momentum", "adam"])
def test_the_compiled_projection_equals_the_torch_one(base: str) -> None:
    # SGD's one buffer takes the single-tensor zeroing pass, Adam's two moments the paired one.
    def make(params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
        if base == "adam":
            return torch.optim.Adam(params, lr=1e-2)
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)

    models = [_mlp(widths=(40, 400, 200, 3)) for _ in range(2)]
    opts = [
        iht.SparseOptimizer(make(m.parameters()), sparsity=3000, kernel=k)
        for m, k in zip(models, ("compiled", "torch"), strict=True)
    ]
    X = torch.randn(64, 40, dtype=F64, generator=torch.Generator().manual_seed(2))
    y = torch.arange(64) % 3
    for _ in range(10):
        for m, o in zip(models, opts, strict=True):
            o.zero_grad()
            nn.functional.cross_entropy(m(X), y).backward()
            o.step()
        for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
        assert torch.equal(opts[0].pool_states["global"].mask, opts[1].pool_states["global"].mask)  # type: ignore[arg-type]
        for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
            for name, value in opts[0].optimizer.state[p].items():
                torch.testing.assert_close(
                    value, opts[1].optimizer.state[q][name], rtol=0, atol=1e-12
                )
    assert opts[0].pool_states["global"].threshold is not None  # the compiled path ran


@pytest.mark.parametrize(
    "schedule",
    [Constant(), DenseWarmup(5), Cubic(3, 15), Cubic(0, 10, initial_density=0.6), ACDC(4, 3, 16)],
    ids=repr,
)
def test_every_schedule_holds_its_budget_at_every_step(schedule: iht.schedules.Schedule) -> None:
    model = _mlp()
    size = sum(p.numel() for p in model.parameters())
    opt = iht.SparseOptimizer(
        torch.optim.Adam(model.parameters(), lr=0.05), sparsity=12, schedule=schedule
    )
    seen = []

    def after() -> None:
        budget = schedule.budget(opt.steps_taken - 1, 12, size)
        count = _nonzeros(model)
        if budget is not None:
            assert count <= budget
        seen.append((budget, count))

    _train(model, opt, 24, after=after)
    assert seen[-1][0] == 12 and seen[-1][1] <= 12  # every schedule ends at s
    assert all(b == 12 for b, _ in seen[-4:])


def test_cubic_schedule_values() -> None:
    cubic = Cubic(10, 20)
    assert cubic.budget(0, 10, 100) is None and cubic.budget(9, 10, 100) is None
    assert cubic.budget(10, 10, 100) == 100 and cubic.budget(20, 10, 100) == 10
    # halfway: d = 0.1 + 0.9 * 0.5 ** 3
    assert cubic.budget(15, 10, 100) == round(100 * (0.1 + 0.9 * 0.125))
    budgets = [cubic.budget(t, 10, 100) for t in range(10, 25)]
    assert budgets == sorted(budgets, reverse=True)  # never grows back
    acdc = ACDC(warmup=2, phase=3, final=11)
    assert [acdc.budget(t, 5, 50) for t in range(13)] == [
        None,
        None,
        5,
        5,
        5,
        None,
        None,
        None,
        5,
        5,
        5,
        5,
        5,
    ]


def test_a_dense_phase_then_sparse_reselects() -> None:
    model = _mlp()
    opt = iht.SparseOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.2),
        sparsity=10,
        schedule=ACDC(0, 2, 8),
        threshold_every=100,
    )
    masks, counts = [], []

    def after() -> None:
        state = opt.pool_states["global"]
        masks.append(None if state.mask is None else state.mask.clone())
        counts.append(_nonzeros(model))

    _train(model, opt, 10, after=after)
    assert masks[2] is None and masks[3] is None and counts[3] > 10  # the dense phase
    # Sparse again: a new selection (threshold_every=100 would otherwise keep an old mask);
    # the pool counts its 6 projected steps (0, 1, 4, 5, 8, 9).
    assert masks[4] is not None and counts[4] <= 10 and opt.pool_states["global"].step == 6


def test_bad_arguments_and_non_finite_gradients() -> None:
    model = _mlp()
    with pytest.raises(InvalidTypeError, match="plain torch optimizer"):
        iht.SparseOptimizer(iht.IHT(model.parameters(), lr=0.1, sparsity=3), sparsity=3)
    with pytest.raises(InvalidTypeError, match=r"torch\.optim\.Optimizer"):
        iht.SparseOptimizer(object(), sparsity=3)  # type: ignore[arg-type]
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(InvalidValueError, match=r"sparsity must be in 0\.\.75"):
        iht.SparseOptimizer(base, sparsity=76)
    with pytest.raises(InvalidValueError, match="state must be one of zero, keep"):
        iht.SparseOptimizer(base, sparsity=3, state="reset")
    opt = iht.SparseOptimizer(base, sparsity=10)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    next(iter(model.parameters())).grad[0, 0] = float("nan")  # type: ignore[index]
    with pytest.raises(NonFiniteError, match="non-finite gradient"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(InvalidValueError, match="not a SparseOptimizer state dict"):
        opt.load_state_dict(base.state_dict())
