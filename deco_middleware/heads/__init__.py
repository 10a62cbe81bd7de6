"""Decoding heads: the ONNX artifact (numpy + onnxruntime) and, with torch, the trainable modules."""

from .artifact import DecodingHeads, export_heads, list_shipped_heads, resolve_heads_path, shipped_heads_dir
from .select import heads_for_model

__all__ = [
    "DecodingHeads",
    "export_heads",
    "heads_for_model",
    "list_shipped_heads",
    "resolve_heads_path",
    "shipped_heads_dir",
]
