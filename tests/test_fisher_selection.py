"""The Fisher selection of :class:`iht.SparseOptimizer`: the projection in a diagonal norm is
exact (brute force over every support), it reuses Adam's second moment, keeps its own running
mean for other bases, drops entries without gradient signal first, holds the budget at every
step, honours minimums and ``threshold_every``, and resumes bit for bit."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch
from commands import compare_cli, one_thread, train_cli  # noqa: F401 (the fixture)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sparse_optimizer import _data, _mlp  # the same small MLP and data
from torch import Tensor, nn

import iht
from iht.errors import InvalidValueError
from iht.schedules import Cubic, DenseWarmup
from iht.sparse_optimizer import FISHER_BETA
from iht.threshold import weighted_top_s_mask

F64 = torch.float64


def _best_support_cost(z: Tensor, w: Tensor, s: int, sizes: list[int], minimum: list[int]) -> float:
    """min over supports S (|S| <= s, >= minimum[t] in segment t) of sum_{i not in S} w_i z_i^2."""
    n = z.numel()
    starts = [sum(sizes[:t]) for t in range(len(sizes))]
    best = float("inf")
    for k in range(s + 1):
        for support in itertools.combinations(range(n), k):
            if any(
                sum(a <= i < a + size for i in support) < min(m, size)
                for a, size, m in zip(starts, sizes, minimum, strict=True)
            ):
                continue
            kept = torch.zeros(n, dtype=torch.bool)
            kept[list(support)] = True
            best = min(best, float((w * z * z)[~kept].sum()))
    return best


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(-4, 4, allow_nan=False), min_size=1, max_size=7),
    st.lists(st.floats(0, 3, allow_nan=False), min_size=7, max_size=7),
    st.integers(0, 7),
    st.integers(1, 3),
    st.integers(0, 2),
)
def test_weighted_projection_equals_brute_force(
    values: list[float], weights: list[float], s: int, segments: int, m: int
) -> None:
    z = torch.tensor(values, dtype=F64)
    w = torch.tensor(weights[: len(values)], dtype=F64)
    n = z.numel()
    s = min(s, n)
    sizes = [n // segments + (1 if t < n % segments else 0) for t in range(segments)]
    sizes = [size for size in sizes if size] or [n]
    minimum = [m] * len(sizes)
    if sum(min(m, size) for size in sizes) > s:
        minimum = [0] * len(sizes)
    mask = weighted_top_s_mask(z, w, s, sizes=sizes, minimum=minimum)
    assert int(mask.sum()) == s
    cost = float((w * z * z)[~mask].sum())
    assert cost == pytest.approx(_best_support_cost(z, w, s, sizes, minimum), abs=1e-12)


def test_unit_weights_give_hard_thresholding() -> None:
    z = torch.tensor([0.5, -2.0, 1.0, 1.0, -0.1], dtype=F64)
    mask = weighted_top_s_mask(z, torch.ones_like(z), 2)
    assert torch.equal(mask, iht.threshold_mask(z, 2))


def test_an_entry_without_gradient_signal_goes_before_a_smaller_live_one() -> None:
    # Optimal Brain Damage's order: a large weight with F = 0 costs nothing to remove.
    z = torch.tensor([5.0, 0.1, 0.2], dtype=F64)
    w = torch.tensor([0.0, 1.0, 1.0], dtype=F64)
    assert weighted_top_s_mask(z, w, 2).tolist() == [False, True, True]


def _step(model: nn.Module, opt: torch.optim.Optimizer, rows: slice = slice(None)) -> None:
    X, y = _data()
    opt.zero_grad()
    nn.functional.cross_entropy(model(X[rows]), y[rows]).backward()
    opt.step()


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_adam_keeps_the_largest_second_moment_times_square() -> None:
    model = _mlp()
    base = torch.optim.Adam(model.parameters(), lr=0.05)
    opt = iht.SparseOptimizer(base, sparsity=20, selection="fisher", state="keep")
    for _ in range(3):
        _step(model, opt)
    # the next step by hand: Adam's step on a copy, then the 20 largest v * theta^2
    twin = copy.deepcopy(model)
    twin_base = torch.optim.Adam(twin.parameters(), lr=0.05)
    twin_base.load_state_dict(copy.deepcopy(base.state_dict()))  # (it shares tensors)
    _step(twin, twin_base)
    v = torch.cat([twin_base.state[p]["exp_avg_sq"].reshape(-1) for p in twin.parameters()])
    theta = _flat(twin)
    expected = theta * weighted_top_s_mask(theta, v, 20)
    _step(model, opt)
    assert opt.fisher == {}  # Adam's own second moment is used, nothing else is kept
    assert torch.equal(_flat(model), expected)


def test_other_bases_get_a_running_mean_of_squared_gradients() -> None:
    model = _mlp()
    opt = iht.SparseOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        sparsity=20,
        selection="fisher",
        state="keep",
    )
    X, y = _data()
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        for f, p in zip(expected, model.parameters(), strict=True):
            f.mul_(FISHER_BETA).addcmul_(p.grad, p.grad, value=1 - FISHER_BETA)  # type: ignore[arg-type]
        opt.step()
        assert sum(int((p != 0).sum()) for p in model.parameters()) == 20
    for f, p in zip(expected, model.parameters(), strict=True):
        assert torch.equal(opt.fisher[p], f)


@pytest.mark.parametrize("base", ["adam", "momentum"])
def test_the_budget_holds_at_every_step_of_a_cubic_schedule(base: str) -> None:
    model = _mlp()
    params = list(model.parameters())
    inner = (
        torch.optim.Adam(params, lr=0.05)
        if base == "adam"
        else torch.optim.SGD(params, lr=0.1, momentum=0.9)
    )
    schedule = Cubic(2, 10)
    opt = iht.SparseOptimizer(inner, sparsity=12, selection="fisher", schedule=schedule)
    size = sum(p.numel() for p in params)
    for t in range(16):
        _step(model, opt, slice(4 * (t % 10), 4 * (t % 10) + 4))
        budget = schedule.budget(t, 12, size)
        nonzeros = sum(int((p != 0).sum()) for p in params)
        assert nonzeros == (size if budget is None else budget)
        if t >= 10:  # pruned coordinates hold no state: they cannot return through momentum
            off = [p == 0 for p in params]
            for p, mask in zip(params, off, strict=True):
                for value in inner.state[p].values():
                    if isinstance(value, Tensor) and value.shape == p.shape:
                        assert not bool(value[mask].any())
                if p in opt.fisher:
                    assert not bool(opt.fisher[p][mask].any())


def test_a_minimum_per_tensor_and_threshold_every() -> None:
    model = _mlp()
    groups = [{"params": [p], "min_nonzeros": 3} for p in model.parameters()]
    base = torch.optim.Adam(groups, lr=0.05)
    opt = iht.SparseOptimizer(base, sparsity=14, selection="fisher", threshold_every=3)
    supports = []
    for _ in range(7):
        _step(model, opt)
        assert all(int((p != 0).sum()) >= 3 for p in model.parameters())
        assert sum(int((p != 0).sum()) for p in model.parameters()) == 14
        supports.append(opt.pool_states["global"].mask.clone())  # type: ignore[union-attr]
    # re-selected at steps 0, 3, 6 only: in between the support is the stored one
    assert torch.equal(supports[1], supports[0]) and torch.equal(supports[2], supports[0])
    assert torch.equal(supports[4], supports[3]) and torch.equal(supports[5], supports[3])


def test_state_dict_resumes_bit_for_bit() -> None:
    def make(model: nn.Module) -> iht.SparseOptimizer:
        base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return iht.SparseOptimizer(base, sparsity=18, selection="fisher", threshold_every=2)

    straight = _mlp()
    opt = make(straight)
    for _ in range(9):
        _step(straight, opt)
    resumed = _mlp()
    first = make(resumed)
    for _ in range(5):
        _step(resumed, first)
    saved_model = copy.deepcopy(resumed.state_dict())
    saved = copy.deepcopy(first.state_dict())
    again = _mlp(seed=3)
    again.load_state_dict(saved_model)
    second = make(again)
    second.load_state_dict(saved)
    for _ in range(4):
        _step(again, second)
    assert torch.equal(_flat(again), _flat(straight))


def test_refusals_name_the_value() -> None:
    model = _mlp()
    with pytest.raises(InvalidValueError, match="selection must be one of magnitude, fisher"):
        iht.SparseOptimizer(torch.optim.Adam(model.parameters()), sparsity=5, selection="saliency")
    groups = [{"params": [model[0].weight], "structure": "neuron", "sparsity": 4}]
    with pytest.raises(InvalidValueError, match="selection='fisher' takes budgets of entries"):
        iht.SparseOptimizer(torch.optim.Adam(groups), sparsity=None, selection="fisher")
    opt = iht.SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), sparsity=5)
    bad = opt.state_dict() | {"fisher": {0: torch.zeros(2)}}
    with pytest.raises(InvalidValueError, match="'fisher' entry does not match"):
        opt.load_state_dict(bad)


def test_the_recipes_take_fisher_after_adam_and_magnitude_for_the_papers_step() -> None:
    from iht.experiments.config import CompareConfig, TrainConfig, recipe

    cnn = recipe(TrainConfig(data="mnist1d", sparsity=0.1, model="cnn"))
    assert (cnn.optimizer, cnn.selection) == ("adam", "fisher")
    # a CNN's optimizer is Adam unless given: either selection may be asked for
    for selection in ("fisher", "magnitude"):
        asked = TrainConfig(data="mnist1d", sparsity=0.1, model="cnn", selection=selection)
        assert recipe(asked).selection == selection
    assert recipe(TrainConfig(data="digits", sparsity=0.1)).selection == "magnitude"
    rows = recipe(TrainConfig(data="digits", sparsity=0.1, optimizer="adam", structure="neuron"))
    assert rows.selection == "magnitude"  # structured budgets project by their own map
    assert CompareConfig(data="iris", sparsity="5").iht_selection == "magnitude"
    assert CompareConfig(data="iris", sparsity="5", optimizer="momentum").iht_selection == "fisher"
    chosen = CompareConfig(data="iris", sparsity="5", optimizer="adam", selection="magnitude")
    assert chosen.iht_selection == "magnitude"


def test_the_commands_refuse_fisher_where_it_does_not_apply(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = train_cli(
        capsys,
        tmp_path / "a",
        "--data",
        "iris",
        "--sparsity",
        "5",
        "--selection",
        "fisher",
        code=2,
    )
    assert out.strip().splitlines() == [
        "iht: error: --selection fisher projects after a base optimizer's step; --optimizer "
        "iht is the paper's step (use sgd, momentum, adam or adamw)"
    ]
    out = compare_cli(
        capsys,
        tmp_path / "b",
        "--data",
        "iris",
        "--sparsity",
        "5",
        "--optimizer",
        "adam",
        "--structure",
        "neuron",
        "--hidden",
        "4",
        "--selection",
        "fisher",
        code=2,
    )
    assert "--selection fisher takes budgets of entries, not --structure neuron" in out
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("size", [300, 70_000])  # 70,000: top_s_mask's compiled selection
def test_the_one_buffer_scores_equal_the_reference_projection(size: int) -> None:
    gen = torch.Generator().manual_seed(size)
    params = [torch.randn(size // 2, generator=gen, dtype=F64, requires_grad=True) for _ in "ab"]
    base = torch.optim.Adam(params, lr=0.01)
    opt = iht.SparseOptimizer(base, sparsity=size // 7, selection="fisher", state="keep")
    for _ in range(2):
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=F64)
        twin = [b.clone().requires_grad_() for b in before]
        twin_base = torch.optim.Adam(twin, lr=0.01)
        twin_base.load_state_dict(copy.deepcopy(base.state_dict()))
        for t, p in zip(twin, params, strict=True):
            t.grad = p.grad.clone()  # type: ignore[union-attr]
        twin_base.step()
        theta = torch.cat([t.detach() for t in twin])
        v = torch.cat([twin_base.state[t]["exp_avg_sq"] for t in twin])
        opt.step()
        assert torch.equal(
            torch.cat([p.detach() for p in params]),
            theta * weighted_top_s_mask(theta, v, size // 7),
        )


def test_scores_that_overflow_fall_back_to_the_reference() -> None:
    # float32: theta_0^2 = 9e38 overflows, so F theta^2 would rank entry 0 first; in
    # sqrt(F)|theta| (the reference, no overflow) it is third: 9.5e16 < 9.5e17 < 3.2e18.
    theta = torch.tensor([3e19, 1e18, 1e18, 1.0], dtype=torch.float32)
    p = theta.clone().requires_grad_()
    opt = iht.SparseOptimizer(torch.optim.SGD([p], lr=0.0), sparsity=2, selection="fisher")
    p.grad = torch.tensor([0.1, 100.0, 30.0, 1.0])
    opt.step()  # F = (1 - beta) g^2 = 1e-5, 10, 0.9, 1e-3
    expected = weighted_top_s_mask(theta.double(), opt.fisher[p].double(), 2)
    assert expected.tolist() == [False, True, True, False]
    assert torch.equal(p.detach() != 0, expected)


def test_a_non_finite_update_between_selections_is_refused() -> None:
    p = torch.ones(6, dtype=F64, requires_grad=True)
    opt = iht.SparseOptimizer(
        torch.optim.SGD([p], lr=1.0), sparsity=3, selection="fisher", threshold_every=5
    )
    p.grad = torch.arange(6, dtype=F64)
    opt.step()  # selects
    p.grad = torch.full((6,), 1e308, dtype=F64)
    with torch.no_grad():
        p.mul_(1e308)  # the next base step leaves inf in the stored support
    with pytest.raises(iht.NonFiniteError):
        opt.step()


@pytest.mark.parametrize("base", ["adam", "momentum"])
def test_the_compiled_fisher_projection_equals_the_torch_one(base: str) -> None:
    def run(kernel: str) -> list[Tensor]:
        gen = torch.Generator().manual_seed(7)
        params = [
            torch.randn(300, 250, generator=gen, dtype=F64, requires_grad=True),
            torch.randn(300, generator=gen, dtype=F64, requires_grad=True),
        ]
        inner = (
            torch.optim.Adam(params, lr=0.01)
            if base == "adam"
            else torch.optim.SGD(params, lr=0.01, momentum=0.9)
        )
        opt = iht.SparseOptimizer(
            inner, sparsity=9_000, selection="fisher", kernel=kernel, threshold_every=2
        )
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=F64)
            opt.step()
        states = [v for p in params for v in inner.state[p].values() if v.shape == p.shape]
        return [p.detach() for p in params] + states + list(opt.fisher.values())

    for a, b in zip(run("compiled"), run("torch"), strict=True):
        assert torch.equal(a, b)


def test_every_pool_is_checked_before_any_is_projected() -> None:
    first = torch.ones(8, dtype=F64, requires_grad=True)
    second = torch.ones(8, dtype=F64, requires_grad=True)
    groups = [{"params": [first], "sparsity": 2}, {"params": [second], "sparsity": 2}]
    opt = iht.SparseOptimizer(torch.optim.SGD(groups, lr=1.0), sparsity=None, selection="fisher")
    first.grad = torch.linspace(-1, 1, 8, dtype=F64)
    second.grad = torch.full((8,), -1e308, dtype=F64)
    with torch.no_grad():
        second.mul_(1e308)  # the base step overflows the second pool only
    with pytest.raises(iht.NonFiniteError, match="it was not projected"):
        opt.step()
    assert int((first != 0).sum()) == 7  # the base's update, not projected (one exact zero)


def test_a_float64_gradient_beyond_float32s_range_is_finite() -> None:
    # The gradient check read max-norms in float32: 1e300 became inf and was refused.
    p = torch.zeros(4, dtype=F64, requires_grad=True)
    opt = iht.SparseOptimizer(torch.optim.SGD([p], lr=1e-300), sparsity=2)
    p.grad = torch.tensor([1e300, -2e300, 0.0, 3e300], dtype=F64)
    opt.step()
    assert p.detach().tolist() == pytest.approx([0.0, 2.0, 0.0, -3.0], rel=1e-15)
    assert (p != 0).tolist() == [False, True, False, True]


def _forget_selection(path: Path) -> None:
    """Make a stored config.json look as one written before --selection existed."""
    import json

    record = json.loads(path.read_text())
    record["config"].pop("selection")
    record.pop("iht_selection", None)
    record.get("training", {}).pop("selection", None)
    path.write_text(json.dumps(record, indent=2))


def test_a_run_stored_before_the_fisher_default_is_not_taken_for_a_new_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The same settings now mean the Fisher selection: the stored (magnitude) results must
    # not be shown as theirs; the directory is then in the way, said in one line.
    args = ("--data", "digits", "--model", "cnn", "--sparsity", "0.2", "--steps", "3")
    train_cli(capsys, tmp_path / "t", *args, "--no-report")
    _forget_selection(tmp_path / "t" / "config.json")
    out = train_cli(capsys, tmp_path / "t", *args, "--no-report", code=2)
    assert "holds this run already" not in out and "iht: error:" in out
    compare = ("--data", "iris", "--sparsity", "5", "--methods", "iht", "--optimizer", "adam")
    compare_cli(capsys, tmp_path / "c", *compare, "--steps", "5")
    _forget_selection(tmp_path / "c" / "config.json")
    out = compare_cli(capsys, tmp_path / "c", *compare, "--steps", "5", code=2)
    assert "holds this comparison already" not in out and "iht: error:" in out
    # and a record that says what it ran is still recognised
    again = compare_cli(capsys, tmp_path / "d", *compare, "--steps", "5")
    again = compare_cli(capsys, tmp_path / "d", *compare, "--steps", "5")
    assert "holds this comparison already" in again


def test_float16_parameters_are_scored_in_float32() -> None:
    # theta ~ 3e-2, F ~ 1e-6: F theta^2 ~ 1e-9 underflows float16 and ranked by index.
    gen = torch.Generator().manual_seed(5)
    theta = (torch.rand(1000, generator=gen) * 6e-2 - 3e-2).half()
    p = theta.clone().requires_grad_()
    opt = iht.SparseOptimizer(torch.optim.SGD([p], lr=0.0), sparsity=100, selection="fisher")
    p.grad = (torch.rand(1000, generator=gen) * 6e-2 - 3e-2).half()
    opt.step()
    exact = weighted_top_s_mask(theta.double(), opt.fisher[p].double(), 100)
    assert int(((p != 0) == exact).sum()) >= 998  # (float16 rounding of F may swap a tie)
    assert int((p[:100] != 0).sum()) < 30  # not the first s by index


def test_a_non_finite_parameter_without_gradient_signal_is_refused() -> None:
    a = torch.ones(5, dtype=F64, requires_grad=True)
    b = torch.tensor([float("inf"), 1.0, 2.0], dtype=F64, requires_grad=True)  # never a grad
    opt = iht.SparseOptimizer(
        torch.optim.SGD([a, b], lr=0.1, momentum=0.9), sparsity=6, selection="fisher"
    )
    a.grad = torch.ones(5, dtype=F64)
    with pytest.raises(iht.NonFiniteError):
        opt.step()


def test_a_moment_of_another_shape_is_not_taken_for_f() -> None:
    # A factored or projected second moment (Adafactor, GaLore) is not F: the wrapper keeps one.
    w = torch.randn(4, 5, dtype=F64, requires_grad=True)
    base = torch.optim.SGD([w], lr=0.0)
    opt = iht.SparseOptimizer(base, sparsity=6, selection="fisher")
    base.state[w]["exp_avg_sq"] = torch.ones(4, dtype=F64)  # a row factor
    w.grad = torch.randn(4, 5, dtype=F64)
    opt.step()
    assert w in opt.fisher and int((w != 0).sum()) == 6


def test_a_refused_state_dict_changes_nothing() -> None:
    model = _mlp()
    opt = iht.SparseOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), sparsity=20, selection="fisher"
    )
    _step(model, opt)
    saved = copy.deepcopy(opt.state_dict())
    _step(model, opt)
    _step(model, opt)
    before = copy.deepcopy(opt.state_dict())
    for bad in (
        {True: saved["fisher"][0]},  # a bool is no index
        {0: -saved["fisher"][0] - 1},  # F >= 0
        {0: saved["fisher"][0] * float("nan")},
    ):
        with pytest.raises(InvalidValueError, match="'fisher' entry"):
            opt.load_state_dict(saved | {"fisher": bad})
        now = opt.state_dict()
        assert now["steps_taken"] == before["steps_taken"] == 3
        for key, pool in before["pools"].items():
            assert torch.equal(now["pools"][key]["mask"], pool["mask"])


def test_f_is_bias_corrected_when_tensors_began_at_different_steps() -> None:
    # b gets gradients from step 50 on, a from step 0, from the same law: uncorrected, b's
    # F is (1 - 0.999^10) / (1 - 0.999^60) ~ 1/6 of a's, and b would lose most of the budget.
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2000, generator=gen, dtype=F64, requires_grad=True)
    b = torch.randn(2000, generator=gen, dtype=F64, requires_grad=True)
    base = torch.optim.Adam([a, b], lr=1e-9)
    opt = iht.SparseOptimizer(base, sparsity=2000, selection="fisher", schedule=DenseWarmup(59))
    for step in range(60):
        a.grad = torch.randn(2000, generator=gen, dtype=F64)
        b.grad = torch.randn(2000, generator=gen, dtype=F64) if step >= 50 else None
        opt.step()
    kept_a, kept_b = int((a != 0).sum()), int((b != 0).sum())
    assert kept_a + kept_b == 2000 and 800 < kept_b < 1200, (kept_a, kept_b)


def test_an_empty_tensor_in_a_pool() -> None:
    w = torch.randn(6, dtype=F64, requires_grad=True)
    empty = torch.zeros(0, dtype=F64, requires_grad=True)
    for kernel in ("torch", "compiled"):
        opt = iht.SparseOptimizer(
            torch.optim.Adam([w, empty], lr=0.1),
            sparsity=3,
            selection="fisher",
            threshold_every=2,
            kernel=kernel,
        )
        for _ in range(3):
            w.grad, empty.grad = torch.randn(6, dtype=F64), torch.zeros(0, dtype=F64)
            opt.step()
        assert int((w != 0).sum()) == 3
