"""Evaluation tasks from a ``--task`` spec: a reasoning-gym dataset or a JSONL file.

Specs:

- ``rg:NAME[?key=value&...]``: the reasoning-gym dataset NAME built with those keyword arguments
  and graded by its own ``score_answer``. Values are read as JSON when they parse (``2``, ``0.5``,
  ``true``), a comma makes a tuple (``operators=+,-``), anything else stays a string. Two keys are
  the harness's own: ``seed`` (the dataset seed; default :data:`DEFAULT_TASK_SEED`, which training
  does not use, so problems are held out unless a small config repeats them) and ``size`` (how
  many problems to draw before duplicates are removed).
The same loader and grader serve training (``training.data.make_problems`` builds its prompts with
:func:`reasoning_gym_problems`) and evaluation, so a sample counts as solved by one rule everywhere.

- a path to a JSONL file of ``{"prompt": str, "answer": str, "match": "number"|"exact"|"contains"}``
  lines; ``match`` defaults to ``number`` when the answer parses as a number, else ``exact``;
  other keys are ignored; blank lines are skipped and a byte-order mark is accepted (the rules of
  :mod:`deco_middleware.jsonl`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .._deps import require
from ..jsonl import iter_jsonl
from .errors import TaskSpecError
from .extraction import MATCH_RULES, answer_key, grade_with_scorer, parse_number, score_completion

DEFAULT_TASK_SEED = 90_210
# Problems drawn before duplicates are removed, per problem asked for: small configs repeat a lot.
_OVERDRAW = 5


@dataclass(frozen=True)
class Problem:
    """One prompt and how to grade a completion of it (training and evaluation use this one class).

    ``grade(completion)`` is the score (1.0 = solved); ``answer_key(completion)`` is the answer the
    grader read, normalised so that equal keys grade alike (``None``: no answer), which is what a
    majority vote (maj@k) counts. reasoning-gym problems also carry their task name, dataset index
    and entry (the task's own ``score_answer`` reads the entry).
    """

    id: str
    prompt: str
    answer: str
    grade: Callable[[str], float] = field(compare=False, repr=False)
    answer_key: Callable[[str], str | None] = field(compare=False, repr=False, default=lambda completion: None)
    task: str = ""
    index: int = -1
    entry: dict[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass
class Task:
    """A named list of problems."""

    spec: str
    problems: list[Problem]
    description: str

    def __len__(self) -> int:
        return len(self.problems)


def _parse_value(text: str) -> Any:
    text = unquote(text)
    if "," in text:
        return tuple(_parse_value(part) for part in text.split(","))
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_reasoning_gym_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"rg:NAME?k=v&..."`` -> ``(NAME, {k: v, ...})``."""
    body = spec[len("rg:") :]
    name, _, query = body.partition("?")
    if not name:
        raise TaskSpecError(f"Task {spec!r} names no dataset; write rg:NAME, e.g. rg:products?max_digits=1.")
    options: dict[str, Any] = {}
    for pair in filter(None, query.split("&")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TaskSpecError(f"Task {spec!r}: {pair!r} is not key=value; write rg:{name}?key=value&key2=value2.")
        options[unquote(key)] = _parse_value(value)
    return name, options


def reasoning_gym_problems(
    name: str, options: dict[str, Any], *, seed: int, size: int, count: int, exclude: frozenset[str] = frozenset()
) -> tuple[list[Problem], Any]:
    """The first ``count`` distinct prompts of reasoning-gym's ``name`` dataset (``size`` items drawn
    with ``seed``), skipping prompts in ``exclude``; and the dataset (its ``score_answer`` grades).

    Raises ``ValueError``/``TypeError``/``KeyError``/``AssertionError`` from reasoning-gym for bad
    names or options; callers turn them into their own error.
    """
    reasoning_gym = require("reasoning_gym", purpose="reasoning-gym tasks (rg:NAME)")
    dataset = reasoning_gym.create_dataset(name, seed=seed, size=size, **options)
    problems: list[Problem] = []
    seen: set[str] = set(exclude)
    for index in range(len(dataset)):
        entry = dataset[index]
        question = entry["question"]
        if question in seen:
            continue
        seen.add(question)
        reference = str(entry["answer"])

        def grade(completion: str, entry: dict[str, Any] = entry) -> float:
            return grade_with_scorer(completion, entry, dataset.score_answer)

        def key(completion: str, reference: str = reference) -> str | None:
            return answer_key(completion, reference)

        problems.append(Problem(id=str(index), prompt=question, answer=reference, grade=grade, answer_key=key,
                                task=name, index=index, entry=entry))
        if len(problems) == count:
            break
    return problems, dataset


def _load_reasoning_gym(spec: str, limit: int | None) -> Task:
    name, options = parse_reasoning_gym_spec(spec)
    seed = options.pop("seed", DEFAULT_TASK_SEED)
    wanted = limit if limit is not None else 100
    size = options.pop("size", wanted * _OVERDRAW)
    try:
        problems, _ = reasoning_gym_problems(name, options, seed=seed, size=size, count=wanted)
    except Exception as error:  # reasoning-gym raises KeyError/TypeError/AssertionError for bad names/options
        raise TaskSpecError(f"Task {spec!r}: reasoning-gym could not build {name!r} with {options}: {error!r}") from error
    description = f"reasoning-gym {name} (seed {seed}, {len(problems)} distinct of {size} drawn)"
    return Task(spec=spec, problems=problems, description=description)


def _load_jsonl(spec: str, limit: int | None) -> Task:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TaskSpecError(
            f"Task {spec!r} is neither rg:NAME nor an existing JSONL file. Use rg:NAME[?key=value&...] for a "
            "reasoning-gym dataset or the path of a file of {\"prompt\", \"answer\", \"match\"} lines."
        )
    problems: list[Problem] = []
    for line_number, record in iter_jsonl(path, error=TaskSpecError):
        problems.append(_problem_from_record(path, line_number, record))
        if limit is not None and len(problems) == limit:
            break
    if not problems:
        raise TaskSpecError(f"{path} has no problems (every line is blank).")
    return Task(spec=spec, problems=problems, description=f"{path.name} ({len(problems)} problems)")


def _problem_from_record(path: Path, line_number: int, record: Any) -> Problem:
    where = f"{path}, line {line_number}"
    if not isinstance(record, dict):
        raise TaskSpecError(f"{where}: expected an object with \"prompt\" and \"answer\", got {type(record).__name__}.")
    for key in ("prompt", "answer"):
        if not isinstance(record.get(key), str):
            got = "missing" if key not in record else f"{type(record[key]).__name__} {record[key]!r}"
            raise TaskSpecError(f"{where}: \"{key}\" must be a string, got {got}.")
    prompt, answer = record["prompt"], record["answer"]
    match = record.get("match") or ("number" if parse_number(answer) is not None else "exact")
    if match not in MATCH_RULES:
        raise TaskSpecError(f"{where}: \"match\" is {match!r}; valid: {', '.join(MATCH_RULES)}.")
    if match == "number" and parse_number(answer) is None:
        raise TaskSpecError(f"{where}: \"match\" is \"number\" but the answer {answer!r} is not a number.")

    def grade(completion: str, answer: str = answer, match: str = match) -> float:
        return score_completion(completion, answer, match)

    def key(completion: str, answer: str = answer) -> str | None:
        return answer_key(completion, answer)

    return Problem(id=str(line_number), prompt=prompt, answer=answer, grade=grade, answer_key=key)


def load_task(spec: str, *, limit: int | None = None) -> Task:
    """The task named by ``spec`` (see the module docstring), at most ``limit`` problems."""
    if limit is not None and limit < 1:
        raise TaskSpecError(f"`limit` must be at least 1, got {limit}.")
    if spec.startswith("rg:"):
        return _load_reasoning_gym(spec, limit)
    return _load_jsonl(spec, limit)


__all__ = ["DEFAULT_TASK_SEED", "Problem", "Task", "load_task", "parse_reasoning_gym_spec", "reasoning_gym_problems"]
