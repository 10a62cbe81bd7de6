"""Convert between the reference's checkpoints (Zacks917/AutoDeco) and our ONNX heads.

The reference stores its two heads as safetensors tensors ``temp_head.mlp.{0,2}.{weight,bias}``
and ``top_p_head.mlp.{0,2}.{weight,bias}`` next to a ``config.json`` with ``model_type
"autodeco"``: either alone (the heads-only split, ``model.safetensors``) or merged into the base
model's shards, whose own tensors are then prefixed ``llm.``. Its modules are the ones in
``heads/modules.py``: ``T = 2 * sigmoid(MLP(h))``; ``P = sigmoid(MLP([h, T, stats]))`` with the
statistics of ``softmax(logits / (T + 1e-8))``, or ``P = sigmoid(MLP([h, T]))`` when
``use_enhanced_features`` is false.

Both directions check everything before they write, and write a whole folder or nothing: the
output is assembled in a temporary sibling folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import CheckpointFormatError, ReferenceCheckpointError, UnknownReferenceKeysWarning
from ..fingerprint import fingerprints_match
from ..heads.graph import WEIGHT_NAMES
from ..manifest import (
    HEAD_ARCHITECTURE,
    BaseModelIdentity,
    HeadArchitecture,
    UnknownKeysWarning,
    atomic_write_bytes,
    sha256_file,
)
from .base_model import INDEX_NAME, LocalBaseModel, fingerprint_of, lm_head_key, local_base_model, read_json, weight_files
from .safetensors_io import PICKLE_SUFFIXES, SafetensorsFile, pickle_refusal, safetensors_bytes

REFERENCE_REPOSITORY = "Zacks917/AutoDeco"
REFERENCE_MODEL_TYPE = "autodeco"
REFERENCE_ARCHITECTURE = "AutoDecoModelForCausalLM"
# The reference hard-codes both MLPs as Linear(in, 256) -> ReLU -> Linear(256, 1) and T = 2 * sigmoid.
REFERENCE_INNER_SIZE = 256
REFERENCE_MAX_TEMPERATURE = 2.0
HEADS_FILE = "model.safetensors"  # what the reference's `merge_autodeco.py split` writes
CONFIG_NAME = "config.json"
BASE_PREFIX = "llm."
HEAD_PREFIXES = ("temp_head.", "top_p_head.")
# The reference carries no version of its own; we number the config flavours we read:
# 1 names the head switches `train_temp` / `train_top_p`, 2 `enable_temperature_head` / `enable_top_p_head`.
REFERENCE_FORMAT_VERSION = 2
SOURCE_FORMAT = "autodeco-reference"
_FLAG_KEYS = {
    "temperature": ("enable_temperature_head", "train_temp"),
    "top_p": ("enable_top_p_head", "train_top_p"),
}
_FLAG_KEYS_FLAT = tuple(key for keys in _FLAG_KEYS.values() for key in keys)
# Keys the reference's config class writes (on top of the base model's own config keys).
REFERENCE_CONFIG_KEYS = frozenset({
    "model_type", "architectures", "base_model_type", "base_model_name_or_path", "enable_temperature_head",
    "enable_top_p_head", "train_temp", "train_top_p", "use_enhanced_features", "temperature_hidden_size",
    "top_p_hidden_size", "deco_middleware",
})
# What transformers' PretrainedConfig itself may write (4.57 and 5.x), whatever the base model.
_GENERIC_CONFIG_KEYS = frozenset({
    "_name_or_path", "transformers_version", "dtype", "torch_dtype", "return_dict", "output_hidden_states",
    "output_attentions", "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads", "tie_word_embeddings",
    "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size",
    "add_cross_attention", "tie_encoder_decoder", "id2label", "label2id", "problem_type", "tokenizer_class",
    "prefix", "bos_token_id", "pad_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id",
    "task_specific_params", "finetuning_task", "max_length", "min_length", "do_sample", "early_stopping",
    "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "use_cache", "_attn_implementation_autoset", "_commit_hash",
})


@dataclass(frozen=True)
class ImportReport:
    """What ``import_reference`` read and wrote."""

    directory: Path
    layout: str  # "heads-only" or "merged"
    format_version: int
    source_dtype: str
    trained: list[str]
    enhanced_features: bool
    base_model: str
    unknown_keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExportReport:
    """What ``export_reference`` wrote."""

    directory: Path
    trained: list[str]
    enhanced_features: bool
    base_model_type: str


# -- writing a folder atomically ------------------------------------------------------------------


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists. Choose another --out, or pass --overwrite to replace it.")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder; choose another --out.")


def _unique_sibling(out: Path, suffix: str) -> Path:
    return out.parent / f".{out.name}.{secrets.token_hex(6)}.{suffix}"


@contextlib.contextmanager
def _staged_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling folder that replaces ``out`` on success and vanishes on any error."""
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _unique_sibling(out, "tmp")
    staging.mkdir()  # plain mkdir: the usual mode under the umask (mkdtemp would make it 0700)
    try:
        yield staging
        if out.exists():
            retired = _unique_sibling(out, "old")
            os.replace(out, retired)
            os.replace(staging, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- reading a reference checkpoint ---------------------------------------------------------------


def _flag(config: dict[str, Any], head: str, path: Path) -> tuple[bool, int]:
    """Whether ``head`` is enabled, and the config flavour (2: ``enable_*``, 1: older ``train_*``)."""
    new_key, old_key = _FLAG_KEYS[head]
    for key, version in ((new_key, 2), (old_key, 1)):
        if key in config:
            value = config[key]
            if not isinstance(value, bool):
                raise ReferenceCheckpointError(f"{path}: `{key}` must be true or false, got {value!r}.")
            return value, version
    return True, REFERENCE_FORMAT_VERSION  # the reference's default: both heads on


def _known_config_keys(base_config: dict[str, Any]) -> set[str]:
    known = set(REFERENCE_CONFIG_KEYS | _GENERIC_CONFIG_KEYS | set(base_config))
    try:  # the transformers installed here may write a few more generic keys
        import transformers

        known |= set(transformers.PretrainedConfig().to_dict())
    except Exception:  # noqa: BLE001 - transformers is optional; the static list covers 4.57 and 5.x
        pass
    return known


def _expected_shapes(hidden: int, inner_t: int, inner_p: int, top_p_inputs: int) -> dict[str, tuple[int, ...]]:
    return {
        "temp_head.mlp.0.weight": (inner_t, hidden),
        "temp_head.mlp.0.bias": (inner_t,),
        "temp_head.mlp.2.weight": (1, inner_t),
        "temp_head.mlp.2.bias": (1,),
        "top_p_head.mlp.0.weight": (inner_p, top_p_inputs),
        "top_p_head.mlp.0.bias": (inner_p,),
        "top_p_head.mlp.2.weight": (1, inner_p),
        "top_p_head.mlp.2.bias": (1,),
    }


def _resolve_checkpoint(checkpoint: str | os.PathLike[str]) -> tuple[Path, dict[str, SafetensorsFile]]:
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}. Pass the reference checkpoint folder (config.json + safetensors).")
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise pickle_refusal(path, "a pickle-based checkpoint")
        if path.suffix != ".safetensors":
            raise CheckpointFormatError(f"{path} is not a safetensors file. Pass the checkpoint folder instead.")
        shard = SafetensorsFile(path)
        return path.parent, dict.fromkeys(shard.keys(), shard)
    return path, weight_files(path)


