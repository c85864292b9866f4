"""Exceptions raised by iht; user errors are ValueError/TypeError subclasses."""

from __future__ import annotations

__all__ = ["EstimateError", "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """A loss, gradient or update was NaN or infinite; nothing was modified."""


class EstimateError(ValueError):
    """The L_2s estimate is 0, infinite or NaN, so no learning rate follows from it."""
