"""Errors of the evaluation harness; each also inherits the built-in it stands in for."""

from __future__ import annotations

from ..errors import DecoError


class TaskSpecError(DecoError, ValueError):
    """A ``--task`` spec, or a line of a JSONL task file, cannot be read."""


class UnknownStrategyError(DecoError, ValueError):
    """A strategy name is not one the harness knows."""


class ResultCacheError(DecoError, ValueError):
    """The ``--cache`` file of finished problems cannot be used (a folder, not writable)."""


__all__ = ["ResultCacheError", "TaskSpecError", "UnknownStrategyError"]
