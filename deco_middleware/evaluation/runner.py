"""Batched generation of every (task, strategy) pair, with a resumable cache and progress bars."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._deps import require
from .cache import ResultCache, fingerprint
from .metrics import RunningMoments, majority_correct, mean_and_stderr, pass_at_k
from ..sampling import derive_seed
from ..strategies import parse_strategy
from .strategies import ORACLE_TEMPERATURES, ORACLE_TOP_PS, Decoding, EvalStrategy, static_decoding
from .tasks import Problem, Task

torch = require("torch", purpose="The evaluation harness")
transformers = require("transformers", purpose="The evaluation harness")

# A sample counts as solved when its grade reaches this (reasoning-gym gives partial credit, e.g.
# 0.01 for a well-formed wrong answer; only full marks count towards pass@k).
SOLVED = 1.0 - 1e-9
# The batch size the published table and its throughput (docs/benchmarks.md) were measured at:
# 100 problems x 4 samples = 400 rows in two batches, ~2 minutes per strategy on 2 cores.
DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_SAMPLES = 4


def sample_seed(seed: int, task: str, problem: str, sample: int) -> int:
    """The seed of one sample's generator: depends on nothing else, in particular not on batching.

    ``row_seeds(seed, samples, task, problem)[sample]``: the library's one seed derivation."""
    return derive_seed(seed, task, problem, sample)


@dataclass
class DecodingSummary:
    """The numbers of one decoding on one task."""

    decoding: str
    problems: int
    samples: int
    pass_at_1: float
    stderr: float
    pass_at_k: float
    mean_length: float
    temperature_mean: float
    temperature_std: float
    top_p_mean: float
    top_p_std: float
    maj_at_k: float = math.nan
    # Per problem, in task order: (pass@1, pass@k, maj@k); what the paired bootstrap resamples.
    per_problem: list[tuple[float, float, float]] = field(default_factory=list, repr=False)
    generated_tokens: int = 0  # generated in this process (cached problems excluded)
    generation_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "pass@1": self.pass_at_1,
            "stderr": self.stderr,
            "pass@k": self.pass_at_k,
            "maj@k": self.maj_at_k,
            "k": self.samples,
            "samples": self.samples,
            "problems": self.problems,
            "mean_length": self.mean_length,
            "temperature": {"mean": self.temperature_mean, "std": self.temperature_std},
            "top_p": {"mean": self.top_p_mean, "std": self.top_p_std},
            "decoding": self.decoding,
        }
        out.update(self.extra)
        return out


def summarize(
    decoding: str, records: Sequence[dict[str, Any]], answer_keys: Sequence[Callable[[str], str | None]] | None = None
) -> DecodingSummary:
    """pass@1 +- standard error over problems, pass@K, maj@K, lengths and applied T / P moments.

    ``answer_keys[i]`` reads the normalised answer of a completion of problem i (``Problem.answer_key``),
    for the majority vote; without it maj@K is NaN.
    """
    per_problem, at_k, majority = [], [], []
    lengths: list[int] = []
    temperature, top_p = RunningMoments(), RunningMoments()
    samples = 0
    for position, record in enumerate(records):
        scores = [s["score"] for s in record["samples"]]
        solved = sum(score >= SOLVED for score in scores)
        samples = len(scores)
        per_problem.append(solved / len(scores))
        at_k.append(pass_at_k(len(scores), solved, len(scores)))
        if answer_keys is not None:
            keys = [answer_keys[position](s["text"]) for s in record["samples"]]
            majority.append(float(majority_correct(keys, [score >= SOLVED for score in scores])))
        for s in record["samples"]:
            lengths.append(s["length"])
            temperature.add_sums(s["length"], *s["temperature_sums"])
            top_p.add_sums(s["length"], *s["top_p_sums"])
    pass1, stderr = mean_and_stderr(per_problem)
    return DecodingSummary(
        decoding=decoding,
        problems=len(records),
        samples=samples,
        pass_at_1=pass1,
        stderr=stderr,
        pass_at_k=sum(at_k) / len(at_k) if at_k else math.nan,
        mean_length=sum(lengths) / len(lengths) if lengths else math.nan,
        temperature_mean=temperature.mean,
        temperature_std=temperature.std,
        top_p_mean=top_p.mean,
        top_p_std=top_p.std,
        maj_at_k=sum(majority) / len(majority) if majority else math.nan,
        per_problem=[(p1, pk, majority[i] if majority else math.nan) for i, (p1, pk) in enumerate(zip(per_problem, at_k))],
    )


