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

from ..cli.strategies import STRATEGY_NAMES, parse_strategy
from .document import TraceDocument

TRACE_STRATEGY_NAMES = (*STRATEGY_NAMES, "scale:X")


@dataclass(frozen=True)
class RunSpec:
    """A strategy as :class:`~deco_middleware.sampling.DecodingSettings` keyword arguments, plus its label."""

    label: str
    settings: dict[str, Any] = field(default_factory=dict)


def parse_run_strategy(text: str, *, temperature_scale: float = 1.0, top_p_scale: float = 1.0) -> RunSpec:
    """``autodeco`` | ``greedy`` | ``static:T,P`` | ``scale:X``; unknown names fail listing the valid ones."""
    text = text.strip()
    if text.startswith("scale:"):
        value = text[len("scale:") :]
        try:
            scale = float(value)
        except ValueError:
            raise ValueError(f"Strategy {text!r}: write scale:X with a number, e.g. scale:0.5.") from None
        if not scale >= 0:
            raise ValueError(f"Strategy {text!r}: the temperature scale must be >= 0 (0 is greedy).")
        return RunSpec(f"autodeco, T x {scale:g}", {"temperature_scale": scale, "top_p_scale": top_p_scale})
    try:
        strategy = parse_strategy(text)
    except ValueError:
        if text.split(":", 1)[0] in ("autodeco", "greedy", "static"):
            raise  # a known name written wrongly: its own message says how to write it
        raise ValueError(f"Unknown strategy {text!r}; valid for `deco trace`: {', '.join(TRACE_STRATEGY_NAMES)}.") from None
    if strategy.name == "autodeco":
        label = "autodeco"
        if (temperature_scale, top_p_scale) != (1.0, 1.0):
            label += f" (T x {temperature_scale:g}, P x {top_p_scale:g})"
        return RunSpec(label, {"temperature_scale": temperature_scale, "top_p_scale": top_p_scale})
    if strategy.name == "greedy":
        return RunSpec("greedy", {"temperature_scale": 0.0})
    if strategy.name == "static":
        return RunSpec(
            f"static T={strategy.temperature:g}, P={strategy.top_p:g}",
            {
                "use_temperature_head": False,
                "use_top_p_head": False,
                "temperature_scale": strategy.temperature,
                "top_p_scale": strategy.top_p,
            },
        )
    raise ValueError(
        f"Strategy {text!r} cannot be traced; valid for `deco trace`: {', '.join(TRACE_STRATEGY_NAMES)}."
    )


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
    from ..generation import chat_inputs
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
