"""The manifest that travels next to every ``heads.onnx``: what the heads are and what they fit.

Loading heads is a security and correctness boundary: the manifest pins the ONNX file by sha256
and the base model by architecture, sizes and a fingerprint of its LM-head weights, so heads
cannot silently attach to a model they were not trained for.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._version import __version__
from .errors import ManifestError, ManifestVersionError

MANIFEST_NAME = "manifest.json"
ONNX_NAME = "heads.onnx"
FORMAT_VERSION = 1
# A manifest is a few kB; anything far larger is not one of ours and is refused before parsing.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

HEAD_ARCHITECTURE = "autodeco-mlp-v1"


class UnknownKeysWarning(UserWarning):
    """A manifest carries keys this version does not know (written by a newer writer)."""


class _Section(BaseModel):
    # Unknown keys are kept (so a round trip loses nothing) and reported by `HeadManifest.load`.
    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())


class WriterInfo(_Section):
    name: str = "deco-middleware"
    version: str = __version__


class LMHeadFingerprint(_Section):
    """Cheap, dtype-robust summary of the LM-head weight matrix (see ``fingerprint.py``)."""

    method: str
    values: list[float] = Field(min_length=1)


class BaseModelIdentity(_Section):
    name: str = Field(min_length=1)
    architecture: str = Field(min_length=1)
    hidden_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    lm_head_fingerprint: LMHeadFingerprint


class HeadArchitecture(_Section):
    name: Literal["autodeco-mlp-v1"] = HEAD_ARCHITECTURE
    temperature_hidden_size: int = Field(default=256, gt=0)
    top_p_hidden_size: int = Field(default=256, gt=0)
    enhanced_features: bool = True
    max_temperature: float = Field(default=2.0, gt=0)
    # Which heads were trained; an untrained head's output is ignored at run time (T=1 or P=1).
    trained: list[Literal["temperature", "top_p"]] = Field(default_factory=lambda: ["temperature", "top_p"])


class IONames(_Section):
    hidden_states: str = "hidden_states"
    logits: str = "logits"
    temperature: str = "temperature"
    top_p: str = "top_p"


class OnnxFile(_Section):
    file: str = ONNX_NAME
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int = Field(gt=0)

    @field_validator("file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        # The ONNX file must sit next to the manifest: no paths that escape the folder.
        if Path(value).name != value or value in {"", ".", ".."}:
            raise ValueError(f"must be a plain file name next to the manifest, got {value!r}")
        return value


class HeadManifest(_Section):
    """Validated description of one set of trained decoding heads."""

    format_version: int = Field(ge=1)
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
        except json.JSONDecodeError as error:
            raise ManifestError(f"{source} is not valid JSON ({error}). Re-export the heads.") from error
        if not isinstance(raw, dict):
            raise ManifestError(f"{source} must hold a JSON object, got {type(raw).__name__}.")
        version = raw.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise ManifestVersionError(
                f"{source} has format_version {version}, but deco-middleware {__version__} reads up to "
                f"{FORMAT_VERSION}. Upgrade with: pip install -U deco-middleware"
            )
        try:
            manifest = cls.model_validate(raw)
        except ValidationError as error:
            raise ManifestError(f"{source} is not a valid head manifest:\n{error}") from error
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
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"No manifest at {path}. A heads folder holds {MANIFEST_NAME} and {ONNX_NAME}.")
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path} is {size} bytes, larger than any manifest ({MAX_MANIFEST_BYTES}).")
        return cls.from_json_text(path.read_text(encoding="utf-8"), source=str(path))

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
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_bytes(Path(path), self.to_json_text().encode("utf-8"))


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
