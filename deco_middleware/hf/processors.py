"""The learned temperature / top-p pair inside Hugging Face ``generate()`` and pipelines."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from .._deps import require
from ..errors import HiddenStateUnavailableError, UnsupportedGenerationModeError
from ..heads.artifact import DecodingHeads
from ..sampling import DecodingSettings, min_p_filter, nucleus_filter, resolve_decoding, top_k_filter, warp_temperature
from ..trace import DecodingTrace, TraceStep
from .identity import model_identity
from .tap import HiddenStateTap

torch = require("torch", purpose="The Hugging Face integration")
transformers = require("transformers", purpose="The Hugging Face integration")
LogitsProcessor = transformers.LogitsProcessor
LogitsProcessorList = transformers.LogitsProcessorList

# Generate arguments that switch off Hugging Face's own temperature / top-k / top-p warpers, so
# that only the learned pair shapes the distribution.
NEUTRAL_GENERATE_KWARGS: dict[str, Any] = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}


class StackedWarpersWarning(UserWarning):
    """A static temperature/top-p would be applied on top of the learned one."""


class NonFiniteHiddenStateWarning(RuntimeWarning):
    """Some rows had NaN/inf hidden states or head outputs and used the fallback T/P."""


class _StepState:
    """What the temperature processor hands to the top-p warper within one step."""

    def __init__(self, trace: DecodingTrace | None) -> None:
        self.top_p: torch.Tensor | None = None
        self.trace = trace
        self.fallback_rows = 0
        self.warned = False
        self.checked_mode = False


class LearnedTemperatureProcessor(LogitsProcessor):
    r"""Runs the heads on the current hidden state and divides each row by its own temperature.

    Args:
        heads (`DecodingHeads`): the trained heads.
        tap (`HiddenStateTap`): the attached tap of the model being generated with.
        settings (`DecodingSettings`): the user's scales, bounds, fallbacks and optional filters.
        state: shared with the paired :class:`LearnedTopPWarper` (use :meth:`LearnedDecoding.attach`).

    Use it through :meth:`LearnedDecoding.attach`, which builds the pair and the tap:

    >>> with LearnedDecoding("path/to/heads").attach(model) as session:  # doctest: +SKIP
    ...     out = model.generate(**inputs, **session.generate_kwargs, max_new_tokens=32)
    """

    def __init__(self, heads: DecodingHeads, tap: HiddenStateTap, settings: DecodingSettings, state: _StepState) -> None:
        self.heads = heads
        self.tap = tap
        self.settings = settings
        self.state = state

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        hidden, raw_logits = self.tap.pop()
        if hidden.shape[0] != scores.shape[0]:
            raise HiddenStateUnavailableError(
                f"The captured hidden state has {hidden.shape[0]} rows but the scores have {scores.shape[0]}: "
                "the processors are attached to a different model than the one generating."
            )
        state = self.state
        if not state.checked_mode:
            self._check_generation_mode(scores, raw_logits)
            state.checked_mode = True
        self._record_previous_token(input_ids)

        # The heads run in ONNX Runtime on numpy views of the captured tensors (no copy for float32
        # CPU tensors); the per-row settings are resolved on those [batch]-sized numpy arrays, where
        # each operation costs about a microsecond instead of a torch dispatch.
        hidden_np = hidden.detach().float().cpu().numpy()
        temperature_pred, top_p_pred = self.heads.run(hidden_np, raw_logits.detach().float().cpu().numpy())
        resolved = resolve_decoding(temperature_pred, top_p_pred, np.isfinite(hidden_np).all(axis=-1), self.settings)
        temperature = torch.from_numpy(np.ascontiguousarray(resolved.temperature, dtype=np.float32)).to(scores.device)
        top_p = torch.from_numpy(np.ascontiguousarray(resolved.top_p, dtype=np.float32)).to(scores.device)
        bad_rows = int(resolved.fallback.sum())
        if bad_rows:
            state.fallback_rows += bad_rows
            if not state.warned:
                state.warned = True
                warnings.warn(
                    f"{bad_rows} row(s) had a NaN/inf hidden state or head output; they use the fallback "
                    f"temperature {self.settings.fallback_temperature} and top-p {self.settings.fallback_top_p}. "
                    "Generation goes on; see `session.fallback_rows` for the total.",
                    NonFiniteHiddenStateWarning,
                    stacklevel=2,
                )
        scores = warp_temperature(scores, temperature)
        if self.settings.top_k:
            scores = top_k_filter(scores, self.settings.top_k)
        if self.settings.min_p:
            scores = min_p_filter(scores, self.settings.min_p)
        state.top_p = top_p
        if state.trace is not None:
            state.trace.steps.append(
                TraceStep(
                    position=int(input_ids.shape[1]),
                    temperature=resolved.temperature.tolist(),
                    top_p=resolved.top_p.tolist(),
                    fallback=resolved.fallback.tolist(),
                )
            )
        return scores

    def _check_generation_mode(self, scores: torch.Tensor, raw_logits: torch.Tensor) -> None:
        # Beam search hands processors log-softmax scores (each row's logsumexp is 0) instead of
        # logits. Dividing log-probabilities by a temperature is not the method, so refuse.
        scores_lse = torch.logsumexp(scores.float(), dim=-1)
        raw_lse = torch.logsumexp(raw_logits.float(), dim=-1)
        if bool((scores_lse.abs() < 1e-3).all()) and bool((raw_lse.abs() > 1e-2).any()):
            raise UnsupportedGenerationModeError(
                "Learned decoding received log-probabilities, which means beam search (`num_beams` > 1). "
                "Beam search is not supported: use `num_beams=1` with `do_sample=True` (sampling) or "
                "`temperature_scale=0` (greedy)."
            )

    def _record_previous_token(self, input_ids: torch.Tensor) -> None:
        if self.state.trace is not None:
            self.state.trace.record_chosen(int(input_ids.shape[1]) - 1, input_ids[:, -1].tolist())


class LearnedTopPWarper(LogitsProcessor):
    r"""Keeps each row's own nucleus, with the top-p its paired :class:`LearnedTemperatureProcessor` chose.

    The most likely token is always kept. Must come right after the temperature processor in the
    same list (which :meth:`LearnedDecoding.attach` guarantees).
    """

    def __init__(self, state: _StepState) -> None:
        self.state = state

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        top_p = self.state.top_p
        if top_p is None:
            raise HiddenStateUnavailableError(
                "LearnedTopPWarper ran without its LearnedTemperatureProcessor in this step; put both in the "
                "same `logits_processor` list, temperature first (use `session.logits_processor`)."
            )
        self.state.top_p = None
        filtered, nucleus_size = nucleus_filter(scores, top_p)
        trace = self.state.trace
        if trace is not None and trace.steps:
            trace.steps[-1].nucleus_size = nucleus_size.tolist()
            trace.set_final_scores(filtered)
        return filtered


def _is_pipeline(obj: Any) -> bool:
    return hasattr(obj, "model") and hasattr(obj, "tokenizer") and callable(obj)


_SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k")


def stacked_warper_settings(generation_values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``generation_values`` that would apply a second temperature / top-p / top-k."""
    if not generation_values.get("do_sample"):
        return {}  # generate() only adds its warpers when sampling
    neutral = {"temperature": (None, 1.0), "top_p": (None, 1.0), "top_k": (None, 0)}
    return {key: generation_values[key] for key, values in neutral.items() if generation_values.get(key) not in values}


