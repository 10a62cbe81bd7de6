"""Hugging Face transformers integration (torch): tap, processor pair, sessions."""

from .identity import model_identity
from .processors import (
    NEUTRAL_GENERATE_KWARGS,
    DecodingSession,
    LearnedDecoding,
    LearnedLogitsProcessorList,
    LearnedTemperatureProcessor,
    LearnedTopPWarper,
    NonFiniteHiddenStateWarning,
    PredictorDecoding,
    StackedWarpersWarning,
    check_generate_kwargs,
)
from .tap import HiddenStateTap

__all__ = [
    "DecodingSession",
    "HiddenStateTap",
    "LearnedDecoding",
    "LearnedLogitsProcessorList",
    "LearnedTemperatureProcessor",
    "LearnedTopPWarper",
    "NEUTRAL_GENERATE_KWARGS",
    "NonFiniteHiddenStateWarning",
    "PredictorDecoding",
    "StackedWarpersWarning",
    "check_generate_kwargs",
    "model_identity",
]
