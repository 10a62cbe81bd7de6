"""ONNX Runtime backend: an exported LM that exposes its hidden state, and learned decoding on it.

Torch-free at import: the export (``export_lm``) and the Optimum model class need torch and
``optimum-onnx`` and are imported on first use.
"""

from __future__ import annotations

from .._deps import lazy_attributes
from .backend import (
    default_onnx_path,
    ensure_default_onnx,
    generate_text_ort,
    heads_for_identity,
    load_model_ort,
    resolve_onnx_model,
)
from .graph import HIDDEN_STATE_OUTPUT, MissingHiddenStateOutputError, UnsupportedGraphError
from .loop import GenerationResult, OnnxGenerator, TokenEvent, left_pad
from .runtime import CacheState, OnnxCausalLM, StepOutputs, position_ids_for
from .text import ChatTokenizer

# name -> module for the parts that need torch / optimum, imported when first used
_LAZY = {
    "ExportReport": ".export",
    "ExportValidationError": ".export",
    "export_lm": ".export",
    "ORTModelForCausalLMWithHiddenStates": ".optimum_model",
    "OnnxLMHead": ".optimum_model",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "CacheState",
    "ChatTokenizer",
    "ExportReport",
    "ExportValidationError",
    "GenerationResult",
    "HIDDEN_STATE_OUTPUT",
    "MissingHiddenStateOutputError",
    "ORTModelForCausalLMWithHiddenStates",
    "OnnxCausalLM",
    "OnnxGenerator",
    "OnnxLMHead",
    "StepOutputs",
    "TokenEvent",
    "UnsupportedGraphError",
    "default_onnx_path",
    "ensure_default_onnx",
    "export_lm",
    "generate_text_ort",
    "heads_for_identity",
    "left_pad",
    "load_model_ort",
    "position_ids_for",
    "resolve_onnx_model",
]
