"""No wrong answers from the library, and nothing written from a malformed file (issue 11).

Each case is one the adversarial pass found; each class behind it is tested with varied
inputs: autograd through H_s on both sides of the compiled path's size, integer dtypes
against brute force, parameters listed twice, labels beyond float64's integers, and sparse
exports with hostile indices (which segfaulted torch before they were checked).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import iht
from iht.data import load_csv
from iht.errors import InvalidTypeError, InvalidValueError
from iht.export import FORMAT, load_sparse, save_sparse
from iht.threshold import COMPILED_THRESHOLD


# -- autograd through hard_threshold ------------------------------------------------------
@pytest.mark.parametrize("size", [100, COMPILED_THRESHOLD - 1, COMPILED_THRESHOLD, 200_000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_threshold_gradient_reaches_only_kept_entries(size: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(size)
    x = torch.randn(size, generator=gen, dtype=dtype, requires_grad=True)
    weights = torch.randn(size, generator=gen, dtype=dtype)
    out = iht.hard_threshold(x, 30)
    (out * weights).sum().backward()
    kept = out.detach() != 0
    assert int(kept.sum()) == 30
    assert x.grad is not None
    # d/dx_i sum_j w_j H_s(x)_j = w_i on the kept set, 0 elsewhere (the set is locally constant)
    assert torch.equal(x.grad, torch.where(kept, weights, torch.zeros((), dtype=dtype)))
    # the value is the one without a graph (the compiled path, for the long vectors)
    assert torch.equal(out.detach(), iht.hard_threshold(x.detach(), 30))


# -- integer and other dtypes --------------------------------------------------------------
def _brute_force_keep(values: list[int], s: int) -> list[bool]:
    order = sorted(range(len(values)), key=lambda i: (-abs(values[i]), i))
    kept = set(order[:s])
    return [i in kept for i in range(len(values))]


INT_RANGES = {
    torch.int8: (-128, 127),
    torch.int16: (-(2**15), 2**15 - 1),
    torch.int32: (-(2**31), 2**31 - 1),
    torch.int64: (-(2**63) + 1, 2**63 - 1),
    torch.uint8: (0, 255),
}


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(list(INT_RANGES)))
def test_integer_hard_threshold_is_exact(data: st.DataObject, dtype: torch.dtype) -> None:
    lo, hi = INT_RANGES[dtype]
    edge = st.sampled_from([lo, hi, 0, 1, -1 if lo < 0 else 2])
    values = data.draw(st.lists(st.integers(lo, hi) | edge, min_size=1, max_size=12))
    s = data.draw(st.integers(0, len(values)))
    x = torch.tensor(values, dtype=dtype)
    out = iht.hard_threshold(x, s)
    keep = _brute_force_keep(values, s)
    assert out.tolist() == [v if k else 0 for v, k in zip(values, keep, strict=True)]


def test_int8_keeps_minus_128_over_minus_3() -> None:
    x = torch.tensor([-3, -128, 5], dtype=torch.int8)
    assert iht.hard_threshold(x, 1).tolist() == [0, -128, 0]


@pytest.mark.parametrize(
    "x",
    [torch.tensor([True, False]), torch.tensor([1 + 1j, 2j]), torch.tensor([1.0, 2.0]).to_sparse()],
    ids=["bool", "complex", "sparse"],
)
def test_non_real_or_sparse_tensors_are_refused(x: torch.Tensor) -> None:
    with pytest.raises(InvalidTypeError, match="hard_threshold needs"):
        iht.hard_threshold(x, 1)


def test_int64_minimum_is_refused_by_name() -> None:
    with pytest.raises(InvalidValueError, match=r"-2\*\*63"):
        iht.hard_threshold(torch.tensor([-(2**63), 1]), 1)


# -- a parameter listed twice -------------------------------------------------------------
def test_a_parameter_listed_twice_is_refused_everywhere() -> None:
    w = nn.Parameter(torch.arange(1.0, 11.0))
    with pytest.warns(UserWarning), pytest.raises(InvalidValueError, match="listed twice"):
        iht.IHT([w, w], lr=0.1, sparsity=3)
    with pytest.raises(InvalidValueError, match="listed twice"):
        iht.sparse_init_([w, w], 3)
    with pytest.warns(UserWarning), pytest.raises(InvalidValueError, match="listed twice"):
        iht.SparseOptimizer(torch.optim.Adam([w, w]), sparsity=3)
    opt = iht.IHT([w], lr=0.1, sparsity=3)
    with pytest.raises(ValueError):  # torch's own check across groups, or ours
        opt.add_param_group({"params": [w]})
    assert int((w != 0).sum()) == 10  # nothing was changed on the way


def test_parameters_sharing_memory_are_refused_disjoint_views_are_not() -> None:
    w = nn.Parameter(torch.arange(1.0, 11.0))
    with pytest.raises(InvalidValueError, match="shares memory"):
        iht.IHT([w, nn.Parameter(w.data)], lr=0.1, sparsity=3)
    with pytest.raises(InvalidValueError, match="shares memory"):
        iht.sparse_init_([w, nn.Parameter(w.data[2:5])], 3)
    flat = torch.randn(20)
    halves = [nn.Parameter(flat[:10]), nn.Parameter(flat[10:])]
    iht.IHT(halves, lr=0.1, sparsity=3)  # one buffer, two disjoint ranges: fine


def test_sparse_gradients_are_named_by_both_optimizers() -> None:
    emb = nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    for opt in (
        iht.IHT(emb.parameters(), lr=0.1, sparsity=3),
        iht.SparseOptimizer(torch.optim.SGD(emb.parameters(), lr=0.1), sparsity=3),
    ):
        with pytest.raises((InvalidValueError, InvalidTypeError), match=r"\(10, 3\)"):
            opt.step()


# -- labels beyond float64's integers -----------------------------------------------------
def test_large_integer_labels_stay_distinct(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("a,y\n1,9007199254740993\n2,9007199254740992\n3,5\n4,5\n")
    data = load_csv(path, target="y")
    assert data.y.tolist() == [2, 1, 0, 0]
    assert data.class_names == ("5", "9007199254740992", "9007199254740993")


def test_float_labels_beyond_2_53_are_read_as_text(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("a,y\n1,9007199254740993.0\n2,9007199254740992.0\n3,5.0\n")
    assert len(load_csv(path, target="y").class_names) == 3


# -- malformed sparse exports ---------------------------------------------------------------
def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _write(path: Path, tensors: dict[str, object]) -> None:
    torch.save({"format": FORMAT, "tensors": tensors}, path)


def _valid_tensors(model: nn.Module) -> dict[str, object]:
    return {
        n: p.detach().to_sparse_csr() if p.dim() == 2 else p.detach().to_sparse_coo()
        for n, p in model.named_parameters()
    }


def _assert_refused_unchanged(model: nn.Module, path: Path, match: str | None = None) -> None:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(InvalidValueError, match=match):
        load_sparse(model, path)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


@settings(max_examples=40, deadline=None)
@given(indices=st.lists(st.integers(-(2**40), 2**40) | st.integers(-3, 5), min_size=1, max_size=4))
def test_coo_indices_out_of_range_are_refused(tmp_path_factory, indices: list[int]) -> None:
    model, path = _model(), tmp_path_factory.mktemp("coo") / "m.pt"
    tensors = _valid_tensors(model)
    index = torch.tensor([indices])
    values = torch.ones(len(indices))
    tensors["0.bias"] = torch.sparse_coo_tensor(index, values, (3,), check_invariants=False)
    _write(path, tensors)
    if all(0 <= i < 3 for i in indices):
        load_sparse(model, path)  # a valid file loads: duplicates are summed, as torch does
        expected = torch.zeros(3).index_add_(0, torch.tensor(indices), values)
        assert torch.equal(model[0].bias.detach(), expected)
    else:
        _assert_refused_unchanged(model, path, "not a readable")


@pytest.mark.parametrize(
    "crow", [[0, 5, 5, 10**6], [0, 2, 1, 4], [-1, 1, 2, 4], [0, 1, 2]], ids=str
)
def test_csr_with_bad_row_pointers_is_refused(tmp_path: Path, crow: list[int]) -> None:
    model, path = _model(), tmp_path / "m.pt"
    tensors = _valid_tensors(model)
    tensors["0.weight"] = torch.sparse_csr_tensor(
        torch.tensor(crow),
        torch.tensor([0, 1, 2, 3]),
        torch.ones(4),
        (3, 4),
        check_invariants=False,
    )
    _write(path, tensors)
    _assert_refused_unchanged(model, path)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda t: t.update({"2.bias": torch.zeros(5).to_sparse_coo()}), "shape"),
        (
            lambda t: t.update({"2.bias": torch.tensor([float("nan"), 0.0]).to_sparse_coo()}),
            "non-finite",
        ),
        (lambda t: t.update({"2.bias": torch.tensor([1, 0]).to_sparse_coo()}), "dtype"),
        (lambda t: t.update({"2.bias": [1.0, 0.0]}), "not a tensor"),
        (lambda t: t.pop("2.bias"), "missing"),
    ],
    ids=["shape", "nan", "int", "list", "missing"],
)
def test_a_bad_last_tensor_writes_nothing(tmp_path: Path, change, match: str) -> None:
    model, path = _model(), tmp_path / "m.pt"
    tensors = _valid_tensors(model)
    for t in tensors.values():  # every earlier tensor differs from the model's
        t.values().add_(1.0) if t.layout == torch.sparse_csr else t._values().add_(1.0)  # type: ignore[union-attr]
    change(tensors)
    _write(path, tensors)
    _assert_refused_unchanged(model, path, match)


def test_pickles_devices_fifos_and_bombs_are_refused(tmp_path: Path) -> None:
    model = _model()
    pickled = tmp_path / "pickle.pt"
    torch.save({"format": FORMAT, "tensors": {}, "x": np.float64}, pickled)  # a global: no
    _assert_refused_unchanged(model, pickled, "not a readable")
    _assert_refused_unchanged(model, Path("/dev/zero"), "not a regular file")
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    _assert_refused_unchanged(model, fifo, "not a regular file")  # and it does not hang
    bomb = tmp_path / "bomb.pt"
    with open(bomb, "wb") as handle:
        handle.truncate(1 << 30)  # sparse on disk: 1 GiB of zeros
    _assert_refused_unchanged(model, bomb, "bytes")
    good = tmp_path / "good.pt"
    save_sparse(model, good)
    load_sparse(_model(), good)  # the round trip still works
