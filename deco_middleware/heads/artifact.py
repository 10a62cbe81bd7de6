"""Trained heads as a standalone ONNX artifact: load, verify, run on numpy, save."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .._io import read_bytes_within, sha256_bytes
from ..errors import HeadsNotFoundError, IncompatibleHeadsError, IntegrityError
from ..fingerprint import LEGACY_METHODS, fingerprint_distance, fingerprints_match
from ..fingerprint import METHOD as FINGERPRINT_METHOD
from ..fingerprint import RTOL as FINGERPRINT_RTOL
from ..manifest import (
    MANIFEST_NAME,
    ONNX_NAME,
    BaseModelIdentity,
    HeadArchitecture,
    HeadManifest,
    OnnxFile,
    atomic_write_bytes,
    format_version_for,
    sha256_file,
)

DEFAULT_PROVIDER = "CPUExecutionProvider"
# Heads for an 8192-wide LM are ~17 MB; a file far larger is not a heads graph and is not read.
MAX_ONNX_BYTES = 256 * 1024 * 1024
# Load-time probe: rows whose outputs must be per-row, finite and in range (see `_probe`).
_PROBE_ROWS = 3
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
        data = self._read_verified_file()
        self._onnx_bytes = data
        providers = check_providers(providers if providers is not None else [provider])
        if session_options is None:
            session_options = onnxruntime.SessionOptions()
            session_options.intra_op_num_threads = 1
            session_options.inter_op_num_threads = 1
        try:
            # From the verified bytes, not the path: the file cannot be swapped between the hash and the load.
            # enable_fallback=0: on failure ORT would otherwise print a banner on stdout and retry.
            self.session = onnxruntime.InferenceSession(
                data, sess_options=session_options, providers=providers, enable_fallback=0
            )
        except Exception as error:  # ORT raises its own exception types; wrap them with context
            raise IntegrityError(
                f"ONNX Runtime could not load {self.onnx_path}: {_first_line(error)}. Re-export the heads."
            ) from error
        self._check_graph_contract()
        self._probe()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], **session_kwargs: Any) -> DecodingHeads:
        """Load shipped heads by name (see :func:`list_shipped_heads`) or heads saved at a path."""
        return cls(resolve_heads_path(name_or_path), **session_kwargs)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Copy the verified ONNX file and its manifest to ``directory``."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target / self.manifest.onnx.file, self._onnx_bytes)  # the bytes that were verified
        self.manifest.save(target / MANIFEST_NAME)
        return target

    def _read_verified_file(self) -> bytes:
        """The ONNX file's bytes, once they match the manifest's sha256 and hold every tensor inline."""
        from ._onnx_scan import MalformedOnnxError, external_tensor_names

        try:
            exists = self.onnx_path.is_file()
        except OSError as error:
            raise IntegrityError(f"Cannot open {self.onnx_path}: {error.strerror or error}.") from error
        if not exists:
            raise IntegrityError(f"The manifest names {self.onnx_path}, which does not exist. Re-export the heads.")
        data = read_bytes_within(
            self.onnx_path, self.directory, max_bytes=MAX_ONNX_BYTES, what="The ONNX file", error=IntegrityError
        )
        actual = sha256_bytes(data)
        if actual != self.manifest.onnx.sha256:
            raise IntegrityError(
                f"{self.onnx_path} has sha256 {actual}, but its manifest says {self.manifest.onnx.sha256}: "
                "the file is truncated, tampered with or replaced. Re-download or re-export the heads."
            )
        try:
            external = sorted(external_tensor_names(data))
        except MalformedOnnxError as error:
            raise IntegrityError(f"{self.onnx_path} is not a valid ONNX file ({error}). Re-export the heads.") from error
        if external:
            shown = ", ".join(external[:5]) + (f" and {len(external) - 5} more" if len(external) > 5 else "")
            raise IntegrityError(
                f"{self.onnx_path} keeps tensors in external data files ({shown}), which its sha256 pin does not "
                "cover. Heads are one self-contained file: re-export them with export_heads, or re-save this "
                "file with onnx.save(model, path, save_as_external_data=False)."
            )
        return data

    def _contract_error(self, problem: str) -> IntegrityError:
        return IntegrityError(
            f"{self.onnx_path} does not compute the heads its manifest describes: {problem}. "
            "Re-export the heads with export_heads (or `deco train`)."
        )

    def _check_graph_contract(self) -> None:
        """Inputs, outputs, dtypes and shapes of the graph against the manifest's ``io`` and sizes."""
        io = self.manifest.io
        base = self.manifest.base_model
        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        if len(inputs) != 2 or set(names) != {io.hidden_states, io.logits}:
            raise self._contract_error(f"inputs are {names}, expected exactly [`{io.hidden_states}`, `{io.logits}`]")
        for arg in inputs:
            size = base.hidden_size if arg.name == io.hidden_states else base.vocab_size
            shape = list(arg.shape or [])
            if arg.type != "tensor(float)":
                raise self._contract_error(f"input `{arg.name}` is {arg.type}, expected tensor(float)")
            if len(shape) != 2:
                raise self._contract_error(f"input `{arg.name}` has shape {shape or 'undeclared'}, expected [batch, {size}]")
            if isinstance(shape[0], int) and shape[0] > 0:
                raise self._contract_error(f"input `{arg.name}` has a fixed batch of {shape[0]}, expected a dynamic batch")
            if shape[1] != size:
                raise self._contract_error(
                    f"input `{arg.name}` has last dimension {shape[1]}, but the manifest says {size}"
                )
        self._check_layer_widths()
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        if len(outputs) != 2 or set(names) != {io.temperature, io.top_p}:
            raise self._contract_error(f"outputs are {names}, expected exactly [`{io.temperature}`, `{io.top_p}`]")
        for arg in outputs:
            if arg.type != "tensor(float)":
                raise self._contract_error(f"output `{arg.name}` is {arg.type}, expected tensor(float)")
            shape = list(arg.shape or [])
            if shape and len(shape) != 1:  # [] means undeclared here; the probe checks what is computed
                raise self._contract_error(f"output `{arg.name}` has shape {shape}, expected [batch]")

    def _check_layer_widths(self) -> None:
        """The first layers of both MLPs read as many inputs as the manifest's architecture says.

        Checked on graphs built by :func:`export_heads` (its initializer names); a graph with other
        names is judged by its IO and the probe alone.
        """
        from ._onnx_scan import initializer_dims

        heads, hidden = self.manifest.heads, self.hidden_size
        expected = {
            "temp_head.0.wT": (hidden + heads.temperature_input_size_extra,
                               f"heads.temperature_features {heads.temperature_features!r}"),
            "top_p_head.0.wT": (hidden + (5 if heads.enhanced_features else 1),
                                f"heads.enhanced_features {str(heads.enhanced_features).lower()}"),
        }
        found = initializer_dims(self._onnx_bytes, set(expected))
        for name, (rows, declared) in expected.items():
            dims = found.get(name)
            if dims is not None and (len(dims) != 2 or dims[0] != rows):
                what = "temperature" if name.startswith("temp") else "top-p"
                raise self._contract_error(
                    f"the {what} head's first layer `{name}` has shape {dims}, but {declared} with hidden size "
                    f"{hidden} means {rows} inputs"
                )

    def _probe(self) -> None:
        """Run the heads once on a fixed batch: one finite value per row, T in (0, max], P in (0, 1].

        Also checks what only running can show: each row's outputs depend on that row alone, and T does
        not move when only the logits change (the temperature head reads the hidden state alone, so a T
        that follows the logits means the outputs are swapped or the graph is another one). With
        ``temperature_features="hidden+logit-stats"`` T reads the logits through ``max_prob`` and
        ``entropy``, which a permutation of the vocabulary leaves alone: T must not move under one.
        """
        logit_stats = self.manifest.heads.temperature_features == "hidden+logit-stats"
        rng = np.random.default_rng(20251030)
        hidden = rng.standard_normal((_PROBE_ROWS, self.hidden_size)).astype(np.float32)
        logits = (4.0 * rng.standard_normal((_PROBE_ROWS, self.vocab_size))).astype(np.float32)
        try:
            temperature, top_p = self._run_session(hidden, logits)
            alone_t, alone_p = self._run_session(hidden[:1], logits[:1])
            other_logits = np.ascontiguousarray(logits[:, ::-1]) if logit_stats else logits[:, ::-1] * np.float32(0.5)
            other_t, _ = self._run_session(hidden, other_logits)
        except Exception as error:  # ORT's own exception types: a graph that cannot run on a valid batch
            raise self._contract_error(f"it fails on a probe batch ({_first_line(error)})") from error
        io = self.manifest.io
        max_temperature = float(np.float32(self.manifest.heads.max_temperature)) * (1 + 1e-6)
        for name, values, batch in ((io.temperature, temperature, _PROBE_ROWS), (io.top_p, top_p, _PROBE_ROWS),
                                    (io.temperature, alone_t, 1), (io.top_p, alone_p, 1)):
            if not isinstance(values, np.ndarray) or values.dtype != np.float32 or values.shape != (batch,):
                shape = list(getattr(values, "shape", []))
                raise self._contract_error(
                    f"output `{name}` is {getattr(values, 'dtype', type(values).__name__)} of shape {shape} for a batch of "
                    f"{batch}, expected float32 [{batch}] (one value per row)"
                )
        if not (np.isfinite(temperature).all() and (temperature > 0).all() and (temperature <= max_temperature).all()):
            raise self._contract_error(
                f"output `{io.temperature}` is {np.round(temperature, 6).tolist()} on the probe batch, outside "
                f"(0, {self.manifest.heads.max_temperature}]"
            )
        if not (np.isfinite(top_p).all() and (top_p > 0).all() and (top_p <= 1).all()):
            raise self._contract_error(
                f"output `{io.top_p}` is {np.round(top_p, 6).tolist()} on the probe batch, outside (0, 1]"
            )
        if not (np.allclose(alone_t, temperature[:1], rtol=1e-4, atol=1e-6)
                and np.allclose(alone_p, top_p[:1], rtol=1e-4, atol=1e-6)):
            raise self._contract_error("the outputs of one row change with the other rows of the batch")
        if logit_stats:
            if not np.allclose(other_t, temperature, rtol=1e-4, atol=1e-6):  # float32 sums in another order
                raise self._contract_error(
                    f"output `{io.temperature}` changes when the vocabulary is only permuted; with temperature_features "
                    "'hidden+logit-stats' it reads the hidden state and the max probability and entropy of the logits"
                )
        elif not np.allclose(other_t, temperature, rtol=1e-5, atol=1e-7):
            raise self._contract_error(
                f"output `{io.temperature}` changes when only the logits change; it must depend on the hidden "
                f"state alone (are `{io.temperature}` and `{io.top_p}` swapped?)"
            )

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
        ours, theirs = base.lm_head_fingerprint, identity.lm_head_fingerprint
        if not problems and ours.method in LEGACY_METHODS:
            raise IncompatibleHeadsError(
                f"These heads ({self.directory}) pin their base model with the retired fingerprint `{ours.method}`, "
                "which reads only 16 rows of the LM head. Re-stamp the manifest (it checks the old fingerprint "
                f"first): python -m deco_middleware.heads.restamp {self.directory} --model MODEL"
            )
        if not problems and ours.method != theirs.method:
            problems.append(f"LM-head fingerprint method `{theirs.method}` vs `{ours.method}`")
        elif not problems and not fingerprints_match(ours, theirs):
            distance = fingerprint_distance(ours.values, theirs.values)
            problems.append(
                f"LM-head weight fingerprint differs by {distance:.2g} (relative, over the whole matrix; the "
                f"tolerance is {FINGERPRINT_RTOL:g}): a different model or a fine-tune"
            )
        if problems:
            raise IncompatibleHeadsError(
                f"These heads ({self.directory}) were trained for `{base.name}` ({base.architecture}), and do not "
                f"fit the model `{identity.name}` ({identity.architecture}): {'; '.join(problems)} "
                "(model vs heads). Load the heads trained for this model, or train new ones with `deco train`."
            )

    def run(self, hidden_states: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw head outputs ``(temperature [batch], top_p [batch])`` as float32 numpy arrays."""
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
        return self._run_session(hidden_states, logits)

    def _run_session(self, hidden_states: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        io = self.manifest.io
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
            base.lm_head_fingerprint, identity.lm_head_fingerprint
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
    # A retired method is written as it is (a feature cache built by an older version records one);
    # such heads load, and attaching them asks for a re-stamp. An unknown method is refused here.
    if base_model.lm_head_fingerprint.method not in (FINGERPRINT_METHOD, *LEGACY_METHODS):
        raise ValueError(
            f"Unknown fingerprint method {base_model.lm_head_fingerprint.method!r}; this version writes "
            f"{FINGERPRINT_METHOD!r}. Compute the identity with deco_middleware.hf.model_identity."
        )
    model = build_heads_graph(
        weights,
        hidden_size=base_model.hidden_size,
        vocab_size=base_model.vocab_size,
        max_temperature=architecture.max_temperature,
        enhanced_features=architecture.enhanced_features,
        temperature_features=architecture.temperature_features,
    )
    directory = Path(directory)
    onnx_path = directory / ONNX_NAME
    atomic_write_bytes(onnx_path, model.SerializeToString())
    manifest = HeadManifest(
        format_version=format_version_for(architecture),
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."