class ProgressHook:
    """What the runner reports; the CLI plugs a rich progress display in, tests leave it silent."""

    def start(self, label: str, total: int, done: int) -> Any:
        return None

    def advance(self, handle: Any, tokens: int) -> None:
        pass

    def finish(self, handle: Any) -> None:
        pass


class EvaluationRunner:
    """Generates and grades completions for every task and strategy.

    Args:
        model / tokenizer: a causal LM and its (left-padding) tokenizer.
        heads: a :class:`~deco_middleware.heads.artifact.DecodingHeads`, needed by the learned strategies.
        samples: K samples per problem (greedy always uses one).
        seed: the run seed; each sample's generator is seeded from (seed, task, problem, sample).
        max_new_tokens / batch_size: generation limits.
        cache: a :class:`ResultCache`; finished problems are read from and appended to it.
        progress: a :class:`ProgressHook`.
        oracle_temperatures / oracle_top_ps: the oracle's grid.
        oracle_samples: samples per problem while the oracle searches its grid (default: ``samples``).
            With fewer, the chosen (T, P) is then generated again with ``samples``, and that run is
            what the oracle reports; the grid's scores are kept in ``extra["grid"]``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        heads: Any = None,
        samples: int = DEFAULT_SAMPLES,
        seed: int = 0,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cache: ResultCache | None = None,
        progress: ProgressHook | None = None,
        oracle_temperatures: Sequence[float] = ORACLE_TEMPERATURES,
        oracle_top_ps: Sequence[float] = ORACLE_TOP_PS,
        oracle_samples: int | None = None,
        dev_samples: int | None = None,
        dev_problems: int | None = None,
    ) -> None:
        from .tuning import DEV_PROBLEMS, DEV_SAMPLES

        oracle_samples = samples if oracle_samples is None else oracle_samples
        dev_samples = DEV_SAMPLES if dev_samples is None else dev_samples
        dev_problems = DEV_PROBLEMS if dev_problems is None else dev_problems
        for name, value in (("samples", samples), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size),
                            ("oracle_samples", oracle_samples), ("dev_samples", dev_samples),
                            ("dev_problems", dev_problems)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` has to be a positive integer, got {value!r}.")
        self.model = model
        self.tokenizer = tokenizer
        self.heads = heads
        self.samples = samples
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.cache = cache if cache is not None else ResultCache(None)
        self.progress = progress or ProgressHook()
        self.oracle_temperatures = tuple(oracle_temperatures)
        self.oracle_top_ps = tuple(oracle_top_ps)
        self.oracle_samples = oracle_samples
        self.dev_samples = dev_samples
        self.dev_problems = dev_problems
        # Prompts of every evaluation task of the run: the dev split never contains them.
        self.evaluation_prompts: set[str] = set()
        self._dev_tasks: list[Task] | None = None
        self._tuned: dict[str, Any] = {}
        self._summaries: dict[tuple[str, str], DecodingSummary] = {}
        self.generated_tokens = 0
        self.generation_seconds = 0.0
        self._model_key = self._identify_model()
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        eos_ids.add(tokenizer.eos_token_id)
        self._eos_ids = {int(i) for i in eos_ids if i is not None}

    def _identify_model(self) -> str:
        from ..hf.identity import legacy_lm_head_values, model_identity

        identity = model_identity(self.model)
        # Keyed by the 16-row values the key always used, so results cached before the whole-matrix
        # fingerprint (lm-head-sketch-v2) stay valid; attaching heads checks the full fingerprint.
        values = json.dumps(legacy_lm_head_values(self.model))
        return f"{identity.name}:{hashlib.sha256(values.encode()).hexdigest()[:12]}"

    def _run_key(self, decoding: Decoding, samples: int | None = None) -> str:
        parts: dict[str, Any] = {
            "model": self._model_key,
            # The LM-head fingerprint is deliberately robust to bf16/float32, but samples are not.
            "dtype": str(getattr(self.model, "dtype", "")),
            "seed": self.seed,
            "samples": self._samples_for(decoding, samples),
            "max_new_tokens": self.max_new_tokens,
            # Samples drawn by deco_middleware.engine (shared prefill, finished rows dropped); the
            # earlier generate()-based loop drew the same distributions but other numbers.
            "sampler": "engine-v2",  # one decode_step + draw (structure)
        }
        if decoding.learned:
            parts["heads"] = self.heads.manifest.onnx.sha256
        return fingerprint(parts)

    def _samples_for(self, decoding: Decoding, samples: int | None = None) -> int:
        return 1 if decoding.kind == "greedy" else (self.samples if samples is None else samples)

    # -- one decoding on one task ----------------------------------------------------------------

    def run_decoding(self, task: Task, decoding: Decoding, samples: int | None = None) -> DecodingSummary:
        """Generate (or read from the cache) every problem of ``task`` with ``decoding``.

        ``samples`` overrides the runner's samples per problem (the oracle's grid search uses it).
        """
        samples = self._samples_for(decoding, samples)
        memo = (task.spec, decoding.key, samples)
        if memo in self._summaries:
            return self._summaries[memo]
        if decoding.learned and self.heads is None:
            raise ValueError(f"Strategy {decoding.key!r} needs trained heads; pass --heads (or `heads=`).")
        run = self._run_key(decoding, samples)
        records: dict[str, dict[str, Any]] = {}
        todo: list[Problem] = []
        for problem in task.problems:
            cached = self.cache.get(run, task.spec, decoding.key, problem.id)
            if cached is not None:
                records[problem.id] = cached
            else:
                todo.append(problem)
        label = decoding.key if samples == self._samples_for(decoding) else f"{decoding.key} x{samples}"
        handle = self.progress.start(f"{task.spec} · {label}", len(task.problems), len(records))
        tokens_before, seconds_before = self.generated_tokens, self.generation_seconds
        for record in self._generate_problems(task, decoding, run, todo, samples):
            self.cache.put(record)
            records[record["problem"]] = record
            self.progress.advance(handle, sum(s["length"] for s in record["samples"]))
        self.progress.finish(handle)
        summary = summarize(decoding.key, [records[p.id] for p in task.problems], [p.answer_key for p in task.problems])
        summary.generated_tokens = self.generated_tokens - tokens_before
        summary.generation_seconds = self.generation_seconds - seconds_before
        self._summaries[memo] = summary
        return summary

    def _policy(self, decoding: Decoding) -> Any:
        return decoding.predictor(self.heads if decoding.learned else None)

    def _generate_problems(
        self, task: Task, decoding: Decoding, run: str, problems: list[Problem], samples: int
    ) -> Iterator[dict[str, Any]]:
        from ..engine import EngineStats, iter_sample

        seeds = [[sample_seed(self.seed, task.spec, problem.id, k) for k in range(samples)] for problem in problems]
        stats = EngineStats()
        started = time.perf_counter()
        stream = iter_sample(
            self.model, self.tokenizer, [problem.prompt for problem in problems], policy=self._policy(decoding),
            samples=samples, seeds=seeds, max_new_tokens=self.max_new_tokens, max_rows=self.batch_size,
            stop_token_ids=self._eos_ids,
        )
        for index, completions in stream:
            self.generation_seconds += time.perf_counter() - started
            problem = problems[index]
            outputs = []
            for k, completion in enumerate(completions):
                t_row, p_row = completion.temperatures, completion.top_ps
                outputs.append({
                    "text": completion.text,
                    "length": completion.length,
                    "temperature_sums": [math.fsum(t_row), math.fsum(t * t for t in t_row)],
                    "top_p_sums": [math.fsum(p_row), math.fsum(p * p for p in p_row)],
                    "score": float(problem.grade(completion.text)),
                    "sample": k,
                })
                self.generated_tokens += completion.length
            yield {
                "run": run,
                "task": task.spec,
                "decoding": decoding.key,
                "problem": problem.id,
                "answer": problem.answer,
                "samples": outputs,
            }
            started = time.perf_counter()

    # -- strategies ------------------------------------------------------------------------------

    def run_strategy(self, task: Task, strategy: EvalStrategy) -> DecodingSummary:
        """The summary of ``strategy`` on ``task`` (``oracle`` and ``mean-static`` search first)."""
        if strategy.decoding is not None:
            return self.run_decoding(task, strategy.decoding)
        if strategy.name == "oracle":
            return self._oracle(task)
        if strategy.mean_static_scale is not None:
            return self._mean_static(task, strategy.mean_static_scale)
        if strategy.tuned:
            choice = self.tune(strategy.name, extra_prompts=[p.prompt for p in task.problems])
            return _with_extra(self.run_decoding(task, choice.decoding), {"tuned_on_dev": choice.as_dict()})
        raise ValueError(f"Strategy {strategy.name!r} has no decoding.")  # parse_eval_strategy prevents this

    def _oracle(self, task: Task) -> DecodingSummary:
        searched = select_oracle(
            lambda temperature, top_p: self.run_decoding(task, static_decoding(temperature, top_p), self.oracle_samples),
            self.oracle_temperatures,
            self.oracle_top_ps,
        )
        if self.oracle_samples == self.samples:
            return searched
        chosen = searched.extra["chosen"]
        final = self.run_decoding(task, static_decoding(chosen["temperature"], chosen["top_p"]))
        return _with_extra(final, {**searched.extra, "searched_with_samples": self.oracle_samples})

    def _mean_static(self, task: Task, scale: float = 1.0) -> DecodingSummary:
        if self.heads is None:
            raise ValueError("Strategy 'mean-static' needs trained heads; pass --heads (or `heads=`).")
        source = "autodeco" if scale == 1.0 else f"autodeco@{scale:g}"
        learned = self.run_decoding(task, parse_strategy(source))
        temperature = round(learned.temperature_mean, 3)
        top_p = min(round(learned.top_p_mean, 3), 1.0)
        if temperature <= 0:  # autodeco@0 is greedy: its "mean" is greedy too
            return _with_extra(self.run_decoding(task, parse_strategy("greedy")), {"chosen": {"from": source}})
        summary = self.run_decoding(task, static_decoding(temperature, top_p))
        return _with_extra(summary, {"chosen": {"temperature": temperature, "top_p": top_p, "from": source}})

    # -- baselines tuned on the dev split (evaluation/tuning.py) ------------------------------------

    @property
    def dev_split(self) -> list[Task] | None:
        """The dev tasks, once a tuned strategy has built them (else ``None``)."""
        return self._dev_tasks

    def dev_tasks(self, extra_prompts: Sequence[str] = ()) -> list[Task]:
        """The dev split: the training tasks at :data:`~.tuning.DEV_SEED`, minus every evaluation prompt."""
        if self._dev_tasks is None:
            from ..training.data import TRAINING_TASKS
            from .tasks import reasoning_gym_problems
            from .tuning import DEV_SEED, DEV_TASKS

            exclude = frozenset(self.evaluation_prompts | set(extra_prompts))
            tasks = []
            for name in DEV_TASKS:
                # Small configurations repeat prompts a lot (products has 100 distinct): draw many.
                problems, _ = reasoning_gym_problems(name, dict(TRAINING_TASKS[name]), seed=DEV_SEED,
                                                     size=20 * self.dev_problems, count=self.dev_problems,
                                                     exclude=exclude)
                tasks.append(Task(spec=f"dev:{name}?seed={DEV_SEED}", problems=problems,
                                  description=f"dev split of {name} (seed {DEV_SEED}, {len(problems)} problems)"))
            self._dev_tasks = tasks
        return self._dev_tasks

    def dev_pass_at_1(self, decoding: Decoding, extra_prompts: Sequence[str] = ()) -> float:
        """pass@1 pooled over every problem of the dev split (``dev_samples`` samples each)."""
        tasks = self.dev_tasks(extra_prompts)
        summaries = [self.run_decoding(dev, decoding, self.dev_samples) for dev in tasks]
        problems = sum(s.problems for s in summaries)
        return sum(s.pass_at_1 * s.problems for s in summaries) / problems

    def dev_mean_temperature(self, extra_prompts: Sequence[str] = ()) -> float:
        """The heads' mean applied temperature over the dev split (token-weighted), rounded to 3 decimals."""
        if self.heads is None:
            raise ValueError("Strategy 'dev:edt' takes T0 from the heads' mean temperature; pass --heads (or `heads=`).")
        summaries = [self.run_decoding(dev, parse_strategy("autodeco"), self.dev_samples) for dev in self.dev_tasks(extra_prompts)]
        weights = [s.mean_length * s.problems for s in summaries]
        return round(sum(s.temperature_mean * w for s, w in zip(summaries, weights)) / sum(weights), 3)

    def tune(self, name: str, extra_prompts: Sequence[str] = ()) -> Any:
        """The dev-tuned choice of ``dev-static`` or ``dev:FAMILY`` (searched once per runner)."""
        from .tuning import TunedChoice, family_grid, pick_best, select_dev_static

        if name not in self._tuned:
            def score(decoding: Decoding) -> float:
                return self.dev_pass_at_1(decoding, extra_prompts)

            if name == "dev-static":
                best, scores = select_dev_static(score)
            else:
                family = name[len("dev:") :]
                base = self.dev_mean_temperature(extra_prompts) if family == "edt" else None
                best, scores = pick_best(family_grid(family, base), score)
            dev_problems = sum(len(t) for t in self.dev_tasks(extra_prompts))
            self._tuned[name] = TunedChoice(best, scores, dev_problems, self.dev_samples)
        return self._tuned[name]

    def evaluate(self, tasks: Sequence[Task], strategies: Sequence[EvalStrategy]) -> dict[str, dict[str, DecodingSummary]]:
        """``{task spec: {strategy name: summary}}``, in the order given."""
        for task in tasks:
            self.evaluation_prompts.update(problem.prompt for problem in task.problems)
        results: dict[str, dict[str, DecodingSummary]] = {}
        for task in tasks:
            results[task.spec] = {strategy.name: self.run_strategy(task, strategy) for strategy in strategies}
        return results


