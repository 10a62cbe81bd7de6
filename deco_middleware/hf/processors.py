"""The learned temperature / top-p pair inside Hugging Face ``generate()`` and pipelines."""

from __future__ import annotations

import copy
import math
import os
import sys
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._deps import require
from ..errors import (
    HiddenStateUnavailableError,
    NonFiniteHiddenStateWarning,
    StackedWarpersWarning,
    SteerError,
    UnsupportedGenerationModeError,
)
from ..heads.artifact import DecodingHeads
from ..sampling import (
    NO_TOKEN,
    DecodingSettings,
    LearnedPredictor,
    Predictor,
    RowRandom,
    StepOutput,
    batch_seeds,
    decode_step,
    draw,
    nucleus_step,
)
from ..trace import DecodingTrace, TraceStep
from .chat import Prompt, chat_inputs
from .identity import model_identity
from .tap import HiddenStateTap

torch = require("torch", purpose="The Hugging Face integration")
transformers = require("transformers", purpose="The Hugging Face integration")
LogitsProcessor = transformers.LogitsProcessor
LogitsProcessorList = transformers.LogitsProcessorList

# Generate arguments that switch off Hugging Face's own temperature / top-k / top-p warpers, so
# that only the learned pair shapes the distribution.
NEUTRAL_GENERATE_KWARGS: dict[str, Any] = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}




# HF's own warpers, with the generate() setting that adds each one (for the stacking warning).
_WARPER_SETTINGS = {
    "TemperatureLogitsWarper": ("temperature", "temperature"),
    "TopKLogitsWarper": ("top_k", "top_k"),
    "TopPLogitsWarper": ("top_p", "top_p"),
    "MinPLogitsWarper": ("min_p", "min_p"),
    "TypicalLogitsWarper": ("typical_p", "mass"),
    "EpsilonLogitsWarper": ("epsilon_cutoff", "epsilon"),
    "EtaLogitsWarper": ("eta_cutoff", "epsilon"),
    "TopHLogitsWarper": ("top_h", "top_h"),
}


def _generate_context(processor: Any) -> tuple[Any, Any]:
    """``(processor list, generation config)`` of the generate() call running ``processor``, if any.

    generate()'s decoding loop (``_sample`` on transformers 4.57 and 5.x) holds the list it built,
    built-in warpers included, and its own copy of the generation config; both are locals of the
    frame a few levels above the processor. ``(None, None)`` when the processor runs elsewhere.
    """
    frame = sys._getframe(2)
    for _ in range(8):
        if frame is None:
            break
        local = frame.f_locals
        processors, config = local.get("logits_processor"), local.get("generation_config")
        if config is not None and isinstance(processors, list) and any(p is processor for p in processors):
            return processors, config
        frame = frame.f_back
    return None, None


def _eos_id(config: Any) -> int | None:
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if hasattr(eos, "tolist"):
        eos = eos.reshape(-1).tolist()[0] if eos.numel() else None
    return None if eos is None else int(eos)


