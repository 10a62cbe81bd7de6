"""Identity of a Hugging Face causal LM, as recorded in head manifests."""

from __future__ import annotations

from typing import Any

from .._deps import require
from ..fingerprint import METHOD, lm_head_fingerprint, row_indices
from ..manifest import BaseModelIdentity, LMHeadFingerprint

torch = require("torch", purpose="The Hugging Face integration")


def model_identity(model: Any, name: str | None = None) -> BaseModelIdentity:
    """Name, architecture, sizes and LM-head fingerprint of ``model`` (a ``PreTrainedModel``)."""
    lm_head = model.get_output_embeddings()
    if lm_head is None or not hasattr(lm_head, "weight"):
        raise TypeError(f"{type(model).__name__} has no LM head weight; learned decoding needs a causal LM.")
    weight = lm_head.weight
    vocab_size, hidden_size = int(weight.shape[0]), int(weight.shape[1])
    with torch.no_grad():
        rows = weight[torch.as_tensor(row_indices(vocab_size))].float().cpu().numpy()
    config = model.config
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    if name is None:
        name = getattr(config, "_name_or_path", "") or type(model).__name__
    return BaseModelIdentity(
        name=str(name),
        architecture=str(architectures[0]),
        hidden_size=hidden_size,
        vocab_size=vocab_size,
        lm_head_fingerprint=LMHeadFingerprint(method=METHOD, values=lm_head_fingerprint(rows, vocab_size)),
    )
