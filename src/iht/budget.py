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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InvalidValueError
from .init import sparse_init_
from .optim import IHT
from .sparse_optimizer import SparseOptimizer
from .structured import parse_nm, parse_structure
from .threshold import top_s_mask

__all__ = [
    "ALLOCATIONS",
    "BUDGETED",
    "Budget",
    "Pool",
    "apportion",
    "budgeted_size",
    "check_sparsity_form",
    "check_sparsity_list_form",
    "is_bias",
    "layers_of",
    "make_budget",
    "parse_sparsity",
    "parse_sparsity_list",
    "plan_budget",
    "plan_structured_budget",
    "weight_names",
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
        raise InvalidValueError(
            f"sparsity must be a count, a fraction or a percentage, got {value!r}"
        )
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

    ``sparsity`` equals ``size`` for a dense pool (``dense=True``). A structured pool
    (``structure`` ``"group"`` or an N:M pattern such as ``"2:4"``, :mod:`iht.structured`)
    counts its budget in ``units``: ``sparsity`` rows (output neurons, channels) of ``units``
    for groups; for N:M the nonzeros the pattern keeps.
    """

    name: str
    params: tuple[str, ...]
    size: int
    sparsity: int
    dense: bool = False
    min_per_tensor: int = 0
    structure: str = "entry"
    units: int = 0

    @property
    def max_nonzeros(self) -> int:
        """The most nonzeros the pool can hold: s entries, or s rows' entries."""
        if self.structure in ("group", "group+bias"):
            return self.sparsity * (self.size // max(1, self.units))
        return self.sparsity


@dataclass(frozen=True)
class Budget:
    """How a budget of s nonzeros is shared among a model's parameters.

    Attributes:
        mode: ``"global"`` (one pool) or ``"per_layer"`` (a pool per layer).
        sparsity: s, the total budget (dense pools not counted).
        exclude_biases: biases are dense, outside the budget.
        pools: the pools in parameter order; dense ones have ``sparsity == size``.
        allocation: how s was shared among layers: ``global``, ``uniform``, ``proportional``
            or ``erk`` (see :func:`plan_budget`).
        covers: which parameters are under the budget: ``all`` or ``weights``.
        structure: ``entry`` (H_s), ``group`` (whole neurons / channels; ``sparsity`` then
            counts rows) or an N:M pattern (``sparsity`` is the nonzeros it keeps); see
            :func:`plan_structured_budget`.
    """

    mode: str
    sparsity: int
    exclude_biases: bool
    pools: tuple[Pool, ...]
    allocation: str = "global"
    covers: str = "all"
    structure: str = "entry"

    @property
    def budgeted(self) -> int:
        """Number of parameters under the budget."""
        return sum(p.size for p in self.pools if not p.dense)

    @property
    def max_nonzeros(self) -> int:
        """The most nonzeros an iterate can have: s (or its rows' entries) plus every dense
        parameter."""
        if self.structure == "entry":
            return self.sparsity + sum(p.size for p in self.pools if p.dense)
        return sum(p.size if p.dense else p.max_nonzeros for p in self.pools)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def param_groups(self, model: nn.Module) -> tuple[list[dict[str, Any]], int | None]:
        """IHT param groups and the optimizer's global sparsity for this budget."""
        named = dict(model.named_parameters())
        groups: list[dict[str, Any]] = []
        for pool in self.pools:
            group: dict[str, Any] = {"params": [named[n] for n in pool.params]}
            if pool.dense or self.mode != "global":
                group["sparsity"] = pool.sparsity
            if pool.structure != "entry" and not pool.dense:
                group["structure"] = pool.structure
                if ":" in pool.structure:
                    group["sparsity"] = None  # an N:M pattern is its own budget
            if pool.min_per_tensor:
                group["min_nonzeros"] = pool.min_per_tensor
            groups.append(group)
        return groups, (self.sparsity if self.mode == "global" else None)

    def optimizer(self, model: nn.Module, *, lr: float) -> IHT:
        """An :class:`iht.IHT` enforcing this budget."""
        groups, sparsity = self.param_groups(model)
        return IHT(groups, lr=lr, sparsity=sparsity)

    def wrap(
        self,
        model: nn.Module,
        make: Callable[[list[dict[str, Any]]], torch.optim.Optimizer],
        **options: Any,
    ) -> SparseOptimizer:
        """A :class:`iht.SparseOptimizer` enforcing this budget over a base optimizer.

        Args:
            model: the model the budget was planned for.
            make: builds the base optimizer from param groups, e.g.
                ``lambda groups: torch.optim.AdamW(groups, lr=1e-2)``.
            options: for :class:`iht.SparseOptimizer` (``schedule``, ``threshold_every``, ...).
        """
        groups, sparsity = self.param_groups(model)
        return SparseOptimizer(make(groups), sparsity=sparsity, **options)

    @torch.no_grad()
    def sparse_init_(self, model: nn.Module, *, generator: torch.Generator | None) -> None:
        """Keep a uniformly random support of each pool's budget; nothing outside the budget is
        touched (dense pools, frozen parameters). With a minimum per tensor, each tensor first
        keeps that many random entries, then the rest of the budget is drawn over all of them."""
        named = dict(model.named_parameters())
        for pool in self.pools:
            if pool.dense:
                continue
            tensors = [named[n] for n in pool.params]
            if pool.structure != "entry":
                _structured_init_(tensors, pool, generator)
                continue
            if not pool.min_per_tensor:
                sparse_init_(tensors, pool.sparsity, generator=generator)
                continue
            forced = []
            for tensor in tensors:
                m = min(pool.min_per_tensor, tensor.numel())
                forced.append(torch.randperm(tensor.numel(), generator=generator) < m)
            flat_forced = torch.cat(forced)
            rest = torch.nonzero(~flat_forced).squeeze(1)
            extra = pool.sparsity - int(flat_forced.sum())
            chosen = rest[torch.randperm(rest.numel(), generator=generator)[: max(0, extra)]]
            keep = flat_forced.clone()
            keep[chosen] = True
            for tensor, kept in zip(tensors, keep.split([t.numel() for t in tensors]), strict=True):
                tensor.mul_(kept.view(tensor.shape).to(tensor.dtype))

    def masks(self, model: nn.Module, scores: Tensor, *, random: bool) -> Tensor:
        """The flat mask (``model.parameters()`` order, trainable ones) of the point of this
        budget's set that ``scores`` (n, P) pick, one row per draw: each pool keeps its s
        largest scores (entries), or its structure's best rows / N:M pattern; dense pools
        keep everything. With ``random`` the scores are uniform keys and the mask is a
        uniformly random point of the set's supports; otherwise they are the values to
        project (the mask of the projection)."""
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        offsets, start = {}, 0
        for name, p in params:
            offsets[name] = (start, start + p.numel(), p.shape)
            start += p.numel()
        mask = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
        for pool in self.pools:
            if pool.dense:
                continue
            spans = [offsets[n] for n in pool.params]
            for row in range(scores.shape[0]):
                parts = [scores[row, lo:hi].reshape(shape) for lo, hi, shape in spans]
                if not random:
                    parts = [part.abs() for part in parts]
                structure = parse_structure(pool.structure)
                if structure is None:
                    kept = top_s_mask(
                        torch.cat([part.reshape(-1) for part in parts]), pool.sparsity
                    )
                else:
                    kept = structure.mask(parts, pool.sparsity)
                at = 0
                for lo, hi, _ in spans:
                    mask[row, lo:hi] = kept[at : at + hi - lo]
                    at += hi - lo
        return mask

    def nonzeros(self, model: nn.Module) -> dict[str, int]:
        """Nonzeros of every pool, by pool name."""
        named = dict(model.named_parameters())
        return {
            pool.name: sum(int((named[n] != 0).sum()) for n in pool.params) for pool in self.pools
        }


def _structured_init_(
    tensors: list[nn.Parameter], pool: Pool, generator: torch.Generator | None
) -> None:
    """Keep a uniformly random point of a structured pool's set: ``pool.sparsity`` random
    rows (groups), or N random entries of every block of M (N:M)."""
    structure = parse_structure(pool.structure)
    assert structure is not None
    scores = [torch.rand(t.shape, generator=generator).to(t.device) for t in tensors]
    mask = structure.mask(scores, pool.sparsity)
    for tensor, kept in zip(tensors, mask.split([t.numel() for t in tensors]), strict=True):
        tensor.mul_(kept.view(tensor.shape).to(tensor.dtype))


#: How a budget is shared among layers (see :func:`plan_budget`).
ALLOCATIONS = ("global", "uniform", "proportional", "erk")
#: Which parameters are under the budget.
BUDGETED = ("all", "weights")
_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)


def weight_names(model: nn.Module) -> set[str]:
    """The weights of the model's Linear and Conv layers (what ``budgeted="weights"`` takes)."""
    return {
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if isinstance(module, _WEIGHTED) and getattr(module, "weight", None) is not None
    }


def plan_budget(
    model: nn.Module,
    sparsity: int,
    *,
    per_layer: bool = False,
    exclude_biases: bool = False,
    allocation: str | None = None,
    budgeted: str = "all",
    min_per_tensor: int = 0,
) -> Budget:
    """Share a budget of ``sparsity`` nonzeros among the model's parameters.

    Args:
        model: the model; its layers are :func:`layers_of`.
        sparsity: s, an integer in 1..the budgeted size (see :func:`parse_sparsity`).
        per_layer: the same as ``allocation="proportional"``.
        exclude_biases: keep biases dense and outside the budget.
        allocation: ``"global"`` (one budget over every budgeted parameter, the paper's),
            or a budget per layer: ``"proportional"`` (shares proportional to the layer's
            size: every layer the same density), ``"uniform"`` (the same number of nonzeros
            in every layer, capped at its size) or ``"erk"`` (Erdos-Renyi-Kernel, as RigL:
            density proportional to (sum of the weight's dimensions) / (their product),
            layers that would exceed density 1 dense); shares sum to s exactly.
        budgeted: ``"all"`` (every trainable parameter, biases counted, as the paper) or
            ``"weights"`` (the weights of Linear and Conv layers; biases, norm layers,
            embeddings and every other parameter dense, in a pool of their own).
        min_per_tensor: every budgeted tensor keeps at least this many nonzeros (its
            projection stays exact, :func:`iht.threshold.top_s_mask_with_minimum`).

    Returns:
        A :class:`Budget`: the pools in parameter order, the dense pool last.

    Raises:
        InvalidValueError: ``sparsity`` outside 1..budgeted size, nothing to budget, an
            unknown allocation or ``budgeted``, or minimums that do not fit in s.
    """
    chosen = allocation if allocation is not None else ("proportional" if per_layer else "global")
    if chosen not in ALLOCATIONS:
        raise InvalidValueError(
            f"allocation must be one of {', '.join(ALLOCATIONS)}, got {chosen!r}"
        )
    if budgeted not in BUDGETED:
        raise InvalidValueError(f"budgeted must be one of {', '.join(BUDGETED)}, got {budgeted!r}")
    if (
        isinstance(min_per_tensor, bool)
        or not isinstance(min_per_tensor, int)
        or min_per_tensor < 0
    ):
        raise InvalidValueError(f"min_per_tensor must be an integer >= 0, got {min_per_tensor!r}")
    weights = weight_names(model)

    def under_budget(name: str) -> bool:
        if budgeted == "weights":
            return name in weights
        return not (exclude_biases and is_bias(name))

    layers = layers_of(model)
    chosen_params = [
        (layer, [(n, p) for n, p in params if under_budget(n)]) for layer, params in layers
    ]
    chosen_params = [(layer, params) for layer, params in chosen_params if params]
    total = sum(p.numel() for _, params in chosen_params for _, p in params)
    if total == 0:
        raise InvalidValueError(f"{type(model).__name__} has no parameters to put under a budget")
    if isinstance(sparsity, bool) or not isinstance(sparsity, int) or not 1 <= sparsity <= total:
        raise InvalidValueError(f"sparsity must be an integer in 1..{total}, got {sparsity!r}")
    floors = sum(min(min_per_tensor, p.numel()) for _, params in chosen_params for _, p in params)
    if floors > sparsity:
        raise InvalidValueError(
            f"a minimum of {min_per_tensor} nonzeros per tensor needs {floors}, more than "
            f"the budget s = {sparsity}"
        )
    pools: list[Pool] = []
    if chosen == "global":
        names = tuple(n for _, params in chosen_params for n, _ in params)
        name = "all" if budgeted == "all" and not exclude_biases else "weights"
        pools.append(Pool(name, names, total, sparsity, min_per_tensor=min_per_tensor))
    else:
        sizes = [sum(p.numel() for _, p in params) for _, params in chosen_params]
        shares = _layer_shares(chosen, sparsity, sizes, [params for _, params in chosen_params])
        for (layer, params), size, share in zip(chosen_params, sizes, shares, strict=True):
            floor = sum(min(min_per_tensor, p.numel()) for _, p in params)
            pools.append(
                Pool(
                    layer,
                    tuple(n for n, _ in params),
                    size,
                    max(share, floor),
                    min_per_tensor=min_per_tensor,
                )
            )
    dense = [(n, p) for _, params in layers for n, p in params if not under_budget(n)]
    if dense:
        size = sum(p.numel() for _, p in dense)
        name = "biases" if budgeted == "all" else "dense"
        pools.append(Pool(name, tuple(n for n, _ in dense), size, size, dense=True))
    return Budget(
        mode="global" if chosen == "global" else "per_layer",
        sparsity=sparsity,
        exclude_biases=exclude_biases or budgeted == "weights",
        pools=tuple(pools),
        allocation=chosen,
        covers=budgeted,
    )


def make_budget(
    model: nn.Module,
    sparsity: str | int | float,
    *,
    allocation: str = "global",
    budgeted: str = "weights",
    min_per_tensor: int = 0,
) -> Budget:
    """The usual budget for a deep network, in one call: :func:`plan_budget` with the weights
    of Linear and Conv layers under the budget and every other parameter dense.

    ``sparsity`` is a count, a fraction or a percentage of the budgeted weights
    (:func:`parse_sparsity`). Example: ``make_budget(model, "10%").wrap(model, make_adamw)``.
    """
    total = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n in weight_names(model) and p.requires_grad
    )
    if budgeted == "all":
        total = budgeted_size(model)
    return plan_budget(
        model,
        parse_sparsity(sparsity, max(total, 1)),
        allocation=allocation,
        budgeted=budgeted,
        min_per_tensor=min_per_tensor,
    )