def _check_config(config: dict[str, Any], config_path: Path, base: LocalBaseModel) -> None:
    model_type = config.get("model_type")
    if model_type != REFERENCE_MODEL_TYPE:
        raise ReferenceCheckpointError(
            f"{config_path} has model_type {model_type!r}, not {REFERENCE_MODEL_TYPE!r}: this is not a reference "
            f"(AutoDeco) checkpoint. Pass the folder written by the reference's training or by "
            "`merge_autodeco.py split|merge`."
        )
    architectures = config.get("architectures")
    if architectures is not None and REFERENCE_ARCHITECTURE not in (architectures or []):
        raise ReferenceCheckpointError(
            f"{config_path} has architectures {architectures!r}; a reference checkpoint has [{REFERENCE_ARCHITECTURE!r}]."
        )
    identity = base.identity
    base_type = config.get("base_model_type")
    if not base_type:
        raise ReferenceCheckpointError(
            f"{config_path} has no `base_model_type`, so it cannot be checked against --model. Add the base model's "
            f"model_type (for --model {base.path}: {base.model_type!r}) to the config if you know it is the right model."
        )
    if base_type != base.model_type:
        raise ReferenceCheckpointError(
            f"{config_path} was trained for a `{base_type}` model, but --model {base.path} is a `{base.model_type}` "
            f"model ({identity.architecture}). Pass --model the base model the heads were trained on "
            f"(the config names {config.get('base_model_name_or_path')!r})."
        )
    for key, expected in (("hidden_size", identity.hidden_size), ("temperature_hidden_size", identity.hidden_size),
                          ("top_p_hidden_size", identity.hidden_size), ("vocab_size", identity.vocab_size)):
        value = config.get(key)
        if value is not None and value != expected:
            raise ReferenceCheckpointError(
                f"{config_path} has {key}={value!r}, but --model {base.path} ({identity.name}) has {expected}: the heads "
                f"were trained for another model. Pass --model the base model named {config.get('base_model_name_or_path')!r}."
            )


