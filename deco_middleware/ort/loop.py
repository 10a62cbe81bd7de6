"""A torch-free generation loop for apps: numpy + ONNX Runtime, learned or static decoding.

The per-row algorithm is the one in :mod:`deco_middleware.sampling` (shared with the torch
processors); this module only drives the exported LM step by step, keeps the KV cache, handles
padding, EOS and stop strings, draws from a seeded numpy generator and streams each token.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import HiddenStateUnavailableError
from ..heads.artifact import DecodingHeads
from ..sampling import (
    DecodingSettings,
    min_p_filter,
    nucleus_filter,
    resolve_decoding,
    top_k_filter,
    warp_temperature,
)
from .runtime import OnnxCausalLM


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one row, as handed to the streaming callback."""

    row: int
    step: int
    token_id: int
    temperature: float  # applied temperature (0 = greedy)
    top_p: float  # applied nucleus mass
    text: str | None  # the new text this token added (when a decoder was given), else None
    finished: bool  # this token ended the row (EOS, a stop string, or the length limit)


@dataclass
class GenerationResult:
    """Per row: generated token ids (up to and including EOS / the stop-string token), applied T and P."""

    token_ids: list[list[int]]
    temperature: list[list[float]]
    top_p: list[list[float]]
    finish_reason: list[str]  # "eos" | "stop" | "length"
    texts: list[str] | None = None
    fallback_rows: int = 0  # row-steps that used the fallback T/P (non-finite hidden state or head output)
    extra: dict[str, Any] = field(default_factory=dict)


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)`` ``[batch, longest]`` with each prompt right-aligned."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("Every prompt needs at least one token id (got an empty prompt or no prompts).")
    longest = max(len(p) for p in prompts)
    input_ids = np.full((len(prompts), longest), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(prompts), longest), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt) :] = prompt
        mask[row, longest - len(prompt) :] = 1
    return input_ids, mask


