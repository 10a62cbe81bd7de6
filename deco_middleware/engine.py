"""Fast batched sampling for evaluation and training data (torch causal LMs).

``generate()`` is the right tool for one request; for hundreds of (prompt x sample) rows it wastes
most of its work on a CPU: every sample of a prompt recomputes the same prompt, and finished rows
keep being computed until the longest row of the batch ends. This loop

* runs each distinct prompt once (the prefill) and copies its KV cache to its K samples,
* drops finished rows from the batch (and the KV cache) as soon as they end,
* draws every row's token with that row's own seeded generator, so a sample does not depend on
  the batch size or on the other rows,

and runs the same decoding step as every other loop: a predictor (greedy, static, EDT, the learned
heads, or any :class:`~deco_middleware.sampling.Predictor`) through
:func:`~deco_middleware.sampling.decode_step`, then :func:`~deco_middleware.sampling.draw` with
each row's :class:`~deco_middleware.sampling.RowRandom` stream. The hidden state is read with the
same :class:`~deco_middleware.hf.tap.HiddenStateTap` (the LM head's input). Rows end by the EOS
rule of :mod:`deco_middleware.rows` (the end-of-turn token is kept in ``token_ids``).

>>> from deco_middleware.engine import Static, sample  # doctest: +SKIP
>>> completions = sample(model, tokenizer, ["What is 7 * 8?"], policy=Static(0.7, 0.9), samples=4, seed=0)
>>> [c.text for c in completions[0]]  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._deps import require
from .rows import RowRecords
from .rows import stop_token_ids as _stop_token_ids
from .sampling import (
    GREEDY,
    DecodingSettings,
    EntropyTemperaturePredictor,
    LearnedPredictor,
    MinP,
    Predictor,
    RowRandom,
    StaticPredictor,
    decode_step,
    derive_seed,
    draw,
)

torch = require("torch", purpose="The batched sampling engine")

DEFAULT_MAX_ROWS = 128


# -- policies: how one step's token distribution is shaped -------------------------------------------


@dataclass(frozen=True)
class Greedy:
    """Argmax of the raw logits (applied temperature 0, top-p 1)."""

    def predictor(self) -> Predictor:
        return StaticPredictor(GREEDY)


@dataclass(frozen=True)
class Static:
    """One temperature and top-p for every token, optionally min-p (applied after the temperature)."""

    temperature: float
    top_p: float = 1.0
    min_p: float | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"`temperature` has to be > 0 (use Greedy() for argmax decoding), got {self.temperature!r}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` has to be in (0, 1], got {self.top_p!r}.")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise ValueError(f"`min_p` has to be in [0, 1], got {self.min_p!r}.")

    def predictor(self) -> Predictor:
        return StaticPredictor(self.temperature, self.top_p, (MinP(self.min_p),) if self.min_p else ())


# EDT is its predictor: T = T0 * N ** (theta / H) (see sampling.EntropyTemperaturePredictor).
EntropyTemperature = EntropyTemperaturePredictor


@dataclass(frozen=True)
class Learned:
    """The trained heads, with the user's settings (scales, bounds, fallbacks, heads on/off)."""

    heads: Any  # DecodingHeads
    settings: DecodingSettings = field(default_factory=DecodingSettings)

    def predictor(self) -> Predictor:
        return LearnedPredictor(self.heads, self.settings)


Policy = Greedy | Static | EntropyTemperaturePredictor | Learned


def as_predictor(policy: Any) -> Predictor:
    """A policy of this module, or any :class:`~deco_middleware.sampling.Predictor`, as a predictor."""
    if hasattr(policy, "predict") and hasattr(policy, "uses_hidden_state"):
        return policy
    if isinstance(policy, (Greedy, Static, Learned)):
        return policy.predictor()
    raise TypeError(
        f"Unknown decoding policy {policy!r}; use Greedy(), Static(...), EntropyTemperature(...), Learned(...) "
        "or a sampling.Predictor."
    )


