"""User messages through a tokenizer's chat template (shared by generate_text, the engine and traces)."""

from __future__ import annotations

from typing import Any


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


def chat_prompt_ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """Each user message's token ids through the chat template (what every loop we drive, or hand
    prompts to, decodes from: the engine, vLLM, the length checks)."""
    texts, templated = chat_texts(tokenizer, list(prompts))
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=not templated)["input_ids"]]


def chat_inputs(tokenizer: Any, prompts: list[str]) -> dict[str, Any]:
    """Tokenize user messages through the chat template when the tokenizer has one (left padded)."""
    texts, templated = chat_texts(tokenizer, prompts)
    return dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not templated,
                          return_token_type_ids=False))


__all__ = ["chat_inputs", "chat_prompt_ids", "chat_texts"]