def _read_head_weights(located: dict[str, SafetensorsFile], folder: Path, base: LocalBaseModel,
                       enhanced: bool) -> tuple[dict[str, np.ndarray], str]:
    hidden = base.identity.hidden_size
    head_keys = {k for k in located if k.startswith(HEAD_PREFIXES)}
    base_keys = {k for k in located if k.startswith(BASE_PREFIX)}
    others = sorted(set(located) - head_keys - base_keys)
    unknown_heads = sorted(head_keys - set(WEIGHT_NAMES))
    if others or unknown_heads:
        listed = ", ".join((unknown_heads + others)[:8])
        raise ReferenceCheckpointError(
            f"{folder} holds tensors the reference format does not have: {listed}"
            f"{' ...' if len(unknown_heads + others) > 8 else ''}. Expected only {', '.join(WEIGHT_NAMES)} (and, in a "
            f"merged checkpoint, base weights prefixed `{BASE_PREFIX}`). Was it written by a newer reference, or by "
            "another tool? Split the heads out with the reference's `merge_autodeco.py split`."
        )
    missing = [k for k in WEIGHT_NAMES if k not in head_keys]
    if missing:
        raise ReferenceCheckpointError(
            f"{folder} lacks head tensors {', '.join(missing)}. The reference always saves both heads (a disabled head "
            "keeps its initial weights): the checkpoint is incomplete. Re-split it from the full checkpoint with "
            "`merge_autodeco.py split`."
        )
    shapes = {k: located[k].shape(k) for k in WEIGHT_NAMES}
    # The MLP widths come from the first layers (the reference's are 256); a 0-d tensor fails below.
    inner_t, inner_p = (shapes[k][0] if shapes[k] else REFERENCE_INNER_SIZE
                        for k in ("temp_head.mlp.0.weight", "top_p_head.mlp.0.weight"))
    expected = _expected_shapes(hidden, inner_t, inner_p, hidden + (5 if enhanced else 1))
    for key in WEIGHT_NAMES:
        if tuple(shapes[key]) != expected[key]:
            hint = ""
            if len(shapes[key]) != 2:
                pass
            elif key == "top_p_head.mlp.0.weight" and shapes[key][-1] == hidden + (1 if enhanced else 5):
                hint = (f" Its width fits use_enhanced_features={not enhanced}, but the config says {enhanced}: fix "
                        "`use_enhanced_features` in config.json.")
            elif key.endswith("mlp.0.weight"):
                hint = (f" The heads were trained for a model with hidden size "
                        f"{shapes[key][-1] - (0 if key.startswith('temp') else (5 if enhanced else 1))}. Pass --model "
                        "the base model they were trained on.")
            raise ReferenceCheckpointError(
                f"{located[key].path}: `{key}` has shape {list(shapes[key])}, expected {list(expected[key])} for "
                f"--model {base.identity.name} (hidden size {hidden}).{hint}"
            )
    dtypes = sorted({located[k].dtype(k) for k in WEIGHT_NAMES})
    weights = {k: located[k].read(k) for k in WEIGHT_NAMES}
    bad = [k for k, v in weights.items() if not np.isfinite(v).all()]
    if bad:
        raise ReferenceCheckpointError(f"{folder}: tensors {', '.join(bad)} hold NaN or inf; the checkpoint is corrupt.")
    if base_keys:  # a merged checkpoint carries its base model: it must be --model
        key = lm_head_key(located, base.config, prefix=BASE_PREFIX)
        fingerprint, _, vocab = fingerprint_of(located[key], key)
        if vocab != base.identity.vocab_size or not fingerprints_match(
            base.identity.lm_head_fingerprint, fingerprint
        ):
            raise ReferenceCheckpointError(
                f"{folder} is a merged checkpoint whose own base weights (`{key}`) differ from --model {base.path} "
                f"({base.identity.name}). Pass --model the base model that was merged into it."
            )
    return weights, "/".join(dtypes)


