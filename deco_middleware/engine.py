"""Fast batched sampling for evaluation and training data (torch causal LMs).

``generate()`` is the right tool for one request; for hundreds of (prompt x sample) rows it wastes
most of its work on a CPU: every sample of a prompt recomputes the same prompt, and finished rows
keep being computed until the longest row of the batch ends. This loop

* runs each distinct prompt once (the prefill) and copies its KV cache to its K samples,
* drops finished rows from the batch (and the KV cache) as soon as they end,
* draws every row's token with that row's own seeded generator, so a sample does not depend on
  the batch size or on the other rows,

and applies the same decoding code as the ``generate()`` integration: the heads through
:meth:`DecodingHeads.run`, then :func:`~deco_middleware.sampling.resolve_decoding`,
:func:`~deco_middleware.sampling.warp_temperature`, the optional filters and
:func:`~deco_middleware.sampling.nucleus_filter`. The hidden state is read with the same
:class:`~deco_middleware.hf.tap.HiddenStateTap` (the LM head's input).

>>> from deco_middleware.engine import Static, sample  # doctest: +SKIP
>>> completions = sample(model, tokenizer, ["What is 7 * 8?"], policy=Static(0.7, 0.9), samples=4, seed=0)
>>> [c.text for c in completions[0]]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._deps import require
from .sampling import DecodingSettings, min_p_filter, nucleus_filter, resolve_decoding, top_k_filter, warp_temperature

torch = require("torch", purpose="The batched sampling engine")

DEFAULT_MAX_ROWS = 128


# -- policies: how one step's token distribution is shaped -------------------------------------------


@dataclass(frozen=True)
class Greedy:
    """Argmax of the raw logits (applied temperature 0, top-p 1)."""


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


@dataclass(frozen=True)
class EntropyTemperature:
    """EDT (Zhang et al. 2024): ``T = T0 * N ** (theta / H)``, H the entropy (nats) of softmax(logits); P = 1."""

    base_temperature: float = 1.0
    exponent_base: float = 0.8
    theta: float = 1.0
    min_temperature: float = 0.05

    def __post_init__(self) -> None:
        if not self.base_temperature > 0:
            raise ValueError(f"`base_temperature` has to be > 0, got {self.base_temperature!r}.")
        if not 0 < self.exponent_base < 1:
            raise ValueError(f"`exponent_base` has to be in (0, 1), got {self.exponent_base!r}.")
        if not self.theta > 0:
            raise ValueError(f"`theta` has to be > 0, got {self.theta!r}.")


@dataclass(frozen=True)
class Learned:
    """The trained heads, with the user's settings (scales, bounds, fallbacks, heads on/off)."""

    heads: Any  # DecodingHeads
    settings: DecodingSettings = field(default_factory=DecodingSettings)


Policy = Greedy | Static | EntropyTemperature | Learned


@dataclass
class Completion:
    """One sampled completion.

    ``token_ids`` stop before the end-of-turn token; ``finished`` says whether one was drawn (False:
    cut by ``max_new_tokens``). ``temperatures`` / ``top_ps`` hold the values applied at every
    step, the end-of-turn step included (so ``len(temperatures) == len(token_ids) + finished``).
    """

    text: str
    token_ids: list[int]
    finished: bool
    temperatures: list[float]
    top_ps: list[float]

    @property
    def length(self) -> int:
        """Generated tokens, the end-of-turn token included."""
        return len(self.token_ids) + int(self.finished)


