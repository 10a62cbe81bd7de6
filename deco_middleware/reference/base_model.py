"""The identity of a base model folder (sizes, LM-head fingerprint), read without torch.

``--model`` of ``deco import-reference`` names the model the imported heads will attach to. Its
``config.json`` and the LM-head rows inside its safetensors give exactly the identity
:func:`deco_middleware.hf.identity.model_identity` records for the loaded model, so heads
imported here pass the same compatibility check as heads trained with ``deco train``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointFormatError
from ..fingerprint import lm_head_fingerprint
from ..manifest import BaseModelIdentity, LMHeadFingerprint
from .safetensors_io import PICKLE_SUFFIXES, SafetensorsFile, pickle_refusal

INDEX_NAME = "model.safetensors.index.json"
MAX_JSON_BYTES = 64 * 1024 * 1024  # config and index files are kB to a few MB
# Where tied models keep the matrix their LM head reuses, by architecture family.
_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")


def read_json(path: Path, *, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"No {path.name} in {path.parent}: {what}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise CheckpointFormatError(f"{path} is {path.stat().st_size} bytes, too large for a {path.name}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointFormatError(f"{path} is not valid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return data


def weight_files(folder: Path) -> dict[str, SafetensorsFile]:
    """Every tensor name in ``folder`` and the opened safetensors file holding it.

    With ``model.safetensors.index.json`` the shards it lists are read (and must exist);
    otherwise every ``*.safetensors`` file in the folder, as the reference's loader does.
    A folder with only pickle checkpoints is refused.
    """
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        weight_map = read_json(index_path, what="").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointFormatError(f"{index_path} has no valid `weight_map` (tensor name -> shard file).")
        shard_names = sorted(set(weight_map.values()))
        for name in shard_names:
            if Path(name).name != name:
                raise CheckpointFormatError(f"{index_path} names shard {name!r}, which is not a file next to it.")
            if not (folder / name).is_file():
                raise CheckpointFormatError(
                    f"{index_path} lists shard {name}, which is missing from {folder}: the download is incomplete."
                )
    else:
        shard_names = sorted(p.name for p in folder.glob("*.safetensors"))
    if not shard_names:
        pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []
        if pickles:
            raise pickle_refusal(pickles[0], "a pickle-based checkpoint, and the folder has no safetensors")
        raise FileNotFoundError(f"No *.safetensors weights in {folder}.")
    located: dict[str, SafetensorsFile] = {}
    for name in shard_names:
        shard = SafetensorsFile(folder / name)
        for key in shard.keys():
            if key in located:
                raise CheckpointFormatError(f"Tensor `{key}` is in both {located[key].path.name} and {name} in {folder}.")
            located[key] = shard
    return located


def lm_head_key(located: dict[str, Any], config: dict[str, Any], *, prefix: str = "") -> str:
    """Name of the LM-head matrix (or, for tied models, the input embedding it reuses)."""
    if f"{prefix}lm_head.weight" in located:
        return f"{prefix}lm_head.weight"
    if config.get("tie_word_embeddings", True):
        for suffix in _EMBEDDING_SUFFIXES:
            matches = sorted(k for k in located if k.startswith(prefix) and k.endswith(suffix))
            if matches:
                return matches[0]
    raise CheckpointFormatError(
        f"Found no `{prefix}lm_head.weight` (nor a tied input embedding) among the weights; cannot fingerprint the model."
    )


def fingerprint_of(shard: SafetensorsFile, key: str) -> tuple[LMHeadFingerprint, int, int]:
    shape = shard.shape(key)
    if len(shape) != 2:
        raise CheckpointFormatError(f"{shard.path}: `{key}` has shape {list(shape)}, expected [vocab, hidden].")
    vocab_size, hidden_size = shape
    # The whole LM head, read row block by row block (the sketch covers every row).
    fingerprint = lm_head_fingerprint(
        lambda start, stop: shard.read(key, rows=np.arange(start, stop)), vocab_size, hidden_size
    )
    return fingerprint, hidden_size, vocab_size


@dataclass(frozen=True)
class LocalBaseModel:
    """A base model folder: its path, ``config.json`` and identity."""

    path: Path
    config: dict[str, Any]
    identity: BaseModelIdentity

    @property
    def model_type(self) -> str | None:
        value = self.config.get("model_type")
        return str(value) if value else None


def local_base_model(model: str) -> LocalBaseModel:
    """``default`` (the embedded SmolLM2-135M-Instruct) or a local Hugging Face model folder."""
    if model == "default":
        from ..default_model import DEFAULT_MODEL_NAME, ensure_default_model

        path, name = ensure_default_model(), DEFAULT_MODEL_NAME
    else:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"--model {model!r} is not a folder. Pass `default` or a local model folder (config.json + safetensors)."
            )
        name = path.resolve().name
    config = read_json(path / "config.json", what="--model must be a Hugging Face model folder.")
    located = weight_files(path)
    key = lm_head_key(located, config)
    fingerprint, hidden_size, vocab_size = fingerprint_of(located[key], key)
    architectures = config.get("architectures") or ["unknown"]
    identity = BaseModelIdentity(
        name=name, architecture=str(architectures[0]), hidden_size=hidden_size, vocab_size=vocab_size,
        lm_head_fingerprint=fingerprint,
    )
    return LocalBaseModel(path=path, config=config, identity=identity)