def import_reference(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str = "default",
    overwrite: bool = False,
    description: str = "",
) -> ImportReport:
    """Turn a reference checkpoint folder into ``heads.onnx`` + manifest in ``out``, for ``model``.

    Args:
        checkpoint: the reference folder (``config.json`` plus its heads-only ``model.safetensors``, or a
            merged, possibly sharded checkpoint), or one safetensors file inside it.
        out: the heads folder to write; written whole or not at all.
        model: ``default`` (the embedded SmolLM2-135M-Instruct) or a local model folder: the base model
            the heads will run on, whose identity the manifest records and the checkpoint is checked against.
        overwrite: replace ``out`` if it exists.

    >>> import_reference("autodeco-heads/", "onnx/my-heads", model="path/to/base")  # doctest: +SKIP
    """
    out = Path(out)
    _check_out(out, overwrite)
    folder, located = _resolve_checkpoint(checkpoint)
    config_path = folder / CONFIG_NAME
    config = read_json(config_path, what="a reference checkpoint folder holds config.json next to its safetensors.")
    base = local_base_model(model)
    _check_config(config, config_path, base)
    unknown = sorted(set(config) - _known_config_keys(base.config))
    if unknown:
        warnings.warn(
            f"{config_path} has keys this version does not know and will ignore: {', '.join(unknown)} (a newer "
            f"reference?). Check that the heads are still the reference architecture; upgrade with: "
            "pip install -U deco-middleware",
            UnknownReferenceKeysWarning,
            stacklevel=2,
        )
    enabled = {head: _flag(config, head, config_path) for head in _FLAG_KEYS}
    trained = [head for head, (on, _) in enabled.items() if on]
    if not trained:
        raise ReferenceCheckpointError(
            f"{config_path} enables neither head (both switches are false): the reference then trains the base LM, "
            "and there are no heads to import."
        )
    format_version = min(version for _, version in enabled.values())
    enhanced = config.get("use_enhanced_features", True)
    if not isinstance(enhanced, bool):
        raise ReferenceCheckpointError(f"{config_path}: `use_enhanced_features` must be true or false, got {enhanced!r}.")
    weights, dtype = _read_head_weights(located, folder, base, enhanced)
    inner_t, inner_p = weights["temp_head.mlp.0.weight"].shape[0], weights["top_p_head.mlp.0.weight"].shape[0]
    files = sorted({located[k].path for k in WEIGHT_NAMES} | {config_path}
                   | ({folder / INDEX_NAME} if (folder / INDEX_NAME).is_file() else set()))
    layout = "merged" if any(k.startswith(BASE_PREFIX) for k in located) else "heads-only"
    source = {
        "format": SOURCE_FORMAT,
        "format_version": format_version,
        "repository": REFERENCE_REPOSITORY,
        "layout": layout,
        "dtype": dtype,
        "checkpoint": folder.resolve().name,  # the folder's name only: a manifest travels to other machines
        "files": [{"file": p.name, "sha256": sha256_file(p)} for p in files],
        "config": {key: config.get(key) for key in ("base_model_type", "base_model_name_or_path",
                                                   *(k for k in _FLAG_KEYS_FLAT if k in config),
                                                   "use_enhanced_features")},
        "imported_with": f"deco-middleware {__version__} (deco import-reference)",
    }
    architecture = HeadArchitecture(
        temperature_hidden_size=inner_t, top_p_hidden_size=inner_p, enhanced_features=enhanced,
        max_temperature=REFERENCE_MAX_TEMPERATURE, trained=trained,
    )
    description = description or (
        f"AutoDeco heads ({', '.join(trained)}) imported from the reference checkpoint "
        f"{config.get('base_model_name_or_path') or folder.name} ({layout}, {dtype}), for {base.identity.name}."
    )
    from ..heads.artifact import DecodingHeads, export_heads

    with _staged_folder(out, overwrite) as staging:
        export_heads(weights, staging, base_model=base.identity, architecture=architecture, description=description,
                     source=source)
        DecodingHeads(staging)  # the written folder must load (sha256, IO names, sizes) before it is published
    return ImportReport(directory=out, layout=layout, format_version=format_version, source_dtype=dtype,
                        trained=trained, enhanced_features=enhanced, base_model=base.identity.name,
                        unknown_keys=unknown)


