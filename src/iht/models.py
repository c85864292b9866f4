"""Models the command line builds: a linear layer, an MLP, or a small CNN for signals and images.

Every model is an ``nn.Sequential`` taking flat rows (N, d): a CNN starts with an
``nn.Unflatten`` to the example's shape, so the same data and training loop serve all three.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .errors import InvalidValueError

__all__ = ["ACTIVATIONS", "MODELS", "build_cnn", "build_model", "parse_hidden"]

#: The kinds of model :func:`build_model` makes.
MODELS = ("mlp", "cnn")

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
    n_features: int,
    n_classes: int,
    hidden: Sequence[int] = (),
    *,
    activation: str = "relu",
    kind: str = "mlp",
    input_shape: Sequence[int] | None = None,
) -> nn.Sequential:
    """A linear classifier (``hidden=()``), an MLP (Linear -> act -> ... -> Linear), or, with
    ``kind="cnn"``, the small CNN of :func:`build_cnn` (``hidden[0]`` channels, default 25).

    Parameters keep PyTorch's default initialisation; ``model.parameters()`` order is layer by
    layer, weight then bias, which is the flat order H_s uses.

    Raises:
        InvalidValueError: an unknown activation or kind, or a CNN without an input shape.
    """
    if activation not in ACTIVATIONS:
        raise InvalidValueError(
            f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
        )
    if kind not in MODELS:
        raise InvalidValueError(f"model must be one of {', '.join(MODELS)}, got {kind!r}")
    if kind == "cnn":
        if input_shape is None:
            raise InvalidValueError(
                "a CNN needs data with a shape (signals or images: mnist1d, digits)"
            )
        channels = hidden[0] if hidden else 25
        return build_cnn(tuple(input_shape), n_classes, channels=channels, activation=activation)
    layers: list[nn.Module] = []
    width = n_features
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def build_cnn(
    input_shape: tuple[int, ...], n_classes: int, *, channels: int = 25, activation: str = "relu"
) -> nn.Sequential:
    """A small CNN for flat rows holding (C, L) signals or (C, H, W) images.

    Signals: the MNIST-1D benchmark's CNN (Greydanus & Kobak): Conv1d(C, c, 5, stride 2,
    padding 1), then twice Conv1d(c, c, 3, stride 2, padding 1), each followed by the
    activation, then Linear to the classes (c = 25 on MNIST-1D: P = 5,210). Images:
    Conv2d(C, c, 3, padding 1), Conv2d(c, c, 3, stride 2, padding 1), then Linear.
    """
    act = ACTIVATIONS[activation]
    if len(input_shape) == 2:
        convs: list[nn.Module] = [
            nn.Conv1d(input_shape[0], channels, 5, stride=2, padding=1),
            act(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            act(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            act(),
        ]
    elif len(input_shape) == 3:
        convs = [
            nn.Conv2d(input_shape[0], channels, 3, padding=1),
            act(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            act(),
        ]
    else:
        raise InvalidValueError(f"a CNN takes (C, L) or (C, H, W) inputs, got shape {input_shape}")
    body = nn.Sequential(nn.Unflatten(1, input_shape), *convs, nn.Flatten())
    with torch.no_grad():
        width = body(torch.zeros(1, math.prod(input_shape))).shape[1]
    return nn.Sequential(*body, nn.Linear(width, n_classes))
