"""One-call generation used by the CLI: prompt in, text and per-token decisions out."""

from __future__ import annotations

from typing import Any

from ._deps import require
from .errors import PromptTooLongError
from .strategies import Strategy, parse_strategy


def chat_texts(tokenizer: Any, prompts: list[str]) -> tuple[list[str], bool]:
    """See :func:`deco_middleware.hf.chat.chat_texts` (kept here for older imports)."""
    from .hf.chat import chat_texts as texts

    return texts(tokenizer, prompts)


def check_prompt_fits(prompt_tokens: int, max_new_tokens: int, context: int | None, *, what: str = "The prompt") -> None:
    """Refuse a prompt that, with ``max_new_tokens`` more, exceeds the model's ``context`` positions.

    Past its context a model still produces tokens, from positions it was never trained on; the
    output degrades without a word, so the request is refused up front (``context=None``: unknown, not checked).
    """
    if context is not None and prompt_tokens + max_new_tokens > context:
        raise PromptTooLongError(
            f"{what} is {prompt_tokens} tokens (chat template included) and `max_new_tokens` asks for {max_new_tokens} "
            f"more, but the model's context holds {context} positions. Shorten the prompt or lower `max_new_tokens` "
            f"to at most {max(context - prompt_tokens, 0)}."
        )


def model_context(model: Any) -> int | None:
    """The number of positions the model was built for (``max_position_embeddings``), if it says."""
    config = getattr(model, "config", model)
    value = config.get("max_position_embeddings") if isinstance(config, dict) else getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def check_prompts_fit(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, names: list[str]) -> None:
    """:func:`check_prompt_fits` for each of ``prompts`` through the chat template; ``names`` say which."""
    context = model_context(model)
    if context is None:
        return
    from .hf.chat import chat_prompt_ids

    for name, ids in zip(names, chat_prompt_ids(tokenizer, prompts)):
        check_prompt_fits(len(ids), max_new_tokens, context, what=name)


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
    check_prompt_fits(int(inputs["input_ids"].shape[1]), max_new_tokens, model_context(model))
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