class _StepState:
    """What the pair shares within one step, and what a session keeps across generate() calls.

    A new generate() call (another generation config object in generate()'s frame, or, when the
    processors run outside generate(), a sequence that did not grow by one token) starts a fresh
    trace and fresh per-row random streams.
    """

    def __init__(
        self, trace: DecodingTrace | None, *, seed: int | None = None, row_seeds: Sequence[int] | None = None,
        eos_token_id: int | None = None,
    ) -> None:
        self.step: StepOutput[Any] | None = None
        self.trace = trace
        self.record_trace = trace is not None
        self.seed = seed
        self.row_seeds = None if row_seeds is None else [int(s) for s in row_seeds]
        self.eos_token_id = eos_token_id
        self.random: RowRandom | None = None
        self.generation: Any = None
        self.length: int | None = None
        self.generations = 0
        self.fallback_rows = 0
        self.nonfinite_rows = 0
        self.warned = False
        self.warned_stacking = False
        self.checked_mode = False

    def begin(self, input_ids: torch.Tensor, processor: Any) -> None:
        """Start or continue a generation; called by the temperature processor at every step."""
        processors, config = _generate_context(processor)
        batch, length = int(input_ids.shape[0]), int(input_ids.shape[1])
        if config is not None:
            new = config is not self.generation
        else:
            new = self.random is None or length != (self.length or 0) + 1 or batch != len(self.random)
        self.length = length
        if not new:
            return
        self.generation = config
        self.generations += 1
        self.checked_mode = False
        if self.record_trace and (self.trace is None or self.trace.steps):
            self.trace = DecodingTrace()
        if config is not None and _eos_id(config) is not None:
            self.eos_token_id = _eos_id(config)
        self.random = RowRandom(self._seeds(batch))
        if processors is not None and not self.warned_stacking:
            self._warn_stacked(processors)

    def _seeds(self, batch: int) -> list[int]:
        if self.row_seeds is not None:
            if len(self.row_seeds) != batch:
                raise ValueError(
                    f"The session was given {len(self.row_seeds)} row seeds but generate() runs {batch} rows; "
                    "pass one seed per row (prompts x num_return_sequences)."
                )
            return self.row_seeds
        # Without a seed, one comes from torch's global generator: torch.manual_seed() still fixes the tokens.
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        return batch_seeds(seed, batch)

    def _warn_stacked(self, processors: list[Any]) -> None:
        found = []
        for other in processors:
            setting = _WARPER_SETTINGS.get(type(other).__name__)
            if setting is not None and type(other).__module__.startswith("transformers"):
                found.append(f"{setting[0]}={getattr(other, setting[1], '?')}")
        if found:
            self.warned_stacking = True
            _warn_stacking(", ".join(found), stacklevel=5)

    def count_fallbacks(self, step: StepOutput[Any], settings: DecodingSettings) -> None:
        bad_rows, broken = int(step.fallback.sum()), int(step.nonfinite.sum())
        if not bad_rows:
            return
        self.fallback_rows += bad_rows
        self.nonfinite_rows += broken
        if not self.warned:
            self.warned = True
            warnings.warn(
                f"{bad_rows} row(s) had a NaN/inf hidden state or head output; they use the fallback "
                f"temperature {settings.fallback_temperature} and top-p {settings.fallback_top_p}"
                + (f", and {broken} whose logits were not finite end with EOS" if broken else "")
                + ". Generation goes on; see `session.fallback_rows` for the total.",
                NonFiniteHiddenStateWarning,
                stacklevel=4,
            )


