"""hard_threshold, threshold_mask and boundary_tie against the sort-based reference."""

from __future__ import annotations

import math
import re

import hypothesis.strategies as st
import numpy as np
import pytest
import reference
import torch
from hypothesis import given

import iht
from iht.threshold import check_sparsity, flatten, unflatten_

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
TIED_VALUES = [0.0, 1.0, -1.0, 2.0, -2.0]


@st.composite
def tensors(draw: st.DrawFn, *, max_batch_dims: int = 2) -> torch.Tensor:
    """A tensor of shape (..., P) in one of the four float dtypes.

    Half the draws take values from {0, +-1, +-2} to force ties at every position,
    including ties at the boundary of H_s and ties between +x and -x.
    """
    dtype = draw(st.sampled_from(DTYPES))
    batch = draw(st.lists(st.integers(1, 3), max_size=max_batch_dims))
    size = draw(st.integers(1, 9))
    n = math.prod(batch) * size
    if draw(st.booleans()):
        elements = st.sampled_from(TIED_VALUES)
    else:
        elements = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
    values = draw(st.lists(elements, min_size=n, max_size=n))
    return torch.tensor(values, dtype=dtype).reshape(*batch, size)


@st.composite
def tensor_and_budget(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    x = draw(tensors())
    return x, draw(st.integers(0, x.shape[-1] + 2))


def _row_nonzeros(x: torch.Tensor) -> torch.Tensor:
    return (x != 0).sum(dim=-1)


# --------------------------------------------------------------------------- hard_threshold


@given(tensor_and_budget())
def test_hard_threshold_matches_sort_reference(case: tuple[torch.Tensor, int]) -> None:
    x, s = case
    out = iht.hard_threshold(x, s)
    expected = reference.hard_threshold(x, s)
    assert out.dtype == x.dtype
    assert out.device == x.device
    assert out.shape == x.shape
    assert torch.equal(out, expected)


@given(tensor_and_budget())
def test_hard_threshold_invariants(case: tuple[torch.Tensor, int]) -> None:
    x, s = case
    out = iht.hard_threshold(x, s)
    # At most s nonzeros per row.
    assert bool((_row_nonzeros(out) <= s).all())
    # Idempotent.
    assert torch.equal(iht.hard_threshold(out, s), out)
    # Every kept entry is x itself, every dropped one is 0.
    mask = iht.threshold_mask(x, s)
    assert torch.equal(out, torch.where(mask, x, torch.zeros_like(x)))
    # Kept magnitudes dominate every dropped magnitude, row by row.
    mag = x.abs().double()
    kept_min = torch.where(mask, mag, torch.full_like(mag, math.inf)).amin(dim=-1)
    dropped_max = torch.where(mask, torch.full_like(mag, -1.0), mag).amax(dim=-1)
    assert bool((kept_min >= dropped_max).all())


@given(tensor_and_budget())
def test_batched_equals_row_by_row(case: tuple[torch.Tensor, int]) -> None:
    x, s = case
    flat = x.reshape(-1, x.shape[-1])
    rows = torch.stack([iht.hard_threshold(row, s) for row in flat])
    assert torch.equal(iht.hard_threshold(x, s), rows.reshape(x.shape))
    masks = torch.stack([iht.threshold_mask(row, s) for row in flat])
    assert torch.equal(iht.threshold_mask(x, s), masks.reshape(x.shape))


def test_tie_rule_smaller_index_wins() -> None:
    x = torch.tensor([1.0, -1.0, 1.0, 0.5])
    assert iht.hard_threshold(x, 1).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert iht.hard_threshold(x, 2).tolist() == [1.0, -1.0, 0.0, 0.0]
    # The largest magnitude wins wherever it sits; the tie below it goes to index 1.
    y = torch.tensor([2.0, -3.0, 2.0, 3.0, -2.0])
    assert iht.hard_threshold(y, 3).tolist() == [2.0, -3.0, 0.0, 3.0, 0.0]
    # Same rule in every row of a batch, independently.
    batch = torch.tensor([[1.0, 1.0, 1.0], [0.0, 2.0, 2.0]])
    assert iht.hard_threshold(batch, 1).tolist() == [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]


def test_docstring_example() -> None:
    out = iht.hard_threshold(torch.tensor([1.0, -3.0, 2.0, 3.0]), 2)
    assert out.tolist() == [0.0, -3.0, 0.0, 3.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_budget_gives_zeros(dtype: torch.dtype) -> None:
    x = torch.tensor([[1.0, -2.0, 3.0], [4.0, 0.0, -5.0]], dtype=dtype)
    out = iht.hard_threshold(x, 0)
    assert out.dtype == dtype
    assert torch.equal(out, torch.zeros_like(x))
    assert not bool(iht.threshold_mask(x, 0).any())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extra", [0, 1, 5])
def test_full_budget_returns_a_copy(dtype: torch.dtype, extra: int) -> None:
    x = torch.tensor([[1.0, -2.0, 3.0], [4.0, 0.0, -5.0]], dtype=dtype)
    out = iht.hard_threshold(x, 3 + extra)
    assert out.dtype == dtype
    assert torch.equal(out, x)
    assert out.data_ptr() != x.data_ptr()
    out[0, 0] = 7.0
    assert float(x[0, 0]) == 1.0  # a copy, not a view


def test_fewer_nonzeros_than_budget() -> None:
    # Zeros may be "kept": the result has fewer than s nonzeros and equals x.
    x = torch.tensor([0.0, 3.0, 0.0, 0.0, -1.0])
    assert torch.equal(iht.hard_threshold(x, 3), x)
    assert int(iht.threshold_mask(x, 3).sum()) == 3


def test_infinite_entries_are_largest() -> None:
    x = torch.tensor([1.0, -math.inf, 2.0, math.inf])
    assert iht.hard_threshold(x, 2).tolist() == [0.0, -math.inf, 0.0, math.inf]
    assert iht.hard_threshold(x, 1).tolist() == [0.0, -math.inf, 0.0, 0.0]


def test_input_is_not_modified() -> None:
    x = torch.tensor([3.0, -1.0, 2.0])
    iht.hard_threshold(x, 1)
    assert x.tolist() == [3.0, -1.0, 2.0]


@pytest.mark.parametrize("s", [np.int64(2), torch.tensor(2)])
def test_integer_like_budgets_are_accepted(s: object) -> None:
    x = torch.tensor([3.0, -1.0, 2.0])
    assert iht.hard_threshold(x, s).tolist() == [3.0, 0.0, 2.0]  # type: ignore[arg-type]


def test_large_batch_matches_reference() -> None:
    # A wide batch drawn with many ties: the vectorised selection agrees row by row.
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (500, 17), generator=gen).double()
    for s in (1, 4, 9, 16):
        assert torch.equal(iht.hard_threshold(x, s), reference.hard_threshold(x, s))
        assert torch.equal(iht.boundary_tie(x, s), reference.boundary_tie(x, s))


# --------------------------------------------------------------------------- threshold_mask


@given(tensor_and_budget())
def test_threshold_mask_keeps_exactly_min_s_p(case: tuple[torch.Tensor, int]) -> None:
    x, s = case
    mask = iht.threshold_mask(x, s)
    assert mask.dtype == torch.bool
    assert mask.shape == x.shape
    assert bool((mask.sum(dim=-1) == min(s, x.shape[-1])).all())
    assert torch.equal(mask, reference.threshold_mask(x, s))


# --------------------------------------------------------------------------- boundary_tie


@given(tensor_and_budget())
def test_boundary_tie_matches_reference(case: tuple[torch.Tensor, int]) -> None:
    x, s = case
    tie = iht.boundary_tie(x, s)
    assert tie.dtype == torch.bool
    assert tie.shape == x.shape[:-1]
    assert torch.equal(tie, reference.boundary_tie(x, s))


def test_boundary_tie_examples() -> None:
    x = torch.tensor([3.0, -2.0, 2.0, 1.0])
    assert bool(iht.boundary_tie(x, 2))  # 2nd and 3rd magnitudes are both 2
    assert not bool(iht.boundary_tie(x, 1))
    assert not bool(iht.boundary_tie(x, 3))
    # Ties among zeros do not count: every choice gives the same vector.
    z = torch.tensor([5.0, 0.0, 0.0, 0.0])
    assert not bool(iht.boundary_tie(z, 2))
    # s = 0 and s >= P: H_s is single-valued.
    assert not bool(iht.boundary_tie(torch.ones(3), 0))
    assert not bool(iht.boundary_tie(torch.ones(3), 3))
    assert iht.boundary_tie(torch.ones(2, 4, 3), 1).tolist() == [[True] * 4] * 2


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", [iht.hard_threshold, iht.threshold_mask])
def test_negative_budget_is_refused(fn: object) -> None:
    with pytest.raises(ValueError, match="-1"):
        fn(torch.ones(3), -1)  # type: ignore[operator]


@pytest.mark.parametrize("fn", [iht.hard_threshold, iht.threshold_mask])
@pytest.mark.parametrize("s", [2.5, 3.0, True, "2", None])
def test_non_integer_budget_is_refused(fn: object, s: object) -> None:
    with pytest.raises(TypeError, match=re.escape(repr(s))):
        fn(torch.ones(4), s)  # type: ignore[operator]


@pytest.mark.parametrize("fn", [iht.hard_threshold, iht.threshold_mask])
def test_nan_input_is_refused(fn: object) -> None:
    with pytest.raises(ValueError, match="NaN"):
        fn(torch.tensor([[1.0, 2.0], [math.nan, 0.0]]), 1)  # type: ignore[operator]


def test_scalar_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one dimension"):
        iht.hard_threshold(torch.tensor(1.0), 1)


def test_check_sparsity_names_value_and_range() -> None:
    assert check_sparsity(3, 5) == 3
    assert check_sparsity(np.int32(5), 5) == 5
    with pytest.raises(ValueError, match=r"0\.\.5.*got 6"):
        check_sparsity(6, 5)
    with pytest.raises(ValueError, match="got -2"):
        check_sparsity(-2, 5)
    with pytest.raises(TypeError, match=r"0\.\.5.*got 3\.0"):
        check_sparsity(3.0, 5)
    with pytest.raises(TypeError, match="got False"):
        check_sparsity(False, 5)


# --------------------------------------------------------------------------- flatten


def test_flatten_unflatten_round_trip() -> None:
    a = torch.arange(6.0).reshape(2, 3)
    b = torch.tensor([10.0, 11.0])
    flat = flatten([a, b])
    assert flat.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 11.0]
    a2, b2 = torch.zeros(2, 3), torch.zeros(2)
    unflatten_(flat * 2, [a2, b2])
    assert torch.equal(a2, 2 * a)
    assert torch.equal(b2, 2 * b)
    with pytest.raises(ValueError, match="8 entries"):
        unflatten_(flat, [torch.zeros(3)])
    with pytest.raises(ValueError):
        flatten([])