def plan_structured_budget(
    model: nn.Module, structure: str, sparsity: str | int | float | None = None
) -> Budget:
    """A structured budget for a feed-forward model (an ``nn.Sequential`` of layers).

    - ``"neuron"`` / ``"channel"`` / ``"group"``: the weight and bias of every Linear and
      Conv layer but the last (its outputs are the predictions) are a pool of whole neurons
      (a weight row with its bias entry: structure ``"group+bias"``); ``sparsity`` (a count,
      fraction or percentage of those rows, :func:`parse_sparsity`) is shared among the
      layers in proportion to their rows, at least one each. The projection keeps each
      layer's neurons of largest norm (:func:`iht.structured.group_mask`); everything else
      is dense. A dropped neuron outputs a(0), so :func:`iht.shrink.shrink` removes it
      exactly, before a Linear or a Conv alike.
    - an N:M pattern (``"2:4"``): every Linear and Conv weight whose rows (inputs x kernel)
      are a multiple of M keeps N of every M consecutive inputs (:func:`iht.structured.nm_mask`);
      the pattern is the budget, so ``sparsity`` must be None. Weights whose rows do not fit
      the pattern, and every other parameter, are dense (see the dense pool's names).

    Raises:
        InvalidValueError: an unknown structure, a missing or extra ``sparsity``, a model with
            no layer the structure applies to.
    """
    weights = weight_names(model)
    layers = [(layer, params) for layer, params in layers_of(model)]
    weighted = [
        (layer, name, p) for layer, params in layers for name, p in params if name in weights
    ]
    if structure in ("neuron", "channel", "group"):
        if sparsity is None:
            raise InvalidValueError(
                f"a {structure} budget needs --sparsity: how many (or what share) of the "
                "hidden layers' rows to keep"
            )
        grouped = weighted[:-1]
        if not grouped:
            raise InvalidValueError(
                f"a {structure} budget needs a hidden layer: the last layer's outputs are the "
                "predictions and are never dropped"
            )
        rows = [p.shape[0] for _, _, p in grouped]
        kept = parse_sparsity(sparsity, sum(rows))
        if kept < len(grouped):
            raise InvalidValueError(
                f"a budget of {kept} rows cannot keep one row in each of the {len(grouped)} "
                "structured layers; keep more"
            )
        shares = [1 + extra for extra in apportion(kept - len(grouped), [r - 1 for r in rows])]
        named = dict(model.named_parameters())
        pools = []
        for (layer, name, p), share in zip(grouped, shares, strict=True):
            bias_name = name[: -len("weight")] + "bias"
            bias = named.get(bias_name)
            names: tuple[str, ...]
            if bias is not None and bias.shape == (p.shape[0],):  # the neuron goes whole
                names, size, shape = (name, bias_name), p.numel() + bias.numel(), "group+bias"
            else:
                names, size, shape = (name,), p.numel(), "group"
            pools.append(Pool(layer, names, size, share, structure=shape, units=p.shape[0]))
        kind = "group"
    elif isinstance(structure, str) and ":" in structure:
        if sparsity is not None:
            raise InvalidValueError(
                f"an N:M pattern fixes the budget ({structure}: its N of every M weights); "
                "leave out --sparsity"
            )
        n, m = parse_nm(structure)
        fitting = [
            (layer, name, p)
            for layer, name, p in weighted
            if p.dim() >= 2 and (p[0].numel() % m == 0)
        ]
        if not fitting:
            raise InvalidValueError(
                f"no Linear or Conv weight of this model has rows (inputs x kernel) that are a "
                f"multiple of M = {m}; {structure} applies to none"
            )
        pools = [
            Pool(
                layer,
                (name,),
                p.numel(),
                p.numel() // m * n,
                structure=f"{n}:{m}",
                units=p.numel(),
            )
            for layer, name, p in fitting
        ]
        kind = f"{n}:{m}"
    else:
        raise InvalidValueError(
            f"structure must be entry, neuron, channel or an N:M pattern such as 2:4, "
            f"got {structure!r}"
        )
    structured = {name for pool in pools for name in pool.params}
    dense = [(n, p) for _, params in layers for n, p in params if n not in structured]
    if dense:
        size = sum(p.numel() for _, p in dense)
        pools.append(Pool("dense", tuple(n for n, _ in dense), size, size, dense=True))
    return Budget(
        mode="per_layer",
        sparsity=sum(p.sparsity for p in pools if not p.dense),
        exclude_biases=True,
        pools=tuple(pools),
        allocation="proportional",
        covers="weights",
        structure=kind,
    )


