"""Rollouts for outcome-driven training: every sample kept, right or wrong, with what produced it.

Rejection sampling (:mod:`.data`) keeps only correct replies, which teaches the heads the
temperature the replies were drawn at (METHOD.md, "Why the reference loss can learn a
constant"). An objective that scores outcomes needs the wrong replies too, and for each sample
the exact behaviour policy: it is drawn here at a *static* temperature with P = 1, so its
per-token log-probability ``log softmax(l / T_b)[y]`` is exact from the feature cache, and the
sampled token ids are stored (``completion_ids``) so the cache does not re-tokenize the text.

Per record: ``task``, ``group`` (one id per prompt), ``prompt``, ``completion``,
``completion_ids`` (the end-of-turn token included when one was drawn), ``truncated``,
``temperature`` (behaviour), ``top_p`` (1.0), ``reward`` (1.0 correct, else 0.0), ``count``
(identical samples of one prompt and temperature are merged; ``count`` keeps their number so the
group statistics stay those of the draws), ``source`` ``"rollout"``, ``seed``.

Honesty rules enforced here: the held-out evaluation tasks are refused, and so is the
evaluation's dataset seed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .data import TrainingDataError, _jsonable, make_problems, write_jsonl
from .grading import CORRECT_SCORE, grade_reply

# Tasks the published evaluation holds out: training never sees them (issue #12).
RESERVED_TASKS = frozenset({"gcd", "lcm", "count_bits", "decimal_arithmetic", "number_sorting", "power_function",
                            "prime_factorization"})
EVALUATION_SEED = 90_210  # deco eval's default task seed (evaluation/tasks.py)
DEV_SEED = 4_242  # the dev split of the training tasks: selection only, never training

# name -> (reasoning-gym dataset, config). Chosen by a yield probe on the default model (10
# prompts x 2 samples at T 0.3 and 1.0, 40 new tokens; docs/training.md): configurations where the
# model is right on roughly 20-80% of samples, so most prompts have both right and wrong replies.
ROLLOUT_TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "products": ("products", dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)),
    "basic_arithmetic": ("basic_arithmetic", dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1,
                                                  operators=("+", "-"), allow_parentheses=False,
                                                  allow_negation=False)),
    "chain_sum": ("chain_sum", dict(min_terms=2, max_terms=3, min_digits=1, max_digits=1)),
    "chain_sum_2digit": ("chain_sum", dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2)),
    "arithmetic_mul": ("basic_arithmetic", dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2,
                                                operators=("+", "-", "*"), allow_parentheses=False,
                                                allow_negation=False)),
    "simple_equations": ("simple_equations", dict(min_terms=2, max_terms=2, min_value=1, max_value=5,
                                                  operators=("+",), operators_weights=[1.0])),
    "leg_counting": ("leg_counting", dict(min_animals=1, max_animals=1, min_instances=1, max_instances=2)),
    "letter_counting": ("letter_counting", dict(min_words=1, max_words=1)),
    "word_sorting": ("word_sorting", dict(min_words=2, max_words=2, min_word_length=3, max_word_length=5)),
    "spell_backward": ("spell_backward", dict(min_word_len=3, max_word_len=3)),
    "number_filtering": ("number_filtering", dict(min_numbers=2, max_numbers=3, min_value=-10, max_value=10,
                                                  min_decimals=0, max_decimals=0)),
}


# The evaluation protocol's test sets (docs/eval_protocol.md): 50 distinct prompts of 250 drawn at
# the evaluation seed. Small configurations repeat prompts across seeds (products has 100 in all),
# so rollouts drop every one of these prompts, whatever the training seed.
PROTOCOL_TEST_SETS: tuple[tuple[str, dict[str, Any]], ...] = (
    ROLLOUT_TASKS["products"], ROLLOUT_TASKS["basic_arithmetic"], ROLLOUT_TASKS["chain_sum"],
    ("gcd", dict(min_numbers=2, max_numbers=2, min_value=2, max_value=20)),
    ("lcm", dict(min_numbers=2, max_numbers=2, min_value=2, max_value=20)),
)


def evaluation_prompts(count: int = 50, size: int = 250) -> frozenset[str]:
    """Every prompt of the protocol's test sets (``count`` distinct of ``size`` drawn at the evaluation seed)."""
    from ..evaluation.tasks import reasoning_gym_problems

    prompts: set[str] = set()
    for dataset, task_config in PROTOCOL_TEST_SETS:
        found, _ = reasoning_gym_problems(dataset, dict(task_config), seed=EVALUATION_SEED, size=size, count=count)
        prompts.update(p.prompt for p in found)
    return frozenset(prompts)


