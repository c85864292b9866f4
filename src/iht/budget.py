r"""How s nonzeros are shared among a model's parameters, and the forms a budget is given in.

A :class:`Budget` says how the s nonzeros are shared (:func:`plan_budget`):

* ``global`` (default, the paper's convention): one budget s over every parameter, biases
  included;
* ``per_layer``: every layer (a module holding parameters directly, e.g. an ``nn.Linear``:
  weight + bias) gets its own budget, proportional to its size, summing to s
  (:func:`apportion`);
* ``exclude_biases``: biases are kept dense and outside the budget (s counts weights only).

Dense parameters live in a param group whose own ``"sparsity"`` equals its size: H_s with
s >= size keeps everything, so they take plain gradient steps inside the same optimizer.

Every command reads a budget with :func:`parse_sparsity` (a count, a fraction or a
percentage, rounded the same way everywhere) or, for several, :func:`parse_sparsity_list`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .errors import InvalidValueError
from .init import sparse_init_
from .optim import IHT

__all__ = [
    "Budget",
    "Pool",
    "apportion",
    "budgeted_size",
    "check_sparsity_form",
    "check_sparsity_list_form",
    "is_bias",
    "layers_of",
    "parse_sparsity",
    "parse_sparsity_list",
    "plan_budget",
]


def layers_of(model: nn.Module) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """The model's layers: every module that holds trainable parameters directly.

    Returns ``[(layer_name, [(parameter_name, parameter), ...]), ...]`` in
    ``model.parameters()`` order (a module's own parameters are contiguous in that order);
    parameter names are the full dotted names (``"0.weight"``). Parameters held by the root
    module itself form the layer ``"(root)"``.
    """
    layers = []
    for module_name, module in model.named_modules():
        own = [
            (f"{module_name}.{name}" if module_name else name, p)
            for name, p in module.named_parameters(recurse=False)
            if p.requires_grad
        ]
        if own:
            layers.append((module_name or "(root)", own))
    return layers


def is_bias(name: str) -> bool:
    """Whether a dotted parameter name is a bias (its last part is ``bias``)."""
    return name.rsplit(".", 1)[-1] == "bias"


def budgeted_size(model: nn.Module, *, exclude_biases: bool = False) -> int:
    """How many parameters the budget covers: all of them, or all but the biases."""
    return sum(
        p.numel()
        for _, params in layers_of(model)
        for name, p in params
        if not (exclude_biases and is_bias(name))
    )


def parse_sparsity(value: str | int | float, total: int) -> int:
    """The budget s as a count of nonzeros, from any of the forms every command accepts.

    - a count: an integer, or text of an integer (``100``, ``"100"``), in 1..total;
    - a fraction of ``total`` in (0, 1]: a float, or text with a point or an exponent
      (``0.1``, ``"0.1"``, ``"1e-2"``, ``"1.0"`` for all of them);
    - a percentage in (0, 100]: text ending in ``%`` (``"10%"``).

    A fraction f gives round-half-up(f * total), and at least 1. The text ``"1"`` is the count
    1, not 100%.

    Raises:
        InvalidValueError: not one of these forms, a count outside 1..total, a fraction
            outside (0, 1] or a percentage outside (0, 100].

    Example:
        >>> parse_sparsity("10%", 25), parse_sparsity(0.1, 25), parse_sparsity("3", 25)
        (3, 3, 3)
    """
    count, fraction, shown, percent = _read_sparsity(value)
    if fraction is None:
        return _check_count_in(count, total)
    return _fraction_to_count(fraction, total, shown=shown, percent=percent)


def check_sparsity_form(value: str | int | float) -> None:
    """Refuse a budget that no ``total`` could make valid: not a count, a fraction in (0, 1] or
    a percentage in (0, 100] (a count's range is checked by :func:`parse_sparsity`).

    Raises:
        InvalidValueError: as :func:`parse_sparsity` would for any total.
    """
    _, fraction, shown, percent = _read_sparsity(value)
    if fraction is not None:
        _fraction_to_count(fraction, 1, shown=shown, percent=percent)


def _read_sparsity(value: object) -> tuple[int, float | None, str, bool]:
    """(count, None, text, False) for a count; (0, fraction, text, is_percentage) otherwise."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidValueError(f"sparsity must be a count, a fraction or a percentage, got {value!r}")
    if isinstance(value, int):
        return value, None, str(value), False
    if isinstance(value, float):
        return 0, value, repr(value), False
    text = value.strip()
    percent = text.endswith("%")
    try:
        if percent:
            return 0, float(text[:-1]) / 100, text, True
        if "." in text or "e" in text.lower():
            return 0, float(text), text, False
        return int(text), None, text, False
    except ValueError:
        raise InvalidValueError(
            f"sparsity {text!r} is not a count (100), a fraction (0.1) or a percentage (10%)"
        ) from None


def parse_sparsity_list(text: str, total: int) -> tuple[int, ...]:
    """Several budgets: comma-separated :func:`parse_sparsity` forms or ranges of counts (1-5).

    Returns the counts sorted, without repeats.

    Raises:
        InvalidValueError: an item that is none of these, an empty range, a level outside
            1..total.

    Example:
        >>> parse_sparsity_list("3,5,8", 15), parse_sparsity_list("10%,0.5", 650)
        ((3, 5, 8), (65, 325))
        >>> parse_sparsity_list("1-3", 15)
        (1, 2, 3)
    """
    return tuple(sorted({s for item in _items(text) for s in item.counts(total)}))


def check_sparsity_list_form(text: str) -> None:
    """Refuse a list that no ``total`` could make valid (see :func:`check_sparsity_form`)."""
    for item in _items(text):
        item.check_form()


@dataclass(frozen=True)
class _Item:
    """One item of a list of budgets: a range of counts, or a single budget."""

    text: str
    first: int | None = None  # a range first..last of counts
    last: int | None = None

    def counts(self, total: int) -> list[int]:
        if self.first is None or self.last is None:
            return [parse_sparsity(self.text, total)]
        return [_check_count_in(s, total) for s in range(self.first, self.last + 1)]

    def check_form(self) -> None:
        if self.first is None:
            check_sparsity_form(self.text)


def _items(text: str) -> list[_Item]:
    items = []
    for raw in str(text).split(","):
        item = raw.strip()
        lo, dash, hi = item.partition("-")
        if dash and lo.strip().isdigit() and hi.strip().isdigit():
            if int(lo) > int(hi):
                raise InvalidValueError(f"the sparsity range {item!r} is empty")
            items.append(_Item(item, int(lo), int(hi)))
        else:
            items.append(_Item(item))
    return items


def _check_count_in(count: int, total: int) -> int:
    if not 1 <= count <= total:
        raise InvalidValueError(
            f"sparsity {count} is out of range: a count of nonzeros must be in 1..{total} "
            "(the budgeted parameters), or give a fraction like 0.1 or a percentage like 10%"
        )
    return count


def _fraction_to_count(fraction: float, total: int, *, shown: str, percent: bool = False) -> int:
    if not 0 < fraction <= 1:  # NaN fails too
        allowed = "(0%, 100%]" if percent else "(0, 1]"
        raise InvalidValueError(
            f"sparsity {shown} is out of range: a {'percentage' if percent else 'fraction'} "
            f"of the {total} budgeted parameters must be in {allowed}"
        )
    return max(1, min(total, math.floor(fraction * total + 0.5)))


def apportion(total: int, sizes: Sequence[int]) -> list[int]:
    """Split ``total`` into integer shares proportional to ``sizes`` that sum to ``total``.

    Largest remainders (Hamilton's method): each share is floor(total * size / sum(sizes)),
    then the units left over go one each to the largest fractional parts (ties: the earlier
    entry). No share exceeds its size when total <= sum(sizes). A share can be 0 when
    ``total`` is small.
    """
    whole = sum(sizes)
    if whole <= 0:
        raise InvalidValueError("apportion needs sizes with a positive sum")
    if not 0 <= total <= whole:
        raise InvalidValueError(f"total must be in 0..{whole}, got {total}")
    # Integer arithmetic: total * size = quotient * whole + remainder, exactly.
    shares = [total * size // whole for size in sizes]
    remainders = [total * size % whole for size in sizes]
    order = sorted(range(len(sizes)), key=lambda i: (-remainders[i], i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


@dataclass(frozen=True)
class Pool:
    """A set of parameters sharing one budget (H_s acts on their concatenation).

    ``sparsity`` equals ``size`` for a dense pool (``dense=True``).
    """

    name: str
    params: tuple[str, ...]
    size: int
    sparsity: int
    dense: bool = False


@dataclass(frozen=True)
class Budget:
    """How a budget of s nonzeros is shared among a model's parameters."""

    mode: str  # "global" or "per_layer"
    sparsity: int  # s, the total budget (dense pools not counted)
    exclude_biases: bool
    pools: tuple[Pool, ...]

    @property
    def budgeted(self) -> int:
        """Number of parameters under the budget."""
        return sum(p.size for p in self.pools if not p.dense)

    @property
    def max_nonzeros(self) -> int:
        """The most nonzeros an iterate can have: s plus every dense parameter."""
        return self.sparsity + sum(p.size for p in self.pools if p.dense)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def param_groups(self, model: nn.Module) -> tuple[list[dict[str, Any]], int | None]:
        """IHT param groups and the optimizer's global sparsity for this budget."""
        named = dict(model.named_parameters())
        if self.mode == "global":
            groups: list[dict[str, Any]] = []
            for pool in self.pools:
                group: dict[str, Any] = {"params": [named[n] for n in pool.params]}
                if pool.dense:
                    group["sparsity"] = pool.size
                groups.append(group)
            return groups, self.sparsity
        return [
            {"params": [named[n] for n in pool.params], "sparsity": pool.sparsity}
            for pool in self.pools
        ], None

    def optimizer(self, model: nn.Module, *, lr: float) -> IHT:
        """An :class:`iht.IHT` enforcing this budget."""
        groups, sparsity = self.param_groups(model)
        return IHT(groups, lr=lr, sparsity=sparsity)

    @torch.no_grad()
    def sparse_init_(self, model: nn.Module, *, generator: torch.Generator | None) -> None:
        """Keep a uniformly random support of each pool's budget (dense pools untouched)."""
        named = dict(model.named_parameters())
        for pool in self.pools:
            if not pool.dense:
                sparse_init_([named[n] for n in pool.params], pool.sparsity, generator=generator)

    def nonzeros(self, model: nn.Module) -> dict[str, int]:
        """Nonzeros of every pool, by pool name."""
        named = dict(model.named_parameters())
        return {
            pool.name: sum(int((named[n] != 0).sum()) for n in pool.params) for pool in self.pools
        }


def plan_budget(
    model: nn.Module, sparsity: int, *, per_layer: bool = False, exclude_biases: bool = False
) -> Budget:
    """Share a budget of ``sparsity`` nonzeros among the model's parameters.

    Args:
        model: the model; its layers are :func:`layers_of`.
        sparsity: s, an integer in 1..:func:`budgeted_size` (see :func:`parse_sparsity`).
        per_layer: give every layer its own budget proportional to its budgeted size
            (:func:`apportion`, summing to s); otherwise one global budget.
        exclude_biases: keep biases dense and outside the budget.

    Returns:
        A :class:`Budget`: the pools in parameter order, biases last in their dense pool.

    Raises:
        ValueError: ``sparsity`` outside 1..budgeted size, or nothing to budget.
    """
    layers = layers_of(model)
    budgeted = [
        (layer, [(n, p) for n, p in params if not (exclude_biases and is_bias(n))])
        for layer, params in layers
    ]
    budgeted = [(layer, params) for layer, params in budgeted if params]
    total = sum(p.numel() for _, params in budgeted for _, p in params)
    if total == 0:
        raise InvalidValueError(f"{type(model).__name__} has no parameters to put under a budget")
    if isinstance(sparsity, bool) or not isinstance(sparsity, int) or not 1 <= sparsity <= total:
        raise InvalidValueError(f"sparsity must be an integer in 1..{total}, got {sparsity!r}")
    pools: list[Pool] = []
    if per_layer:
        sizes = [sum(p.numel() for _, p in params) for _, params in budgeted]
        for (layer, params), size, share in zip(
            budgeted, sizes, apportion(sparsity, sizes), strict=True
        ):
            pools.append(Pool(layer, tuple(n for n, _ in params), size, share))
    else:
        names = tuple(n for _, params in budgeted for n, _ in params)
        pools.append(Pool("all" if not exclude_biases else "weights", names, total, sparsity))
    if exclude_biases:
        biases = [(n, p) for _, params in layers for n, p in params if is_bias(n)]
        if biases:
            size = sum(p.numel() for _, p in biases)
            pools.append(Pool("biases", tuple(n for n, _ in biases), size, size, dense=True))
    return Budget(
        mode="per_layer" if per_layer else "global",
        sparsity=sparsity,
        exclude_biases=exclude_biases,
        pools=tuple(pools),
    )
