"""Generate one traced reply under a named strategy (the main run and the ``--compare`` run).

Every strategy goes through the learned processor pair so that every run records the same
per-step trace (T, P, nucleus size, chosen-token probability):

- ``autodeco``: the heads as they are (with the caller's scales);
- ``scale:X``: the heads with ``temperature_scale = X`` (``T_final = T_pred * X``);
- ``static:T,P``: both heads switched off and the scales set to T and P, i.e. a fixed temperature
  and top-p applied by the same algorithm;
- ``greedy``: ``temperature_scale = 0`` (argmax at every step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UnknownStrategyError
from ..strategies import Strategy, parse_strategy
from .document import TraceDocument

# What `deco trace` can record: every strategy with a form as settings of the learned pair.
TRACE_STRATEGY_NAMES = ("autodeco", "greedy", "static:T,P", "default", "min-p:X", "autodeco-t", "autodeco-p",
                        "autodeco@S", "scale:X")


@dataclass(frozen=True)
class RunSpec:
    """A strategy as :class:`~deco_middleware.sampling.DecodingSettings` keyword arguments, plus its label."""

    label: str
    settings: dict[str, Any] = field(default_factory=dict)


def _label(strategy: Strategy, temperature_scale: float, top_p_scale: float) -> str:
    if strategy.kind == "static":
        label = f"static T={strategy.temperature:g}, P={strategy.top_p:g}"
        return label + (f", min-p {strategy.min_p:g}" if strategy.min_p else "")
    if strategy.kind == "greedy":
        return "greedy"
    if strategy.temperature_scale != 1.0:
        return f"autodeco, T x {strategy.temperature_scale:g}"
    label = strategy.key
    if (temperature_scale, top_p_scale) != (1.0, 1.0):
        label += f" (T x {temperature_scale:g}, P x {top_p_scale:g})"
    return label


def parse_run_strategy(text: str, *, temperature_scale: float = 1.0, top_p_scale: float = 1.0) -> RunSpec:
    """A strategy of :mod:`deco_middleware.strategies` as settings of the learned pair, which records
    every run; unknown or untraceable names fail listing the valid ones."""
    try:
        strategy = parse_strategy(text)
    except UnknownStrategyError as error:
        if not str(error).startswith("Unknown strategy"):
            raise  # a known name written wrongly: its own message says how to write it
        raise UnknownStrategyError(
            f"Unknown strategy {text.strip()!r}; valid for `deco trace`: {', '.join(TRACE_STRATEGY_NAMES)}."
        ) from None
    try:
        settings = strategy.settings_for_the_learned_pair(temperature_scale=temperature_scale, top_p_scale=top_p_scale)
    except UnknownStrategyError:
        raise UnknownStrategyError(
            f"Strategy {text.strip()!r} cannot be traced; valid for `deco trace`: {', '.join(TRACE_STRATEGY_NAMES)}."
        ) from None
    return RunSpec(_label(strategy, temperature_scale, top_p_scale), settings)


def trace_generation(
    prompt: str,
    *,
    model: Any,
    tokenizer: Any,
    heads: Any,
    spec: RunSpec | str = "autodeco",
    max_new_tokens: int = 64,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
) -> TraceDocument:
    """Generate one reply to ``prompt`` (through the chat template) and return its trace document."""
    from .._deps import require
    from ..hf.chat import chat_inputs
    from ..hf import LearnedDecoding

    torch = require("torch", purpose="Generating a traced reply")
    spec = parse_run_strategy(spec) if isinstance(spec, str) else spec
    inputs = chat_inputs(tokenizer, [prompt])
    torch.manual_seed(seed)
    decoding = LearnedDecoding(heads, record_trace=True, **spec.settings)
    with decoding.attach(model) as session:
        session.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    return TraceDocument.from_trace(
        session.trace,
        tokenizer,
        prompt=prompt,
        label=spec.label,
        metadata={"seed": seed, **(metadata or {}), "settings": dict(spec.settings)},
    )


def trace_generation_onnx(
    prompt: str,
    *,
    lm: Any,
    heads: Any,
    spec: RunSpec | str = "autodeco",
    max_new_tokens: int = 64,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
) -> TraceDocument:
    """:func:`trace_generation` in the torch-free loop: ``lm`` is an ``OnnxCausalLM`` or a ``GenaiCausalLM``."""
    from ..ort import ChatTokenizer, OnnxGenerator
    from ..trace import DecodingTrace

    spec = parse_run_strategy(spec) if isinstance(spec, str) else spec
    tokenizer = ChatTokenizer(lm.directory)
    trace = DecodingTrace()
    OnnxGenerator(lm, heads, **spec.settings).generate(
        [tokenizer.encode_chat(prompt)], max_new_tokens=max_new_tokens, seed=seed,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, trace=trace,
    )
    return TraceDocument.from_trace(
        trace, tokenizer, prompt=prompt, label=spec.label,
        metadata={"seed": seed, **(metadata or {}), "settings": dict(spec.settings)},
    )
