"""Loading model folders written by transformers 5.x with transformers 4.57 (the Optimum pin).

optimum-onnx 0.1.0 requires transformers < 4.58, while the default model folder is written by
transformers 5.x. Two differences matter, both measured on the default SmolLM2 folder:

- 5.x writes the RoPE base as ``rope_parameters: {"rope_theta": ...}``; 4.57 ignores that key and
  silently uses its default ``rope_theta=10000`` instead of the model's 100000 (max |logit|
  difference 3.7 on a chat prompt). We copy it back before building the model.
- 5.x names the tokenizer class ``TokenizersBackend``, unknown to 4.57; the same
  ``tokenizer.json`` loads as ``PreTrainedTokenizerFast``.
On transformers 5.x both helpers are plain ``Auto*.from_pretrained`` calls.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .._deps import require


def load_config(path: str | os.PathLike[str]) -> Any:
    transformers = require("transformers", purpose="Loading a model")
    config = transformers.AutoConfig.from_pretrained(path)
    rope = getattr(config, "rope_parameters", None)
    # Only 4.x has a separate `rope_theta` attribute that can disagree with `rope_parameters`.
    if int(transformers.__version__.split(".")[0]) < 5 and isinstance(rope, dict) and "rope_theta" in rope:
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
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(path: str | os.PathLike[str], dtype: Any = None) -> Any:
    """``AutoModelForCausalLM`` from a local folder with :func:`load_config`'s fixes, in eval mode."""
    torch = require("torch", purpose="Loading a model")
    transformers = require("transformers", purpose="Loading a model")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, config=load_config(path), dtype=dtype or torch.float32)
    return model.eval()
