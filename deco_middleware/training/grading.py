"""Grading of rejection-sampled replies: the evaluation's grader, so training keeps exactly the
samples the evaluation would count as solved.

The rule (``deco_middleware.evaluation.extraction``): the text inside ``<answer>...</answer>`` when
present, else the whole reply; the last number when the reference answer is a number, else that
text; the task's own ``score_answer`` decides. An earlier training-only grader tried a dozen
candidate spans and kept the best score; it disagreed with the evaluation on a measured share of
samples (docs/eval_protocol.md), so one rule now serves both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..evaluation.extraction import grade_with_scorer

# Only full marks count: reasoning-gym gives partial credit (e.g. 0.01 for a well-formed wrong answer).
CORRECT_SCORE = 1.0


def grade_reply(reply: str, entry: dict[str, Any], score_answer: Callable[[str, dict[str, Any]], float]) -> float:
    """The task's own score of the answer read from ``reply`` (see the module docstring)."""
    return grade_with_scorer(reply, entry, score_answer)


def is_correct(reply: str, entry: dict[str, Any], score_answer: Callable[[str, dict[str, Any]], float]) -> bool:
    return grade_reply(reply, entry, score_answer) >= CORRECT_SCORE


__all__ = ["CORRECT_SCORE", "grade_reply", "is_correct"]
