"""Training data: rejection sampling from the frozen model, and user JSONL files.

Rejection sampling follows the reference: sample several completions per prompt from the frozen
base model (chat template applied, a spread of temperatures), grade each with the task's own
scorer, and keep the correct ones as prompt/completion pairs. Prompts come from reasoning-gym
generators with fixed seeds; duplicates (small configurations repeat) are dropped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ..errors import TrainingDataError
from ..jsonl import iter_jsonl
from ..messages import chat_messages
from ..manifest import atomic_write_bytes
from ..progress import ProgressBar, ProgressCallback
from ..evaluation.tasks import Problem, reasoning_gym_problems
from .grading import grade_reply, CORRECT_SCORE

# Easy configurations of the training tasks: a 135M model must solve them *sometimes* for
# rejection sampling to yield anything (at the library defaults several score ~0%, METHOD.md).
TRAINING_TASKS: dict[str, dict[str, Any]] = {
    "basic_arithmetic": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+", "-"),
                             allow_parentheses=False, allow_negation=False),
    "chain_sum": dict(min_terms=2, max_terms=3, min_digits=1, max_digits=1),
    "products": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1),
    "leg_counting": dict(min_animals=1, max_animals=2, min_instances=1, max_instances=3),
    "letter_counting": dict(min_words=1, max_words=3),
    "simple_equations": dict(min_terms=2, max_terms=2, min_value=1, max_value=10, operators=("+", "-"),
                             operators_weights=[0.5, 0.5]),
    "spell_backward": dict(min_word_len=3, max_word_len=4),
    "word_sorting": dict(min_words=2, max_words=3, min_word_length=3, max_word_length=6),
}

UnsolvedPolicy = Literal["drop", "reference"]



def task_config(task: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    if task not in TRAINING_TASKS and overrides is None:
        return {}
    return {**TRAINING_TASKS.get(task, {}), **(overrides or {})}


def make_problems(task: str, count: int, seed: int, config: dict[str, Any] | None = None, *,
                  exclude: frozenset[str] = frozenset()) -> tuple[list[Problem], Any]:
    """``count`` distinct prompts of ``task`` (seeded) not in ``exclude``, and the dataset object (for its scorer).

    Small configurations repeat prompts; the generator is asked for more items than needed and
    duplicates are skipped. Fewer than ``count`` come back when the configuration cannot make more.
    """
    config = task_config(task) if config is None else config
    pool = max(4 * count, count + 50)
    try:
        # The evaluation's loader: the same Problem class, deduplication and grader.
        return reasoning_gym_problems(task, config, seed=seed, size=pool, count=count, exclude=exclude)
    except (ValueError, TypeError, KeyError, AssertionError) as error:
        raise TrainingDataError(f"reasoning-gym could not build task {task!r} with config {config}: {error}") from error


@dataclass
class TaskYield:
    prompts: int = 0
    samples: int = 0
    correct_samples: int = 0
    solved_prompts: int = 0
    kept: int = 0
    reference_added: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["sample_accuracy"] = round(self.correct_samples / self.samples, 4) if self.samples else 0.0
        out["solved_share"] = round(self.solved_prompts / self.prompts, 4) if self.prompts else 0.0
        return out


@dataclass
class SamplingConfig:
    tasks: Sequence[str] = tuple(TRAINING_TASKS)
    prompts_per_task: int = 48
    temperatures: Sequence[float] = (0.3, 0.6, 0.9, 1.2)
    samples_per_temperature: int = 1
    top_p: float = 1.0
    max_new_tokens: int = 96
    batch_size: int = 64  # rows (prompts x samples) decoded together; results do not depend on it
    seed: int = 0
    unsolved: UnsolvedPolicy = "drop"
    max_kept_per_prompt: int | None = None  # None keeps every distinct correct completion

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TRAINING_TASKS]
        if unknown:
            raise TrainingDataError(
                f"Unknown training task(s) {unknown}; the training tasks are: {', '.join(TRAINING_TASKS)}."
            )
        if self.unsolved not in ("drop", "reference"):
            raise TrainingDataError(f"`unsolved` must be 'drop' or 'reference', got {self.unsolved!r}.")
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise TrainingDataError(f"`temperatures` must be positive numbers, got {list(self.temperatures)}.")


@dataclass
class SampledText:
    """One completion as rejection sampling needs it: the text (no end-of-turn token) and whether
    the model ended it (``False``: cut by ``max_new_tokens``)."""

    text: str
    finished: bool


class CompletionSampler(Protocol):
    """Where rejection sampling gets its completions: the torch engine (:class:`EngineSampler`) or
    vLLM (:class:`deco_middleware.vllm.data.VllmSampler`). Both send every prompt through the model's
    chat template, seed every sample on its own (``seeds[i][k]``) and stop at the model's EOS ids."""

    description: str

    def sample(self, prompts: Sequence[str], *, temperature: float, top_p: float, seeds: list[list[int]],
               max_new_tokens: int, stats: Any) -> Iterator[tuple[int, list[SampledText]]]:
        """Yield ``(prompt index, its samples)``; add to ``stats.generated_tokens`` / ``stats.prompt_tokens``."""
        ...


