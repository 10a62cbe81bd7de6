"""vLLM model classes that run the decoding heads in ``compute_logits``.

Each wrapper subclasses vLLM's own class for the architecture and changes two things:

- ``load_weights``: after vLLM loaded the checkpoint, the heads are chosen (``DECO_VLLM_HEADS``:
  unset or ``default`` = the shipped heads whose manifest fits this model, a shipped name or a
  folder = those heads, which must fit, ``off`` = none) and checked against the model with the
  manifest's checks: hidden size, vocabulary size and the LM-head fingerprint, computed from the
  weights vLLM loaded. Their weights come from the ONNX artifact's initializers and are held as
  buffers, not parameters (vLLM checks that every parameter came from the checkpoint).
- ``compute_logits``: returns vLLM's logits unchanged, and runs the heads on the rows that opted
  in (see :mod:`.runtime`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from .._deps import require

require("vllm", purpose="The vLLM plugin", extra="vllm")  # a clean MissingDependencyError, not ModuleNotFoundError

import torch  # noqa: E402

from ..errors import IncompatibleHeadsError, UnsupportedArchitectureError
from ..fingerprint import identity_from_lm_head
from ..heads.artifact import DecodingHeads, heads_for_identity
from ..heads.torch_artifact import torch_heads_from_artifact
from ..manifest import BaseModelIdentity
from . import HEADS_ENV
from .runtime import STEP, logger

OFF_VALUES = ("off", "none", "0", "false")


def vllm_model_identity(model: Any, name: str, architecture: str) -> BaseModelIdentity:
    """Sizes and LM-head fingerprint of a loaded vLLM causal LM (its ``lm_head``, tied or not)."""
    config = model.config
    vocab_size, hidden_size = int(config.vocab_size), int(config.hidden_size)
    weight = model.lm_head.weight
    if weight.shape[0] < vocab_size or weight.shape[1] != hidden_size:
        raise UnsupportedArchitectureError(
            f"The LM head of `{name}` has shape {list(weight.shape)}, not [>= {vocab_size}, {hidden_size}]: it is "
            "split across tensor-parallel ranks. The plugin needs tensor_parallel_size=1."
        )

    def read_rows(start: int, stop: int) -> np.ndarray:
        # Only the first `vocab_size` rows: vLLM pads its LM head to a multiple of 64 rows.
        with torch.no_grad():
            return weight[start:stop].float().cpu().numpy()

    # The one identity every backend computes (fingerprint.identity_from_lm_head), here from the weights vLLM loaded.
    return identity_from_lm_head(read_rows, vocab_size, hidden_size, name=name, architecture=architecture)


def load_heads_for(identity: BaseModelIdentity, choice: str | None = None) -> DecodingHeads | None:
    """The heads ``DECO_VLLM_HEADS`` (or ``choice``) names for this model; ``None`` when switched off or
    when no shipped heads fit and none were named. Named heads that do not fit raise
    :class:`IncompatibleHeadsError`."""
    choice = os.environ.get(HEADS_ENV, "default") if choice is None else choice
    if choice.strip().lower() in OFF_VALUES:
        return None
    if choice == "default":
        try:
            return heads_for_identity("default", identity)
        except FileNotFoundError as error:
            logger.warning("deco_middleware.vllm: %s Requests with extra_args['deco'] will not be served.", error)
            return None
    heads = DecodingHeads.from_pretrained(choice)
    heads.check_compatible(identity)
    return heads


class DecoHeadsMixin:
    """Put first in the bases: ``class DecoLlamaForCausalLM(DecoHeadsMixin, LlamaForCausalLM)``."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)  # type: ignore[call-arg]
        model_config = vllm_config.model_config
        self._deco_name = str(getattr(model_config, "served_model_name", None) or model_config.model)
        architectures = getattr(model_config.hf_config, "architectures", None) or [type(self).__name__]
        self._deco_architecture = str(architectures[0])

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = super().load_weights(weights)  # type: ignore[misc]
        identity = vllm_model_identity(self, self._deco_name, self._deco_architecture)
        try:
            heads = load_heads_for(identity)
        except IncompatibleHeadsError:
            STEP.disable("the heads do not fit this model")
            raise
        if heads is None:
            STEP.disable(f"no heads are loaded for `{identity.name}` ({HEADS_ENV}={os.environ.get(HEADS_ENV, 'default')})")
        else:
            STEP.install(heads, torch_heads_from_artifact(heads, device=self.lm_head.weight.device))
            logger.info("deco_middleware.vllm: heads %s attached to %s", heads.directory, identity.name)
        return loaded

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        logits = super().compute_logits(hidden_states)  # type: ignore[misc]
        STEP.capture(hidden_states, logits)
        return logits


def _wrap(base: type, name: str) -> type:
    # Same class name as the base: vLLM reads interface flags and names off the class.
    return type(name, (DecoHeadsMixin, base), {"__module__": __name__, "__qualname__": name})


from vllm.model_executor.models.llama import LlamaForCausalLM as _Llama  # noqa: E402
from vllm.model_executor.models.mistral import MistralForCausalLM as _Mistral  # noqa: E402
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM as _Qwen2  # noqa: E402
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM as _Qwen3  # noqa: E402

DecoLlamaForCausalLM = _wrap(_Llama, "DecoLlamaForCausalLM")
DecoMistralForCausalLM = _wrap(_Mistral, "DecoMistralForCausalLM")
DecoQwen2ForCausalLM = _wrap(_Qwen2, "DecoQwen2ForCausalLM")
DecoQwen3ForCausalLM = _wrap(_Qwen3, "DecoQwen3ForCausalLM")

__all__ = [
    "HEADS_ENV",
    "DecoHeadsMixin",
    "DecoLlamaForCausalLM",
    "DecoMistralForCausalLM",
    "DecoQwen2ForCausalLM",
    "DecoQwen3ForCausalLM",
    "load_heads_for",
    "vllm_model_identity",
]
