"""Pick the heads for a loaded model: ``default`` (the shipped heads that fit it), a name, or a path."""

from __future__ import annotations

import os
from typing import Any

from .artifact import DecodingHeads, heads_for_identity


def heads_for_model(heads: str | os.PathLike[str] | DecodingHeads, model: Any) -> DecodingHeads:
    """``default`` picks the shipped heads whose base model matches ``model`` (a torch or Optimum
    causal LM); else a shipped name or a path. Loaded heads are returned as they are."""
    if isinstance(heads, DecodingHeads):
        return heads
    from ..hf.identity import model_identity

    return heads_for_identity(heads, model_identity(model))


__all__ = ["heads_for_model"]
