"""A torch-free generation loop for apps: numpy + ONNX Runtime, learned or static decoding.

The decoding step is :func:`~deco_middleware.sampling.decode_step` and the draw
:func:`~deco_middleware.sampling.draw` with each row's :class:`~deco_middleware.sampling.RowRandom`
stream (shared with the torch processors and the engine, so the same seed gives the same tokens);
this module only drives the exported LM step by step, keeps the KV cache, handles padding, EOS
(the rule of :mod:`deco_middleware.rows`: kept in ``token_ids``) and stop strings, and streams
each token.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import HiddenStateUnavailableError
from ..heads.artifact import DecodingHeads
from ..rows import RowRecords, stop_token_ids
from ..sampling import (
    DecodingSettings,
    LearnedPredictor,
    Predictor,
    RowRandom,
    StaticPredictor,
    batch_seeds,
    decode_step,
    draw,
)
from ..trace import DecodingTrace, TraceStep
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
    finish_reason: list[str]  # "eos" | "stop" | "length" | "nonfinite" (see deco_middleware.rows)
    texts: list[str] | None = None
    fallback_rows: int = 0  # row-steps that used the fallback T/P (non-finite hidden state, head output or logits)
    nonfinite_rows: int = 0  # rows ended with EOS because their logits were not finite
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


class OnnxGenerator:
    """Learned (or static) decoding on an exported LM, without torch.

    Args:
        lm: an :class:`OnnxCausalLM` (or the path of an export).
        heads: trained :class:`DecodingHeads` (or a name / path) for learned decoding.
        settings: :class:`DecodingSettings` for the heads; keyword arguments build one when omitted.
        predictor: any :class:`~deco_middleware.sampling.Predictor` instead of heads, e.g.
            ``StaticPredictor(0.7, 0.9)`` (T and P themselves; ``StaticPredictor(0)`` is greedy) or
            ``parse_strategy("edt").predictor()``. Without heads or a predictor: T = 1, P = 1.
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
        predictor: Predictor | None = None,
        check_model: bool = True,
        **settings_kwargs: Any,
    ) -> None:
        if settings is not None and settings_kwargs:
            raise ValueError(f"Pass either `settings` or keyword settings, not both (got {sorted(settings_kwargs)}).")
        if heads is None and (settings is not None or settings_kwargs):
            raise ValueError(
                "Settings scale the heads' predictions, and no heads were given. For a static temperature and "
                "top-p pass `predictor=StaticPredictor(T, P)` (`StaticPredictor(0)` is greedy)."
            )
        if heads is not None and predictor is not None:
            raise ValueError("Pass either `heads` (learned decoding) or a `predictor`, not both.")
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
            predictor = LearnedPredictor(self.heads, settings)
        self.settings = settings
        self.predictor: Predictor = predictor if predictor is not None else StaticPredictor(1.0, 1.0)

    def _check_hidden(self, hidden: np.ndarray) -> None:
        if self.heads is not None and hidden.shape[-1] != self.heads.hidden_size:
            raise HiddenStateUnavailableError(
                f"The LM's hidden state has size {hidden.shape[-1]} but the heads expect {self.heads.hidden_size}."
            )

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
        trace: DecodingTrace | None = None,
    ) -> GenerationResult:
        """Generate for a batch of token-id prompts (left-padded internally).

        Args:
            prompts: token ids per row (lengths may differ).
            max_new_tokens: the length limit per row.
            seed: row ``i`` draws from ``RowRandom(row_seeds(seed, 1, i))``, as in the torch backends
                (``None``: fresh entropy).
            eos_token_id: one id or several; a row stops after generating one (it is kept in the output).
            pad_token_id: fed to finished rows and used for padding (default: the first EOS id, else 0).
            stop_strings: a row stops once its decoded text contains one (needs ``decode``).
            decode: token ids -> text (for ``stop_strings``, streamed text and ``result.texts``).
            on_token: called for each new token of each unfinished row, in row order, every step.
            trace: a :class:`~deco_middleware.trace.DecodingTrace` that records every step (T, P, nucleus
                size, fallback, chosen token and its probability), as ``deco trace`` shows it.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` has to be a positive integer, got {max_new_tokens!r}.")
        if stop_strings and decode is None:
            raise ValueError("`stop_strings` need a `decode` function (token ids -> text) to be detected.")
        eos_ids = stop_token_ids(eos_token_id)
        if pad_token_id is None:
            pad_token_id = min(eos_ids) if eos_ids else 0
        if seed is None:
            seed = int(np.random.SeedSequence().entropy)
        input_ids, mask = left_pad(prompts, pad_token_id)
        batch = len(prompts)
        random = RowRandom(batch_seeds(seed, batch))
        records = RowRecords.empty(batch, eos_ids)
        texts = [""] * batch
        active = np.ones(batch, dtype=bool)

        outputs, cache = self.lm.prefill(input_ids, mask)
        for step in range(max_new_tokens):
            logits, hidden = outputs.logits[:, -1, :], outputs.hidden_states[:, -1, :]
            self._check_hidden(hidden)
            shaped = decode_step(self.predictor, logits.astype(np.float32, copy=False),
                                 hidden=hidden.astype(np.float32, copy=False))
            if trace is not None:
                trace.steps.append(TraceStep(
                    position=step, temperature=np.asarray(shaped.temperature).tolist(),
                    top_p=np.asarray(shaped.top_p).tolist(), fallback=np.asarray(shaped.fallback).tolist(),
                    nucleus_size=np.asarray(shaped.nucleus_size).tolist()))
                trace.set_final_scores(shaped.scores)
            rows = np.flatnonzero(active)
            chosen, _ = records.add(rows.tolist(), draw(shaped.scores[rows], random.next(rows)), shaped, at=rows)
            next_ids = np.full(batch, pad_token_id, dtype=np.int64)
            for position, row in enumerate(rows):
                token = int(chosen[position])
                next_ids[row] = token
                delta = None
                if decode is not None and records.finish_reason[row] != "nonfinite":
                    text = decode(records.token_ids[row])
                    # a tokenizer may rewrite earlier text (merging spaces); then the whole text is the delta
                    delta, texts[row] = text.removeprefix(texts[row]), text
                if records.finish_reason[row] in ("eos", "nonfinite"):
                    active[row] = False
                elif stop_strings and any(stop in texts[row] for stop in stop_strings):
                    records.finish_reason[row], active[row] = "stop", False
                elif step == max_new_tokens - 1:
                    active[row] = False
                if on_token is not None and records.finish_reason[row] != "nonfinite":
                    on_token(TokenEvent(row=int(row), step=step, token_id=token,
                                        temperature=records.temperature[row][-1], top_p=records.top_p[row][-1],
                                        text=delta, finished=not active[row]))
            if trace is not None:
                trace.record_chosen(step, next_ids)
            if not active.any() or step == max_new_tokens - 1:
                break
            # finished rows keep being fed (as padding) so the batch stays rectangular; their output is ignored
            outputs, cache = self.lm.step(cache, next_ids[:, None])
        return GenerationResult(
            token_ids=records.token_ids, temperature=records.temperature, top_p=records.top_p,
            finish_reason=records.finish_reason, texts=texts if decode is not None else None,
            fallback_rows=records.fallback_rows, nonfinite_rows=records.nonfinite_rows,
        )
