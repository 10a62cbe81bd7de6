"""Progress reporting for long library calls, through a callback: the library never draws.

Provisioning the default model, exporting it to ONNX, rejection sampling, caching features and
fitting heads report :class:`ProgressEvent` values to a callback. Without one, plain lines go to
stderr (never stdout, which may carry ``--json`` output). The CLI installs a rich display
(``deco_middleware.cli.progress``) for the duration of a command with :func:`reporting`.

>>> events = []
>>> with reporting(events.append):
...     report("extracting GGUF", completed=0, total=10)
>>> events[0].label
'extracting GGUF'
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """One report. With ``total`` it is a step of a bar; without, a one-off stage message.

    Attributes:
        label: what progresses ("extracting GGUF", "sampling", ...) or the stage message itself.
        completed: units done so far (bytes, rows, batches, steps), or ``None`` for a message.
        total: units in all, or ``None`` for a message.
        info: a short free-text status (speed, loss) shown next to the bar.
    """

    label: str
    completed: float | None = None
    total: float | None = None
    info: str = ""

    @property
    def is_message(self) -> bool:
        return self.total is None


ProgressCallback = Callable[[ProgressEvent], None]


class StderrLines:
    """The default callback: stage messages, and each bar at its start, every tenth and its end, as lines."""

    def __init__(self, stream: object = None) -> None:
        self._stream = stream
        self._printed: dict[str, int] = {}

    def __call__(self, event: ProgressEvent) -> None:
        stream = self._stream or sys.stderr
        if event.is_message:
            text = event.label + (f" ({event.info})" if event.info else "")
        else:
            tenth = int(10 * (event.completed or 0) / event.total) if event.total else 10
            if self._printed.get(event.label, -1) >= tenth:
                return
            self._printed[event.label] = tenth
            if tenth >= 10:  # finished: the next bar of that name starts afresh
                del self._printed[event.label]
            text = f"{event.label}: {event.completed:g}/{event.total:g}" + (f" {event.info}" if event.info else "")
        print(f"[deco] {text}", file=stream, flush=True)  # type: ignore[call-overload]


_STDERR_LINES = StderrLines()


def silent(event: ProgressEvent) -> None:
    """A callback that shows nothing."""


_current: ContextVar[ProgressCallback | None] = ContextVar("deco_progress", default=None)


@contextmanager
def reporting(callback: ProgressCallback) -> Iterator[ProgressCallback]:
    """Send the progress of every library call inside the block to ``callback``."""
    token = _current.set(callback)
    try:
        yield callback
    finally:
        _current.reset(token)


def resolve(progress: bool | ProgressCallback | None = None) -> ProgressCallback:
    """The callback for a ``progress=`` argument: a callable is used as is, ``False`` is silent, and
    ``True``/``None`` mean the one installed with :func:`reporting` (else lines on stderr)."""
    if callable(progress):
        return progress
    if progress is False:
        return silent
    return _current.get() or _STDERR_LINES


class ProgressBar:
    """One bar's reporter: ``update(completed=...)`` or ``update(advance=...)`` sends an event."""

    def __init__(self, label: str, total: float, completed: float = 0, *,
                 progress: bool | ProgressCallback | None = None) -> None:
        self.label, self.total, self.completed = label, total, completed
        self._emit = resolve(progress)
        self._emit(ProgressEvent(label, completed, total))

    def update(self, *, completed: float | None = None, advance: float = 0, info: str = "") -> None:
        self.completed = (self.completed if completed is None else completed) + advance
        self._emit(ProgressEvent(self.label, self.completed, self.total, info))

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def report(label: str, *, completed: float | None = None, total: float | None = None, info: str = "",
           progress: bool | ProgressCallback | None = None) -> None:
    """Send one event to the callback :func:`resolve` picks for ``progress``."""
    resolve(progress)(ProgressEvent(label, completed, total, info))


__all__ = ["ProgressBar", "ProgressCallback", "ProgressEvent", "StderrLines", "report", "reporting", "resolve", "silent"]