def rollout_task_spec(name: str) -> tuple[str, dict[str, Any]]:
    if name not in ROLLOUT_TASKS:
        raise TrainingDataError(f"Unknown rollout task {name!r}; known: {', '.join(ROLLOUT_TASKS)}.")
    return ROLLOUT_TASKS[name]


@dataclass(frozen=True)
class RolloutConfig:
    tasks: Sequence[str] = tuple(ROLLOUT_TASKS)
    prompts_per_task: int = 64
    prompts_for: dict[str, int] | None = None  # per-task prompt counts that override prompts_per_task
    temperatures: Sequence[float] = (0.3, 0.6, 1.0)
    samples_per_temperature: int = 2
    max_new_tokens: int = 48
    batch_size: int = 192
    seed: int = 21
    heads: str | None = None  # heads name or folder for on-policy draws (see the module docstring)
    head_scales: Sequence[float] = ()  # autodeco@S scales drawn with ``heads``

    def __post_init__(self) -> None:
        for name in self.tasks:
            dataset, _ = rollout_task_spec(name)
            if dataset in RESERVED_TASKS:
                raise TrainingDataError(f"Task {name!r} ({dataset}) is held out for evaluation; never train on it.")
        from ..evaluation.tuning import DEV_SEED as TUNING_DEV_SEED

        if self.seed in (EVALUATION_SEED, DEV_SEED, TUNING_DEV_SEED):
            raise TrainingDataError(f"Seed {self.seed} is the evaluation or dev seed; pick another training seed.")
        if (not self.temperatures and not self.head_scales) or any(t <= 0 for t in self.temperatures):
            raise TrainingDataError(f"`temperatures` must be positive numbers (none only with on-policy `head_scales`), "
                                    f"got {list(self.temperatures)}.")
        if any(s <= 0 for s in self.head_scales):
            raise TrainingDataError(f"`head_scales` must be positive numbers, got {list(self.head_scales)}.")
        if bool(self.heads) != bool(self.head_scales):
            raise TrainingDataError("On-policy draws need both `heads` and `head_scales` (e.g. heads=smollm2-135m-instruct-ppo, "
                                    f"head_scales=(0.5, 1.0)); got heads={self.heads!r}, head_scales={list(self.head_scales)}.")

    def as_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def generate_rollouts(model: Any, tokenizer: Any, config: RolloutConfig, out: str | os.PathLike[str], *,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Sample every prompt at every temperature, grade, merge duplicates, write ``out`` (JSONL).

    Raw draws are appended to ``out + ".partial"`` as they finish (an interrupted run keeps
    them); the merged file is written atomically at the end. Returns the data summary.
    """
    from ..engine import EngineStats, Static, derive_seed, iter_sample

    behaviours: list[tuple[Any, Any]] = [(t, Static(t, 1.0)) for t in config.temperatures]
    if config.heads:
        from ..heads import DecodingHeads
        from ..heads.select import heads_for_model
        from ..strategies import parse_strategy

        heads = heads_for_model(DecodingHeads.from_pretrained(config.heads), model)
        behaviours += [(f"autodeco@{s:g}", parse_strategy(f"autodeco@{s:g}").predictor(heads)) for s in config.head_scales]

    started = time.perf_counter()
    out = Path(out)
    problems, scorers = [], {}
    held_out = evaluation_prompts()
    for name in config.tasks:
        dataset_name, task_config = rollout_task_spec(name)
        count = config.prompts_for.get(name, config.prompts_per_task) if config.prompts_for else config.prompts_per_task
        found, dataset = make_problems(dataset_name, count, config.seed, dict(task_config), exclude=held_out)
        problems += [(name, p) for p in found]
        scorers[name] = dataset.score_answer
    stats = EngineStats()
    merged: dict[tuple[int, float, tuple[int, ...]], dict[str, Any]] = {}
    partial = out.with_name(out.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    # Prompts in chunks (tasks mixed, seeded order), every temperature per chunk: an interrupted run
    # leaves whole prompt groups in the partial file, each with draws at every temperature.
    import random

    order = list(range(len(problems)))
    random.Random(config.seed).shuffle(order)
    chunk = max(1, config.batch_size // config.samples_per_temperature)
    with open(partial, "w", encoding="utf-8") as raw:
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            for temperature, policy in behaviours:
                seeds = [[derive_seed(config.seed, problems[j][0], problems[j][1].index, temperature, k)
                          for k in range(config.samples_per_temperature)] for j in part]
                for local, completions in iter_sample(
                    model, tokenizer, [problems[j][1].prompt for j in part], policy=policy,
                    samples=config.samples_per_temperature, seeds=seeds, max_new_tokens=config.max_new_tokens,
                    max_rows=config.batch_size, stats=stats,
                ):
                    i = part[local]
                    name, problem = problems[i]
                    for completion in completions:
                        ids = [int(t) for t in completion.token_ids]  # the end-of-turn token included when drawn
                        reward = float(grade_reply(completion.text, problem.entry, scorers[name]) >= CORRECT_SCORE)
                        key = (i, temperature, tuple(ids))
                        if key in merged:
                            merged[key]["count"] += 1
                            continue
                        record = {"task": name, "group": f"{name}:{config.seed}:{problem.index}",
                                  "index": problem.index, "seed": config.seed, "prompt": problem.prompt,
                                  "completion": completion.text, "completion_ids": ids,
                                  "truncated": not completion.finished, "temperature": temperature, "top_p": 1.0,
                                  "reward": reward, "count": 1, "source": "rollout"}
                        if isinstance(temperature, str):  # on-policy: the behaviour is per token
                            temps = [round(float(t), 6) for t in completion.temperatures]
                            top_ps = [round(float(q), 6) for q in completion.top_ps]
                            record.update(behaviour=temperature, temperatures=temps, top_ps=top_ps,
                                          temperature=round(sum(temps) / len(temps), 4),
                                          top_p=round(sum(top_ps) / len(top_ps), 4))
                        merged[key] = record
                raw.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged.values()
                                  if r["group"] in {f"{problems[j][0]}:{config.seed}:{problems[j][1].index}" for j in part}
                                  and r.get("behaviour", r["temperature"]) == temperature))
                raw.flush()
                if log is not None:
                    log(f"prompts {start + len(part)}/{len(order)}, T={temperature}: {stats.generated_tokens} tokens, "
                        f"{time.perf_counter() - started:.0f} s")
    records = [r for r in merged.values() if r["completion_ids"]]
    write_jsonl(records, out)
    partial.unlink(missing_ok=True)
    wall = time.perf_counter() - started
    summary = rollout_summary(records)
    summary.update({
        "source": "rollouts",
        "config": config.as_dict(),
        "task_configs": {name: {"dataset": rollout_task_spec(name)[0], **_jsonable(rollout_task_spec(name)[1])}
                         for name in config.tasks},
        "generated_tokens": stats.generated_tokens,
        "prompt_tokens": stats.prompt_tokens,
        "wall_seconds": round(wall, 2),
        "tokens_per_second": round(stats.generated_tokens / wall, 1) if wall else None,
    })
    return summary


def rollout_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per task and temperature: draws, share correct; prompts with both right and wrong draws."""
    per_task: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[float]] = {}
    for r in records:
        n = int(r.get("count", 1))
        t = per_task.setdefault(r["task"], {"draws": 0, "correct": 0, "distinct": 0, "tokens": 0, "by_temperature": {}})
        t["draws"] += n
        t["correct"] += n * r["reward"]
        t["distinct"] += 1
        t["tokens"] += len(r["completion_ids"])
        by_t = t["by_temperature"].setdefault(str(r.get("behaviour", r["temperature"])), [0, 0])
        by_t[0] += n * r["reward"]
        by_t[1] += n
        groups.setdefault(r["group"], []).append(r["reward"])
    mixed = {}
    for group, rewards in groups.items():
        task = group.split(":")[0]
        mixed.setdefault(task, [0, 0])
        mixed[task][1] += 1
        mixed[task][0] += int(0 < sum(rewards) < len(rewards))
    for task, t in per_task.items():
        t["accuracy"] = round(t["correct"] / t["draws"], 4) if t["draws"] else 0.0
        t["by_temperature"] = {k: round(c / n, 4) for k, (c, n) in t["by_temperature"].items()}
        t["prompts"] = mixed[task][1]
        t["mixed_prompts"] = mixed[task][0]
    return {"tasks": per_task, "records": len(records), "completion_tokens": sum(len(r["completion_ids"]) for r in records),
            "draws": sum(int(r.get("count", 1)) for r in records)}