class LearnedTemperatureProcessor(LogitsProcessor):
    r"""Runs the heads on the current hidden state and divides each row by its own temperature.

    The first half of :func:`~deco_middleware.sampling.decode_step` (heads, settings, temperature,
    optional top-k / min-p); its paired :class:`LearnedTopPWarper` applies each row's nucleus and
    draws the token.

    Args:
        heads (`DecodingHeads`): the trained heads.
        tap (`HiddenStateTap`): the attached tap of the model being generated with.
        settings (`DecodingSettings`): the user's scales, bounds, fallbacks and optional filters.
        state: shared with the paired :class:`LearnedTopPWarper` (use :meth:`LearnedDecoding.attach`).

    Use it through :meth:`LearnedDecoding.attach`, which builds the pair and the tap:

    >>> with LearnedDecoding("path/to/heads").attach(model) as session:  # doctest: +SKIP
    ...     out = model.generate(**inputs, **session.generate_kwargs, max_new_tokens=32)
    """

    def __init__(
        self, heads: DecodingHeads | None, tap: HiddenStateTap, settings: DecodingSettings, state: _StepState,
        predictor: Predictor | None = None,
    ) -> None:
        self.heads = heads
        self.tap = tap
        self.settings = settings
        self.state = state
        self.predictor = predictor if predictor is not None else LearnedPredictor(heads, settings)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        hidden, raw_logits = self.tap.pop()
        if hidden.shape[0] != scores.shape[0]:
            raise HiddenStateUnavailableError(
                f"The captured hidden state has {hidden.shape[0]} rows but the scores have {scores.shape[0]}: "
                "the processors are attached to a different model than the one generating."
            )
        state = self.state
        state.begin(input_ids, self)
        if not state.checked_mode:
            self._check_generation_mode(scores, raw_logits)
            state.checked_mode = True
        self._record_previous_token(input_ids)
        # The heads see the raw LM-head logits; the step shapes generate()'s (penalised) scores.
        step = decode_step(self.predictor, scores, raw_logits=raw_logits, hidden=hidden, nucleus=False)
        state.count_fallbacks(step, self.settings)
        state.step = step
        if state.trace is not None:
            state.trace.steps.append(
                TraceStep(
                    position=int(input_ids.shape[1]),
                    temperature=step.temperature.tolist(),
                    top_p=step.top_p.tolist(),
                    fallback=step.fallback.tolist(),
                )
            )
        return step.scores

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
    r"""Keeps each row's own nucleus, then draws each row's token with that row's seeded stream.

    The top-p is the one its paired :class:`LearnedTemperatureProcessor` chose; the most likely token
    is always kept. It hands generate() a one-token distribution (the drawn token at 0, every other
    at -inf), so generate()'s own sampling or argmax, and any warper after it, pick exactly that
    token: the same seed gives the same tokens as the other backends (see ``RowRandom``). A row
    whose logits were not finite gets the end-of-sequence token. Must come right after the
    temperature processor in the same list (which :meth:`LearnedDecoding.attach` guarantees).
    """

    def __init__(self, state: _StepState) -> None:
        self.state = state

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = self.state.step
        if step is None or self.state.random is None:
            raise HiddenStateUnavailableError(
                "LearnedTopPWarper ran without its LearnedTemperatureProcessor in this step; put both in the "
                "same `logits_processor` list, temperature first (use `session.logits_processor`)."
            )
        self.state.step = None
        step = nucleus_step(step, scores)
        chosen = draw(step.scores, self.state.random.next())
        if step.nonfinite.any():
            chosen = np.where(chosen == NO_TOKEN, self._eos(), chosen)
        trace = self.state.trace
        if trace is not None and trace.steps:
            trace.steps[-1].nucleus_size = step.nucleus_size.tolist()
            trace.set_final_scores(step.scores)
        one_token = torch.full_like(scores, -math.inf)
        return one_token.scatter(-1, torch.from_numpy(chosen).to(scores.device)[:, None], 0.0)

    def _eos(self) -> int:
        if self.state.eos_token_id is None:
            raise HiddenStateUnavailableError(
                "A row's logits were not finite and the model has no `eos_token_id` to end it with; "
                "set `model.generation_config.eos_token_id`."
            )
        return self.state.eos_token_id


def _warn_stacking(settings: str, *, stacklevel: int) -> None:
    warnings.warn(
        f"generate() also applies {settings} (from the model's generation config, the pipeline's defaults or "
        "your arguments). Learned decoding hands generate() a single token per row, so they cannot change the "
        "tokens, but they cost time and are easy to misread: pass `do_sample=True, temperature=1.0, top_p=1.0, "
        "top_k=0` (`**session.generate_kwargs`), and use `top_k`/`min_p` of DecodingSettings to combine "
        "filters with the learned pair in the method's order.",
        StackedWarpersWarning,
        stacklevel=stacklevel + 1,
    )


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
    return {key: _library_default(key) if value is None else value for key, value in values.items()}


def _library_default(key: str) -> Any:
    """What generate() uses for an unset value: 4.57 keeps it on ``GenerationConfig()`` (top_k=50);
    5.x leaves it ``None`` there and fills it in from ``_get_default_generation_params()`` (top_k=50 too)."""
    defaults = getattr(transformers.GenerationConfig, "_get_default_generation_params", None)
    if defaults is not None:
        return defaults().get(key)
    return getattr(transformers.GenerationConfig(), key, None)


def check_generate_kwargs(model_or_pipeline: Any, call_kwargs: dict[str, Any], *, stacklevel: int = 2) -> dict[str, Any]:
    """Warn when a static temperature/top-p/top-k would run after the learned pair; return them."""
    stacked = stacked_warper_settings(effective_generation_values(model_or_pipeline, call_kwargs))
    if stacked:
        _warn_stacking(", ".join(f"{k}={v}" for k, v in stacked.items()), stacklevel=stacklevel + 1)
    return stacked


