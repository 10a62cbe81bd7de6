"""deco-middleware: learned per-token temperature and top-p for the generation loops you already use.

The core (heads as ONNX, manifests, the decoding algorithm on numpy) needs only numpy, onnxruntime and
pydantic. The Hugging Face names (``LearnedDecoding`` and friends) import torch and transformers on
first use and tell you which extra to install when they are missing.
"""

from __future__ import annotations

from ._deps import lazy_attributes
from ._version import __version__
from .errors import (
    DecoError,
    DecoWarning,
    HeadsNotFoundError,
    HiddenStateUnavailableError,
    IncompatibleHeadsError,
    IntegrityError,
    ManifestError,
    ManifestVersionError,
    MissingDependencyError,
    ModelProvisioningError,
    NonFiniteHiddenStateWarning,
    StackedWarpersWarning,
    UnknownKeysWarning,
    UnsupportedGenerationModeError,
)
from .heads.artifact import DecodingHeads, export_heads, list_shipped_heads
from .manifest import BaseModelIdentity, HeadManifest
from .sampling import DecodingSettings, nucleus_filter, resolve_decoding, warp_temperature
from .trace import DecodingTrace, TraceStep

# Names served from the torch/transformers integration, imported lazily (PEP 562).
_LAZY = {
    "DecodingSession": "deco_middleware.hf",
    "HiddenStateTap": "deco_middleware.hf",
    "LearnedDecoding": "deco_middleware.hf",
    "LearnedTemperatureProcessor": "deco_middleware.hf",
    "LearnedTopPWarper": "deco_middleware.hf",
    "NEUTRAL_GENERATE_KWARGS": "deco_middleware.hf",
    "model_identity": "deco_middleware.hf",
}

__all__ = [
    "BaseModelIdentity",
    "DecoError",
    "DecoWarning",
    "DecodingHeads",
    "DecodingSession",
    "DecodingSettings",
    "DecodingTrace",
    "HeadManifest",
    "HeadsNotFoundError",
    "HiddenStateTap",
    "HiddenStateUnavailableError",
    "IncompatibleHeadsError",
    "IntegrityError",
    "LearnedDecoding",
    "LearnedTemperatureProcessor",
    "LearnedTopPWarper",
    "ManifestError",
    "ManifestVersionError",
    "MissingDependencyError",
    "ModelProvisioningError",
    "NEUTRAL_GENERATE_KWARGS",
    "NonFiniteHiddenStateWarning",
    "StackedWarpersWarning",
    "TraceStep",
    "UnknownKeysWarning",
    "UnsupportedGenerationModeError",
    "__version__",
    "export_heads",
    "list_shipped_heads",
    "model_identity",
    "nucleus_filter",
    "resolve_decoding",
    "warp_temperature",
]


__getattr__ = lazy_attributes(__name__, _LAZY)
