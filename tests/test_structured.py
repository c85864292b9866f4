"""Group and N:M hard thresholding equal brute force on small cases (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import best_groups, best_nm
from torch import Tensor

from iht.errors import InvalidValueError
from iht.structured import group_hard_threshold, group_mask, nm_hard_threshold, nm_mask, parse_nm

# Small integers make ties common: the tie rule is exercised, not only the generic case.
VALUES = st.integers(-3, 3).map(float)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_group_threshold_is_the_closest_point_with_s_groups(data: st.DataObject) -> None:
    groups = data.draw(st.integers(1, 6))
    width = data.draw(st.integers(1, 4))
    rows = data.draw(
        st.lists(st.lists(VALUES, min_size=width, max_size=width), min_size=groups, max_size=groups)
    )
    s = data.draw(st.integers(0, groups))
    x = torch.tensor(rows, dtype=torch.float64)
    out = group_hard_threshold(x, s)
    kept = tuple(g for g in range(groups) if bool(group_mask([x], s)[0][g].all()))
    best, argbest = best_groups(rows, s)
    assert len(kept) == s
    assert kept in argbest  # the closest point of the set
    # ties: the smaller index wins, i.e. the kept rows sort first by (-norm, index)
    norms = [sum(v * v for v in row) for row in rows]
    assert kept == tuple(sorted(sorted(range(groups), key=lambda g: (-norms[g], g))[:s]))
    assert float(out.pow(2).sum()) == pytest.approx(best)
    assert torch.equal(group_hard_threshold(out, s), out)  # idempotent
    for g in range(groups):  # kept rows unchanged, the others exactly zero
        assert torch.equal(out[g], x[g] if g in kept else torch.zeros_like(x[g]))


def test_group_mask_spans_tensors_and_their_biases() -> None:
    w1 = torch.tensor([[1.0, 0.0], [0.0, 0.1], [2.0, 2.0]])
    b1 = torch.tensor([0.0, 3.0, 0.0])  # neuron 1's bias makes it the largest group
    conv = torch.zeros(2, 1, 3)
    conv[1] = 0.5
    masks = group_mask([w1, conv], 2, biases=[b1, None])
    assert masks[0][:, 0].tolist() == [False, True, True]
    assert masks[1].shape == conv.shape and not bool(masks[1].any())
    with pytest.raises(InvalidValueError, match="group budget"):
        group_mask([w1], 4)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_nm_threshold_is_the_closest_nm_point(data: st.DataObject) -> None:
    m = data.draw(st.sampled_from([1, 2, 3, 4]))
    n = data.draw(st.integers(1, m))
    blocks = data.draw(st.integers(1, 4))
    rows = data.draw(st.integers(1, 3))
    values = data.draw(st.lists(VALUES, min_size=rows * blocks * m, max_size=rows * blocks * m))
    x = torch.tensor(values, dtype=torch.float64).reshape(rows, blocks * m)
    mask = nm_mask(x, n, m)
    for r in range(rows):
        row = values[r * blocks * m : (r + 1) * blocks * m]
        for b, argbest in enumerate(best_nm(row, n, m)):
            kept = tuple(i for i in range(m) if bool(mask[r, b * m + i]))
            assert kept in argbest
            assert kept == argbest[0]  # among the best, the smallest indices (the tie rule)
    out = nm_hard_threshold(x, n, m)
    assert torch.equal(nm_hard_threshold(out, n, m), out)


def test_2_4_keeps_two_of_every_four() -> None:
    x = torch.tensor([[1.0, -4.0, 3.0, 2.0, 0.0, 0.0, 5.0, 5.0]])
    assert nm_hard_threshold(x, 2, 4).tolist() == [[0.0, -4.0, 3.0, 0.0, 0.0, 0.0, 5.0, 5.0]]


@pytest.mark.parametrize("text, expected", [("2:4", (2, 4)), ("4:8", (4, 8)), ("1:1", (1, 1))])
def test_parse_nm(text: str, expected: tuple[int, int]) -> None:
    assert parse_nm(text) == expected


@pytest.mark.parametrize("text", ["5:4", "0:4", "2-4", "a:b", "2:4:8"])
def test_parse_nm_refuses(text: str) -> None:
    with pytest.raises(InvalidValueError, match="N:M"):
        parse_nm(text)


def test_nm_refuses_a_width_that_is_not_a_multiple_of_m() -> None:
    with pytest.raises(InvalidValueError, match="multiple of M = 4"):
        nm_mask(torch.zeros(3, 6), 2, 4)
    with pytest.raises(InvalidValueError, match="NaN"):
        nm_mask(torch.tensor([float("nan"), 1.0, 2.0, 3.0]), 2, 4)


# -- the optimizers with a structured budget ----------------------------------------------------
def _rows_kept(tensors: list[torch.Tensor]) -> int:
    return sum(int((t.reshape(t.shape[0], -1) != 0).any(dim=1).sum()) for t in tensors)


def test_iht_with_a_group_budget_is_h_s_of_rows_after_every_step() -> None:
    import iht

    gen = torch.Generator().manual_seed(0)
    w1 = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    opt = iht.IHT([{"params": [w1, w2], "structure": "neuron", "sparsity": 3}], lr=0.1)
    for step in range(5):
        before = [w1.detach().clone(), w2.detach().clone()]
        grads = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in (w1, w2)]
        w1.grad, w2.grad = grads[0].clone(), grads[1].clone()
        opt.step()
        # the reference: the gradient step, then the 3 rows of largest norm over both tensors
        moved = [b.add(g, alpha=-0.1) for b, g in zip(before, grads, strict=True)]
        rows = [r.tolist() for m in moved for r in m.reshape(m.shape[0], -1)]
        _, argbest = best_groups(rows, 3)
        kept = [
            g
            for g in range(9)
            if bool(
                (
                    torch.cat(
                        [
                            w1.detach().reshape(5, -1).abs().sum(1),
                            w2.detach().reshape(4, -1).abs().sum(1),
                        ]
                    )[g]
                )
                > 0
            )
        ]
        assert tuple(kept) in argbest, step
        assert _rows_kept([w1, w2]) == 3
        for m, w in zip(moved, (w1, w2), strict=True):
            keep = w.detach() != 0
            assert torch.equal(w.detach()[keep], m[keep])


def test_a_wrapped_adam_with_2_4_keeps_the_pattern_and_zeroes_adam_state_off_it() -> None:
    import iht

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    weights = [model[0].weight, model[2].weight]
    biases = [model[0].bias, model[2].bias]
    # Linear(6, 3): rows of 6 are not a multiple of 4, so it takes 2:3 here
    base = torch.optim.Adam(
        [
            {"params": [weights[0]], "structure": "2:4"},
            {"params": [weights[1]], "structure": "1:3"},
            {"params": biases},
        ],
        lr=1e-2,
    )
    opt = iht.SparseOptimizer(base, sparsity=None, schedule=iht.DenseWarmup(3))
    X, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for step in range(10):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
        blocks0 = (weights[0].detach().reshape(6, 2, 4) != 0).sum(-1)
        blocks1 = (weights[1].detach().reshape(3, 2, 3) != 0).sum(-1)
        if step < 3:  # the warm-up is dense
            assert int((weights[0] != 0).sum()) == 48
        else:
            assert int(blocks0.max()) <= 2 and int(blocks1.max()) <= 1
            for w in weights:
                state = base.state[w]
                off = w.detach() == 0
                assert not bool(state["exp_avg"][off].any()) and not bool(
                    state["exp_avg_sq"][off].any()
                )
    assert int((biases[0] != 0).sum()) == 6  # dense


def test_structured_groups_follow_a_schedule_in_rows() -> None:
    import iht

    w = torch.randn(10, 4, requires_grad=True)
    base = torch.optim.SGD([{"params": [w], "structure": "channel", "sparsity": 2}], lr=0.1)
    opt = iht.SparseOptimizer(base, sparsity=None, schedule=iht.Cubic(start=0, end=4))
    counts = []
    for _ in range(6):
        w.grad = torch.randn(10, 4)
        opt.step()
        counts.append(_rows_kept([w]))
    assert counts == sorted(counts, reverse=True) and counts[-1] == 2 and counts[-2] == 2


@pytest.mark.parametrize(
    "group, match",
    [
        ({"structure": "diagonal", "sparsity": 2}, "structure must be one of"),
        ({"structure": "neuron"}, "needs the group's own sparsity"),
        ({"structure": "2:4"}, "not a multiple of M = 4"),
        ({"structure": "neuron", "sparsity": 7}, r"rows"),
    ],
)
def test_structured_budgets_refuse_what_they_cannot_do(group: dict, match: str) -> None:
    import iht

    w = torch.randn(6, 6, requires_grad=True)
    with pytest.raises(InvalidValueError, match=match):
        iht.IHT([{"params": [w], **group}], lr=0.1)


# --- structured budgets of a model, and their certificates -------------------------------

import iht  # noqa: E402
from iht import plan_budget  # noqa: E402
from iht.budget import plan_structured_budget  # noqa: E402
from iht.certify import certify_budget, structured_figures  # noqa: E402
from iht.structured import Structure  # noqa: E402


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8), torch.nn.ReLU(),
        torch.nn.Linear(8, 3),
    ).double()  # fmt: skip


def test_a_neuron_budget_keeps_whole_rows_of_every_hidden_layer_at_every_step() -> None:
    model = _mlp()
    budget = plan_structured_budget(model, "neuron", "50%")
    assert budget.structure == "group"
    pools = {p.name: p for p in budget.pools}
    assert (pools["0"].sparsity, pools["2"].sparsity) == (6, 4)  # half of 12 and of 8 rows
    assert pools["0"].params == ("0.weight", "0.bias") and pools["0"].structure == "group+bias"
    assert pools["dense"].params == ("4.weight", "4.bias")
    budget.sparse_init_(model, generator=torch.Generator().manual_seed(1))
    opt = budget.wrap(model, lambda g: torch.optim.Adam(g, lr=0.05))
    X, y = torch.randn(32, 8, dtype=torch.float64), torch.randint(0, 3, (32,))
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
        for name, rows in (("0.weight", 6), ("2.weight", 4)):
            w = dict(model.named_parameters())[name]
            kept = (w != 0).any(dim=1)
            assert int(kept.sum()) <= rows
            # a row is kept whole or dropped whole: no partially zeroed rows from the projection
            assert bool(((w != 0).all(dim=1) | ~kept).all())
    assert budget.max_nonzeros == 6 * 9 + 4 * 13 + 8 * 3 + 3


def test_a_2_4_budget_applies_to_the_weights_that_fit_it() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)
    ).double()
    budget = plan_structured_budget(model, "2:4")
    assert [p.name for p in budget.pools if not p.dense] == ["0"]  # rows of 6: not 4's multiple
    assert budget.sparsity == 24 and budget.structure == "2:4"
    budget.sparse_init_(model, generator=torch.Generator().manual_seed(0))
    w = model[0].weight.detach()
    assert bool(((w.reshape(-1, 4) != 0).sum(dim=1) == 2).all())


@pytest.mark.parametrize(
    ("structure", "sparsity", "match"),
    [
        ("neuron", None, "needs --sparsity"),
        ("2:4", "50%", "leave out --sparsity"),
        ("neuron", 1, "cannot keep one row in each of the 2"),
        ("0:4", None, "1 <= N <= M"),
        ("diagonal", None, "structure must be entry, neuron, channel"),
    ],
)
def test_structured_budgets_say_what_is_wrong(structure: str, sparsity: object, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        plan_structured_budget(_mlp(), structure, sparsity)  # type: ignore[arg-type]


def _fixed_point_case(data: st.DataObject, kind: str) -> tuple[Tensor, Tensor, Structure, int]:
    rows, m = data.draw(st.integers(2, 5)), 4
    x = torch.tensor(
        data.draw(st.lists(st.lists(VALUES, min_size=m, max_size=m), min_size=rows, max_size=rows)),
        dtype=torch.float64,
    )
    if kind == "group":
        structure, s = Structure("group"), data.draw(st.integers(1, rows))
        theta = x * group_mask([x], s)[0]
    else:
        structure, s = Structure("nm", 2, 4), 0
        theta = x * nm_mask(x, 2, 4)
    g = torch.tensor(
        data.draw(st.lists(st.lists(VALUES, min_size=m, max_size=m), min_size=rows, max_size=rows)),
        dtype=torch.float64,
    )
    if kind == "group":
        g = torch.where((theta != 0).any(dim=1, keepdim=True), torch.zeros_like(g), g) / 4
    else:
        g = torch.where(theta != 0, torch.zeros_like(g), g) / 4
    return theta, g, structure, s


@settings(max_examples=200, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["group", "nm"]))
def test_structured_stability_is_the_fixed_point_of_the_projected_map(
    data: st.DataObject, kind: str
) -> None:
    """With the gradient zero on the support, stable (and no tie) exactly when the structured
    IHT map leaves theta where it is, checked by applying the map."""
    theta, g, structure, s = _fixed_point_case(data, kind)
    fig = structured_figures([theta], [g], lr=1.0, structure=structure, sparsity=s, grad_tol=0.0)
    candidate = theta - g
    budget = s if kind == "group" else structure.implied([candidate])
    mapped = candidate * structure.mask([candidate], budget).reshape(candidate.shape)
    if not fig["tie"]:
        assert fig["stable"] == bool(torch.equal(mapped, theta))
    assert fig["residual"] == pytest.approx(float((theta - mapped).norm()))


def test_a_structured_budget_is_certified_with_its_own_projection() -> None:
    model = _mlp()
    budget = plan_structured_budget(model, "neuron", "50%")
    budget.sparse_init_(model, generator=torch.Generator().manual_seed(1))
    X, y = torch.randn(32, 8, dtype=torch.float64), torch.randint(0, 3, (32,))
    cert = certify_budget(
        model, lambda m: torch.nn.functional.cross_entropy(m(X), y), lr=0.1, budget=budget
    )
    assert cert["structure"] == "group"
    by_name = {p["name"]: p for p in cert["pools"]}
    assert by_name["0"]["kept_groups"] == 6 and by_name["2"]["kept_groups"] == 4
    assert by_name["0"]["structure"] == "group+bias" and cert["stable"] is False  # not trained
    # the entry-wise certificate of the same point would count nonzeros against s rows
    assert cert["nonzeros"] == 6 * 9 + 4 * 13
    entry = plan_budget(model, 5)
    assert entry.structure == "entry"


def test_the_l2s_estimate_draws_supports_of_the_budgets_shape() -> None:
    """Every sampled point lies in the structured set: whole rows, the N:M pattern."""
    from iht import lipschitz

    model = _mlp()
    X, y = torch.randn(32, 8, dtype=torch.float64), torch.randint(0, 3, (32,))
    for structure, sparsity in (("neuron", "50%"), ("2:4", None)):
        budget = plan_structured_budget(model, structure, sparsity)
        seen: list[Tensor] = []
        real = lipschitz.budget_pairs

        def spy(theta, keys, z, masks, real=real, seen=seen):  # type: ignore[no-untyped-def]
            pair = real(theta, keys, z, masks)
            seen.extend(pair)
            return pair

        lipschitz.budget_pairs = spy  # type: ignore[assignment]
        try:
            est = lipschitz.estimate_l2s(
                model,
                lambda m: torch.nn.functional.cross_entropy(m(X), y),
                sparsity=None,
                budget=budget,
                n_samples=8,
                generator=torch.Generator().manual_seed(0),
            )
        finally:
            lipschitz.budget_pairs = real  # type: ignore[assignment]
        assert est.estimate > 0 and est.ratios.numel() == 8
        for points in seen:
            for theta in points:
                w0 = theta[: 12 * 8].reshape(12, 8)
                if structure == "neuron":
                    b0 = theta[12 * 8 : 12 * 8 + 12]
                    alive = (w0 != 0).any(dim=1) | (b0 != 0)
                    assert int(alive.sum()) <= 6  # whole neurons, 6 of 12
                else:
                    assert bool(((w0.reshape(-1, 4) != 0).sum(dim=1) <= 2).all())
    with pytest.raises(InvalidValueError, match="sparsity or budget, not both"):
        lipschitz.estimate_l2s(model, lambda m: m(X).sum(), sparsity=5, budget=budget)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_the_group_and_entry_projection_is_the_closest_point_of_the_set(
    data: st.DataObject,
) -> None:
    from reference import best_group_entries

    from iht.structured import group_entry_mask

    rows = data.draw(st.integers(1, 4))
    width = data.draw(st.integers(1, 3))
    values = data.draw(
        st.lists(st.lists(VALUES, min_size=width, max_size=width), min_size=rows, max_size=rows)
    )
    groups = data.draw(st.integers(0, rows))
    s = data.draw(st.integers(0, rows * width))
    x = torch.tensor(values, dtype=torch.float64)
    mask = group_entry_mask(x, groups, s)
    assert int(mask.sum()) <= s and int(mask.any(dim=1).sum()) <= groups
    kept = float(x[mask].pow(2).sum())
    assert kept == pytest.approx(best_group_entries(values, groups, s))  # no closer point
    projected = torch.where(mask, x, torch.zeros_like(x))
    again = group_entry_mask(projected, groups, s)
    assert torch.equal(torch.where(again, projected, 0.0), projected)  # idempotent


def test_the_best_rows_are_not_the_rows_of_largest_norm() -> None:
    """Why a sort is not enough: with 1 entry, the row holding the single largest entry wins
    over the row of largest norm."""
    from iht.structured import group_entry_mask

    x = torch.tensor([[2.0, 2.0, 2.0], [3.0, 0.0, 0.0]])
    assert group_entry_mask(x, 1, 1).tolist() == [[False] * 3, [True, False, False]]
    assert group_entry_mask(x, 1, 3).tolist() == [[True] * 3, [False] * 3]
    with pytest.raises(InvalidValueError, match="takes a matrix"):
        group_entry_mask(torch.zeros(3), 1, 1)


def test_iht_with_rows_and_entries_keeps_both_budgets_and_is_certified_with_them() -> None:
    """A param group with a neuron budget (rows) and an entry budget inside the kept rows."""
    from iht.certify import structured_figures
    from iht.structured import parse_structure

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3)
    ).double()
    groups = [
        {"params": [model[0].weight], "structure": "neuron", "sparsity": 4, "entries": 12},
        {"params": [model[0].bias, model[2].weight, model[2].bias], "sparsity": None},
    ]
    opt = iht.IHT(groups, lr=0.2)
    X, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
        w = model[0].weight.detach()
        assert int((w != 0).any(dim=1).sum()) <= 4 and int((w != 0).sum()) <= 12
    structure = parse_structure("neuron", entries=12)
    assert structure is not None
    w = model[0].weight
    # at a point the map moves, the certificate says so; at its own projection with zero
    # gradient on the support it is a fixed point
    g = torch.autograd.grad(torch.nn.functional.cross_entropy(model(X), y), w)[0]
    moving = structured_figures([w], [g], lr=0.2, structure=structure, sparsity=4, grad_tol=1e-12)
    assert moving["stable"] is False
    still = structured_figures(
        [w], [torch.zeros_like(w)], lr=0.2, structure=structure, sparsity=4, grad_tol=0.0
    )
    assert still["stable"] is True and still["residual"] == 0.0
    with pytest.raises(InvalidValueError, match="needs a group structure"):
        parse_structure("2:4", entries=3)


def test_heads_are_blocks_of_rows_kept_or_dropped_whole() -> None:
    """An attention projection's heads: ``group_rows`` = the head's rows; s counts heads."""
    from iht.certify import structured_figures
    from iht.structured import parse_structure

    torch.manual_seed(0)
    proj = torch.nn.Linear(8, 12).double()  # 4 heads of 3 rows
    opt = iht.IHT(
        [{"params": [proj.weight, proj.bias], "structure": "neuron+bias", "sparsity": 2,
          "group_rows": 3}],
        lr=0.1,
    )  # fmt: skip
    X = torch.randn(20, 8, dtype=torch.float64)
    for _ in range(5):
        opt.zero_grad()
        proj(X).pow(2).mean().backward()
        opt.step()
        alive = (proj.weight != 0).any(dim=1) | (proj.bias != 0)
        heads = alive.reshape(4, 3)
        assert bool((heads.all(dim=1) | ~heads.any(dim=1)).all())  # whole heads
        assert int(heads.any(dim=1).sum()) == 2
    # the projection keeps the 2 heads of largest norm (weights and biases together)
    structure = parse_structure("neuron+bias", block=3)
    assert structure is not None
    x = torch.randn(12, 8, dtype=torch.float64)
    b = torch.randn(12, dtype=torch.float64)
    norms = (x.pow(2).sum(1) + b.pow(2)).reshape(4, 3).sum(1)
    best = set(norms.topk(2).indices.tolist())
    mask = structure.mask([x, b], 2)
    kept_rows = mask[: 12 * 8].reshape(12, 8).all(dim=1).reshape(4, 3).all(dim=1)
    assert {i for i in range(4) if kept_rows[i]} == best
    fig = structured_figures(
        [proj.weight, proj.bias], [torch.zeros_like(proj.weight), torch.zeros_like(proj.bias)],
        lr=0.1, structure=structure, sparsity=2, grad_tol=0.0,
    )  # fmt: skip
    assert fig["kept_groups"] == 2 and fig["stable"] is True
    with pytest.raises(InvalidValueError, match="not a multiple of the 5 rows"):
        iht.IHT(
            [{"params": [proj.weight], "structure": "neuron", "sparsity": 1, "group_rows": 5}],
            lr=0.1,
        )