@dataclass
class EngineStats:
    """What one :func:`iter_sample` call did (filled in as it runs)."""

    prompt_tokens: int = 0  # prefilled once per distinct prompt
    generated_tokens: int = 0
    row_steps: int = 0  # rows x decode steps actually computed
    fallback_rows: int = 0  # learned rows whose hidden state / head output was not finite


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and any labels (stable across runs and Python versions)."""
    digest = hashlib.sha256("|".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# -- the loop -------------------------------------------------------------------------------------------


def _prompt_ids(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    from .generation import chat_texts

    texts, templated = chat_texts(tokenizer, list(prompts))
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=not templated)["input_ids"]]


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
    ids.add(getattr(tokenizer, "eos_token_id", None))
    return {int(i) for i in ids if i is not None}


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


def _predicted_step(predictor: Any, hidden: Any, logits: Any, stats: EngineStats) -> tuple[Any, Any, Any]:
    """One step of a predictor of per-row (T, P, filters) (the baselines in ``deco_middleware.baselines``).

    The one place this loop turns a predictor's decisions into scores: divide by T (0 = argmax
    only), the predictor's filters, then the nucleus. To be replaced by the shared decoding step.
    """
    decisions = predictor.predict(hidden.numpy() if predictor.uses_hidden_state else None, logits.numpy())
    stats.fallback_rows += int(decisions.fallback.sum())
    temperature = torch.from_numpy(decisions.temperature)
    top_p = torch.from_numpy(decisions.top_p)
    scores = warp_temperature(logits, temperature.float())
    for score_filter in decisions.filters:
        scores = score_filter.apply(scores)
    if bool((top_p < 1.0).any()):
        scores, _ = nucleus_filter(scores, top_p.float())
    return scores, temperature, top_p


def _shape(policy: Policy, hidden: Any, logits: Any, stats: EngineStats) -> tuple[Any, Any, Any]:
    """(scores to sample from, applied T [rows], applied P [rows]) for one step."""
    rows = logits.shape[0]
    if hasattr(policy, "predict"):
        return _predicted_step(policy, hidden, logits, stats)
    if isinstance(policy, Static):
        temperature = torch.full((rows,), policy.temperature)
        top_p = torch.full((rows,), policy.top_p)
        scores = warp_temperature(logits, temperature)
        if policy.min_p:
            scores = min_p_filter(scores, policy.min_p)
        if policy.top_p < 1.0:
            scores, _ = nucleus_filter(scores, top_p)
        # Recorded as the exact settings (float32 0.7 would read back as 0.699999988).
        return scores, temperature.double().fill_(policy.temperature), top_p.double().fill_(policy.top_p)
    if isinstance(policy, EntropyTemperature):
        log_probs = torch.log_softmax(logits, dim=-1)
        entropy = -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(dim=-1)
        exponent = policy.theta / entropy.clamp(min=1e-6)
        temperature = policy.base_temperature * torch.exp(exponent * math.log(policy.exponent_base))
        temperature = temperature.clamp(min=policy.min_temperature)
        return warp_temperature(logits, temperature), temperature, torch.ones(rows)
    if isinstance(policy, Learned):
        settings = policy.settings
        hidden_finite = torch.isfinite(hidden).all(dim=-1)
        t_pred, p_pred = policy.heads.run(hidden.numpy(), logits.numpy())
        resolved = resolve_decoding(torch.from_numpy(t_pred), torch.from_numpy(p_pred), hidden_finite, settings)
        stats.fallback_rows += int(resolved.fallback.sum())
        scores = warp_temperature(logits, resolved.temperature)
        if settings.top_k:
            scores = top_k_filter(scores, settings.top_k)
        if settings.min_p:
            scores = min_p_filter(scores, settings.min_p)
        scores, _ = nucleus_filter(scores, resolved.top_p)
        return scores, resolved.temperature, resolved.top_p
    raise TypeError(f"Unknown decoding policy {policy!r}; use Greedy(), Static(...), EntropyTemperature(...) or Learned(...).")


def _draw(scores: Any, generators: list[Any]) -> Any:
    """Inverse-CDF sampling: one float64 uniform per row from that row's generator."""
    uniform = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    cdf = torch.softmax(scores, dim=-1).double().cumsum(dim=-1)
    # right=True: the first token whose cumulative mass exceeds the draw; a filtered token (zero
    # mass, same cumulative value as its predecessor) is never chosen.
    chosen = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True).squeeze(-1)
    return chosen.clamp(max=scores.shape[-1] - 1)


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
        policy: :class:`Greedy`, :class:`Static`, :class:`EntropyTemperature` or :class:`Learned`.
        samples: completions per prompt (greedy ones are all identical; ask for 1).
        seeds: ``seeds[i][k]`` seeds sample k of prompt i; default ``derive_seed(seed, i, k)``.
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
    if not prompts:
        return
    stats = stats if stats is not None else EngineStats()
    stop = stop_token_ids if stop_token_ids is not None else _stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop), 0)
    token_ids = _prompt_ids(tokenizer, prompts)
    # Similar lengths together keep padding small; results do not depend on the grouping.
    order = sorted(range(len(prompts)), key=lambda i: len(token_ids[i]))
    per_group = max(1, max_rows // samples)
    with torch.inference_mode(), HiddenStateTap(model) as tap, warnings.catch_warnings():
        # transformers 5 renames `past_key_values` -> `cache` with a deprecation warning per call.
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*")
        for start in range(0, len(order), per_group):
            group = order[start : start + per_group]
            row_seeds = [
                int(seeds[i][k]) if seeds is not None else derive_seed(seed, i, k) for i in group for k in range(samples)
            ]
            yield from _sample_group(
                _Stepper(model, tap), tokenizer, [token_ids[i] for i in group], group, row_seeds, policy,
                samples, max_new_tokens, stop, pad_id, stats, on_step,
            )


def _sample_group(
    stepper: _Stepper, tokenizer: Any, prompts: list[list[int]], indices: list[int], row_seeds: list[int],
    policy: Policy, samples: int, max_new_tokens: int, stop: set[int], pad_id: int, stats: EngineStats,
    on_step: Callable[[int], None] | None,
) -> Iterator[tuple[int, list[Completion]]]:
    stats.prompt_tokens += sum(len(p) for p in prompts)
    hidden, logits = stepper.prefill(prompts, pad_id, samples)
    total = len(row_seeds)
    generators = [torch.Generator().manual_seed(s) for s in row_seeds]
    active = list(range(total))  # row ids still decoding, in batch order
    tokens: list[list[int]] = [[] for _ in range(total)]
    applied_t: list[list[float]] = [[] for _ in range(total)]
    applied_p: list[list[float]] = [[] for _ in range(total)]
    finished = [False] * total
    stop_tensor = torch.tensor(sorted(stop), dtype=torch.long)
    for step in range(max_new_tokens):
        if isinstance(policy, Greedy):
            chosen = logits.argmax(dim=-1)
            temperature, top_p = torch.zeros(len(active)), torch.ones(len(active))
        else:
            scores, temperature, top_p = _shape(policy, hidden, logits, stats)
            chosen = _draw(scores, [generators[r] for r in active])
        stats.row_steps += len(active)
        ended = torch.isin(chosen, stop_tensor)
        for position, (row, token, t, p, end) in enumerate(
            zip(active, chosen.tolist(), temperature.tolist(), top_p.tolist(), ended.tolist())
        ):
            applied_t[row].append(t)
            applied_p[row].append(p)
            if end:
                finished[row] = True
            else:
                tokens[row].append(token)
        stats.generated_tokens += len(active)
        if on_step is not None:
            on_step(len(active))
        if step == max_new_tokens - 1:
            break
        keep = (~ended).nonzero().squeeze(-1)
        if keep.numel() == 0:
            break
        if keep.numel() < len(active):
            stepper.keep(keep)
            active = [active[i] for i in keep.tolist()]
            chosen = chosen[keep]
        hidden, logits = stepper.step(chosen)
    for group_position, index in enumerate(indices):
        rows = range(group_position * samples, (group_position + 1) * samples)
        yield index, [
            Completion(
                text=tokenizer.decode(tokens[r], skip_special_tokens=True),
                token_ids=tokens[r],
                finished=finished[r],
                temperatures=applied_t[r],
                top_ps=applied_p[r],
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
