"""Errors of the evaluation harness; each also inherits the built-in it stands in for."""

from __future__ import annotations

from ..errors import DecoError, UnknownStrategyError


class TaskSpecError(DecoError, ValueError):
    """A ``--task`` spec, or a line of a JSONL task file, cannot be read."""


__all__ = ["TaskSpecError", "UnknownStrategyError"]