class DecodingSession:
    """The tap and the processor pair, attached to one model for the duration of a ``with`` block.

    Each ``generate()`` call through the session (or with its ``logits_processor``) starts a fresh
    trace and fresh per-row random streams: with a ``seed`` the same prompts give the same tokens
    every call, without one the seed comes from torch's global generator (``torch.manual_seed``).

    Attributes:
        logits_processor: the ``LogitsProcessorList`` to pass to ``generate()``.
        generate_kwargs: ``logits_processor`` plus the arguments that neutralise built-in warpers.
        trace: the per-step :class:`DecodingTrace` of the latest generation when recording was asked
            for, else ``None``.
    """

    def __init__(
        self, decoding: PredictorDecoding, target: Any, *, seed: int | None = None,
        row_seeds: Sequence[int] | None = None,
    ) -> None:
        self.target = target
        self.model = target.model if _is_pipeline(target) else target
        if decoding.check_model and decoding.heads is not None:
            decoding.heads.check_compatible(model_identity(self.model))
        self.tap = HiddenStateTap(self.model)
        self._state = _StepState(
            DecodingTrace() if decoding.record_trace else None,
            seed=decoding.seed if seed is None else seed,
            row_seeds=row_seeds,
            eos_token_id=_eos_id(getattr(self.model, "generation_config", None)),
        )
        self.logits_processor = LogitsProcessorList(
            [
                LearnedTemperatureProcessor(decoding.heads, self.tap, decoding.settings, self._state,
                                            decoding.predictor),
                LearnedTopPWarper(self._state),
            ]
        )

    @property
    def trace(self) -> DecodingTrace | None:
        return self._state.trace

    @property
    def generate_kwargs(self) -> dict[str, Any]:
        return {**NEUTRAL_GENERATE_KWARGS, "logits_processor": self.logits_processor}

    @property
    def fallback_rows(self) -> int:
        """How many row-steps used the fallback T/P because of non-finite values (all generations)."""
        return self._state.fallback_rows

    @property
    def nonfinite_rows(self) -> int:
        """How many rows ended with EOS because their logits were not finite (all generations)."""
        return self._state.nonfinite_rows

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
                value = kwargs[name]
                # A model passed as `assistant_model` would print its whole module tree: name its class.
                shown = repr(value) if isinstance(value, (int, float, str)) else f"<{type(value).__name__}>"
                raise UnsupportedGenerationModeError(
                    f"`{name}={shown}` selects a generation mode learned decoding does not support "
                    "(beam search, assisted or contrastive decoding). Use plain sampling or greedy decoding."
                )
        neutral = dict(NEUTRAL_GENERATE_KWARGS)
        if kwargs.get("do_sample") is False:
            # transformers warns about top_k/temperature/top_p given without sampling; the pair draws
            # the token itself either way, so only do_sample is passed on.
            neutral = {"do_sample": False}
        merged = {**neutral, **kwargs, "logits_processor": self.logits_processor}
        if "logits_processor" in kwargs:
            merged["logits_processor"] = LogitsProcessorList([*kwargs["logits_processor"], *self.logits_processor])
        config = kwargs.get("generation_config")
        if config is not None:
            # generate() deprecates a generation_config plus loose generation arguments: put ours into a copy.
            config = copy.deepcopy(config)
            for key, value in neutral.items():
                if key not in kwargs:
                    setattr(config, key, value)
                merged.pop(key, None) if key not in kwargs else None
            merged["generation_config"] = config
            call_values = {key: getattr(config, key, None) for key in _SAMPLING_KEYS}
            call_values.update({k: v for k, v in kwargs.items() if k in _SAMPLING_KEYS})
        else:
            call_values = merged
        if check_generate_kwargs(self.target, call_values, stacklevel=3):
            self._state.warned_stacking = True
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


