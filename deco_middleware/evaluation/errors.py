"""Errors of the evaluation harness (defined in :mod:`deco_middleware.errors`; re-exported here)."""

from __future__ import annotations

from ..errors import TaskSpecError, UnknownStrategyError

__all__ = ["TaskSpecError", "UnknownStrategyError"]
