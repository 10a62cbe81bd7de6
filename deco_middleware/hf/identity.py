"""Identity of a Hugging Face causal LM, as recorded in head manifests."""

from __future__ import annotations

from typing import Any

from .._deps import require
from ..fingerprint import RowReader, identity_from_lm_head, legacy_rows_values, lm_head_fingerprint
from ..manifest import BaseModelIdentity, LMHeadFingerprint

torch = require("torch", purpose="The Hugging Face integration")

# The fingerprint is kept on the LM-head tensor itself, valid while the tensor keeps its storage, dtype
# and version counter (every in-place update, an optimizer step included, bumps the counter): attaching
# heads to the same model again costs an attribute lookup instead of a pass over the whole matrix.
_CACHE_ATTRIBUTE = "_deco_lm_head_fingerprint"


def _lm_head_weight(model: Any) -> Any:
    lm_head = model.get_output_embeddings()
    if lm_head is None or not hasattr(lm_head, "weight"):
        raise TypeError(f"{type(model).__name__} has no LM head weight; learned decoding needs a causal LM.")
    return lm_head.weight


def _row_reader(weight: Any) -> RowReader:
    def read_rows(start: int, stop: int):
        with torch.no_grad():
            return weight[start:stop].detach().float().cpu().numpy()

    return read_rows


def model_identity(model: Any, name: str | None = None, *, use_cache: bool = True) -> BaseModelIdentity:
    """Name, architecture, sizes and LM-head fingerprint of ``model`` (a ``PreTrainedModel``)."""
    weight = _lm_head_weight(model)
    vocab_size, hidden_size = int(weight.shape[0]), int(weight.shape[1])
    config = model.config
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    if name is None:
        name = getattr(config, "_name_or_path", "") or type(model).__name__
    try:
        version = weight._version
    except RuntimeError:  # inference tensors (e.g. Optimum's LM-head copy) keep no version counter: no cache
        version, use_cache = None, False
    key = (weight.data_ptr(), weight.dtype, tuple(weight.shape), str(weight.device), version)
    cached = getattr(weight, _CACHE_ATTRIBUTE, None) if use_cache else None
    if cached is not None and cached[0] == key:
        fingerprint: LMHeadFingerprint = cached[1]
    else:
        fingerprint = lm_head_fingerprint(_row_reader(weight), vocab_size, hidden_size)
        if use_cache:
            setattr(weight, _CACHE_ATTRIBUTE, (key, fingerprint))
    return identity_from_lm_head(
        _row_reader(weight), vocab_size, hidden_size, name=str(name), architecture=str(architectures[0]),
        fingerprint=fingerprint,
    )


def legacy_lm_head_values(model: Any) -> list[float]:
    """The retired 16-row fingerprint values of ``model`` (re-stamping old manifests; stable cache keys)."""
    weight = _lm_head_weight(model)
    return legacy_rows_values(_row_reader(weight), int(weight.shape[0]))
