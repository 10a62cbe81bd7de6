"""The manifest that travels next to every ``heads.onnx``: what the heads are and what they fit.

Loading heads is a security and correctness boundary: the manifest pins the ONNX file by sha256
and the base model by architecture, sizes and a fingerprint of its LM-head weights, so heads
cannot silently attach to a model they were not trained for.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from ._io import atomic_write_bytes, read_bytes_within, sha256_file
from ._version import __version__
from .errors import ManifestError, ManifestVersionError, UnknownKeysWarning

MANIFEST_NAME = "manifest.json"
ONNX_NAME = "heads.onnx"
# The newest format this version reads. A manifest is written with the oldest version that can express
# it (`format_version_for`): heads of the reference features stay at 1, byte for byte, and only heads
# whose graph an older reader would misjudge (it ignores unknown keys) are written as 2, which such a
# reader refuses with "upgrade" instead.
FORMAT_VERSION = 2
# A manifest is a few kB; anything far larger is not one of ours and is refused before parsing.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Nesting a manifest needs (the free-form `training` section included); deeper JSON is refused before
# validation, so no parser, validator or writer downstream can run out of recursion.
MAX_JSON_DEPTH = 64
# Bounds far above any real LM, so a manifest cannot make the load-time probe allocate gigabytes.
MAX_HIDDEN_SIZE = 1 << 16
MAX_VOCAB_SIZE = 1 << 22
MAX_FILE_NAME_BYTES = 255  # the usual file-system limit for one path component

HEAD_ARCHITECTURE = "autodeco-mlp-v1"
# What the temperature head reads: the final-norm hidden state alone (the reference), or that and two
# statistics of softmax(raw logits) at T = 1 over the whole vocabulary, `concat[h, max_prob, entropy]`.
TEMPERATURE_FEATURES = ("hidden", "hidden+logit-stats")
DEFAULT_TEMPERATURE_FEATURES = "hidden"
# Columns the temperature head's first layer reads beyond the hidden size, per feature set.
TEMPERATURE_EXTRA_FEATURES = {"hidden": 0, "hidden+logit-stats": 2}
TemperatureFeatures = Literal["hidden", "hidden+logit-stats"]


__all__ = [
    "FORMAT_VERSION",
    "HEAD_ARCHITECTURE",
    "TEMPERATURE_FEATURES",
    "MANIFEST_NAME",
    "MAX_MANIFEST_BYTES",
    "ONNX_NAME",
    "BaseModelIdentity",
    "HeadArchitecture",
    "HeadManifest",
    "IONames",
    "LMHeadFingerprint",
    "OnnxFile",
    "UnknownKeysWarning",
    "WriterInfo",
    "atomic_write_bytes",
    "format_version_for",
    "sha256_file",
]


class _Section(BaseModel):
    # Unknown keys are kept (so a round trip loses nothing) and reported by `HeadManifest.load`.
    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())


class WriterInfo(_Section):
    name: str = "deco-middleware"
    version: str = __version__


class LMHeadFingerprint(_Section):
    """Cheap, dtype-robust summary of the LM-head weight matrix (see ``fingerprint.py``)."""

    method: str = Field(min_length=1, max_length=200)
    values: list[float] = Field(min_length=1, max_length=4096)

    @field_validator("values")
    @classmethod
    def _finite(cls, values: list[float]) -> list[float]:
        if not all(abs(v) < float("inf") for v in values):  # also false for NaN
            raise ValueError("fingerprint values must be finite numbers")
        return values


class BaseModelIdentity(_Section):
    name: str = Field(min_length=1)
    architecture: str = Field(min_length=1)
    hidden_size: int = Field(gt=0, le=MAX_HIDDEN_SIZE)
    vocab_size: int = Field(gt=0, le=MAX_VOCAB_SIZE)
    lm_head_fingerprint: LMHeadFingerprint


class HeadArchitecture(_Section):
    name: Literal["autodeco-mlp-v1"] = HEAD_ARCHITECTURE
    temperature_hidden_size: int = Field(default=256, gt=0, le=MAX_HIDDEN_SIZE)
    top_p_hidden_size: int = Field(default=256, gt=0, le=MAX_HIDDEN_SIZE)
    enhanced_features: bool = True
    # Written only when not the default, so manifests of reference-feature heads keep their bytes.
    temperature_features: TemperatureFeatures = DEFAULT_TEMPERATURE_FEATURES
    max_temperature: float = Field(default=2.0, gt=0, le=1e4, allow_inf_nan=False)
    # Which heads were trained; an untrained head's output is ignored at run time (T=1 or P=1).
    trained: list[Literal["temperature", "top_p"]] = Field(default_factory=lambda: ["temperature", "top_p"])

    @field_validator("temperature_features", mode="before")
    @classmethod
    def _known_temperature_features(cls, value: Any) -> Any:
        if value not in TEMPERATURE_FEATURES:  # also refuses non-strings, before the Literal's own message
            accepted = ", ".join(repr(v) for v in TEMPERATURE_FEATURES)
            raise ValueError(
                f"unknown temperature_features {_shorten(repr(value), 60)}, expected one of {accepted} "
                "(heads from a newer deco-middleware: pip install -U deco-middleware)"
            )
        return value

    @property
    def temperature_input_size_extra(self) -> int:
        """Columns of the temperature head's first layer beyond the hidden size (0 or 2)."""
        return TEMPERATURE_EXTRA_FEATURES[self.temperature_features]


