"""Models the command line builds: a linear layer or an MLP for tabular classification."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .errors import InvalidValueError

__all__ = ["ACTIVATIONS", "build_model", "parse_hidden"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


def parse_hidden(text: str) -> tuple[int, ...]:
    """Parse hidden layer widths "64,32" -> (64, 32); "" -> () (a linear model)."""
    text = text.strip()
    if not text:
        return ()
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InvalidValueError(
            f"hidden sizes must be positive integers like 64,32, got {text!r}"
        ) from None
    if any(w < 1 for w in widths):
        raise InvalidValueError(f"hidden sizes must be positive integers like 64,32, got {text!r}")
    return widths


def build_model(
    n_features: int, n_classes: int, hidden: Sequence[int] = (), *, activation: str = "relu"
) -> nn.Sequential:
    """A linear classifier (``hidden=()``) or an MLP: Linear -> act -> ... -> Linear.

    Parameters keep PyTorch's default initialisation; ``model.parameters()`` order is layer by
    layer, weight then bias, which is the flat order H_s uses.
    """
    if activation not in ACTIVATIONS:
        raise InvalidValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    width = n_features
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)
