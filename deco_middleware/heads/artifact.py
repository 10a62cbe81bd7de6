"""Trained heads as a standalone ONNX artifact: load, verify, run on numpy, save."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HeadsNotFoundError, IncompatibleHeadsError, IntegrityError
from ..fingerprint import METHOD as FINGERPRINT_METHOD
from ..fingerprint import fingerprints_match
from ..manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ONNX_NAME,
    BaseModelIdentity,
    HeadArchitecture,
    HeadManifest,
    OnnxFile,
    atomic_write_bytes,
    sha256_file,
)

DEFAULT_PROVIDER = "CPUExecutionProvider"
# Where shipped heads live: inside the installed package (wheel) or next to it (source checkout).
_PACKAGED_HEADS = Path(__file__).resolve().parent.parent / "_shipped_heads"
_CHECKOUT_HEADS = Path(__file__).resolve().parent.parent.parent / "onnx"


def shipped_heads_dir() -> Path:
    """Folder holding the heads shipped with this package (one subfolder per name)."""
    return _PACKAGED_HEADS if _PACKAGED_HEADS.is_dir() else _CHECKOUT_HEADS


def list_shipped_heads() -> list[str]:
    root = shipped_heads_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file())


def resolve_heads_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A heads folder from a shipped name or a path (a folder, or a manifest.json inside one)."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file() and candidate.name == MANIFEST_NAME:
        return candidate.parent
    if candidate.is_dir():
        return candidate
    shipped = shipped_heads_dir() / str(name_or_path)
    if isinstance(name_or_path, str) and "/" not in name_or_path and (shipped / MANIFEST_NAME).is_file():
        return shipped
    names = ", ".join(list_shipped_heads()) or "none"
    raise HeadsNotFoundError(
        f"No heads at {str(name_or_path)!r}: not a folder with {MANIFEST_NAME} and {ONNX_NAME}, and not a "
        f"shipped name (shipped: {names})."
    )


@lru_cache(maxsize=None)
def _available_providers() -> tuple[str, ...]:
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


def check_providers(providers: Sequence[str | tuple[str, dict[str, Any]]]) -> list[Any]:
    available = _available_providers()
    for entry in providers:
        name = entry[0] if isinstance(entry, tuple) else entry
        if name not in available:
            raise ValueError(
                f"Execution provider `{name}` is not available in this onnxruntime build. "
                f"Available: {', '.join(available)}."
            )
    return list(providers)


class DecodingHeads:
    """Trained temperature and top-p heads, loaded from ONNX and verified against their manifest.

    Args:
        directory: folder holding ``manifest.json`` and the ONNX file it names.
        provider: ONNX Runtime execution provider, used when ``providers`` is not given.
        providers: explicit provider list (names or ``(name, options)`` tuples).
        session_options: an ``onnxruntime.SessionOptions``; by default one intra-op thread, which
            measured fastest for these tiny graphs next to a model that uses every core.

    >>> heads = DecodingHeads.from_pretrained("path/to/heads")  # doctest: +SKIP
    >>> temperature, top_p = heads.run(hidden_states, logits)   # doctest: +SKIP
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        provider: str = DEFAULT_PROVIDER,
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        session_options: Any = None,
    ) -> None:
        import onnxruntime

        self.directory = Path(directory)
        self.manifest = HeadManifest.load(self.directory / MANIFEST_NAME)
        self.onnx_path = self.directory / self.manifest.onnx.file
        self._verify_file()
        providers = check_providers(providers if providers is not None else [provider])
        if session_options is None:
            session_options = onnxruntime.SessionOptions()
            session_options.intra_op_num_threads = 1
            session_options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.onnx_path), sess_options=session_options, providers=providers
            )
        except Exception as error:  # ORT raises its own exception types; wrap them with context
            raise IntegrityError(f"ONNX Runtime could not load {self.onnx_path}: {error}") from error
        self._check_graph_signature()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], **session_kwargs: Any) -> DecodingHeads:
        """Load shipped heads by name (see :func:`list_shipped_heads`) or heads saved at a path."""
        return cls(resolve_heads_path(name_or_path), **session_kwargs)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Copy the verified ONNX file and its manifest to ``directory``."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.onnx_path, target / self.manifest.onnx.file)
        self.manifest.save(target / MANIFEST_NAME)
        return target

    def _verify_file(self) -> None:
        if not self.onnx_path.is_file():
            raise IntegrityError(f"The manifest names {self.onnx_path}, which does not exist. Re-export the heads.")
        actual = sha256_file(self.onnx_path)
        if actual != self.manifest.onnx.sha256:
            raise IntegrityError(
                f"{self.onnx_path} has sha256 {actual}, but its manifest says {self.manifest.onnx.sha256}: "
                "the file is truncated, tampered with or replaced. Re-download or re-export the heads."
            )

    def _check_graph_signature(self) -> None:
        io = self.manifest.io
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        base = self.manifest.base_model
        expected = {io.hidden_states: base.hidden_size, io.logits: base.vocab_size}
        for name, size in expected.items():
            if name not in inputs:
                raise IntegrityError(f"{self.onnx_path} has no input `{name}` (inputs: {sorted(inputs)}).")
            if inputs[name][-1] != size:
                raise IntegrityError(
                    f"{self.onnx_path} input `{name}` has last dimension {inputs[name][-1]}, but the manifest says {size}."
                )
        missing = {io.temperature, io.top_p} - outputs
        if missing:
            raise IntegrityError(f"{self.onnx_path} lacks outputs {sorted(missing)} (outputs: {sorted(outputs)}).")

    @property
    def hidden_size(self) -> int:
        return self.manifest.base_model.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.manifest.base_model.vocab_size

    @property
    def trained_heads(self) -> tuple[str, ...]:
        return tuple(self.manifest.heads.trained)

    def check_compatible(self, identity: BaseModelIdentity) -> None:
        """Fail unless these heads were trained for the model described by ``identity``."""
        base = self.manifest.base_model
        problems = []
        if identity.hidden_size != base.hidden_size:
            problems.append(f"hidden size {identity.hidden_size} vs {base.hidden_size}")
        if identity.vocab_size != base.vocab_size:
            problems.append(f"vocab size {identity.vocab_size} vs {base.vocab_size}")
        if not problems:
            ours, theirs = base.lm_head_fingerprint, identity.lm_head_fingerprint
            if ours.method != theirs.method or not fingerprints_match(ours.values, theirs.values):
                problems.append("LM-head weight fingerprint differs (a different model or a fine-tune)")
        if problems:
            raise IncompatibleHeadsError(
                f"These heads ({self.directory}) were trained for `{base.name}` ({base.architecture}), and do not "
                f"fit the model `{identity.name}` ({identity.architecture}): {'; '.join(problems)} "
                "(model vs heads). Load the heads trained for this model, or train new ones with `deco train`."
            )

    def run(self, hidden_states: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw head outputs ``(temperature [batch], top_p [batch])`` as float32 numpy arrays."""
        io = self.manifest.io
        hidden_states = np.ascontiguousarray(hidden_states, dtype=np.float32)
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        if hidden_states.ndim != 2 or hidden_states.shape[1] != self.hidden_size:
            raise ValueError(
                f"`hidden_states` must have shape [batch, {self.hidden_size}], got {list(hidden_states.shape)}."
            )
        if logits.shape != (hidden_states.shape[0], self.vocab_size):
            raise ValueError(
                f"`logits` must have shape [{hidden_states.shape[0]}, {self.vocab_size}], got {list(logits.shape)}."
            )
        temperature, top_p = self.session.run(
            [io.temperature, io.top_p], {io.hidden_states: hidden_states, io.logits: logits}
        )
        return temperature, top_p

    def __repr__(self) -> str:
        base = self.manifest.base_model
        return f"DecodingHeads({str(self.directory)!r}, base_model={base.name!r}, trained={list(self.trained_heads)})"


def heads_for_identity(heads: str | os.PathLike[str] | DecodingHeads, identity: BaseModelIdentity) -> DecodingHeads:
    """``"default"``: the shipped heads whose base model matches ``identity``; else a name or a path."""
    if isinstance(heads, DecodingHeads):
        return heads
    if heads != "default":
        return DecodingHeads.from_pretrained(heads)
    for name in list_shipped_heads():
        base = HeadManifest.load(shipped_heads_dir() / name / MANIFEST_NAME).base_model
        if (base.hidden_size, base.vocab_size) == (identity.hidden_size, identity.vocab_size) and fingerprints_match(
            base.lm_head_fingerprint.values, identity.lm_head_fingerprint.values
        ):
            return DecodingHeads.from_pretrained(name)
    raise HeadsNotFoundError(
        f"No shipped heads fit the model `{identity.name}` (shipped: {', '.join(list_shipped_heads()) or 'none'}). "
        "Pass --heads PATH, or train heads with `deco train`."
    )


def export_heads(
    weights: Mapping[str, np.ndarray],
    directory: str | os.PathLike[str],
    *,
    base_model: BaseModelIdentity,
    architecture: HeadArchitecture | None = None,
    description: str = "",
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``heads.onnx`` and its manifest for the given weights into ``directory``."""
    from .graph import OPSET, build_heads_graph

    architecture = architecture or HeadArchitecture()
    if base_model.lm_head_fingerprint.method != FINGERPRINT_METHOD:
        raise ValueError(f"Unknown fingerprint method {base_model.lm_head_fingerprint.method!r}.")
    model = build_heads_graph(
        weights,
        hidden_size=base_model.hidden_size,
        vocab_size=base_model.vocab_size,
        max_temperature=architecture.max_temperature,
        enhanced_features=architecture.enhanced_features,
    )
    directory = Path(directory)
    onnx_path = directory / ONNX_NAME
    atomic_write_bytes(onnx_path, model.SerializeToString())
    manifest = HeadManifest(
        format_version=FORMAT_VERSION,
        base_model=base_model,
        heads=architecture,
        onnx=OnnxFile(file=ONNX_NAME, sha256=sha256_file(onnx_path), opset=OPSET),
        description=description,
        training=training,
        evaluation=evaluation,
        source=source,
    )
    manifest.save(directory / MANIFEST_NAME)
    return directory
