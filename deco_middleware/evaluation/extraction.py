"""The one answer grader: answer extraction, the three match rules of JSONL tasks, and the rule that
hands a reasoning-gym task's own ``score_answer`` one candidate answer. Training (rejection sampling)
and evaluation both grade with it.

Extraction, in order (documented in ``deco eval --help`` and the README):

1. If the completion has ``<answer>...</answer>``, only the text inside the first such tag counts.
2. ``number``: the *last* number in that text (integers, decimals, a leading minus, thousands
   separators ``1,234``). The last rather than the first because small models restate the
   question before answering (``"3 * 4 = 12"``, ``"The answer to 9 + 4 is 13."``): the first
   number is then an operand. Two numbers are equal when they differ by at most 1e-6 relatively.
3. ``exact``: the whole text, compared case-insensitively with runs of whitespace collapsed and
   surrounding whitespace, quotes and a trailing ``.``/``!`` removed.
4. ``contains``: the normalized answer occurs in the normalized text.
5. reasoning-gym tasks: :func:`candidate_answer` (the last number when the reference is a number,
   else the answer region) goes to the task's ``score_answer``, which is the authority.

:func:`answer_key` is the same extracted answer, normalised, for majority votes (maj@k).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

MATCH_RULES = ("number", "exact", "contains")

_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.IGNORECASE | re.DOTALL)
# A minus directly attached to the digits is a sign ("-8"); "9 - 4" keeps its operand positive.
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})+(?:\.\d+)?(?!\d)|(?<![\w.])-?\d+(?:\.\d+)?")
_SPACES = re.compile(r"\s+")


def answer_region(completion: str) -> str:
    """The text inside the first ``<answer>`` tag when there is one, else the whole completion."""
    tagged = _ANSWER_TAG.search(completion)
    return tagged.group(1) if tagged else completion


def parse_number(text: str) -> float | None:
    """``text`` as a number when the whole of it is one number (``"1,234"``, ``"-0.5"``), else ``None``."""
    stripped = text.strip()
    match = _NUMBER.fullmatch(stripped)
    if match is None:
        return None
    return float(stripped.replace(",", ""))


def numbers_in(text: str) -> list[float]:
    """Every number in ``text``, in order."""
    return [float(m.group(0).replace(",", "")) for m in _NUMBER.finditer(text)]


def extract_number(completion: str) -> float | None:
    """The last number of the answer region (see the module docstring), or ``None``."""
    found = numbers_in(answer_region(completion))
    return found[-1] if found else None


def normalize_text(text: str) -> str:
    """Case-folded, whitespace collapsed, surrounding quotes and a final ``.``/``!`` removed."""
    text = _SPACES.sub(" ", text).strip().casefold()
    text = text.strip("\"'`").strip()
    return text.rstrip(".!").strip()


def numbers_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def score_completion(completion: str, answer: str, match: str) -> float:
    """1.0 when ``completion`` answers ``answer`` under the ``match`` rule, else 0.0."""
    if match == "number":
        expected = parse_number(answer)
        if expected is None:
            raise ValueError(f"match='number' needs a numeric answer, got {answer!r}; use match='exact'.")
        got = extract_number(completion)
        return float(got is not None and numbers_equal(got, expected))
    region = answer_region(completion)
    if match == "exact":
        return float(normalize_text(region) == normalize_text(answer))
    if match == "contains":
        return float(normalize_text(answer) in normalize_text(region))
    raise ValueError(f"Unknown match rule {match!r}; valid: {', '.join(MATCH_RULES)}.")


def candidate_answer(completion: str, reference: str) -> str:
    """What to hand a reasoning-gym ``score_answer``: the last number when the reference is a
    number, else the answer region, stripped."""
    if parse_number(reference) is not None:
        found = numbers_in(answer_region(completion))
        if not found:
            return answer_region(completion).strip()
        return _canonical_number(found[-1])
    return answer_region(completion).strip()


def _canonical_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def answer_key(completion: str, reference: str) -> str | None:
    """The answer the grader reads from ``completion``, normalised so equal keys grade alike (for
    majority votes): the canonical last number when ``reference`` is a number, else the normalised
    answer region. ``None`` when there is no answer to read."""
    if parse_number(reference) is not None:
        found = numbers_in(answer_region(completion))
        return _canonical_number(found[-1]) if found else None
    return normalize_text(answer_region(completion)) or None


def grade_with_scorer(
    completion: str, entry: dict[str, Any], score_answer: Callable[[str, dict[str, Any]], float]
) -> float:
    """A reasoning-gym task's own score of :func:`candidate_answer` (a scorer that raises on a
    malformed answer scores it 0)."""
    try:
        return float(score_answer(candidate_answer(completion, str(entry["answer"])), entry))
    except Exception:  # reasoning-gym scorers raise on unparsable answers; that is a wrong answer
        return 0.0


__all__ = [
    "MATCH_RULES",
    "answer_key",
    "answer_region",
    "candidate_answer",
    "extract_number",
    "grade_with_scorer",
    "normalize_text",
    "numbers_equal",
    "numbers_in",
    "parse_number",
    "score_completion",
]
