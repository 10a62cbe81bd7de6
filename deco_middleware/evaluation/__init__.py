"""``deco eval``: learned decoding against every decoding baseline, on reasoning-gym or JSONL tasks.

A module per concept: :mod:`.tasks` (specs, problems, grading), :mod:`.extraction` (answer
extraction and match rules), :mod:`.metrics` (pass@k), :mod:`.strategies` (what is compared),
:mod:`.processors` (baseline logits processors, per-row seeded sampling), :mod:`.runner`
(batched generation, resumable cache), :mod:`.report` (JSON, markdown, chart).
"""

from __future__ import annotations

from .errors import TaskSpecError, UnknownStrategyError
from .extraction import extract_number, normalize_text, score_completion
from .metrics import pass_at_k
from .strategies import STRATEGY_NAMES, Decoding, EvalStrategy, parse_eval_strategy
from .tasks import Problem, Task, load_task

__all__ = [
    "Decoding",
    "EvalStrategy",
    "Problem",
    "STRATEGY_NAMES",
    "Task",
    "TaskSpecError",
    "UnknownStrategyError",
    "extract_number",
    "load_task",
    "normalize_text",
    "parse_eval_strategy",
    "pass_at_k",
    "score_completion",
]