@dataclass
class Completion:
    """One sampled completion.

    ``token_ids`` end with the end-of-turn token when one was drawn (``finished``; False: cut by
    ``max_new_tokens``), the EOS rule of :mod:`deco_middleware.rows`; ``text`` leaves it out.
    ``temperatures`` / ``top_ps`` hold the values applied at every step (one per token id).
    """

    text: str
    token_ids: list[int]
    finished: bool
    temperatures: list[float]
    top_ps: list[float]

    @property
    def length(self) -> int:
        """Generated tokens, the end-of-turn token included."""
        return len(self.token_ids)


@dataclass
class EngineStats:
    """What one :func:`iter_sample` call did (filled in as it runs)."""

    prompt_tokens: int = 0  # prefilled once per distinct prompt
    generated_tokens: int = 0
    row_steps: int = 0  # rows x decode steps actually computed
    fallback_rows: int = 0  # row-steps with a fallback T/P (non-finite hidden state, head output or logits)
    nonfinite_rows: int = 0  # rows ended with EOS because their logits were not finite


# -- the loop -------------------------------------------------------------------------------------------


class _Stepper:
    """The model side: prefill, one decode step, dropping rows. Keeps the cache and attention mask."""

    def __init__(self, model: Any, tap: Any) -> None:
        self.model = model
        self.tap = tap
        self.cache: Any = None
        self.mask: Any = None
        self.positions: Any = None
        self._logits_to_keep = True

    def _forward(self, **kwargs: Any) -> tuple[Any, Any]:
        if self._logits_to_keep:
            try:
                self.model(**kwargs, logits_to_keep=1)
            except TypeError:  # models without `logits_to_keep` compute every position's logits
                self._logits_to_keep = False
                self.model(**kwargs)
        else:
            self.model(**kwargs)
        hidden, logits = self.tap.pop()
        return hidden.float(), logits.float()

    def prefill(self, prompts: list[list[int]], pad_id: int, samples: int) -> tuple[Any, Any]:
        from transformers import DynamicCache

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every row's last token is at -1
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache()
        hidden, logits = self._forward(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=self.cache, use_cache=True
        )
        if samples > 1:
            self.cache.batch_repeat_interleave(samples)
            mask = mask.repeat_interleave(samples, dim=0)
            hidden = hidden.repeat_interleave(samples, dim=0)
            logits = logits.repeat_interleave(samples, dim=0)
        self.mask = mask
        self.positions = positions[:, -1].repeat_interleave(samples)
        return hidden, logits

    def keep(self, rows: Any) -> None:
        self.cache.batch_select_indices(rows)
        self.mask = self.mask[rows]
        self.positions = self.positions[rows]

    def step(self, tokens: Any) -> tuple[Any, Any]:
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=-1)
        self.positions = self.positions + 1
        return self._forward(
            input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.positions[:, None],
            past_key_values=self.cache, use_cache=True,
        )


