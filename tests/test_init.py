"""Sparse initialisation: exact support size, uniform supports, explicit randomness."""

from __future__ import annotations

import itertools
import math

import pytest
import reference
import torch
from torch import nn

import iht


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dense_tensors(seed: int = 0) -> list[torch.Tensor]:
    """Two tensors (P = 6 + 4 = 10) with no zero entry."""
    gen = _gen(seed)
    return [
        torch.rand(2, 3, generator=gen, dtype=torch.float64) + 0.5,
        -torch.rand(4, generator=gen, dtype=torch.float64) - 0.5,
    ]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize("s", [0, 1, 4, 9, 10])
def test_sparse_init_keeps_exactly_s_entries(s: int) -> None:
    tensors = _dense_tensors()
    before = _flat(tensors).clone()
    mask = iht.sparse_init_(tensors, s, generator=_gen(1))
    after = _flat(tensors)
    assert mask.dtype == torch.bool and mask.shape == (10,)
    assert int(mask.sum()) == s
    assert int((after != 0).sum()) == s
    # The kept entries keep their values; the mask is exactly the support.
    assert torch.equal(after != 0, mask)
    assert torch.equal(after[mask], before[mask])
    assert tensors[0].shape == (2, 3) and tensors[1].shape == (4,)


def test_sparse_init_on_a_model() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    iht.reset_parameters_(model, generator=_gen(2))
    P = sum(p.numel() for p in model.parameters())
    assert P == 67
    assert all(bool((p != 0).all()) for p in model.parameters())  # default init: no zeros
    iht.sparse_init_(model.parameters(), 11, generator=_gen(3))
    assert sum(int((p != 0).sum()) for p in model.parameters()) == 11
    assert all(p.requires_grad for p in model.parameters())  # still trainable leaves


def test_every_index_is_chosen_with_frequency_s_over_p() -> None:
    # Binomial(n, s/P) counts for each of the P = 10 indices, across the two tensors.
    n, s, P = 3000, 3, 10
    gen = _gen(4)
    counts = torch.zeros(P)
    for _ in range(n):
        tensors = [torch.ones(2, 3), torch.ones(4)]
        iht.sparse_init_(tensors, s, generator=gen)
        counts += _flat(tensors)
    expected = n * s / P
    bound = reference.binomial_bound(n, s / P, z=4.5)  # ~25 draws of 900: generous
    assert float(counts.sum()) == n * s
    assert float((counts - expected).abs().max()) < bound, counts.tolist()


def test_supports_are_uniform_over_all_subsets() -> None:
    # Uniform among the C(5, 2) = 10 supports: chi-square with 9 degrees of freedom.
    n, P, s = 5000, 5, 2
    gen = _gen(5)
    subsets = {c: 0 for c in itertools.combinations(range(P), s)}
    for _ in range(n):
        mask = iht.random_support(P, s, generator=gen)
        subsets[tuple(int(i) for i in mask.nonzero().flatten())] += 1
    expected = n / len(subsets)
    chi2 = sum((c - expected) ** 2 / expected for c in subsets.values())
    # P(chi2_9 > 33.7) = 1e-4; the seed is fixed, so this is a regression check too.
    assert chi2 < 33.7, subsets
    assert min(subsets.values()) > 0


def test_random_support_has_exactly_s_distinct_indices() -> None:
    gen = _gen(6)
    for size, s in [(1, 0), (1, 1), (7, 3), (50, 50)]:
        mask = iht.random_support(size, s, generator=gen)
        assert mask.dtype == torch.bool and mask.shape == (size,)
        assert int(mask.sum()) == s


def test_same_seed_same_support_other_seed_other_support() -> None:
    masks = []
    for seed in (7, 7, 8):
        tensors = _dense_tensors()
        masks.append(iht.sparse_init_(tensors, 4, generator=_gen(seed)))
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])


def test_global_rng_is_not_used_with_a_generator() -> None:
    state = torch.get_rng_state()
    iht.sparse_init_(_dense_tensors(), 4, generator=_gen(9))
    iht.random_support(10, 3, generator=_gen(9))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("s", "error", "pattern"),
    [
        (-1, ValueError, r"0\.\.10.*got -1"),
        (11, ValueError, r"0\.\.10.*got 11"),
        (2.5, TypeError, r"got 2\.5"),
        (3.0, TypeError, r"got 3\.0"),
        (True, TypeError, "got True"),
    ],
)
def test_out_of_range_budget_is_refused_and_changes_nothing(
    s: object, error: type[Exception], pattern: str
) -> None:
    tensors = _dense_tensors()
    before = _flat(tensors).clone()
    with pytest.raises(error, match=pattern):
        iht.sparse_init_(tensors, s, generator=_gen(10))  # type: ignore[arg-type]
    assert torch.equal(_flat(tensors), before)


# --------------------------------------------------------------------------- reset_parameters_


def test_reset_parameters_is_reproducible_and_leaves_global_rng() -> None:
    # Built before the RNG snapshot: nn.Linear's constructor itself draws from the global RNG.
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))

    def draw(seed: int) -> torch.Tensor:
        iht.reset_parameters_(model, generator=_gen(seed))
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    state = torch.get_rng_state()
    a, b, c = draw(11), draw(11), draw(12)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # nn.Linear's default: every entry uniform on (-1/sqrt(in), 1/sqrt(in)).
    first = a[: 4 * 5 + 5]
    assert float(first.abs().max()) <= 1 / math.sqrt(4)
    assert bool((first != 0).all())


def test_reset_parameters_needs_a_resettable_module() -> None:
    with pytest.raises(ValueError, match=r"ReLU.*reset_parameters"):
        iht.reset_parameters_(nn.ReLU(), generator=_gen(0))


# --------------------------------------------------------------------------- linear_init


@pytest.mark.parametrize(("seed", "fan_in", "fan_out"), [(0, 4, 3), (7, 5, 2), (21, 64, 10)])
def test_linear_init_equals_pytorch_default(seed: int, fan_in: int, fan_out: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.Linear(fan_in, fan_out)
    expected = torch.cat([layer.weight.detach().reshape(-1), layer.bias.detach()]).double()
    got = iht.init.linear_init(1, fan_in, fan_out, generator=_gen(seed))
    assert got.dtype == torch.float64
    assert got.shape == (1, fan_in * fan_out + fan_out)
    assert torch.equal(got[0], expected)


def test_linear_init_draws_independent_rows_in_the_default_range() -> None:
    draws = iht.init.linear_init(500, 4, 3, generator=_gen(1))
    assert draws.shape == (500, 15)
    assert float(draws.abs().max()) <= 0.5  # 1 / sqrt(4)
    assert len({tuple(row.tolist()) for row in draws}) == 500
    # Uniform on (-1/2, 1/2): mean 0, variance 1/12, per coordinate.
    assert float(draws.mean(dim=0).abs().max()) < 4.5 * math.sqrt(1 / 12 / 500)
    torch.testing.assert_close(
        draws.var(dim=0), torch.full((15,), 1 / 12, dtype=torch.float64), rtol=0.2, atol=0
    )