def effective_generation_values(model_or_pipeline: Any, call_kwargs: dict[str, Any]) -> dict[str, Any]:
    """do_sample/temperature/top_p/top_k as generate() will see them, in generate()'s precedence:
    the call's arguments, then arguments given to the pipeline, then the model's generation config,
    then the pipeline's defaults (text-generation: temperature=0.7), then the library defaults."""
    is_pipeline = _is_pipeline(model_or_pipeline)
    model = model_or_pipeline.model if is_pipeline else model_or_pipeline
    config = getattr(model, "generation_config", None)
    if is_pipeline and getattr(model_or_pipeline, "generation_config", None) is not None:
        # transformers 4.57 pipelines keep their own config, already merged over their defaults.
        config = model_or_pipeline.generation_config
    values: dict[str, Any] = {key: getattr(config, key, None) for key in _SAMPLING_KEYS}
    if is_pipeline:  # transformers 5.x keeps the pieces apart and merges them per call
        for key, value in (getattr(model_or_pipeline, "_generation_defaults", None) or {}).items():
            if key in values and values[key] is None:
                values[key] = value
        values.update({k: v for k, v in (getattr(model_or_pipeline, "_generate_kwargs", None) or {}).items() if k in values})
    values.update({k: v for k, v in call_kwargs.items() if k in values})
    library_defaults = transformers.GenerationConfig()  # 4.57: top_k=50 applies unless overridden
    return {key: getattr(library_defaults, key, None) if value is None else value for key, value in values.items()}