def iter_sample(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    policy: Policy,
    samples: int = 1,
    seeds: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    max_new_tokens: int = 64,
    max_rows: int = DEFAULT_MAX_ROWS,
    stop_token_ids: set[int] | None = None,
    stats: EngineStats | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, list[Completion]]]:
    """Yield ``(prompt index, its samples)`` as each group of prompts finishes.

    Args:
        prompts: user messages (sent through the tokenizer's chat template when it has one).
        policy: :class:`Greedy`, :class:`Static`, :class:`EntropyTemperature`, :class:`Learned`, or any
            :class:`~deco_middleware.sampling.Predictor` (e.g. ``parse_strategy(...).predictor(heads)``).
        samples: completions per prompt (greedy ones are all identical; ask for 1).
        seeds: ``seeds[i][k]`` seeds sample k of prompt i; default ``row_seeds(seed, samples, i)[k]``
            (``derive_seed(seed, i, k)``, what generate() and the ONNX Runtime loop use for row i).
        max_rows: rows (prompts x samples) decoded together; a group holds ``max_rows // samples``
            prompts (at least one).
        stop_token_ids: tokens that end a row (default: the model's and tokenizer's EOS ids).
        stats: an :class:`EngineStats` to fill in.
        on_step: called with the number of tokens drawn in each step (for progress displays).
    """
    from .hf.tap import HiddenStateTap

    for name, value in (("samples", samples), ("max_new_tokens", max_new_tokens), ("max_rows", max_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` has to be a positive integer, got {value!r}.")
    if seeds is not None and (len(seeds) != len(prompts) or any(len(s) != samples for s in seeds)):
        raise ValueError(f"`seeds` must hold {samples} seed(s) for each of the {len(prompts)} prompts.")
    if isinstance(policy, Learned) and policy.heads is None:
        raise ValueError("The Learned policy needs heads: Learned(DecodingHeads.from_pretrained(...)).")
    predictor = as_predictor(policy)
    if not prompts:
        return
    stats = stats if stats is not None else EngineStats()
    stop = frozenset(stop_token_ids) if stop_token_ids is not None else _stop_token_ids(
        getattr(model, "generation_config", None), tokenizer
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop, default=0)
    from .hf.chat import chat_prompt_ids

    token_ids = chat_prompt_ids(tokenizer, list(prompts))
    # Similar lengths together keep padding small; results do not depend on the grouping.
    order = sorted(range(len(prompts)), key=lambda i: len(token_ids[i]))
    per_group = max(1, max_rows // samples)
    with torch.inference_mode(), HiddenStateTap(model) as tap, warnings.catch_warnings():
        # transformers 5 renames `past_key_values` -> `cache` with a deprecation warning per call.
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*")
        for start in range(0, len(order), per_group):
            group = order[start : start + per_group]
            group_seeds = [
                int(seeds[i][k]) if seeds is not None else derive_seed(seed, i, k) for i in group for k in range(samples)
            ]
            yield from _sample_group(
                _Stepper(model, tap), tokenizer, [token_ids[i] for i in group], group, group_seeds, predictor,
                samples, max_new_tokens, stop, pad_id, stats, on_step,
            )


def _sample_group(
    stepper: _Stepper, tokenizer: Any, prompts: list[list[int]], indices: list[int], group_seeds: list[int],
    predictor: Predictor, samples: int, max_new_tokens: int, stop: frozenset[int], pad_id: int, stats: EngineStats,
    on_step: Callable[[int], None] | None,
) -> Iterator[tuple[int, list[Completion]]]:
    stats.prompt_tokens += sum(len(p) for p in prompts)
    hidden, logits = stepper.prefill(prompts, pad_id, samples)
    total = len(group_seeds)
    random = RowRandom(group_seeds)
    active = np.arange(total)  # row ids still decoding, in batch order
    records = RowRecords.empty(total, stop)
    for step in range(max_new_tokens):
        shaped = decode_step(predictor, logits, hidden=hidden)
        chosen, ended = records.add(active.tolist(), draw(shaped.scores, random.next(active)), shaped)
        stats.row_steps += len(active)
        stats.generated_tokens += len(active)
        if on_step is not None:
            on_step(len(active))
        if step == max_new_tokens - 1:
            break
        keep = np.flatnonzero(~ended)
        if len(keep) == 0:
            break
        if len(keep) < len(active):
            stepper.keep(torch.from_numpy(keep))
            active, chosen = active[keep], chosen[keep]
        hidden, logits = stepper.step(torch.from_numpy(chosen))
    stats.fallback_rows += records.fallback_rows
    stats.nonfinite_rows += records.nonfinite_rows
    for group_position, index in enumerate(indices):
        rows = range(group_position * samples, (group_position + 1) * samples)
        yield index, [
            Completion(
                text=tokenizer.decode(records.token_ids[r], skip_special_tokens=True),
                token_ids=records.token_ids[r],
                finished=records.finish_reason[r] == "eos",
                temperatures=records.temperature[r],
                top_ps=records.top_p[r],
            )
            for r in rows
        ]


def sample(model: Any, tokenizer: Any, prompts: Sequence[str], **kwargs: Any) -> list[list[Completion]]:
    """Every prompt's samples, in prompt order (see :func:`iter_sample` for the arguments)."""
    out: list[list[Completion]] = [[] for _ in prompts]
    for index, completions in iter_sample(model, tokenizer, prompts, **kwargs):
        out[index] = completions
    return out


__all__ = [
    "Completion",
    "as_predictor",
    "EngineStats",
    "EntropyTemperature",
    "Greedy",
    "Learned",
    "Policy",
    "Static",
    "derive_seed",
    "iter_sample",
    "sample",
]