def format_version_for(heads: HeadArchitecture) -> int:
    """The oldest format that expresses ``heads``: 1 for the reference features, 2 with logit statistics."""
    return 1 if heads.temperature_features == DEFAULT_TEMPERATURE_FEATURES else 2


class IONames(_Section):
    hidden_states: str = "hidden_states"
    logits: str = "logits"
    temperature: str = "temperature"
    top_p: str = "top_p"

    @model_validator(mode="after")
    def _distinct(self) -> IONames:
        names = [self.hidden_states, self.logits, self.temperature, self.top_p]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"the four io names must be distinct and non-empty, got {names}")
        return self


class OnnxFile(_Section):
    file: str = ONNX_NAME
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int = Field(gt=0, le=1000)

    @field_validator("file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        # The ONNX file must sit next to the manifest: no paths that escape the folder, and nothing
        # the file system would refuse with a raw OSError (too long, NUL or control characters).
        shown = repr(value) if len(value) <= 80 else repr(value[:80]) + "..."
        if (
            Path(value).name != value
            or value in {"", ".", "..", MANIFEST_NAME}
            or "\\" in value
            or any(ord(c) < 32 or ord(c) == 127 for c in value)
        ):
            raise ValueError(f"must be a plain file name next to the manifest, got {shown}")
        if len(value.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
            raise ValueError(f"must be a file name of at most {MAX_FILE_NAME_BYTES} bytes, got {shown}")
        return value


class HeadManifest(_Section):
    """Validated description of one set of trained decoding heads."""

    format_version: StrictInt = Field(ge=1)
    writer: WriterInfo = Field(default_factory=WriterInfo)
    base_model: BaseModelIdentity
    heads: HeadArchitecture = Field(default_factory=HeadArchitecture)
    io: IONames = Field(default_factory=IONames)
    onnx: OnnxFile
    description: str = ""
    training: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    # Where heads trained elsewhere came from (`deco import-reference`: format, files, sha256).
    source: dict[str, Any] | None = None

    @classmethod
    def from_json_text(cls, text: str, *, source: str = "<manifest>") -> HeadManifest:
        try:
            raw = json.loads(text)
        except RecursionError as error:
            raise ManifestError(f"{source} is JSON nested too deeply to be a manifest. Re-export the heads.") from error
        except ValueError as error:  # JSONDecodeError, and integers over Python's digit limit
            raise ManifestError(f"{source} is not valid JSON ({_shorten(str(error))}). Re-export the heads.") from error
        if not isinstance(raw, dict):
            raise ManifestError(f"{source} must hold a JSON object, got {type(raw).__name__}.")
        if not _depth_at_most(raw, MAX_JSON_DEPTH):
            raise ManifestError(f"{source} is nested deeper than {MAX_JSON_DEPTH} levels; no manifest is. Re-export the heads.")
        _check_format_version(raw.get("format_version", None), source)
        try:
            manifest = cls.model_validate(raw)
        except ValidationError as error:
            raise ManifestError(f"{source} is not a valid head manifest: {_one_line(error)}. Re-export the heads.") from error
        needed = format_version_for(manifest.heads)
        if manifest.format_version < needed:
            raise ManifestError(
                f"{source} declares heads.temperature_features {manifest.heads.temperature_features!r}, which needs "
                f"format_version {needed}, but has format_version {manifest.format_version} (readers of that version "
                "ignore the field and would misjudge the graph). Re-export the heads."
            )
        unknown = manifest.unknown_keys()
        if unknown:
            warnings.warn(
                f"{source} has keys this version does not know and will ignore: {', '.join(unknown)} "
                f"(written by {manifest.writer.name} {manifest.writer.version}).",
                UnknownKeysWarning,
                stacklevel=3,
            )
        return manifest

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HeadManifest:
        """Read and validate ``path``; it must be a regular file inside its own folder (no symlink out)."""
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"No manifest at {path}. A heads folder holds {MANIFEST_NAME} and {ONNX_NAME}.")
        data = read_bytes_within(path, path.parent, max_bytes=MAX_MANIFEST_BYTES, what="The manifest", error=ManifestError)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise ManifestError(
                f"{path} is not UTF-8 text (byte {error.start}: {error.reason}). Re-export the heads."
            ) from error
        return cls.from_json_text(text, source=str(path))

    def unknown_keys(self) -> list[str]:
        """Dotted names of every key not in the schema, in this object and its sections."""
        found: list[str] = []

        def visit(model: BaseModel, prefix: str) -> None:
            found.extend(f"{prefix}{key}" for key in sorted(model.model_extra or {}))
            for name in type(model).model_fields:
                value = getattr(model, name)
                if isinstance(value, BaseModel):
                    visit(value, f"{prefix}{name}.")

        visit(self, "")
        return found

    def to_json_text(self) -> str:
        data = self.model_dump(mode="json")
        if data.get("source") is None:  # only imported heads have one; older readers would warn on the key
            data.pop("source", None)
        if data["heads"].get("temperature_features") == DEFAULT_TEMPERATURE_FEATURES:
            data["heads"].pop("temperature_features")  # the reference's features: the bytes of older manifests
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_bytes(Path(path), self.to_json_text().encode("utf-8"))


def _check_format_version(version: Any, source: str) -> None:
    # Strictly an int: "2" or 2.0 would otherwise be coerced and skip the newer-version gate.
    if isinstance(version, int) and not isinstance(version, bool):
        if version > FORMAT_VERSION:
            raise ManifestVersionError(
                f"{source} has format_version {version}, but deco-middleware {__version__} reads up to "
                f"{FORMAT_VERSION}. Upgrade with: pip install -U deco-middleware"
            )
        return
    if version is None:
        return  # the schema reports the missing field with the others
    try:
        newer = not isinstance(version, bool) and float(version) > FORMAT_VERSION
    except (TypeError, ValueError, OverflowError):
        newer = False
    shown = _shorten(repr(version))
    if newer:
        raise ManifestVersionError(
            f"{source} has format_version {shown} ({type(version).__name__}), which is not an integer and reads as "
            f"newer than {FORMAT_VERSION}, the newest deco-middleware {__version__} reads. "
            "Upgrade with: pip install -U deco-middleware"
        )
    raise ManifestError(
        f"{source} has format_version {shown} ({type(version).__name__}); it must be an integer from 1 to "
        f"{FORMAT_VERSION}. Re-export the heads."
    )


def _depth_at_most(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


def _shorten(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(error: ValidationError, limit: int = 3) -> str:
    """The first few problems of a validation error on one line, each with its dotted field name."""
    parts = []
    for item in error.errors(include_url=False)[:limit]:
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        parts.append(f"`{where}`: {_shorten(item['msg'], 240)} (got {_shorten(repr(item.get('input')), 60)})")
    more = error.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