def _with_extra(summary: DecodingSummary, extra: dict[str, Any]) -> DecodingSummary:
    from dataclasses import replace

    return replace(summary, extra={**summary.extra, **extra})


def select_oracle(
    evaluate: Callable[[float, float], DecodingSummary],
    temperatures: Sequence[float] = ORACLE_TEMPERATURES,
    top_ps: Sequence[float] = ORACLE_TOP_PS,
) -> DecodingSummary:
    """The paper's test-set oracle: the best T at P=1, then the best P at that T.

    Ties keep the earlier grid point (lower T, then lower P), so the choice is deterministic.
    """
    if not temperatures or not top_ps:
        raise ValueError(f"The oracle grid needs at least one temperature and one top-p, got {temperatures!r} and {top_ps!r}.")
    grid: dict[str, float] = {}
    best_t, best_t_score = temperatures[0], -math.inf
    for temperature in temperatures:
        summary = evaluate(temperature, 1.0)
        grid[f"T={temperature:g},P=1"] = summary.pass_at_1
        if summary.pass_at_1 > best_t_score:
            best_t, best_t_score = temperature, summary.pass_at_1
    best, best_score, best_p = None, -math.inf, top_ps[0]
    for top_p in top_ps:
        summary = evaluate(best_t, top_p)
        grid[f"T={best_t:g},P={top_p:g}"] = summary.pass_at_1
        if summary.pass_at_1 > best_score:
            best, best_score, best_p = summary, summary.pass_at_1, top_p
    assert best is not None  # top_ps is not empty, so the loop above set it
    return _with_extra(best, {"chosen": {"temperature": best_t, "top_p": best_p}, "grid": grid})


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_SAMPLES",
    "DecodingSummary",
    "EvaluationRunner",
    "ProgressHook",
    "sample_seed",
    "select_oracle",
    "summarize",
]
