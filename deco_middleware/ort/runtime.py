"""An exported causal LM on ONNX Runtime, torch-free: prefill, cached steps, hidden state, identity.

Only numpy and onnxruntime are used here (``onnx`` for reading the LM-head weight when the
identity is asked for), so apps can run learned decoding without torch installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..fingerprint import identity_from_lm_head, matrix_row_reader
from ..heads.artifact import DEFAULT_PROVIDER, check_providers
from ..manifest import BaseModelIdentity, LMHeadFingerprint
from .graph import (
    EXPORT_INFO_NAME,
    HIDDEN_STATE_OUTPUT,
    LOGITS_OUTPUT,
    ONNX_MODEL_NAME,
    MissingHiddenStateOutputError,
    lm_head_weight,
    missing_hidden_state_message,
)

_ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass
class StepOutputs:
    """What one forward pass returns: logits ``[batch, seq, vocab]`` and LM-head input ``[batch, seq, hidden]``."""

    logits: np.ndarray
    hidden_states: np.ndarray


@dataclass
class CacheState:
    """The KV cache after a forward pass, with the attention mask covering every cached position."""

    attention_mask: np.ndarray  # [batch, past_length] int64
    past: dict[str, Any]  # input name -> numpy array or OrtValue (with IO binding)

    @property
    def past_length(self) -> int:
        return int(self.attention_mask.shape[1])


def _resolve_onnx_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / ONNX_MODEL_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No ONNX LM at {str(path)!r}. Export one with `deco export-lm MODEL OUT` and pass the OUT folder."
        )
    return path


def position_ids_for(attention_mask: np.ndarray) -> np.ndarray:
    """Position of each token counting only real (unmasked) tokens; padding gets 1, as in transformers."""
    positions = np.cumsum(attention_mask, axis=-1) - 1
    return np.where(attention_mask == 0, 1, positions).astype(np.int64)


class LMHeadIdentity:
    """The LM-head identity of an ONNX model whose weights sit in ``self.onnx_path`` (our ORT export, a
    genai build): sizes and the fingerprint, computed once per loaded model from the memory-mapped matrix."""

    onnx_path: Path
    _fingerprint: LMHeadFingerprint | None = None

    @cached_property
    def lm_head_weight(self) -> np.ndarray:
        """``[vocab, hidden]``, memory-mapped from the weights the runtime runs (read lazily)."""
        return lm_head_weight(self.onnx_path)

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head_weight.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.lm_head_weight.shape[1])

    def _lm_head_identity(self, name: str, architecture: str) -> BaseModelIdentity:
        weight = self.lm_head_weight
        if self._fingerprint is None:  # one pass over the memory-mapped matrix per loaded model
            self._fingerprint = identity_from_lm_head(
                matrix_row_reader(weight), weight.shape[0], weight.shape[1], name="-", architecture="-"
            ).lm_head_fingerprint
        return identity_from_lm_head(matrix_row_reader(weight), weight.shape[0], weight.shape[1],
                                     name=name, architecture=architecture, fingerprint=self._fingerprint)


class OnnxCausalLM(LMHeadIdentity):
    """A causal LM exported by :func:`deco_middleware.ort.export_lm`, run with ONNX Runtime on numpy.

    Args:
        path: the export folder (or its ``model.onnx``).
        provider / providers / provider_options / session_options: as in ``onnxruntime.InferenceSession``;
            an unknown provider fails listing the available ones.
        use_io_binding: keep the KV cache as ONNX Runtime values between steps instead of numpy arrays.

    >>> lm = OnnxCausalLM("exports/smollm2")  # doctest: +SKIP
    >>> outputs, cache = lm.prefill(input_ids, attention_mask)  # doctest: +SKIP
    >>> outputs, cache = lm.step(cache, next_ids)  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        provider: str = DEFAULT_PROVIDER,
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        provider_options: Sequence[dict[str, Any]] | None = None,
        session_options: Any = None,
        use_io_binding: bool = False,
    ) -> None:
        import onnxruntime

        self.onnx_path = _resolve_onnx_path(path)
        self.directory = self.onnx_path.parent
        providers = check_providers(providers if providers is not None else [provider])
        self.session = onnxruntime.InferenceSession(
            str(self.onnx_path), sess_options=session_options, providers=providers, provider_options=provider_options
        )
        outputs = [o.name for o in self.session.get_outputs()]
        if HIDDEN_STATE_OUTPUT not in outputs:
            raise MissingHiddenStateOutputError(missing_hidden_state_message(self.onnx_path, outputs))
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [name for name in inputs if name.startswith("past_key_values.")]
        # present.N.key answers past_key_values.N.key
        self.present_names = [name.replace("past_key_values.", "present.") for name in self.past_names]
        missing = [n for n in ("input_ids", "attention_mask", "position_ids") if n not in inputs]
        if missing or not self.past_names or any(n not in outputs for n in self.present_names):
            raise MissingHiddenStateOutputError(
                f"{self.onnx_path} is not a decoder exported with its KV cache (inputs: {sorted(inputs)}). "
                "Export it with `deco export-lm MODEL OUT`."
            )
        first = inputs[self.past_names[0]]
        self.num_key_value_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.cache_dtype = _ORT_TO_NUMPY.get(first.type, np.float32)
        self.output_names = [LOGITS_OUTPUT, HIDDEN_STATE_OUTPUT, *self.present_names]
        self.use_io_binding = use_io_binding
        config_path = self.directory / "config.json"
        self.config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}
        info_path = self.directory / EXPORT_INFO_NAME
        self.export_info: dict[str, Any] = json.loads(info_path.read_text()) if info_path.is_file() else {}
        self._fingerprint: LMHeadFingerprint | None = None

    # -- identity --------------------------------------------------------------------------------

    def identity(self, name: str | None = None) -> BaseModelIdentity:
        """Sizes and LM-head fingerprint, computed from the weights inside the exported ONNX file."""
        architectures = self.config.get("architectures") or ["unknown"]
        recorded = self.export_info.get("base_model", {}).get("name")
        return self._lm_head_identity(name or recorded or self.directory.name, str(architectures[0]))

    # -- forward passes --------------------------------------------------------------------------

    def empty_cache(self, batch_size: int) -> dict[str, np.ndarray]:
        shape = (batch_size, self.num_key_value_heads, 0, self.head_dim)
        return {name: np.zeros(shape, dtype=self.cache_dtype) for name in self.past_names}

    def forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: dict[str, Any]
    ) -> tuple[StepOutputs, dict[str, Any]]:
        """One pass. ``attention_mask`` covers past and new tokens. Returns outputs and the new cache."""
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
            "position_ids": np.ascontiguousarray(position_ids, dtype=np.int64),
        }
        if self.use_io_binding:
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name, value in past.items():
                if isinstance(value, np.ndarray):
                    binding.bind_cpu_input(name, value)
                else:
                    binding.bind_ortvalue_input(name, value)
            for name in self.output_names:
                binding.bind_output(name)
            self.session.run_with_iobinding(binding)
            values = binding.get_outputs()
            logits, hidden = values[0].numpy(), values[1].numpy()
            present = dict(zip(self.past_names, values[2:]))
        else:
            feeds.update(past)
            values = self.session.run(self.output_names, feeds)
            logits, hidden = values[0], values[1]
            present = dict(zip(self.past_names, values[2:]))
        return StepOutputs(logits=logits, hidden_states=hidden), present

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> tuple[StepOutputs, CacheState]:
        """Run the (left-padded) prompts; returns every position's outputs and the cache."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        if input_ids.ndim != 2:
            raise ValueError(f"`input_ids` must have shape [batch, sequence], got {list(input_ids.shape)}.")
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        if mask.shape != input_ids.shape:
            raise ValueError(f"`attention_mask` shape {list(mask.shape)} differs from `input_ids` {list(input_ids.shape)}.")
        outputs, present = self.forward(input_ids, mask, position_ids_for(mask), self.empty_cache(input_ids.shape[0]))
        return outputs, CacheState(attention_mask=mask, past=present)

    def step(self, cache: CacheState, next_ids: np.ndarray) -> tuple[StepOutputs, CacheState]:
        """Feed one new token per row (``[batch, 1]``) after ``cache``."""
        next_ids = np.asarray(next_ids, dtype=np.int64).reshape(-1, 1)
        mask = np.concatenate([cache.attention_mask, np.ones_like(next_ids)], axis=1)
        positions = position_ids_for(mask)[:, -1:]
        outputs, present = self.forward(next_ids, mask, positions, cache.past)
        return outputs, CacheState(attention_mask=mask, past=present)

    def __repr__(self) -> str:
        return f"OnnxCausalLM({str(self.directory)!r})"
