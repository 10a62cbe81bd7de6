"""Prompts through a tokenizer's chat template (shared by generate_text, the engine, traces, the cache).

A prompt is a user message (a string) or a list of chat messages (:mod:`deco_middleware.messages`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..messages import Prompt, chat_messages, plain_text


def chat_texts(tokenizer: Any, prompts: Sequence[Prompt]) -> tuple[list[str], bool]:
    """Prompts through the chat template when the tokenizer has one; also whether it did
    (templated text already holds the special tokens, so the tokenizer must not add them again)."""
    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template(chat_messages(p), add_generation_prompt=True, tokenize=False)
                 for p in prompts]
        return texts, True
    return [plain_text(p) for p in prompts], False


def template_system_message(tokenizer: Any) -> str | None:
    """The system message the chat template inserts when the conversation has none (SmolLM2's "You are
    a helpful AI assistant named SmolLM, ..."), found by rendering with and without one; ``None`` when
    it inserts none. Raises ``ValueError`` when the template has no system role at all."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("This tokenizer has no chat template, so there is no system message to put the instruction in.")
    mark, user = "\x1fSYSTEM\x1f", "\x1fUSER\x1f"
    bare = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
    try:
        with_system = tokenizer.apply_chat_template([{"role": "system", "content": mark}, {"role": "user", "content": user}],
                                                    add_generation_prompt=True, tokenize=False)
    except Exception as error:  # jinja's raise_exception: e.g. "System role not supported"
        raise ValueError(f"This tokenizer's chat template refuses a system message ({error}).") from error
    if mark not in with_system:
        raise ValueError("This tokenizer's chat template drops system messages: the instruction would not reach the model.")
    head, tail = with_system.split(mark, 1)
    if len(bare) > len(head) + len(tail) and bare.startswith(head) and bare.endswith(tail):
        return bare[len(head):len(bare) - len(tail)]
    return None


def chat_prompt_ids(tokenizer: Any, prompts: Sequence[Prompt]) -> list[list[int]]:
    """Each prompt's token ids through the chat template (what every loop we drive, or hand
    prompts to, decodes from: the engine, vLLM, the length checks, the training cache)."""
    texts, templated = chat_texts(tokenizer, list(prompts))
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=not templated)["input_ids"]]


def chat_inputs(tokenizer: Any, prompts: Sequence[Prompt]) -> dict[str, Any]:
    """Tokenize prompts through the chat template when the tokenizer has one (left padded)."""
    texts, templated = chat_texts(tokenizer, list(prompts))
    return dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not templated,
                          return_token_type_ids=False))


__all__ = ["Prompt", "chat_inputs", "chat_messages", "chat_prompt_ids", "chat_texts", "template_system_message"]