def add_steer_pairs(records: Sequence[dict[str, Any]], *, per_group: int = 1, seed: int = 0,
                    phrasings: dict[str, Sequence[str]] | None = None,
                    neutral: Sequence[str] | None = None, placement: str = "user",
                    system: str | None = None) -> list[dict[str, Any]]:
    """``records`` followed by a "low" and a "high" copy of up to ``per_group`` records per prompt group.

    A copy has the same completion (ids included) under the prompt with a *training* phrasing of
    the instruction (:data:`deco_middleware.steering.TRAIN_PHRASINGS`, drawn with ``seed``), where
    ``steer_prompt`` puts it; ``steer`` names the direction and ``pair`` the index of the neutral
    record in the returned list. Copies carry no reward: the policy-gradient groups use neutral
    records only, and the ranking loss compares the heads on the three versions of one completion.
    With ``neutral`` phrasings (e.g. :data:`deco_middleware.steering.NEUTRAL_PHRASINGS`) each such
    record also gets a copy under one of them (``steer="neutral"``), for the hold term. ``placement`` /
    ``system``: where the sentence goes (:func:`deco_middleware.steering.place_instruction`; a system-placed
    copy's prompt is a list of chat messages).
    """
    import random

    from ..steering import TRAIN_PHRASINGS, check_placement, place_instruction

    check_placement(placement)
    phrasings = phrasings or TRAIN_PHRASINGS
    choices = [("low", phrasings["low"]), ("high", phrasings["high"])] + ([("neutral", neutral)] if neutral else [])
    rng = random.Random(seed)
    out = [dict(r) for r in records]
    taken: dict[str, int] = {}
    for index, record in enumerate(records):
        group = str(record.get("group", record["prompt"]))
        if taken.get(group, 0) >= per_group:
            continue
        taken[group] = taken.get(group, 0) + 1
        for direction, options in choices:
            copy = {k: v for k, v in record.items() if k not in ("reward", "count")}
            copy.update(prompt=place_instruction(record["prompt"], rng.choice(list(options)), placement=placement,
                                                 system=system), steer=direction, pair=index, source="steer")
            out.append(copy)
    return out


