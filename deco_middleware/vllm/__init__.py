"""Learned decoding in a stock vLLM (V1 engine): a plugin, no fork.

Install ``deco-middleware[vllm]``; two entry points load it in every vLLM process:

- ``vllm.general_plugins`` -> :func:`register`: ``ModelRegistry.register_model`` maps the supported
  architectures (:data:`SUPPORTED_ARCHITECTURES`) to wrappers of vLLM's own classes
  (:mod:`.models`) whose ``compute_logits`` also runs the heads.
- ``vllm.logits_processors`` -> :class:`~.processor.DecoLogitsProcessor`, which sees every
  request's ``SamplingParams`` and applies the learned step to the requests that opt in with
  ``SamplingParams(extra_args={"deco": {...}})`` (REST: ``"vllm_xargs": {"deco": ...}``, where
  values arrive as strings: ``"true"`` / ``"false"`` or a JSON object string, see :mod:`.settings`).

How the rows line up. No logits-processor interface sees hidden states, and the model never sees
sampling parameters, so the two halves meet in :data:`.runtime.STEP`, inside the worker process
that owns both the model and the sampler. In one step of vLLM's V1 model runner:

1. The persistent batch is updated and ``update_state(batch_update)`` is called on the processor
   before the forward pass. Batch row ``i`` is the ``i``-th request of the persistent batch; the
   processor keeps ``{row: settings}`` through vLLM's added / removed / moved updates and publishes
   the batch size and the sorted opted-in rows.
2. The forward pass ends with ``compute_logits(hidden_states[logits_indices])``. Without
   speculative decoding ``logits_indices`` holds one index per request, the last scheduled token
   of each, in persistent-batch order: row ``i`` of the hidden states and of the logits is batch
   row ``i``. The wrapper runs the torch heads on the published rows (final-norm hidden state and
   raw LM-head logits, before any mask) and keeps ``T_pred, P_pred``.
3. The sampler calls ``apply(logits)`` with the same ``[num_reqs, vocab]`` rows (after
   allowed-token / bad-word masks and the built-in logit-bias and min-tokens processors). For the
   opted-in rows the processor runs ``decode_step`` (resolve the request's settings, divide by T,
   top-k / min-p, nucleus), draws one token per row from the request's own seeded stream and
   writes a one-token distribution; vLLM's own sampler then picks that token whatever its
   temperature / top-p / top-k / min-p, so nothing stacks. Other rows are untouched.
4. Prompt logprobs call ``compute_logits`` again after sampling, on prompt positions; nothing is
   pending then, so those logits pass through unchanged (and were never changed: ``compute_logits``
   returns vLLM's logits as they are).

Model Runner V2 (upstream's default on GPU) loads the same entry point; the processor implements its
interface too (``add_request`` / ``apply_staged_writes`` / ``apply(logits, ctx)``): the heads run on
every sampled row and ``apply`` keeps the opted-in ones by request slot (see :mod:`.runtime`).

Speculative decoding is not supported: the V1 runner then builds no custom logits processors at all,
and under V2 a step with several rows per request is left to vLLM's sampler (logged).
Penalties (presence / frequency / repetition) on a learned request are refused, because vLLM
applies them after logits processors, i.e. after the learned temperature (the method puts them
first). Per-token T and P: give the request a ``trace_id`` in ``extra_args["deco"]`` and start
the engine with ``DECO_VLLM_TRACE=/path/trace.jsonl``; :func:`read_trace` returns them.
"""

from __future__ import annotations

import os

from .settings import EXTRA_ARGS_KEY, RequestDecoding, request_decoding
from .trace import TRACE_ENV, RequestTrace, read_trace

HEADS_ENV = "DECO_VLLM_HEADS"
# Architecture name in a model's config.json -> "module:class" of the wrapper registered for it.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "deco_middleware.vllm.models:DecoLlamaForCausalLM",
    "LLaMAForCausalLM": "deco_middleware.vllm.models:DecoLlamaForCausalLM",
    "MistralForCausalLM": "deco_middleware.vllm.models:DecoMistralForCausalLM",
    "Qwen2ForCausalLM": "deco_middleware.vllm.models:DecoQwen2ForCausalLM",
    "Qwen3ForCausalLM": "deco_middleware.vllm.models:DecoQwen3ForCausalLM",
}


def heads_requested() -> bool:
    """True when the operator named heads explicitly (``DECO_VLLM_HEADS`` set, and not ``default``/``off``)."""
    value = os.environ.get(HEADS_ENV, "default").strip().lower()
    return value not in ("default", "off", "none", "0", "false", "")


def check_architecture(architecture: str) -> bool:
    """Whether the plugin wraps ``architecture``. When the operator named heads explicitly
    (``DECO_VLLM_HEADS``) for a model it cannot wrap, the engine must not start without them."""
    if architecture in SUPPORTED_ARCHITECTURES:
        return True
    if heads_requested():
        from ..errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError(
            f"The model architecture `{architecture}` is not one deco_middleware.vllm can wrap; supported: "
            f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}. Unset {HEADS_ENV} to serve this model without heads."
        )
    return False


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the wrappers (lazily, by "module:class")."""
    if os.environ.get(HEADS_ENV, "").strip().lower() in ("off", "none", "0", "false"):
        return
    from vllm import ModelRegistry

    for architecture, target in SUPPORTED_ARCHITECTURES.items():
        ModelRegistry.register_model(architecture, target)


__all__ = [
    "EXTRA_ARGS_KEY",
    "HEADS_ENV",
    "RequestDecoding",
    "RequestTrace",
    "SUPPORTED_ARCHITECTURES",
    "TRACE_ENV",
    "check_architecture",
    "heads_requested",
    "read_trace",
    "register",
    "request_decoding",
]
