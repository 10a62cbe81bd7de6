"""Every error and warning deco-middleware raises on purpose, in one module.

Every error derives from :class:`DecoError` and also from the built-in exception it stands in for,
so ``except ValueError`` keeps working for callers who do not know this library. Every warning
derives from :class:`DecoWarning`, so ``warnings.filterwarnings("ignore", category=DecoWarning)``
silences them all. The modules that raise them re-export them, so older import paths still work.
"""

from __future__ import annotations


class DecoError(Exception):
    """Root of every error this library raises on purpose."""


class DecoWarning(UserWarning):
    """Root of every warning this library issues."""


# -- loading and attaching heads -----------------------------------------------------------------


class MissingDependencyError(DecoError, ImportError):
    """An optional dependency (an "extra") is not installed."""


class ManifestError(DecoError, ValueError):
    """A head manifest is missing, malformed or describes something this version cannot load."""


class ManifestVersionError(ManifestError):
    """The manifest was written by a newer format version than this library reads."""


class IntegrityError(DecoError, ValueError):
    """An artifact on disk does not match its manifest (truncated, tampered, replaced or not a heads graph)."""


class IncompatibleHeadsError(DecoError, ValueError):
    """Heads were trained for a different base model than the one they are attached to."""


class HeadsNotFoundError(DecoError, FileNotFoundError):
    """No heads exist under the given name or path."""


class UnknownKeysWarning(DecoWarning):
    """A manifest carries keys this version does not know (written by a newer writer)."""


class UnknownReferenceKeysWarning(UnknownKeysWarning):
    """A reference config carries keys this version does not know (likely a newer reference)."""


# -- generation ----------------------------------------------------------------------------------


class HiddenStateUnavailableError(DecoError, RuntimeError):
    """A processor ran without a fresh hidden state from the model it is attached to."""


class UnsupportedGenerationModeError(DecoError, RuntimeError):
    """The generation mode (beam search, assisted decoding, ...) cannot use learned decoding."""


class PromptTooLongError(DecoError, ValueError):
    """A prompt plus the tokens asked for does not fit the model's context window."""


class ModelProvisioningError(DecoError, RuntimeError):
    """The embedded default model could not be found in the cache nor fetched from the registry."""


class CheckpointFormatError(DecoError, ValueError):
    """A weights file is malformed, truncated, or in a format we refuse to read (pickle)."""


class ReferenceCheckpointError(DecoError, ValueError):
    """A reference (AutoDeco) checkpoint does not fit the base model, or heads cannot be expressed in it."""


class StackedWarpersWarning(DecoWarning):
    """A static temperature/top-p would be applied on top of the learned one."""


class NonFiniteHiddenStateWarning(DecoWarning, RuntimeWarning):
    """Some rows had NaN/inf hidden states or head outputs and used the fallback T/P."""


# -- ONNX Runtime export of a causal LM ----------------------------------------------------------


class ExportValidationError(DecoError, ValueError):
    """The exported ONNX LM does not reproduce the torch model within the tolerance."""


class MissingHiddenStateOutputError(DecoError, ValueError):
    """An ONNX causal LM lacks the ``last_hidden_state`` output that learned decoding reads."""


class UnsupportedGraphError(DecoError, ValueError):
    """The exported graph does not have the LM-head structure this module knows how to read."""


# -- onnxruntime-genai ---------------------------------------------------------------------------


class GenaiModelError(DecoError, ValueError):
    """An onnxruntime-genai model folder cannot serve learned decoding as it is (with the fix in the message)."""


class GenaiExportError(DecoError, ValueError):
    """genai's builder produced a model that does not reproduce the torch model; nothing was kept."""


# -- training and evaluation ---------------------------------------------------------------------


class TrainingDataError(DecoError, ValueError):
    """Training data is malformed or holds nothing to train on."""


class CacheError(TrainingDataError):
    """A feature cache is missing, incomplete or does not fit the model."""


class TrainingInterrupted(DecoError):
    """Raised by ``fit(stop_after=...)``: the run stopped on purpose after a checkpoint."""


class TaskSpecError(DecoError, ValueError):
    """A ``--task`` spec, or a line of a JSONL task file, cannot be read."""


class ResultCacheError(DecoError, ValueError):
    """The ``--cache`` file of finished problems cannot be used (a folder, not writable)."""


class UnknownStrategyError(DecoError, ValueError):
    """A strategy name is not in the vocabulary (``deco_middleware.strategies``), or is written wrongly."""


# -- traces --------------------------------------------------------------------------------------


class TraceDocumentError(DecoError, ValueError):
    """Per-token lists of a trace document disagree in length or hold impossible values."""


class TraceStreamerError(DecoError, ValueError):
    """The streamer cannot pair tokens with decisions (no trace recorded, or a batch of several rows)."""



class SteerError(DecoError, ValueError):
    """An unknown steering direction (``steer=`` takes ``"low"``, ``"high"`` or ``None``)."""
# -- serving engines (vLLM) ----------------------------------------------------------------------


class InvalidDecodingRequestError(DecoError, ValueError):
    """A serving request's per-request decoding settings are invalid (vLLM answers HTTP 400)."""


class UnsupportedArchitectureError(DecoError, ValueError):
    """A serving engine's model architecture is not one the plugin can wrap."""


class PluginInactiveError(DecoError, RuntimeError):
    """A serving engine did not run the plugin's decoding step for requests that asked for it (no heads
    fit the model, or the plugin is not loaded)."""


class IgnoredSamplingWarning(DecoWarning):
    """A serving request set the engine's own temperature / top-p / top-k / min-p next to the learned pair."""


__all__ = [
    "CacheError",
    "CheckpointFormatError",
    "DecoError",
    "DecoWarning",
    "ExportValidationError",
    "GenaiExportError",
    "GenaiModelError",
    "HeadsNotFoundError",
    "HiddenStateUnavailableError",
    "IgnoredSamplingWarning",
    "IncompatibleHeadsError",
    "IntegrityError",
    "InvalidDecodingRequestError",
    "ManifestError",
    "ManifestVersionError",
    "MissingDependencyError",
    "MissingHiddenStateOutputError",
    "ModelProvisioningError",
    "NonFiniteHiddenStateWarning",
    "PluginInactiveError",
    "PromptTooLongError",
    "ReferenceCheckpointError",
    "ResultCacheError",
    "StackedWarpersWarning",
    "SteerError",
    "TaskSpecError",
    "TraceDocumentError",
    "TraceStreamerError",
    "TrainingDataError",
    "TrainingInterrupted",
    "UnknownKeysWarning",
    "UnknownReferenceKeysWarning",
    "UnknownStrategyError",
    "UnsupportedArchitectureError",
    "UnsupportedGenerationModeError",
    "UnsupportedGraphError",
]