class EngineSampler:
    """Rejection sampling on :func:`deco_middleware.engine.iter_sample` (a transformers model)."""

    description = "deco_middleware.engine (one prefill per prompt and temperature, finished rows dropped)"

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 64) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def sample(self, prompts: Sequence[str], *, temperature: float, top_p: float, seeds: list[list[int]],
               max_new_tokens: int, stats: Any) -> Iterator[tuple[int, list[SampledText]]]:
        from ..engine import Static, iter_sample

        for i, completions in iter_sample(
            self.model, self.tokenizer, prompts, policy=Static(temperature, top_p), samples=len(seeds[0]) if seeds else 1,
            seeds=seeds, max_new_tokens=max_new_tokens, max_rows=self.batch_size, stats=stats,
        ):
            yield i, [SampledText(c.text, c.finished) for c in completions]


def rejection_sample(model: Any, tokenizer: Any, config: SamplingConfig, *, progress: bool | ProgressCallback = True,
                     log: Callable[[str], None] | None = None, wrong_out: list[dict[str, Any]] | None = None,
                     sampler: CompletionSampler | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sample, grade and keep correct completions. Returns (records, summary with per-task yield).

    ``sampler`` draws the completions (default: :class:`EngineSampler` on ``model`` / ``tokenizer``,
    which may then be ``None`` when a sampler is given). The records do not depend on it: the same
    prompts, seeds, grader and record format whatever draws the samples.
    ``wrong_out``, when given, receives the distinct *wrong* samples as records too (``source``
    ``"sample-wrong"``), for the variant that trains on the model's own wrong samples as well.
    ``progress`` gets the "sampling" bar: a callback, or ``True``/``False`` (:func:`deco_middleware.progress.resolve`).
    """
    from ..engine import EngineStats, derive_seed

    if sampler is None:
        if model is None or tokenizer is None:
            raise TrainingDataError("rejection_sample needs a model and tokenizer, or a `sampler`.")
        sampler = EngineSampler(model, tokenizer, batch_size=config.batch_size)
    started = time.perf_counter()
    problems: list[Problem] = []
    scorers: dict[str, Any] = {}
    for task in config.tasks:
        found, dataset = make_problems(task, config.prompts_per_task, config.seed)
        problems += found
        scorers[task] = dataset.score_answer
    yields = {task: TaskYield() for task in config.tasks}
    for p in problems:
        yields[p.task].prompts += 1
    correct: dict[int, list[tuple[str, float, bool]]] = {i: [] for i in range(len(problems))}
    wrong: dict[int, list[tuple[str, float, bool]]] = {i: [] for i in range(len(problems))}
    stats = EngineStats()
    total_rows = len(problems) * len(config.temperatures) * config.samples_per_temperature
    done_rows = 0
    with ProgressBar("sampling", total_rows, progress=progress) as bar:
        for temperature in config.temperatures:
            # Every sample has its own generator seeded from (run seed, task, problem, T, k): a
            # sample does not depend on the batch it ran in, the other tasks, or max_rows.
            seeds = [[derive_seed(config.seed, p.task, p.index, temperature, k)
                      for k in range(config.samples_per_temperature)] for p in problems]
            for i, completions in sampler.sample(
                [p.prompt for p in problems], temperature=temperature, top_p=config.top_p, seeds=seeds,
                max_new_tokens=config.max_new_tokens, stats=stats,
            ):
                problem = problems[i]
                for completion in completions:
                    reply, finished = completion.text, completion.finished
                    yields[problem.task].samples += 1
                    score = grade_reply(reply, problem.entry, scorers[problem.task])
                    if score >= CORRECT_SCORE:
                        yields[problem.task].correct_samples += 1
                        if reply not in [c[0] for c in correct[i]]:
                            correct[i].append((reply, temperature, finished))
                    elif reply.strip() and reply not in [c[0] for c in wrong[i]]:
                        wrong[i].append((reply, temperature, finished))
                done_rows += len(completions)
                elapsed = time.perf_counter() - started
                info = f"T={temperature} {stats.generated_tokens / elapsed:.0f} tok/s"
                bar.update(completed=done_rows, info=info)
                if log is not None and (done_rows % max(1, config.batch_size) < len(completions) or done_rows == total_rows):
                    found_correct = sum(y.correct_samples for y in yields.values())
                    log(f"{done_rows}/{total_rows} samples, {info}, correct so far {found_correct} ({elapsed:.0f} s)")
    generated_tokens = stats.generated_tokens
    records: list[dict[str, Any]] = []
    for i, problem in enumerate(problems):
        kept = correct[i][: config.max_kept_per_prompt] if config.max_kept_per_prompt else correct[i]
        base = {"task": problem.task, "index": problem.index, "seed": config.seed, "prompt": problem.prompt}
        if kept:
            yields[problem.task].solved_prompts += 1
        for reply, temperature, finished in kept:
            records.append({**base, "completion": reply, "source": "sample", "temperature": temperature,
                            "truncated": not finished})
            yields[problem.task].kept += 1
        if not kept and config.unsolved == "reference":
            records.append({**base, "completion": problem.answer, "source": "reference", "truncated": False})
            yields[problem.task].reference_added += 1
    # The model's own wrong samples are kept apart (never mixed into ``records``): training on
    # them is a variant (`wrong_records`), not the reference recipe.
    wrong_records = [
        {"task": problems[i].task, "index": problems[i].index, "seed": config.seed, "prompt": problems[i].prompt,
         "completion": reply, "source": "sample-wrong", "temperature": temperature, "truncated": not finished}
        for i in range(len(problems)) for reply, temperature, finished in wrong[i]
    ]
    wall = time.perf_counter() - started
    summary = {
        "source": "rejection-sampling",
        "tasks": {task: {"config": _jsonable(task_config(task)), **yields[task].as_dict()} for task in config.tasks},
        "sampling": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "records": len(records),
        "wrong_records": len(wrong_records),
        "samples": sum(y.samples for y in yields.values()),
        "generated_tokens": generated_tokens,
        "prompt_tokens": stats.prompt_tokens,
        "sampler": sampler.description,
        "wall_seconds": round(wall, 2),
        "tokens_per_second": round(generated_tokens / wall, 1) if wall else None,
    }
    if wrong_out is not None:
        wrong_out.extend(wrong_records)
    return records, summary


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def write_jsonl(records: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write records as JSON lines, atomically (a crash leaves the old file or the new one)."""
    path = Path(path)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read ``{"prompt", "completion"}`` records; a bad line fails naming the file and line number.

    Blank lines are skipped and a byte-order mark is accepted (the rules of :mod:`deco_middleware.jsonl`).
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingDataError(f"No training data at {path}: expected a JSONL file of {{\"prompt\", \"completion\"}}.")
    records: list[dict[str, Any]] = []
    for number, record in iter_jsonl(path, error=TrainingDataError):
        where = f"{path}, line {number}"
        if not isinstance(record, dict):
            raise TrainingDataError(f"{where} must be a JSON object, got {type(record).__name__}.")
        value = record.get("completion")
        if not isinstance(value, str):
            got = "missing" if value is None else f"a {type(value).__name__}"
            raise TrainingDataError(f"{where}: `completion` must be a string, but it is {got}.")
        value = record.get("prompt")
        if isinstance(value, list):  # chat messages (e.g. a system-placed steering copy)
            try:
                chat_messages(value)
            except ValueError as error:
                raise TrainingDataError(f"{where}: `prompt` is a list, so it must be chat messages: {error}") from error
        elif not isinstance(value, str):
            got = "missing" if value is None else f"a {type(value).__name__}"
            raise TrainingDataError(f"{where}: `prompt` must be a string (the user message) or a list of "
                                    f"{{\"role\", \"content\"}} messages, but it is {got}.")
        if not record["completion"].strip():
            raise TrainingDataError(f"{where}: `completion` is empty; drop the line or give a completion.")
        records.append(record)
    if not records:
        raise TrainingDataError(f"{path} holds no records; nothing to train on.")
    return records
