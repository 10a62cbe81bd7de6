"""Errors raised by deco-middleware.

Every error derives from :class:`DecoError` and also from the built-in exception it stands in for,
so ``except ValueError`` keeps working for callers who do not know this library.
"""

from __future__ import annotations


class DecoError(Exception):
    """Root of every error this library raises on purpose."""


class MissingDependencyError(DecoError, ImportError):
    """An optional dependency (an "extra") is not installed."""


class ManifestError(DecoError, ValueError):
    """A head manifest is missing, malformed or describes something this version cannot load."""


class ManifestVersionError(ManifestError):
    """The manifest was written by a newer format version than this library reads."""


class IntegrityError(DecoError, ValueError):
    """An artifact on disk does not match its manifest (truncated, tampered or replaced)."""


class IncompatibleHeadsError(DecoError, ValueError):
    """Heads were trained for a different base model than the one they are attached to."""


class HeadsNotFoundError(DecoError, FileNotFoundError):
    """No heads exist under the given name or path."""


class HiddenStateUnavailableError(DecoError, RuntimeError):
    """A processor ran without a fresh hidden state from the model it is attached to."""


class UnsupportedGenerationModeError(DecoError, RuntimeError):
    """The generation mode (beam search, assisted decoding, ...) cannot use learned decoding."""


class ModelProvisioningError(DecoError, RuntimeError):
    """The embedded default model could not be found in the cache nor fetched from the registry."""


class InvalidDecodingRequestError(DecoError, ValueError):
    """A serving request's per-request decoding settings are invalid (vLLM answers HTTP 400)."""


class UnsupportedArchitectureError(DecoError, ValueError):
    """A serving engine's model architecture is not one the plugin can wrap."""
