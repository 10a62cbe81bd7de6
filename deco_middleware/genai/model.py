"""An onnxruntime-genai model driven one step at a time, so that learned decoding picks every token.

:class:`GenaiCausalLM` gives the onnxruntime-genai ``Generator`` the two-call shape our torch-free loop
drives (``prefill`` / ``step`` returning logits and the final-norm hidden state), so
:class:`~deco_middleware.ort.OnnxGenerator` runs unchanged on it: the same per-row decoding step, the
same seeded draw, the same EOS / stop-string / streaming rules. No torch is needed at run time.

Each step, in this order (the order matters):

1. ``get_logits()`` first: it runs the model on the pending tokens. Reading the hidden state before it
   returns the previous step's value (one step stale).
2. ``get_output("hidden_states")``: the final-norm output the logits were computed from.
3. the loop decides T and P and draws its token with our seeded per-row draw;
4. ``set_logits`` with a distribution that puts all its mass on that token (0 there, -inf elsewhere),
   and ``generate_next_token()``: genai's own search (greedy here) can only pick our token, which is
   checked.

Two facts about onnxruntime-genai 0.18 measured on this machine shape the prefill: its batched prompts
are padded on the *right* with its ``pad_token_id`` (left-padded rows came out with logits off by 8-13),
and its ``hidden_states`` output covers every prompt position, so each row's hidden state is read at
that row's last real token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import GenaiModelError, MissingHiddenStateOutputError
from ..manifest import BaseModelIdentity, LMHeadFingerprint
from ..ort.runtime import LMHeadIdentity, StepOutputs

GENAI_CONFIG_NAME = "genai_config.json"
GENAI_EXPORT_INFO_NAME = "deco_genai.json"
GENAI_HIDDEN_STATE_OUTPUT = "hidden_states"
# fp32 builder output vs h @ W^T of its own hidden state: float rounding only (2.7e-5 measured on the
# default model); a builder that wires the LM head to the wrong matrix is off by whole units.
LM_HEAD_ATOL = 1e-3
# A fixed short probe (ids 1..8 exist in every vocabulary we support) for the load-time LM-head check.
_PROBE_IDS = np.arange(1, 9, dtype=np.int32)


def fix_command(model: str | os.PathLike[str] = "MODEL", out: str | os.PathLike[str] = "OUT") -> str:
    return f"deco export-lm {model} {out} --format genai --overwrite"


def _genai() -> Any:
    return require("onnxruntime_genai", purpose="The onnxruntime-genai backend")


@dataclass
class GenaiCache:
    """The genai ``Generator`` holds the KV cache itself; this is what the loop hands back to ``step``."""

    generator: Any
    batch_size: int


class GenaiCausalLM(LMHeadIdentity):
    """A folder built by ``deco export-lm --format genai`` (or genai's builder with hidden states), on genai.

    Args:
        path: the genai model folder (``genai_config.json``, ``model.onnx``).
        check_lm_head: run a short probe at load and refuse a model whose logits are not ``h @ W^T`` of its
            own hidden state (the heads read that hidden state and the logits; both must agree).
        max_length: genai's ``max_length`` (prompt + new tokens); default: the model's context length.

    >>> from deco_middleware.ort import OnnxGenerator  # doctest: +SKIP
    >>> generator = OnnxGenerator(GenaiCausalLM("exports/smollm2-genai"), "smollm2-135m-instruct")  # doctest: +SKIP
    """

    backend_name = "genai"

    def __init__(
        self, path: str | os.PathLike[str], *, check_lm_head: bool = True, max_length: int | None = None
    ) -> None:
        og = _genai()
        self.directory = Path(path)
        config_path = self.directory / GENAI_CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(
                f"No onnxruntime-genai model at {str(self.directory)!r} (no {GENAI_CONFIG_NAME}). "
                f"Build one with `{fix_command()}`."
            )
        self.genai_config: dict[str, Any] = json.loads(config_path.read_text())
        decoder = self.genai_config.get("model", {}).get("decoder", {})
        self.onnx_path = self.directory / str(decoder.get("filename", "model.onnx"))
        outputs = self._graph_outputs()
        if GENAI_HIDDEN_STATE_OUTPUT not in outputs:
            raise MissingHiddenStateOutputError(
                f"The onnxruntime-genai model at {str(self.directory)!r} has no `{GENAI_HIDDEN_STATE_OUTPUT}` output "
                f"(outputs: {', '.join(outputs[:4])}{', ...' if len(outputs) > 4 else ''}), so the decoding heads "
                f"cannot read the LM's hidden state. Rebuild it with `{fix_command()}` (genai's builder with "
                "`--extra_options include_hidden_states=true`)."
            )
        info_path = self.directory / GENAI_EXPORT_INFO_NAME
        self.export_info: dict[str, Any] = json.loads(info_path.read_text()) if info_path.is_file() else {}
        model_config = self.genai_config.get("model", {})
        self.pad_token_id = int(model_config.get("pad_token_id", 0))
        eos = model_config.get("eos_token_id", [])
        self.eos_token_ids = {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}
        self.context_length = int(model_config.get("context_length", 2048))
        self.max_length = max_length
        self._fingerprint: LMHeadFingerprint | None = None
        self.model = og.Model(str(self.directory))
        if check_lm_head:
            self.check_lm_head()

    @property
    def config(self) -> dict[str, Any]:
        """The config keys the shared loop code reads from an LM (as ``OnnxCausalLM.config`` carries them).

        ``max_position_embeddings`` is the positions a generator here can hold: genai's ``max_length`` when
        one was given, else the model's ``context_length`` (so too-long prompts are refused up front).
        """
        return {"max_position_embeddings": self.max_length or self.context_length}

    def _graph_outputs(self) -> list[str]:
        onnx = require("onnx", purpose="Reading an onnxruntime-genai model")
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"{self.directory} has no {self.onnx_path.name}; build it with `{fix_command()}`.")
        graph = onnx.load(str(self.onnx_path), load_external_data=False).graph
        return [output.name for output in graph.output]

    # -- identity --------------------------------------------------------------------------------

    def identity(self, name: str | None = None) -> BaseModelIdentity:
        """Sizes and LM-head fingerprint of the weights inside the genai model (what the heads are checked against)."""
        recorded = self.export_info.get("base_model", {})
        architecture = recorded.get("architecture") or self.genai_config.get("model", {}).get("type", "unknown")
        return self._lm_head_identity(name or recorded.get("name") or self.directory.name, str(architecture))

    def lm_head_residual(self, logits: np.ndarray, hidden: np.ndarray) -> float:
        """max |logits - h @ W^T| over the given rows (``[rows, vocab]``, ``[rows, hidden]``)."""
        expected = np.asarray(hidden, dtype=np.float32) @ np.asarray(self.lm_head_weight, dtype=np.float32).T
        return float(np.abs(np.asarray(logits, dtype=np.float32) - expected).max())

    def check_lm_head(self, atol: float = LM_HEAD_ATOL) -> float:
        """Refuse a model whose logits are not its LM head applied to its hidden state; returns the residual.

        The heads are trained on ``(h, logits = h @ W^T)`` pairs. A builder that, for example, mishandles tied
        embeddings produces logits from another matrix, and learned decoding would then be silently wrong.
        """
        outputs, _ = self.prefill(_PROBE_IDS[None, :], np.ones((1, len(_PROBE_IDS)), dtype=np.int64))
        residual = self.lm_head_residual(outputs.logits[:, -1, :], outputs.hidden_states[:, -1, :])
        if not residual <= atol:  # also catches NaN
            raise GenaiModelError(
                f"The onnxruntime-genai model at {str(self.directory)!r} computes logits that are not its LM head "
                f"applied to its `{GENAI_HIDDEN_STATE_OUTPUT}` output (max |logits - h @ W^T| = {residual:.3g} > "
                f"{atol:g}); the builder probably wired the LM head wrongly (seen with tied embeddings). Learned "
                f"decoding needs both to agree. Rebuild with `{fix_command()}`, which validates this against torch."
            )
        return residual

    # -- forward passes --------------------------------------------------------------------------

    def _generator(self, batch_size: int, longest: int) -> Any:
        og = _genai()
        params = og.GeneratorParams(self.model)
        max_length = self.max_length or self.context_length
        if max_length <= longest:
            raise ValueError(f"The longest prompt ({longest} tokens) does not fit `max_length={max_length}`.")
        # Greedy search over the one-token distribution we hand over in `step`: genai picks our token.
        # Without a known length, the KV cache grows per step instead of being reserved at max_length.
        params.set_search_options(
            batch_size=batch_size, max_length=max_length, do_sample=False, num_beams=1,
            past_present_share_buffer=self.max_length is not None,
        )
        return og.Generator(self.model, params)

    def _read(self, generator: Any, last: np.ndarray | None) -> StepOutputs:
        logits = np.asarray(generator.get_logits(), dtype=np.float32)  # first: this call runs the model
        hidden = np.asarray(generator.get_output(GENAI_HIDDEN_STATE_OUTPUT), dtype=np.float32)
        batch = logits.shape[0]
        logits = logits.reshape(batch, -1)[:, None, :]
        hidden = hidden.reshape(batch, -1, hidden.shape[-1])
        hidden = hidden[:, -1:, :] if last is None else hidden[np.arange(batch), last][:, None, :]
        return StepOutputs(logits=logits, hidden_states=np.ascontiguousarray(hidden))

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> tuple[StepOutputs, GenaiCache]:
        """Run the prompts (left-padded as the loop gives them, re-padded on the right for genai).

        Returns the last real position's logits and hidden state per row (``[batch, 1, ...]``).
        """
        input_ids = np.asarray(input_ids, dtype=np.int64)
        if input_ids.ndim != 2:
            raise ValueError(f"`input_ids` must have shape [batch, sequence], got {list(input_ids.shape)}.")
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        if mask.shape != input_ids.shape:
            raise ValueError(f"`attention_mask` shape {list(mask.shape)} differs from `input_ids` {list(input_ids.shape)}.")
        batch, longest = input_ids.shape
        rows = [input_ids[row][mask[row].astype(bool)] for row in range(batch)]
        lengths = np.array([len(r) for r in rows])
        if lengths.min() < 1:
            raise ValueError("Every prompt needs at least one token id (got an empty prompt).")
        if batch > 1 and lengths.min() < longest:
            # genai finds where a right-padded row ends from its pad id: a prompt ending in it would be cut.
            clash = [row for row, r in enumerate(rows) if int(r[-1]) == self.pad_token_id]
            if clash:
                raise ValueError(
                    f"Prompt row {clash[0]} ends with token id {self.pad_token_id}, onnxruntime-genai's padding id for "
                    f"this model, so genai cannot tell where it ends in a batch of unequal lengths. Run that prompt "
                    f"alone, or set another `pad_token_id` in {self.directory / GENAI_CONFIG_NAME}."
                )
        padded = np.full((batch, longest), self.pad_token_id, dtype=np.int32)
        for row, tokens in enumerate(rows):
            padded[row, : len(tokens)] = tokens
        generator = self._generator(batch, longest)
        generator.append_tokens(padded)
        last = None if lengths.min() == longest else lengths - 1
        return self._read(generator, last), GenaiCache(generator=generator, batch_size=batch)

    def step(self, cache: GenaiCache, next_ids: np.ndarray) -> tuple[StepOutputs, GenaiCache]:
        """Make genai take ``next_ids`` (one per row) as its next tokens, then run the model on them."""
        next_ids = np.asarray(next_ids, dtype=np.int64).reshape(-1)
        generator = cache.generator
        forced = np.full((cache.batch_size, self.vocab_size), -np.inf, dtype=np.float32)
        forced[np.arange(cache.batch_size), next_ids] = 0.0
        generator.set_logits(forced)
        generator.generate_next_token()
        taken = np.asarray(generator.get_next_tokens(), dtype=np.int64).reshape(-1)
        # A row genai itself ended (it saw one of its EOS ids) gets genai's padding from then on; the loop
        # has ended that row too and ignores its output. Any other difference is a bug worth stopping for.
        wrong = (taken != next_ids) & (taken != self.pad_token_id)
        if wrong.any():
            row = int(np.flatnonzero(wrong)[0])
            raise RuntimeError(
                f"onnxruntime-genai took token {int(taken[row])} for row {row} instead of {int(next_ids[row])}, "
                "the one learned decoding chose; its search options must not change the handed-over distribution."
            )
        return self._read(generator, None), cache

    def __repr__(self) -> str:
        return f"GenaiCausalLM({str(self.directory)!r})"


def is_genai_model(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / GENAI_CONFIG_NAME).is_file()


def recorded_parity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parity numbers ``deco export-lm --format genai`` measured and recorded (empty when absent)."""
    info = Path(path) / GENAI_EXPORT_INFO_NAME
    return json.loads(info.read_text()).get("parity", {}) if info.is_file() else {}