# -- writing a reference checkpoint ---------------------------------------------------------------


def onnx_head_weights(onnx_path: Path) -> tuple[dict[str, np.ndarray], Any]:
    """The eight reference tensors (exact float32) of a heads graph written by ``heads/graph.py``, and the
    loaded ``onnx.ModelProto``."""
    from .._deps import require

    onnx = require("onnx", purpose="Reading the weights of ONNX heads")
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    weights = {}
    for prefix in ("temp_head", "top_p_head"):
        for layer in ("0", "2"):
            weight, bias = f"{prefix}.{layer}.wT", f"{prefix}.{layer}.b"
            if weight not in initializers or bias not in initializers:
                raise ReferenceCheckpointError(
                    f"{onnx_path} lacks the initializers `{weight}` / `{bias}` of the reference architecture's MLPs: "
                    "these heads were not built by deco-middleware's head graph, so they cannot be exported."
                )
            weights[f"{prefix}.mlp.{layer}.weight"] = np.ascontiguousarray(initializers[weight].T, dtype=np.float32)
            weights[f"{prefix}.mlp.{layer}.bias"] = np.ascontiguousarray(initializers[bias], dtype=np.float32)
    return weights, model


def _inexpressible(architecture: HeadArchitecture) -> list[str]:
    """Why these heads cannot be written in the reference format (empty: they can)."""
    reasons = []
    if architecture.name != HEAD_ARCHITECTURE:
        reasons.append(f"head architecture {architecture.name!r} (the reference has only {HEAD_ARCHITECTURE!r})")
    for key in ("temperature_hidden_size", "top_p_hidden_size"):
        if getattr(architecture, key) != REFERENCE_INNER_SIZE:
            reasons.append(f"{key}={getattr(architecture, key)} (the reference's MLPs are {REFERENCE_INNER_SIZE} wide)")
    if architecture.max_temperature != REFERENCE_MAX_TEMPERATURE:
        reasons.append(f"max_temperature={architecture.max_temperature} (the reference computes T = "
                       f"{REFERENCE_MAX_TEMPERATURE:g} * sigmoid)")
    if architecture.temperature_features != "hidden":
        reasons.append(f"temperature_features={architecture.temperature_features!r} (the reference's temperature head "
                       "reads the hidden state alone; it has no input for statistics of the logits)")
    # Options added to the architecture after this exporter was written: only their defaults are the reference.
    known = {"name", "temperature_hidden_size", "top_p_hidden_size", "enhanced_features", "max_temperature", "trained",
             "temperature_features"}
    for key, info in type(architecture).model_fields.items():
        if key not in known and getattr(architecture, key) != info.get_default(call_default_factory=True):
            reasons.append(f"{key}={getattr(architecture, key)!r} (the reference has no such option)")
    for key in sorted(architecture.model_extra or {}):
        reasons.append(f"`{key}` (an option this version does not know)")
    if not architecture.trained:
        reasons.append("no trained head")
    return reasons


