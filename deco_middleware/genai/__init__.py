"""Learned decoding inside onnxruntime-genai's ``Generator`` loop (``pip install 'deco-middleware[genai]'``).

Torch-free at run time. Building a genai model (``export_genai``, ``deco export-lm --format genai``) needs
torch and transformers and is imported on first use.
"""

from __future__ import annotations

from .._deps import lazy_attributes
from ..errors import GenaiExportError, GenaiModelError
from .backend import default_genai_path, ensure_default_genai, generate_text_genai, resolve_genai_model
from .model import (
    GENAI_CONFIG_NAME,
    GENAI_EXPORT_INFO_NAME,
    GENAI_HIDDEN_STATE_OUTPUT,
    GenaiCache,
    GenaiCausalLM,
    is_genai_model,
    recorded_parity,
)

# name -> module for the parts that need torch, imported when first used
_LAZY = {
    "GenaiExportReport": ".export",
    "export_genai": ".export",
}
__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "GENAI_CONFIG_NAME",
    "GENAI_EXPORT_INFO_NAME",
    "GENAI_HIDDEN_STATE_OUTPUT",
    "GenaiCache",
    "GenaiCausalLM",
    "GenaiExportError",
    "GenaiExportReport",
    "GenaiModelError",
    "default_genai_path",
    "ensure_default_genai",
    "export_genai",
    "generate_text_genai",
    "is_genai_model",
    "recorded_parity",
    "resolve_genai_model",
]
