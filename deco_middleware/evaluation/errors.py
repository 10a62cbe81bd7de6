"""Errors of the evaluation harness (defined in :mod:`deco_middleware.errors`; re-exported here)."""

from __future__ import annotations

from ..errors import ResultCacheError, TaskSpecError, UnknownStrategyError


__all__ = ["ResultCacheError", "TaskSpecError", "UnknownStrategyError"]