def export_reference(
    heads: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str = "default",
    base_model_name_or_path: str | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Write our heads as a reference heads-only checkpoint (``config.json`` + ``model.safetensors``).

    Args:
        heads: a shipped name or a heads folder, of the reference architecture.
        out: the folder to write; written whole or not at all.
        model: ``default`` or the local base model folder the heads were trained for; its config is the
            base of the reference config (the reference reads ``hidden_size`` and loads the LM from it).
        base_model_name_or_path: what the reference should load as the base LM (default: ``model``'s path);
            e.g. a hub id, so the checkpoint works on another machine.
        overwrite: replace ``out`` if it exists.
    """
    from ..heads.artifact import DecodingHeads
    from ..heads.graph import build_heads_graph

    out = Path(out)
    _check_out(out, overwrite)
    loaded = DecodingHeads.from_pretrained(heads)
    architecture = loaded.manifest.heads
    reasons = _inexpressible(architecture)
    if reasons:
        raise ReferenceCheckpointError(
            f"{loaded.directory} cannot be written in the reference format: {'; '.join(reasons)}. Only heads of the "
            "reference architecture (both MLPs 256 wide, T = 2 * sigmoid of the hidden state alone) can be exported; "
            "retrain with the defaults."
        )
    weights, graph = onnx_head_weights(loaded.onnx_path)
    base_identity: BaseModelIdentity = loaded.manifest.base_model
    rebuilt = build_heads_graph(weights, hidden_size=base_identity.hidden_size, vocab_size=base_identity.vocab_size,
                                max_temperature=architecture.max_temperature,
                                enhanced_features=architecture.enhanced_features, io=loaded.manifest.io)
    ours = [node.SerializeToString() for node in graph.graph.node]
    if ours != [node.SerializeToString() for node in rebuilt.graph.node]:
        raise ReferenceCheckpointError(
            f"{loaded.onnx_path} computes something other than the reference heads (its graph differs from the "
            "reference architecture's), so its weights alone would not reproduce it on the reference stack."
        )
    base = local_base_model(model)
    loaded.check_compatible(base.identity)
    if not base.model_type:
        raise ReferenceCheckpointError(f"{base.path}/config.json has no model_type; the reference needs it as base_model_type.")
    hidden = base.identity.hidden_size
    config = {key: value for key, value in base.config.items() if key not in ("architectures", "model_type", "_name_or_path")}
    config.update({
        "model_type": REFERENCE_MODEL_TYPE,
        "architectures": [REFERENCE_ARCHITECTURE],
        "base_model_type": base.model_type,
        "base_model_name_or_path": base_model_name_or_path or str(base.path.resolve()),
        "enable_temperature_head": "temperature" in architecture.trained,
        "enable_top_p_head": "top_p" in architecture.trained,
        "use_enhanced_features": architecture.enhanced_features,
        "temperature_hidden_size": hidden,  # the reference's name for the LM's hidden size, not the MLP width
        "top_p_hidden_size": hidden,
        "deco_middleware": {"version": __version__, "heads_sha256": loaded.manifest.onnx.sha256},
    })
    with _staged_folder(out, overwrite) as staging:
        atomic_write_bytes(staging / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
        # transformers refuses safetensors whose metadata lacks format "pt"; the reference loads with it.
        atomic_write_bytes(staging / HEADS_FILE, safetensors_bytes(weights, metadata={"format": "pt"}))
    return ExportReport(directory=out, trained=list(architecture.trained),
                        enhanced_features=architecture.enhanced_features, base_model_type=base.model_type)


__all__ = [
    "ExportReport",
    "ImportReport",
    "UnknownReferenceKeysWarning",
    "export_reference",
    "import_reference",
]
