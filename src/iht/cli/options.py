"""The options several commands share, each defined once, with defaults read from the configs.

A default shown by ``--help`` is the default of the config dataclass field the option fills
(:func:`default_of`), so the help and the run cannot disagree. Options whose text needs parsing
(``--hidden``, ``--levels``, ``--lr``) are parsed here into the typed value the config takes;
a bad value is click's one-line usage error, naming the option.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..data import BUILTIN_DATASETS
from ..errors import InvalidValueError
from ..models import ACTIVATIONS, parse_hidden
from ..sparse_optimizer import SELECTIONS

__all__ = [
    "activation_option",
    "config_option",
    "data_option",
    "default_of",
    "hidden_option",
    "levels_option",
    "lr_option",
    "n_monte_option",
    "no_progress_option",
    "no_report_option",
    "out_option",
    "overwrite_option",
    "parse_levels",
    "seed_option",
    "selection_option",
    "target_option",
    "test_fraction_option",
    "threads_option",
]

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]


def default_of(config: type[Any], name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config``."""
    for field in dataclasses.fields(config):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            break
    raise KeyError(f"{config.__name__} has no field {name} with a default")


def config_option(
    config: type[Any], field: str, kind: Any, help: str, **extra: Any
) -> Decorator[Any]:
    """``--field-name`` for the config field ``field``: its default, shown by ``--help``."""
    return click.option(
        "--" + field.replace("_", "-"),
        field,
        type=kind,
        default=default_of(config, field),
        show_default=True,
        help=help,
        **extra,
    )


def parse_levels(text: str) -> tuple[int, ...]:
    """Sparsity levels of the study: "1-14", "1,2,5", "3-5,9".

    Raises:
        InvalidValueError: not a list of integers and ranges.
    """
    levels: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                levels.extend(range(lo, hi + 1))
            else:
                levels.append(int(part))
    except ValueError:
        raise InvalidValueError(
            f"{text!r} is not a list of levels; write e.g. 1-14 or 1,5,10"
        ) from None
    return tuple(levels)


def _parsed(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback applying ``parse`` to the text given (None passes through)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except InvalidValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


def _lr(text: str) -> float | None:
    """None for "auto", else a positive finite number."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise InvalidValueError(f"{text!r} is not 'auto' or a positive number")
    return value


def data_option(default: str | None) -> Decorator[Any]:
    """``--data``: a built-in data set or a CSV file; required when ``default`` is None."""
    text = f"A built-in data set ({', '.join(BUILTIN_DATASETS)}) or a CSV file (header row, "
    text += "numeric features, with --target)."
    if default is None:
        return click.option("--data", required=True, help=text)
    return click.option("--data", default=default, show_default=True, help=text)


target_option = click.option(
    "--target",
    help="The target column of a CSV file: class labels (strings or integers), or numbers "
    "with --task regression.",
)


def hidden_option() -> Decorator[Any]:
    """``--hidden 64,32`` as a tuple of widths (empty: a linear model)."""
    return click.option(
        "--hidden",
        default="",
        callback=_parsed(parse_hidden),
        help="Hidden layer widths, e.g. 64,32.  [default: none (a linear model)]",
    )


def activation_option(config: type[Any]) -> Decorator[Any]:
    return config_option(
        config, "activation", click.Choice(list(ACTIVATIONS)), "The hidden layers' activation."
    )


def lr_option(config: type[Any], help: str) -> Decorator[Any]:
    """``--lr auto|NUMBER``: None (1/L_hat, the config's default) or the number."""
    if default_of(config, "lr") is not None:
        raise TypeError(f"{config.__name__}.lr must default to None (auto)")
    return click.option("--lr", default="auto", show_default=True, callback=_parsed(_lr), help=help)


def n_monte_option(config: type[Any]) -> Decorator[Any]:
    return config_option(
        config, "n_monte", click.IntRange(min=1), "Monte Carlo draws of each L_hat_2s estimate."
    )


def test_fraction_option(config: type[Any]) -> Decorator[Any]:
    return config_option(
        config,
        "test_fraction",
        click.FloatRange(min=0, max=1, min_open=True, max_open=True),
        "Share of the rows held out for testing, in (0, 1).",
    )


def seed_option(config: type[Any], help: str) -> Decorator[Any]:
    return config_option(config, "seed", click.IntRange(min=0), help)


def threads_option(config: type[Any]) -> Decorator[Any]:
    """``--threads N`` (0: leave torch's setting alone, i.e. None in the config)."""
    return config_option(
        config,
        "threads",
        click.IntRange(min=0),
        "Torch CPU threads while training; 0 leaves torch's setting alone (one is "
        "fastest for small models, even more so on a busy machine).",
        callback=lambda ctx, param, value: value or None,
    )


def levels_option(default_text: str) -> Decorator[Any]:
    """``--levels 1-14`` as a tuple of levels; None when not given."""
    return click.option(
        "--levels",
        callback=_parsed(parse_levels),
        help=f"Sparsity levels, e.g. 1-14 or 1,5,10.  [default: {default_text}]",
    )


def out_option(default_text: str) -> Decorator[Any]:
    return click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        help=f"Output directory.  [default: {default_text}]",
    )


def overwrite_option(help: str) -> Decorator[Any]:
    return click.option("--overwrite", is_flag=True, help=help)


selection_option = click.option(
    "--selection",
    type=click.Choice(SELECTIONS),
    help="How the projection after a base optimizer's step picks the support: magnitude "
    "(H_s, the s largest |theta|) or fisher (the s largest F theta^2, F the running mean of "
    "squared gradients; entry budgets).  [default: fisher after momentum, adam, adamw; "
    "magnitude otherwise]",
)
no_progress_option = click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
no_report_option = click.option("--no-report", is_flag=True, help="Do not draw the report.")
