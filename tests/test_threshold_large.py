"""The sampling selection used for long vectors is exact: it equals topk or declines."""

from __future__ import annotations

import pytest
import reference
import torch

from iht.threshold import (
    COMPILED_THRESHOLD,
    SAMPLING_THRESHOLD,
    _kth_largest_by_sampling,
    hard_threshold,
    threshold_mask,
)


@pytest.mark.parametrize("density", [1e-6, 0.01, 0.3, 0.5, 0.999])
def test_sampling_selection_equals_topk(density: float) -> None:
    mag = torch.randn(SAMPLING_THRESHOLD + 12345, generator=torch.Generator().manual_seed(1)).abs()
    s = max(1, int(density * mag.numel()))
    found = _kth_largest_by_sampling(mag, s)
    assert found is not None  # continuous data: the bracket holds
    assert found == torch.topk(mag, s).values.min()


def test_sampling_selection_with_heavy_ties_is_exact_or_declines() -> None:
    values = torch.randint(-3, 4, (SAMPLING_THRESHOLD,), generator=torch.Generator().manual_seed(2))
    mag = values.float().abs()
    for s in (10, 1000, SAMPLING_THRESHOLD // 2, SAMPLING_THRESHOLD - 1):
        found = _kth_largest_by_sampling(mag, s)
        assert found is None or found == torch.topk(mag, s).values.min()


def test_hard_threshold_on_a_long_vector_with_ties_matches_the_reference_rule() -> None:
    x = torch.randint(
        -50, 51, (SAMPLING_THRESHOLD + 7,), generator=torch.Generator().manual_seed(3)
    ).double()
    s = 300_001
    got = hard_threshold(x, s)
    kept = got != 0
    assert int(kept.sum()) <= s
    # The tie rule on the long path, checked through its consequences (a pure-Python sort of
    # a million entries is too slow): nothing dropped beats the smallest kept magnitude t, and
    # among entries equal to t the kept ones are the first by index.
    t = x.abs()[kept].min()
    assert bool((x.abs()[~kept] <= t).all())
    tied = (x.abs() == t).nonzero().squeeze(1)
    kept_tied = tied[kept[tied]]
    assert torch.equal(kept_tied, tied[: kept_tied.numel()])  # the smaller indices won
    assert int(kept.sum()) == s
    small = torch.tensor([3.0, -1.0, 3.0, 2.0])
    assert torch.equal(hard_threshold(small, 1), reference.hard_threshold(small, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("values", ["normal", "ties"])
def test_compiled_flat_path_equals_the_row_path(dtype: torch.dtype, values: str) -> None:
    """A long flat CPU vector takes the compiled selection; one row of a batch takes topk."""
    gen = torch.Generator().manual_seed(4)
    n = COMPILED_THRESHOLD + 1001
    if values == "normal":
        x = torch.randn(n, generator=gen, dtype=dtype)
    else:
        x = torch.randint(-20, 21, (n,), generator=gen).to(dtype)
    for s in (1, 999, n // 3, n - 1):
        flat, row = hard_threshold(x, s), hard_threshold(x[None], s)[0]
        assert torch.equal(flat, row)
        assert torch.equal(threshold_mask(x, s), threshold_mask(x[None], s)[0])