# ------------------------------------------------------- the budget with a per-tensor minimum
@st.composite
def segmented(draw: st.DrawFn) -> tuple[torch.Tensor, int, list[int], list[int]]:
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    total = sum(sizes)
    # Few distinct values, so ties are common; dyadic, so sums of squares are exact.
    values = draw(
        st.lists(
            st.sampled_from([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0]), min_size=total, max_size=total
        )
    )
    minimum = [draw(st.integers(0, n + 1)) for n in sizes]
    floor = sum(min(m, n) for m, n in zip(minimum, sizes, strict=True))
    s = draw(st.integers(floor, total))
    return torch.tensor(values, dtype=torch.float64), s, sizes, minimum


@given(segmented())
def test_minimum_per_tensor_projection_is_the_best_point_of_the_set(
    case: tuple[torch.Tensor, int, list[int], list[int]],
) -> None:
    x, s, sizes, minimum = case
    keep = iht.threshold.top_s_mask_with_minimum(x, s, sizes, minimum)
    assert int(keep.sum()) == s  # exactly s kept (some may be zeros), like H_s
    counts = [int(part.sum()) for part in keep.split(sizes)]
    assert all(c >= min(m, n) for c, m, n in zip(counts, minimum, sizes, strict=True))
    best, _ = reference.best_support_with_minimum(x.tolist(), s, sizes, minimum)
    assert float((x[keep] ** 2).sum()) == best  # no point of the set is closer to x
    # Idempotent: projecting the projection keeps it.
    point = torch.where(keep, x, 0.0)
    again = iht.threshold.top_s_mask_with_minimum(point, s, sizes, minimum)
    assert torch.equal(torch.where(again, point, 0.0), point)


def test_minimum_per_tensor_examples_and_ties() -> None:
    x = torch.tensor([9.0, 8.0, 7.0, 0.1, 0.2])
    plain = iht.threshold_mask(x, 3)
    assert plain.tolist() == [True, True, True, False, False]  # the second tensor dies
    keep = iht.threshold.top_s_mask_with_minimum(x, 3, [3, 2], [0, 1])
    assert keep.tolist() == [True, True, False, False, True]  # it keeps its largest
    tied = iht.threshold.top_s_mask_with_minimum(torch.ones(6), 3, [3, 3], [1, 1])
    assert tied.tolist() == [True, True, False, True, False, False]  # smaller indices win
    with pytest.raises(iht.errors.InvalidValueError, match="cannot keep the minimums"):
        iht.threshold.top_s_mask_with_minimum(x, 1, [3, 2], [1, 1])