def _sample(scores: np.ndarray, greedy_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row: argmax for greedy rows, else inverse-CDF sampling of softmax(scores).

    Only each row's finite scores (its nucleus, after the filters) enter the float64 exponentials and
    the cumulative sum; the -inf entries add exact zeros to the full-vocabulary CDF, so the drawn token
    is the same as with it, at the cost of the nucleus instead of the vocabulary.
    """
    uniforms = rng.random(scores.shape[0])  # drawn for every row so each row's stream is fixed by the seed
    drawn = np.argmax(scores, axis=-1)
    for row in np.flatnonzero(~np.asarray(greedy_rows, dtype=bool)):
        kept = np.flatnonzero(scores[row] > -np.inf)
        values = scores[row, kept].astype(np.float64)
        cdf = np.cumsum(np.exp(values - values.max()))
        position = min(int(np.searchsorted(cdf, uniforms[row] * cdf[-1], side="right")), len(kept) - 1)
        drawn[row] = kept[position]
    return drawn.astype(np.int64)


class OnnxGenerator:
    """Learned (or static) decoding on an exported LM, without torch.

    Args:
        lm: an :class:`OnnxCausalLM` (or the path of an export).
        heads: trained :class:`DecodingHeads` (or a name / path), or ``None`` for static decoding, where
            ``settings.temperature_scale`` and ``settings.top_p_scale`` are the constant T and P
            (``temperature_scale=0`` is greedy).
        settings: :class:`DecodingSettings`; keyword arguments build one when omitted.
        check_model: refuse heads whose base-model sizes or LM-head fingerprint differ from the export.

    >>> generator = OnnxGenerator("exports/smollm2", "smollm2-135m-instruct")  # doctest: +SKIP
    >>> result = generator.generate([[1, 9690, 198]], max_new_tokens=32, eos_token_id=2, seed=0)  # doctest: +SKIP
    """

    def __init__(
        self,
        lm: OnnxCausalLM | str | os.PathLike[str],
        heads: DecodingHeads | str | os.PathLike[str] | None = None,
        settings: DecodingSettings | None = None,
        *,
        check_model: bool = True,
        **settings_kwargs: Any,
    ) -> None:
        if settings is not None and settings_kwargs:
            raise ValueError(f"Pass either `settings` or keyword settings, not both (got {sorted(settings_kwargs)}).")
        # Any object with OnnxCausalLM's prefill / step / identity serves (the onnxruntime-genai adapter does).
        self.lm = OnnxCausalLM(lm) if isinstance(lm, (str, os.PathLike)) else lm
        self.heads = heads if heads is None or isinstance(heads, DecodingHeads) else DecodingHeads.from_pretrained(heads)
        settings = settings or DecodingSettings(**settings_kwargs)
        if self.heads is not None:
            from dataclasses import replace

            if "temperature" not in self.heads.trained_heads:
                settings = replace(settings, use_temperature_head=False)
            if "top_p" not in self.heads.trained_heads:
                settings = replace(settings, use_top_p_head=False)
            if check_model:
                self.heads.check_compatible(self.lm.identity())
        self.settings = settings

    def _decide(self, logits: np.ndarray, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Filtered scores, applied T, applied P and the number of fallback rows for one step."""
        logits = logits.astype(np.float32, copy=False)
        if self.heads is None:
            ones = np.ones(logits.shape[0], dtype=np.float32)
            temperature_pred, top_p_pred, finite = ones, ones, np.ones(logits.shape[0], dtype=bool)
        else:
            if hidden.shape[-1] != self.heads.hidden_size:
                raise HiddenStateUnavailableError(
                    f"The LM's hidden state has size {hidden.shape[-1]} but the heads expect {self.heads.hidden_size}."
                )
            hidden = hidden.astype(np.float32, copy=False)
            finite = np.isfinite(hidden).all(axis=-1)
            temperature_pred, top_p_pred = self.heads.run(hidden, logits)
        resolved = resolve_decoding(temperature_pred, top_p_pred, finite, self.settings)
        scores = warp_temperature(logits, resolved.temperature)
        if self.settings.top_k:
            scores = top_k_filter(scores, self.settings.top_k)
        if self.settings.min_p:
            scores = min_p_filter(scores, self.settings.min_p)
        scores, _ = nucleus_filter(scores, resolved.top_p)
        return scores, resolved.temperature, resolved.top_p, int(resolved.fallback.sum())

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 128,
        seed: int | None = 0,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        stop_strings: Sequence[str] = (),
        decode: Callable[[list[int]], str] | None = None,
        on_token: Callable[[TokenEvent], None] | None = None,
    ) -> GenerationResult:
        """Generate for a batch of token-id prompts (left-padded internally).

        Args:
            prompts: token ids per row (lengths may differ).
            max_new_tokens: the length limit per row.
            seed: seeds the numpy generator (``None``: fresh entropy).
            eos_token_id: one id or several; a row stops after generating one (it is kept in the output).
            pad_token_id: fed to finished rows and used for padding (default: the first EOS id, else 0).
            stop_strings: a row stops once its decoded text contains one (needs ``decode``).
            decode: token ids -> text (for ``stop_strings``, streamed text and ``result.texts``).
            on_token: called for each new token of each unfinished row, in row order, every step.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` has to be a positive integer, got {max_new_tokens!r}.")
        if stop_strings and decode is None:
            raise ValueError("`stop_strings` need a `decode` function (token ids -> text) to be detected.")
        eos_ids = set() if eos_token_id is None else {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
        if pad_token_id is None:
            pad_token_id = min(eos_ids) if eos_ids else 0
        rng = np.random.default_rng(seed)
        input_ids, mask = left_pad(prompts, pad_token_id)
        batch = len(prompts)
        tokens: list[list[int]] = [[] for _ in range(batch)]
        temps: list[list[float]] = [[] for _ in range(batch)]
        top_ps: list[list[float]] = [[] for _ in range(batch)]
        texts = [""] * batch
        reasons = ["length"] * batch
        active = np.ones(batch, dtype=bool)
        fallback_rows = 0

        outputs, cache = self.lm.prefill(input_ids, mask)
        for step in range(max_new_tokens):
            logits, hidden = outputs.logits[:, -1, :], outputs.hidden_states[:, -1, :]
            scores, temperature, top_p, bad = self._decide(logits, hidden)
            fallback_rows += int(bad)
            chosen = _sample(scores, temperature <= 0, rng)
            for row in np.flatnonzero(active):
                token = int(chosen[row])
                tokens[row].append(token)
                temps[row].append(float(temperature[row]))
                top_ps[row].append(float(top_p[row]))
                delta = None
                if decode is not None:
                    text = decode(tokens[row])
                    # a tokenizer may rewrite earlier text (merging spaces); then the whole text is the delta
                    delta, texts[row] = text.removeprefix(texts[row]), text
                if token in eos_ids:
                    reasons[row], active[row] = "eos", False
                elif stop_strings and any(stop in texts[row] for stop in stop_strings):
                    reasons[row], active[row] = "stop", False
                elif step == max_new_tokens - 1:
                    active[row] = False
                if on_token is not None:
                    on_token(TokenEvent(row=int(row), step=step, token_id=token, temperature=float(temperature[row]),
                                        top_p=float(top_p[row]), text=delta, finished=not active[row]))
            if not active.any() or step == max_new_tokens - 1:
                break
            # finished rows keep being fed (as padding) so the batch stays rectangular; their output is ignored
            next_ids = np.where(active, chosen, pad_token_id)
            outputs, cache = self.lm.step(cache, next_ids[:, None])
        return GenerationResult(
            token_ids=tokens, temperature=temps, top_p=top_ps, finish_reason=reasons,
            texts=texts if decode is not None else None, fallback_rows=fallback_rows,
        )
