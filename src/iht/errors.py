"""The errors iht raises on purpose: one base class, :class:`IhtError`.

Every error the project raises for bad input or an unusable situation is an :class:`IhtError`.
The command line turns these, and only these, into one line ``iht: error: ...`` with exit code
2; any other exception is a bug and keeps its traceback. Each class also derives from the
built-in exception a Python caller would expect (``ValueError``, ``TypeError``,
``FloatingPointError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "DataError",
    "EstimateError",
    "IhtError",
    "InvalidTypeError",
    "InvalidValueError",
    "NonFiniteError",
    "StoreError",
    "Terminated",
]


class IhtError(Exception):
    """Base class of every error iht raises on purpose; its message is one line for the user."""


class InvalidValueError(IhtError, ValueError):
    """An argument, option or config field has a value outside what is allowed (it says which)."""


class InvalidTypeError(IhtError, TypeError):
    """An argument has the wrong type (the message names it and the type expected)."""


class DataError(InvalidValueError):
    """The data cannot be used as given (a bad CSV file, too few rows, ...)."""


class StoreError(IhtError, ValueError):
    """A results directory cannot be used as asked (another config, unwritable, damaged, ...)."""


class BackendError(IhtError, ValueError):
    """A study backend cannot be used as asked (unknown, not installed, cannot connect)."""


class NonFiniteError(IhtError, FloatingPointError):
    """A loss, gradient or update was NaN or infinite; nothing was modified."""


class EstimateError(IhtError, ValueError):
    """The L_2s estimate is 0, infinite or NaN, so no learning rate follows from it."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, SIGHUP): handled as Ctrl-C is, what is finished
    is kept. ``signal_name`` says which signal; the command line exits with 128 + its number."""

    def __init__(self, signal_name: str, signal_number: int) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.signal_number = signal_number
