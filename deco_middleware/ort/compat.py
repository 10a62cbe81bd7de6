"""Moved to :mod:`deco_middleware.compat` (one module for every transformers 4.57/5.x difference);
these names stay importable from here."""

from ..compat import load_causal_lm, load_config, load_tokenizer

__all__ = ["load_causal_lm", "load_config", "load_tokenizer"]
