"""Group and N:M hard thresholding equal brute force on small cases (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import best_groups, best_nm

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
