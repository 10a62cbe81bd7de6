"""Pull a final answer out of a free-form reply and grade it with a reasoning-gym task's own scorer.

A 135M chat model answers in prose ("5 times 3 is 15."). The task scorers compare one answer
string exactly, so a few well-defined candidate spans are tried and the best score is kept. The
same rule is used for building training data and for evaluation, so every decoding strategy is
graded alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_ANSWER_IS = re.compile(r"(?:answer|result)\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_QUOTED = re.compile(r"[\"“']([^\"”']+)[\"”']")

# A reply is correct only when a candidate matches exactly; reasoning-gym's default scorer gives
# partial credit for an answer merely *contained* in a longer string, which is not a solved problem.
CORRECT_SCORE = 1.0


def _clean(text: str) -> str:
    return text.strip().strip(".").strip().strip("*").strip()


def answer_candidates(reply: str) -> list[str]:
    """Candidate answer spans of ``reply``, most specific first (duplicates removed)."""
    candidates: list[str] = []
    candidates += [m for m in _BOXED.findall(reply)[-1:]]
    answer_is = _ANSWER_IS.findall(reply)
    if answer_is:
        tail = answer_is[-1].splitlines()[0]
        candidates.append(tail)
        candidates += _BOLD.findall(tail)[-1:]
    candidates += _BOLD.findall(reply)[-1:]
    numbers = _NUMBER.findall(reply)
    if numbers:
        candidates.append(numbers[-1].replace(",", ""))
    lines = [line for line in reply.splitlines() if line.strip()]
    if lines:
        last = lines[-1]
        candidates.append(last)
        if ":" in last:
            candidates.append(last.rsplit(":", 1)[1])
        if "=" in last:
            candidates.append(last.rsplit("=", 1)[1])
    candidates += _QUOTED.findall(reply)[-1:]
    candidates.append(reply)
    seen: list[str] = []
    for candidate in candidates:
        cleaned = _clean(candidate)
        if cleaned and cleaned not in seen:
            seen.append(cleaned)
    return seen


def grade_reply(reply: str, entry: dict[str, Any], score_answer: Callable[[str, dict[str, Any]], float]) -> float:
    """Best score of any candidate span of ``reply`` under the task's ``score_answer``."""
    best = 0.0
    for candidate in answer_candidates(reply):
        try:
            score = float(score_answer(candidate, entry))
        except Exception:  # a task scorer that chokes on a malformed candidate scores it 0
            score = 0.0
        best = max(best, score)
        if best >= CORRECT_SCORE:
            break
    return best


def is_correct(reply: str, entry: dict[str, Any], score_answer: Callable[[str, dict[str, Any]], float]) -> bool:
    return grade_reply(reply, entry, score_answer) >= CORRECT_SCORE