class LearnedLogitsProcessorList(LogitsProcessorList):
    """The learned pair with its own hidden-state tap, for :meth:`LearnedDecoding.logits_processor`.

    The tap is removed when the list is dropped (right after a ``generate(...,
    logits_processor=decoding.logits_processor(model))`` call that holds the only reference), or
    by :meth:`close` / leaving a ``with`` block.
    """

    def __init__(self, session: DecodingSession) -> None:
        super().__init__(session.logits_processor)
        self._state = session._state
        session.tap.__enter__()
        # The finalizer holds the tap, not the list or the session, so dropping the list frees it.
        self._finalizer = weakref.finalize(self, session.tap.close)

    @property
    def trace(self) -> DecodingTrace | None:
        return self._state.trace

    @property
    def fallback_rows(self) -> int:
        return self._state.fallback_rows

    def close(self) -> None:
        """Remove the tap from the model now."""
        self._finalizer()

    def __enter__(self) -> LearnedLogitsProcessorList:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class PredictorDecoding:
    """Any decoding (a :class:`~deco_middleware.sampling.Predictor`) inside ``generate()`` and pipelines.

    The same processor pair, trace and per-row seeded draw as :class:`LearnedDecoding`, with any
    predictor: ``PredictorDecoding.from_strategy("static:0.7,0.9")`` runs the library's static
    step (not Hugging Face's warpers), so a strategy name decodes the same on every backend.

    Args:
        predictor: decides each row's T, P and filters (see :mod:`deco_middleware.strategies`).
        record_trace: keep a per-step :class:`DecodingTrace` on each session.
        seed: seeds every row's token draw (row ``i`` uses ``row_seeds(seed, 1, i)``); ``None`` takes
            one from torch's global generator.
    """

    heads: DecodingHeads | None = None
    check_model = False

    def __init__(self, predictor: Predictor, *, record_trace: bool = False, seed: int | None = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` has to be an integer or None, got {seed!r}.")
        self.predictor = predictor
        self.heads = getattr(predictor, "heads", None)
        self.check_model = self.heads is not None
        self.settings: DecodingSettings = getattr(predictor, "settings", None) or DecodingSettings()
        self.record_trace = record_trace
        self.seed = seed

    @classmethod
    def from_strategy(cls, strategy: Any, heads: Any = None, *, record_trace: bool = False, seed: int | None = None,
                      **settings_overrides: Any) -> PredictorDecoding:
        """A strategy name (or parsed :class:`~deco_middleware.strategies.Strategy`) as a decoding."""
        from ..strategies import parse_strategy

        parsed = parse_strategy(strategy) if isinstance(strategy, str) else strategy
        if parsed.learned:
            loaded = heads if heads is None or isinstance(heads, DecodingHeads) else DecodingHeads.from_pretrained(heads)
            return cls(parsed.predictor(loaded, **settings_overrides), record_trace=record_trace, seed=seed)
        return cls(parsed.predictor(), record_trace=record_trace, seed=seed)

    def attach(
        self, model_or_pipeline: Any, *, seed: int | None = None, row_seeds: Sequence[int] | None = None
    ) -> DecodingSession:
        """A new session (tap + processor pair) for ``model_or_pipeline``; use it as a context manager.

        ``seed`` overrides the decoding's seed; ``row_seeds`` gives every row of the batch its own seed.
        """
        return DecodingSession(self, model_or_pipeline, seed=seed, row_seeds=row_seeds)

    def logits_processor(self, model_or_pipeline: Any, *, seed: int | None = None) -> LearnedLogitsProcessorList:
        """The pair as a plain ``logits_processor`` for any ``generate()`` or pipeline call, no ``with`` needed.

        It taps the model itself and removes the tap once the list is dropped (or closed):

        >>> out = model.generate(**inputs, max_new_tokens=32,  # doctest: +SKIP
        ...                      logits_processor=decoding.logits_processor(model))
        """
        return LearnedLogitsProcessorList(DecodingSession(self, model_or_pipeline, seed=seed))

    def generate(self, model: Any, **kwargs: Any) -> Any:
        """Attach, generate once, detach. Returns what ``model.generate`` returns."""
        with self.attach(model) as session:
            return session.generate(**kwargs)


class LearnedDecoding(PredictorDecoding):
    """Trained heads plus the user's settings; attach them to a model or pipeline to generate.

    Args:
        heads: a :class:`DecodingHeads`, or a shipped name / path to load.
        settings: a :class:`DecodingSettings`; keyword arguments build one when it is omitted.
        record_trace: keep a per-step :class:`DecodingTrace` on each session.
        check_model: refuse models whose sizes or LM-head fingerprint differ from the manifest.
        seed: seeds every row's token draw (row ``i`` uses ``row_seeds(seed, 1, i)``, like the
            engine and the ONNX Runtime loop); ``None`` takes one from torch's global generator.
        steer: ``"low"`` / ``"high"`` adds the trained decoding instruction to prompts passed
            through :meth:`chat_inputs` / :meth:`steer_prompt` (``None``: prompts unchanged).
        steer_placement: ``"user"`` (the end of the user message, where training puts it) or
            ``"system"`` (the end of the system message; the chat template's default one when the
            prompt has none). See :func:`deco_middleware.steering.steer_prompt`.

    The pair draws each token itself, so ``generate()``'s ``do_sample``, ``temperature``,
    ``top_k`` and ``top_p`` do not change the tokens; greedy decoding is ``temperature_scale=0``.

    >>> decoding = LearnedDecoding("smollm2-135m-instruct", temperature_scale=1.0)  # doctest: +SKIP
    >>> with decoding.attach(model) as session:  # doctest: +SKIP
    ...     out = model.generate(**inputs, **session.generate_kwargs, max_new_tokens=32)
    >>> out = model.generate(**inputs, logits_processor=decoding.logits_processor(model))  # doctest: +SKIP
    """

    def __init__(
        self,
        heads: DecodingHeads | str | os.PathLike[str],
        settings: DecodingSettings | None = None,
        *,
        record_trace: bool = False,
        check_model: bool = True,
        seed: int | None = None,
        steer: str | None = None,
        steer_placement: str = "user",
        **settings_kwargs: Any,
    ) -> None:
        from ..steering import check_placement, check_steer

        self.steer = check_steer(steer)  # "low" | "high" | None: see steer_prompt / chat_inputs
        self.steer_placement = check_placement(steer_placement)
        if settings is not None and settings_kwargs:
            raise ValueError(f"Pass either `settings` or keyword settings, not both (got {sorted(settings_kwargs)}).")
        loaded = heads if isinstance(heads, DecodingHeads) else DecodingHeads.from_pretrained(heads)
        settings = (settings or DecodingSettings(**settings_kwargs)).for_trained_heads(loaded.trained_heads)
        super().__init__(LearnedPredictor(loaded, settings), record_trace=record_trace, seed=seed)
        self.check_model = check_model

    def steer_prompt(self, prompt: Prompt, tokenizer: Any = None) -> Prompt:
        """``prompt`` (a user message or chat messages) with the instruction for ``steer``, placed as
        ``steer_placement`` says (deco_middleware.steering.steer_prompt). The system placement needs the
        ``tokenizer`` (its chat template's default system message is kept)."""
        return self._steer_prompts([prompt], tokenizer)[0]

    def chat_inputs(self, tokenizer: Any, prompts: Sequence[Prompt]) -> dict[str, Any]:
        """Tokenized prompts through the chat template, each carrying the ``steer`` instruction."""
        return chat_inputs(tokenizer, self._steer_prompts(prompts, tokenizer))

    def _steer_prompts(self, prompts: Sequence[Prompt], tokenizer: Any) -> list[Prompt]:
        from ..steering import placement_system, steer_prompts

        if self.steer is None:
            return list(prompts)
        if self.steer_placement == "system" and tokenizer is None:
            raise SteerError("steer_placement='system' needs the tokenizer to keep its chat template's default "
                             "system message: call decoding.steer_prompt(prompt, tokenizer).")
        return steer_prompts(prompts, self.steer, placement=self.steer_placement,
                             system=placement_system(self.steer_placement, tokenizer))


__all__ = [
    "NEUTRAL_GENERATE_KWARGS",
    "DecodingSession",
    "LearnedDecoding",
    "LearnedLogitsProcessorList",
    "LearnedTemperatureProcessor",
    "LearnedTopPWarper",
    "NonFiniteHiddenStateWarning",
    "PredictorDecoding",
    "StackedWarpersWarning",
    "check_generate_kwargs",
]