def build_rollout_cache(model: Any, tokenizer: Any, records: Sequence[dict[str, Any]], directory: str | os.PathLike[str],
                        *, data_summary: dict[str, Any] | None = None, log: Callable[[str], None] | None = None,
                        verify_tolerance: float = 1e-3) -> Any:
    """The feature cache of ``records`` (same layout as :func:`.cache.build_cache`), with the prompt of
    every prompt group run once: rollouts share prompts (6 draws of ~30 tokens under a ~90-token
    prompt), so the forward pass over prompt + completion repeats the prompt 6 times otherwise.

    Per distinct prompt: one pass over the prompt (its KV cache kept), then one batched pass over
    its completions on top of that cache. The first record is checked against a plain full forward
    pass: the hidden states must agree within ``verify_tolerance`` (float32 rounding of a different
    batching).
    """
    import shutil
    import uuid
    import warnings

    import numpy as np
    import torch

    from ..hf.identity import model_identity
    from .cache import CACHE_FORMAT, META_NAME, RECORD_INFO_KEYS, CacheError, FeatureCache, tokenize_record

    started = time.perf_counter()
    lm_head = model.get_output_embeddings()
    weight = lm_head.weight.detach().float().cpu()
    if getattr(lm_head, "bias", None) is not None:
        raise CacheError("build_rollout_cache supports LM heads without a bias; use deco train cache.")
    captured: dict[str, Any] = {}

    def keep_input_only(module: Any, args: tuple[Any, ...]) -> Any:
        captured["hidden"] = args[0].detach()
        return (args[0][:, -1:, :],) + tuple(args[1:])  # never compute [batch, length, vocab] logits

    by_prompt: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for index, record in enumerate(records):
        prompt_ids, completion_ids = tokenize_record(tokenizer, record)
        if completion_ids:
            by_prompt.setdefault(tuple(prompt_ids), []).append((index, completion_ids))
    hidden_parts, label_parts, sequence_parts = [], [], []
    forwarded = 0
    verify: dict[str, Any] = {}
    handle = lm_head.register_forward_pre_hook(keep_input_only)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # transformers 5 renames `past_key_values` -> `cache` with a deprecation warning (as engine.py).
            warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*")
            for number, (prompt, members) in enumerate(by_prompt.items()):
                prompt_t = torch.tensor([list(prompt)])
                out = model(input_ids=prompt_t, use_cache=True)
                first = captured.pop("hidden")[0, -1]  # predicts every completion's first token
                forwarded += len(prompt)
                rest = [ids[:-1] for _, ids in members]
                width = max(len(r) for r in rest)
                if width:
                    past = out.past_key_values
                    past.batch_repeat_interleave(len(members))
                    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
                    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rest])
                    mask = torch.tensor([[1] * len(prompt) + [1] * len(r) + [0] * (width - len(r)) for r in rest])
                    positions = torch.arange(len(prompt), len(prompt) + width).expand(len(members), -1)
                    model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                          use_cache=True)
                    after = captured.pop("hidden")
                    forwarded += sum(len(r) for r in rest)
                for row, (index, completion_ids) in enumerate(members):
                    n = len(completion_ids)
                    h = torch.cat([first[None], after[row, : n - 1]]) if n > 1 else first[None]
                    hidden_parts.append(h.float().numpy())
                    label_parts.append(np.asarray(completion_ids, dtype=np.int64))
                    sequence_parts.append(np.full(n, index, dtype=np.int32))
                if number == 0:
                    index, completion_ids = members[0]
                    full = torch.tensor([list(prompt) + completion_ids[:-1]])
                    model(input_ids=full, use_cache=False)
                    direct = captured.pop("hidden")[0, len(prompt) - 1:]
                    verify = {"max_abs_hidden_diff": float((direct - torch.from_numpy(hidden_parts[0])).abs().max())}
                    if verify["max_abs_hidden_diff"] > verify_tolerance * max(1.0, float(direct.abs().max())):
                        raise CacheError(f"Prompt-shared hidden states differ from a full forward pass by "
                                         f"{verify['max_abs_hidden_diff']:.3g}; use deco train cache for this model.")
                if log is not None and number % 50 == 0:
                    log(f"cache: {number + 1}/{len(by_prompt)} prompts, {forwarded} tokens, "
                        f"{time.perf_counter() - started:.0f} s")
    finally:
        handle.remove()
    if not hidden_parts:
        raise CacheError("The records hold no completion tokens; nothing to cache.")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        np.save(staging / "hidden.npy", np.concatenate(hidden_parts).astype(np.float32))
        np.save(staging / "labels.npy", np.concatenate(label_parts))
        np.save(staging / "sequence.npy", np.concatenate(sequence_parts))
        np.save(staging / "lm_head.npy", weight.numpy())
        wall = time.perf_counter() - started
        tokens = int(sum(len(p) for p in label_parts))
        meta = {
            "format": CACHE_FORMAT, "base_model": model_identity(model).model_dump(mode="json"),
            "hidden_dtype": "float32", "hidden_size": int(weight.shape[1]), "vocab_size": int(weight.shape[0]),
            "records": len(records), "records_used": len(hidden_parts), "records_skipped_too_long": 0,
            "record_sources": [str(r.get("source", "user")) for r in records],
            "record_info": [{k: r.get(k) for k in RECORD_INFO_KEYS} for r in records],
            "completion_tokens": tokens, "forwarded_tokens": forwarded, "prompts_shared": len(by_prompt),
            "verify": verify, "data_summary": data_summary, "wall_seconds": round(wall, 2),
            "tokens_per_second": round(forwarded / wall, 1),
        }
        (staging / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return FeatureCache.open(directory)


def concatenate_caches(directories: Sequence[str | os.PathLike[str]], directory: str | os.PathLike[str]) -> Any:
    """One cache from several built over disjoint record lists (e.g. in parallel processes): tokens
    and per-record info appended in order, record indices (and steering ``pair`` indices) offset."""
    import numpy as np

    from .cache import META_NAME, CacheError, FeatureCache

    parts = [FeatureCache.open(d) for d in directories]
    if not parts:
        raise CacheError("No caches to concatenate.")
    first = parts[0]
    for part in parts[1:]:
        if part.meta["base_model"] != first.meta["base_model"] or part.hidden.shape[1] != first.hidden.shape[1]:
            raise CacheError(f"{part.directory} was built for another model than {first.directory}.")
    offsets = np.cumsum([0] + [p.meta["records"] for p in parts[:-1]])
    info: list[dict[str, Any]] = []
    for part, offset in zip(parts, offsets):
        for record in part.meta.get("record_info") or [{}] * part.meta["records"]:
            record = dict(record)
            if record.get("pair") is not None:
                record["pair"] = int(record["pair"]) + int(offset)
            info.append(record)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=False)
    np.save(directory / "hidden.npy", np.concatenate([np.asarray(p.hidden) for p in parts]))
    np.save(directory / "labels.npy", np.concatenate([np.asarray(p.labels) for p in parts]))
    np.save(directory / "sequence.npy", np.concatenate([np.asarray(p.sequence) + o for p, o in zip(parts, offsets)]))
    np.save(directory / "lm_head.npy", np.asarray(first.lm_head))
    sums = lambda key: sum(p.meta.get(key) or 0 for p in parts)  # noqa: E731
    meta = {**first.meta, "records": sums("records"), "records_used": sums("records_used"),
            "record_sources": [s for p in parts for s in p.meta["record_sources"]], "record_info": info,
            "completion_tokens": sums("completion_tokens"), "forwarded_tokens": sums("forwarded_tokens"),
            "prompts_shared": sums("prompts_shared"), "wall_seconds": max(p.meta["wall_seconds"] for p in parts),
            "cpu_parallel_parts": len(parts),
            "tokens_per_second": round(sums("forwarded_tokens") / max(p.meta["wall_seconds"] for p in parts), 1)}
    (directory / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return FeatureCache.open(directory)
