"""Every difference between transformers 4.57 (the Optimum pin) and 5.x that this library handles.

optimum-onnx 0.1.0 requires transformers < 4.58, while the default model folder is written by
transformers 5.x. Two differences matter, both measured on the default SmolLM2 folder:

- 5.x writes the RoPE base as ``rope_parameters: {"rope_theta": ...}``; 4.57 ignores that key and
  silently uses its default ``rope_theta=10000`` instead of the model's 100000 (max |logit|
  difference 3.7 on a chat prompt).
- 5.x names the tokenizer class ``TokenizersBackend``, unknown to 4.57; the same ``tokenizer.json``
  loads as ``PreTrainedTokenizerFast`` with identical ids. 4.57's generic fast tokenizer would also
  return ``token_type_ids``, which Llama's ``generate()`` rejects.

Loading patches both in memory (:func:`load_config`, :func:`load_tokenizer`, :func:`load_causal_lm`),
so any folder written by 5.x loads as the same model on both lines; an existing folder is never
rewritten. :func:`make_config_portable` writes the same fixes into a folder this library has just
converted (the default model, before it is renamed into the cache), for people who open it with a
plain ``from_pretrained`` on 4.57. On transformers 5.x the loaders are plain ``Auto*.from_pretrained``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._deps import require

_MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]


def transformers_major() -> int:
    transformers = require("transformers", purpose="Loading a model")
    return int(transformers.__version__.split(".")[0])


def load_config(path: str | os.PathLike[str]) -> Any:
    transformers = require("transformers", purpose="Loading a model")
    config = transformers.AutoConfig.from_pretrained(path)
    rope = getattr(config, "rope_parameters", None)
    # Only 4.x has a separate `rope_theta` attribute that can disagree with `rope_parameters`.
    if transformers_major() < 5 and isinstance(rope, dict) and "rope_theta" in rope:
        if getattr(config, "rope_scaling", None) is None and rope.get("rope_type", "default") != "default":
            config.rope_scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        config.rope_theta = rope["rope_theta"]
    return config


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The model's tokenizer, left-padded, with a pad token (the EOS token when it has none)."""
    transformers = require("transformers", purpose="Loading a tokenizer")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except ValueError as error:
        if "TokenizersBackend" not in str(error):
            raise
        # The class-mismatch notice is expected here: the same tokenizer.json, another class name.
        logger = logging.getLogger("transformers.tokenization_utils_base")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(path)
        finally:
            logger.setLevel(level)
        tokenizer.model_input_names = list(_MODEL_INPUT_NAMES)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


@contextmanager
def quiet_loading(enabled: bool = True) -> Iterator[None]:
    """Hide transformers' "Loading weights" bar for the block (restored after), unless ``enabled`` is False."""
    transformers = require("transformers", purpose="Loading a model")
    hf_logging = transformers.utils.logging
    was_on = hf_logging.is_progress_bar_enabled()
    if enabled and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled and was_on:
            hf_logging.enable_progress_bar()


def load_causal_lm(path: str | os.PathLike[str], dtype: Any = None, *, progress_bar: bool = False) -> Any:
    """``AutoModelForCausalLM`` from a local folder with :func:`load_config`'s fixes, in eval mode.

    transformers' own "Loading weights" bar is hidden unless ``progress_bar=True``.
    """
    torch = require("torch", purpose="Loading a model")
    transformers = require("transformers", purpose="Loading a model")
    with quiet_loading(not progress_bar):
        model = transformers.AutoModelForCausalLM.from_pretrained(path, config=load_config(path),
                                                                  dtype=dtype or torch.float32)
    return model.eval()


def make_config_portable(folder: Path) -> None:
    """Write the 4.57 fixes into a folder this library has just written with transformers 5.

    5.x reads the legacy ``rope_theta`` as well, so the folder stays the same model on both lines.
    """
    from .manifest import atomic_write_bytes

    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and config.get("rope_theta") != rope["rope_theta"]:
        config["rope_theta"] = rope["rope_theta"]
        atomic_write_bytes(config_path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    tokenizer_config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text(encoding="utf-8"))
    changed = False
    if tokenizer_config.get("tokenizer_class") == "TokenizersBackend":
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        changed = True
    if "model_input_names" not in tokenizer_config:
        tokenizer_config["model_input_names"] = list(_MODEL_INPUT_NAMES)
        changed = True
    if changed:
        atomic_write_bytes(tokenizer_config_path, (json.dumps(tokenizer_config, indent=2) + "\n").encode())


__all__ = ["load_causal_lm", "load_config", "load_tokenizer", "make_config_portable", "quiet_loading"]
