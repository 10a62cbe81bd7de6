"""The CLI's progress display: library :class:`~deco_middleware.progress.ProgressEvent` values drawn
as rich bars and log lines, always on stderr so that stdout carries only the command's output."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column
from rich.text import Text

from ..progress import ProgressEvent


class RichProgress:
    """A progress callback: one bar per label, stage messages as log lines; a context manager.

    Without a terminal (CI, ``nohup``, pipes) bars are not drawn; each one logs its start, every
    tenth and its end instead, so a log file still shows how far a run got.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.display = Progress(TextColumn("{task.description}", markup=False, table_column=Column(overflow="fold")),
                                BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("{task.fields[info]}", markup=False), console=console,
                                disable=not console.is_terminal)
        self._bars: dict[str, Any] = {}
        self._logged: dict[str, int] = {}

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        # rich allows one live display at a time (`deco eval` draws its own): the bars stop as soon
        # as every one of them is complete, not at the end of the command.
        if self._bars:
            self.display.stop()
            for bar in self._bars.values():
                self.display.remove_task(bar)
            self._bars.clear()

    def __call__(self, event: ProgressEvent) -> None:
        if event.is_message:
            # Text, not markup: messages carry paths and names with brackets.
            self.console.log(Text(event.label + (f" ({event.info})" if event.info else "")))
            return
        if not self.console.is_terminal:
            tenth = int(10 * (event.completed or 0) / event.total) if event.total else 10
            if self._logged.get(event.label, -1) < tenth:
                self._logged[event.label] = tenth
                self.console.log(Text(f"{event.label}: {event.completed:g}/{event.total:g} {event.info}".rstrip()))
            return
        bar = self._bars.get(event.label)
        if bar is None:
            if not self._bars:
                self.display.start()
            bar = self._bars[event.label] = self.display.add_task(event.label, total=event.total, info="")
        self.display.update(bar, completed=event.completed, total=event.total, info=event.info)
        if all(task.finished for task in self.display.tasks):
            self._stop()
