"""Prompts as chat messages (torch-free: shared by the HF path, the ONNX Runtime loop and steering).

A prompt is either a user message (a string) or a whole conversation: a list of ``{"role": ...,
"content": ...}`` messages, e.g. a system message and a user message (what a system-placed steering
instruction makes, :func:`deco_middleware.steering.steer_prompt`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

Prompt = Union[str, Sequence[Mapping[str, str]]]


def chat_messages(prompt: Prompt) -> list[dict[str, str]]:
    """``prompt`` as chat messages: a string is one user message; a list of messages is checked (each needs a
    string ``role`` and ``content``) and copied, message by message, with all its keys."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
        messages = []
        for i, message in enumerate(prompt):
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise ValueError(f"Message {i} of the prompt is {dict(message)!r}: every message needs a string "
                                 "'role' and a string 'content', e.g. {'role': 'user', 'content': 'Hi'}.")
            messages.append(dict(message))  # every key kept (e.g. "name"), as a copy
        return messages
    raise ValueError(f"A prompt is a string (the user message) or a non-empty list of {{'role', 'content'}} "
                     f"messages, got {prompt!r}.")


def plain_text(prompt: Prompt, tokenizer_name: str = "This tokenizer") -> str:
    """``prompt`` itself when it is a string: what a tokenizer without a chat template can encode."""
    if isinstance(prompt, str):
        return prompt
    raise ValueError(f"{tokenizer_name} has no chat template, so a prompt must be plain text; got the messages "
                     f"{prompt!r}. Pass the user message as a string, or use a tokenizer with a chat template.")


__all__ = ["Prompt", "chat_messages", "plain_text"]