def _layer_shares(
    allocation: str, total: int, sizes: list[int], params: list[list[tuple[str, nn.Parameter]]]
) -> list[int]:
    """Integer shares of ``total`` among layers, summing to it, each within 0..size."""
    if allocation == "proportional":
        return apportion(total, sizes)
    if allocation == "uniform":
        return _water_fill(total, sizes, [1.0] * len(sizes))
    # ERK: density of layer l proportional to sum(dims) / prod(dims) of its weight (RigL).
    raw = []
    for group in params:
        weight = max((p for _, p in group), key=lambda p: p.dim())
        raw.append(sum(weight.shape) / max(1, weight.numel()))
    return _water_fill(total, sizes, [r * n for r, n in zip(raw, sizes, strict=True)])


def _water_fill(total: int, sizes: list[int], weights: list[float]) -> list[int]:
    """Shares proportional to ``weights``, capped at each size, the excess given to the rest
    (iteratively), rounded by largest remainders so that they sum to ``total``."""
    capped = [False] * len(sizes)
    while True:
        free = total - sum(n for n, c in zip(sizes, capped, strict=True) if c)
        mass = sum(w for w, c in zip(weights, capped, strict=True) if not c)
        ideal = [
            float(n) if c else (free * w / mass if mass > 0 else 0.0)
            for n, w, c in zip(sizes, weights, capped, strict=True)
        ]
        over = [
            i for i, (x, n) in enumerate(zip(ideal, sizes, strict=True)) if not capped[i] and x > n
        ]
        if not over:
            break
        for i in over:
            capped[i] = True
    shares = [min(n, math.floor(x)) for x, n in zip(ideal, sizes, strict=True)]
    order = sorted(range(len(sizes)), key=lambda i: (-(ideal[i] - math.floor(ideal[i])), i))
    for i in order:
        if sum(shares) >= total:
            break
        if shares[i] < sizes[i]:
            shares[i] += 1
    return shares
