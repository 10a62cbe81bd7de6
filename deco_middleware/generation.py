"""One-call generation used by the CLI: prompt in, text and per-token decisions out."""

from __future__ import annotations

from typing import Any

from ._deps import require
from .errors import PromptTooLongError
from .cli.strategies import Strategy, parse_strategy


def chat_texts(tokenizer: Any, prompts: list[str]) -> tuple[list[str], bool]:
    """User messages through the chat template when the tokenizer has one; also whether it did
    (templated text already holds the special tokens, so the tokenizer must not add them again)."""
    if getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts
        ]
        return texts, True
    return list(prompts), False


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
    texts, templated = chat_texts(tokenizer, prompts)
    for name, ids in zip(names, tokenizer(texts, add_special_tokens=not templated)["input_ids"]):
        check_prompt_fits(len(ids), max_new_tokens, context, what=name)


def chat_inputs(tokenizer: Any, prompts: list[str]) -> dict[str, Any]:
    """Tokenize user messages through the chat template when the tokenizer has one (left padded)."""
    texts, templated = chat_texts(tokenizer, prompts)
    return dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not templated,
                          return_token_type_ids=False))


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
    and ``top_p`` of every generated token (constants for static strategies, 0 for greedy)."""
    torch = require("torch", purpose="Generating text")
    from .default_model import load_model

    strategy = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    model_name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
    if isinstance(model, str):
        model, tokenizer = load_model(model)
    inputs = chat_inputs(tokenizer, [prompt])
    check_prompt_fits(int(inputs["input_ids"].shape[1]), max_new_tokens, model_context(model))
    torch.manual_seed(seed)
    heads_name = None
    common = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if strategy.learned:
        from .cli.app import heads_for_model
        from .hf import LearnedDecoding

        loaded = heads_for_model(heads, model) if isinstance(heads, str) else heads
        heads_name = str(loaded.directory)
        decoding = LearnedDecoding(
            loaded, record_trace=True, temperature_scale=temperature_scale, top_p_scale=top_p_scale
        )
        with decoding.attach(model) as session:
            sequences = session.generate(**inputs, **common)
        trace = session.trace
        temperatures = [step.temperature[0] for step in trace.steps]
        top_ps = [step.top_p[0] for step in trace.steps]
    else:
        if strategy.name == "greedy":
            sequences = model.generate(**inputs, **common, do_sample=False, temperature=None, top_p=None, top_k=None)
            constant = (0.0, 1.0)
        else:
            sequences = model.generate(
                **inputs, **common, do_sample=True, temperature=strategy.temperature, top_p=strategy.top_p, top_k=0
            )
            constant = (strategy.temperature, strategy.top_p)
        temperatures, top_ps = None, None
    new_ids = sequences[0, inputs["input_ids"].shape[1] :].tolist()
    # generate() pads finished rows; keep the tokens up to and including the first EOS.
    eos = tokenizer.eos_token_id
    if eos in new_ids:
        new_ids = new_ids[: new_ids.index(eos) + 1]
    if temperatures is None:
        temperatures = [constant[0]] * len(new_ids)
        top_ps = [constant[1]] * len(new_ids)
    return {
        "text": tokenizer.decode(new_ids, skip_special_tokens=True),
        "tokens": [tokenizer.decode([i]) for i in new_ids],
        "token_ids": new_ids,
        "temperature": [float(t) for t in temperatures[: len(new_ids)]],
        "top_p": [float(p) for p in top_ps[: len(new_ids)]],
        "strategy": strategy.name if strategy.name != "static" else f"static:{strategy.temperature},{strategy.top_p}",
        "model": model_name,
        "heads": heads_name,
        "seed": seed,
    }