def check_generate_kwargs(model_or_pipeline: Any, call_kwargs: dict[str, Any], *, stacklevel: int = 2) -> dict[str, Any]:
    """Warn when a static temperature/top-p/top-k would run after the learned pair; return them."""
    stacked = stacked_warper_settings(effective_generation_values(model_or_pipeline, call_kwargs))
    if stacked:
        settings = ", ".join(f"{k}={v}" for k, v in stacked.items())
        warnings.warn(
            f"generate() would apply {settings} on top of learned decoding (from the model's generation config, "
            "the pipeline's defaults or your arguments). Pass `do_sample=True, temperature=1.0, top_p=1.0, "
            "top_k=0` (`**session.generate_kwargs`) so that only the learned pair shapes the distribution; use "
            "`top_k`/`min_p` of DecodingSettings to combine them in the method's order.",
            StackedWarpersWarning,
            stacklevel=stacklevel + 1,
        )
    return stacked


class DecodingSession:
    """The tap and the processor pair, attached to one model for the duration of a ``with`` block.

    Attributes:
        logits_processor: the ``LogitsProcessorList`` to pass to ``generate()``.
        generate_kwargs: ``logits_processor`` plus the arguments that neutralise built-in warpers.
        trace: the per-step :class:`DecodingTrace` when recording was asked for, else ``None``.
    """

    def __init__(self, decoding: LearnedDecoding, target: Any) -> None:
        self.target = target
        self.model = target.model if _is_pipeline(target) else target
        if decoding.check_model:
            decoding.heads.check_compatible(model_identity(self.model))
        self.tap = HiddenStateTap(self.model)
        self.trace = DecodingTrace() if decoding.record_trace else None
        self._state = _StepState(self.trace)
        self.logits_processor = LogitsProcessorList(
            [
                LearnedTemperatureProcessor(decoding.heads, self.tap, decoding.settings, self._state),
                LearnedTopPWarper(self._state),
            ]
        )

    @property
    def generate_kwargs(self) -> dict[str, Any]:
        return {**NEUTRAL_GENERATE_KWARGS, "logits_processor": self.logits_processor}

    @property
    def fallback_rows(self) -> int:
        """How many row-steps used the fallback T/P because of non-finite values."""
        return self._state.fallback_rows

    def __enter__(self) -> DecodingSession:
        self.tap.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.tap.close()

    def _merged(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        unsupported = {
            "num_beams": kwargs.get("num_beams", 1) not in (None, 1),
            "assistant_model": kwargs.get("assistant_model") is not None,
            "prompt_lookup_num_tokens": kwargs.get("prompt_lookup_num_tokens") is not None,
            "penalty_alpha": kwargs.get("penalty_alpha") is not None,
        }
        for name, refused in unsupported.items():
            if refused:
                raise UnsupportedGenerationModeError(
                    f"`{name}={kwargs[name]!r}` selects a generation mode learned decoding does not support "
                    "(beam search, assisted or contrastive decoding). Use plain sampling or greedy decoding."
                )
        merged = {**self.generate_kwargs, **kwargs}
        if "logits_processor" in kwargs:
            merged["logits_processor"] = LogitsProcessorList([*kwargs["logits_processor"], *self.logits_processor])
        check_generate_kwargs(self.target, merged, stacklevel=3)
        return merged

    def generate(self, **kwargs: Any) -> Any:
        """``model.generate(**kwargs)`` with the pair and neutral warpers; the trace is finalized."""
        output = self.model.generate(**self._merged(kwargs))
        if self.trace is not None:
            sequences = output.sequences if hasattr(output, "sequences") else output
            self.trace.finalize(sequences)
        return output

    def pipeline(self, inputs: Any, **kwargs: Any) -> Any:
        """Call the attached ``text-generation`` pipeline with the pair and neutral warpers."""
        if not _is_pipeline(self.target):
            raise TypeError("`session.pipeline(...)` needs a session attached to a pipeline, not a model.")
        return self.target(inputs, **self._merged(kwargs))


class LearnedDecoding:
    """Trained heads plus the user's settings; attach them to a model or pipeline to generate.

    Args:
        heads: a :class:`DecodingHeads`, or a shipped name / path to load.
        settings: a :class:`DecodingSettings`; keyword arguments build one when it is omitted.
        record_trace: keep a per-step :class:`DecodingTrace` on each session.
        check_model: refuse models whose sizes or LM-head fingerprint differ from the manifest.
        steer: ``"low"`` / ``"high"`` adds the trained decoding instruction to user messages passed
            through :meth:`chat_inputs` / :meth:`steer_prompt` (``None``: prompts unchanged).

    >>> decoding = LearnedDecoding("smollm2-135m-instruct", temperature_scale=1.0)  # doctest: +SKIP
    >>> with decoding.attach(model) as session:  # doctest: +SKIP
    ...     out = model.generate(**inputs, **session.generate_kwargs, max_new_tokens=32)
    """

    def __init__(
        self,
        heads: DecodingHeads | str | os.PathLike[str],
        settings: DecodingSettings | None = None,
        *,
        record_trace: bool = False,
        check_model: bool = True,
        steer: str | None = None,
        **settings_kwargs: Any,
    ) -> None:
        from ..steering import check_steer

        self.steer = check_steer(steer)  # "low" | "high" | None: see steer_prompt / chat_inputs
        if settings is not None and settings_kwargs:
            raise ValueError(f"Pass either `settings` or keyword settings, not both (got {sorted(settings_kwargs)}).")
        self.heads = heads if isinstance(heads, DecodingHeads) else DecodingHeads.from_pretrained(heads)
        self.settings = settings or DecodingSettings(**settings_kwargs)
        self.record_trace = record_trace
        self.check_model = check_model
        if "temperature" not in self.heads.trained_heads and self.settings.use_temperature_head:
            self.settings = _replace(self.settings, use_temperature_head=False)
        if "top_p" not in self.heads.trained_heads and self.settings.use_top_p_head:
            self.settings = _replace(self.settings, use_top_p_head=False)

    def steer_prompt(self, prompt: str) -> str:
        """``prompt`` with the trained instruction for ``steer`` where training put it (deco_middleware.steering)."""
        from ..steering import steer_prompt

        return steer_prompt(prompt, self.steer)

    def chat_inputs(self, tokenizer: Any, prompts: list[str]) -> dict[str, Any]:
        """Tokenized user messages through the chat template, each carrying the ``steer`` instruction."""
        from ..generation import chat_inputs

        return chat_inputs(tokenizer, [self.steer_prompt(p) for p in prompts])

    def attach(self, model_or_pipeline: Any) -> DecodingSession:
        """A new session (tap + processor pair) for ``model_or_pipeline``; use it as a context manager."""
        return DecodingSession(self, model_or_pipeline)

    def generate(self, model: Any, **kwargs: Any) -> Any:
        """Attach, generate once, detach. Returns what ``model.generate`` returns."""
        with self.attach(model) as session:
            return session.generate(**kwargs)


def _replace(settings: DecodingSettings, **changes: Any) -> DecodingSettings:
    from dataclasses import replace

    return replace(settings, **changes)


__all__ = [
    "NEUTRAL_GENERATE_KWARGS",
    "DecodingSession",
    "LearnedDecoding",
    "LearnedTemperatureProcessor",
    "LearnedTopPWarper",
    "NonFiniteHiddenStateWarning",
    "StackedWarpersWarning",
    "check_generate_kwargs",
]
