"""One-call generation used by the CLI: prompt in, text and per-token decisions out."""

from __future__ import annotations

from typing import Any

from ._deps import require
from .strategies import Strategy, parse_strategy


def chat_texts(tokenizer: Any, prompts: list[str]) -> tuple[list[str], bool]:
    """See :func:`deco_middleware.hf.chat.chat_texts` (kept here for older imports)."""
    from .hf.chat import chat_texts as texts

    return texts(tokenizer, prompts)


def chat_inputs(tokenizer: Any, prompts: list[str]) -> dict[str, Any]:
    """See :func:`deco_middleware.hf.chat.chat_inputs` (kept here for older imports)."""
    from .hf.chat import chat_inputs as inputs

    return inputs(tokenizer, prompts)


def generate_text(
    prompt: str,
    *,
    model: Any = "default",
    tokenizer: Any = None,
    heads: Any = "default",
    strategy: Strategy | str = "autodeco",
    max_new_tokens: int = 128,
    seed: int = 0,
    temperature_scale: float = 1.0,
    top_p_scale: float = 1.0,
) -> dict[str, Any]:
    """Generate one reply. Returns ``text``, ``tokens``, ``token_ids`` and the applied ``temperature``
    and ``top_p`` of every generated token (constants for static strategies, 0 for greedy).

    Every strategy runs the library's decoding step and per-row seeded draw inside ``generate()``
    (row 0 draws from ``row_seeds(seed, 1, 0)``), so ``seed`` gives the same tokens as the engine
    and the ONNX Runtime loop. ``token_ids`` end with the EOS token when one was generated
    (:mod:`deco_middleware.rows`). ``temperature_scale`` / ``top_p_scale`` apply to learned strategies.
    """
    require("torch", purpose="Generating text")
    from .default_model import load_model
    from .heads.select import heads_for_model
    from .hf.chat import chat_inputs as inputs_for
    from .hf.processors import PredictorDecoding
    from .rows import cut_at_stop, generation_result, stop_token_ids

    strategy = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    model_name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
    if isinstance(model, str):
        model, tokenizer = load_model(model)
    inputs = inputs_for(tokenizer, [prompt])
    heads_name = None
    if strategy.learned:
        loaded = heads_for_model(heads, model)
        heads_name = str(loaded.directory)
        predictor = strategy.predictor(
            loaded, temperature_scale=strategy.temperature_scale * temperature_scale, top_p_scale=top_p_scale
        )
    else:
        predictor = strategy.predictor()
    with PredictorDecoding(predictor, record_trace=True, seed=seed).attach(model) as session:
        sequences = session.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    trace = session.trace
    stop = stop_token_ids(getattr(model, "generation_config", None), tokenizer)
    new_ids = cut_at_stop(sequences[0, inputs["input_ids"].shape[1] :].tolist(), stop)
    return generation_result(
        token_ids=new_ids, decode=tokenizer.decode,
        temperature=[step.temperature[0] for step in trace.steps], top_p=[step.top_p[0] for step in trace.steps],
        strategy=strategy, model=model_name, heads=heads_name, seed=seed,
    )
