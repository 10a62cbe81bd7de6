"""Torch-free text handling for exported LMs: ``tokenizer.json`` through ``tokenizers``, chat
templates through jinja2 (rendered the way transformers renders them)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from .._deps import require
from ..messages import Prompt, chat_messages, plain_text


class ChatTokenizer:
    """The tokenizer saved next to an export (``tokenizer.json``, ``tokenizer_config.json``, chat template).

    >>> tokenizer = ChatTokenizer("exports/smollm2")  # doctest: +SKIP
    >>> ids = tokenizer.encode_chat("What is 2+3?")  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        tokenizers = require("tokenizers", purpose="Tokenizing text without transformers")
        self.directory = Path(directory)
        path = self.directory / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"No tokenizer.json in {self.directory}; export the LM with its tokenizer (`deco export-lm` saves it)."
            )
        self.backend = tokenizers.Tokenizer.from_file(str(path))
        config_path = self.directory / "tokenizer_config.json"
        self.config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template_path = self.directory / "chat_template.jinja"
        self.chat_template: str | None = (
            template_path.read_text() if template_path.is_file() else self.config.get("chat_template")
        )

    def _token(self, key: str) -> str | None:
        value = self.config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    def _token_id(self, key: str) -> int | None:
        token = self._token(key)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        return self._token_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        pad = self._token_id("pad_token")
        return pad if pad is not None else self.eos_token_id

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise ValueError(f"The tokenizer in {self.directory} has no chat template; encode plain text instead.")
        jinja2 = require("jinja2", purpose="Rendering chat templates without transformers")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        # Same environment options as transformers' chat-template renderer.
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                    extensions=["jinja2.ext.loopcontrols"])
        environment.globals["raise_exception"] = raise_exception
        environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        special = {key: self._token(key) for key in ("bos_token", "eos_token", "pad_token", "unk_token")}
        return environment.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special
        )

    def encode_chat(self, prompt: Prompt) -> list[int]:
        """Token ids of one prompt (a user message, or a list of chat messages) through the chat template
        (plain encoding of a user message when there is none)."""
        if not self.chat_template:
            return self.encode(plain_text(prompt, f"The tokenizer in {self.directory}"))
        text = self.apply_chat_template(chat_messages(prompt))
        return self.encode(text, add_special_tokens=False)
