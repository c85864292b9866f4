"""Stop requests (Ctrl-C, SIGTERM, SIGHUP) taken at a step boundary, never inside a step.

An update stopped half-way leaves parameters that belong to no step: a checkpoint of them
would resume a run the uninterrupted one never passes through. Within :class:`StopAtStep`
the signals only record the request; :meth:`StopAtStep.check`, called between steps, raises
it (:class:`KeyboardInterrupt`, or :class:`~iht.errors.Terminated` for SIGTERM/SIGHUP). A
second Ctrl-C raises at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from ..errors import Terminated

__all__ = ["StopAtStep"]

_SIGNALS = tuple(name for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopAtStep:
    """Record stop signals inside the block; raise them at :meth:`check` (or at the end)."""

    def __init__(self) -> None:
        self.requested: tuple[str, int] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopAtStep:
        if threading.current_thread() is threading.main_thread():  # signals: main thread only
            for name in _SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._record)
        return self

    def _record(self, number: int, frame: FrameType | None) -> None:
        if self.requested is not None and number == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.requested = (signal.Signals(number).name, number)

    def check(self) -> None:
        """Raise the recorded stop request, if any."""
        if self.requested is None:
            return
        name, number = self.requested
        if number == getattr(signal, "SIGINT", None):
            raise KeyboardInterrupt
        raise Terminated(name, number)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
        if kind is None:
            self.check()
