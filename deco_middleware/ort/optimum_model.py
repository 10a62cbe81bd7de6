"""Optimum's ``ORTModelForCausalLM`` with the hidden state surfaced at every step.

The Hugging Face integration (:mod:`deco_middleware.hf`) reads the hidden state through a forward
hook on ``model.get_output_embeddings()``. An ONNX model has no torch LM-head module, so
:class:`OnnxLMHead` stands in for it: it offers the same ``register_forward_hook`` contract (called
with the LM-head input and the logits after every forward pass) and a ``weight`` read from the
exported file (for the compatibility fingerprint). With it, ``HiddenStateTap``, the processor pair,
``LearnedDecoding.attach`` and ``pipeline("text-generation")`` work unchanged, with IO binding on or off.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

from .._deps import require
from ..heads.artifact import DEFAULT_PROVIDER, check_providers
from .graph import HIDDEN_STATE_OUTPUT, MissingHiddenStateOutputError, lm_head_weight, missing_hidden_state_message

torch = require("torch", purpose="The Optimum ONNX Runtime model", extra="ort")
require("optimum.onnxruntime", purpose="The Optimum ONNX Runtime model (`deco-middleware[ort]`)")
from optimum.onnxruntime import ORTModelForCausalLM  # noqa: E402


class _HookHandle:
    def __init__(self, hooks: dict[int, Any], key: int) -> None:
        self._hooks, self._key = hooks, key

    def remove(self) -> None:
        self._hooks.pop(self._key, None)


class OnnxLMHead:
    """Stand-in for the LM-head module of an ONNX LM (what ``get_output_embeddings()`` returns).

    Hooks registered with :meth:`register_forward_hook` are called after each forward pass exactly as
    torch calls LM-head hooks: ``hook(module, (hidden_states,), logits)`` or, with ``with_kwargs=True``,
    ``hook(module, (hidden_states,), {}, logits)``, with ``hidden_states`` ``[batch, seq, hidden]``.
    """

    def __init__(self, onnx_path: os.PathLike[str] | str) -> None:
        self.onnx_path = onnx_path
        self._hooks: dict[int, tuple[Callable[..., Any], bool]] = {}
        self._ids = itertools.count()

    @cached_property
    def weight(self) -> torch.Tensor:
        """``[vocab, hidden]`` LM-head weight, memory-mapped from the export (pages are read when indexed)."""
        return torch.from_numpy(lm_head_weight(self.onnx_path))

    def register_forward_hook(self, hook: Callable[..., Any], *, with_kwargs: bool = False) -> _HookHandle:
        key = next(self._ids)
        self._hooks[key] = (hook, with_kwargs)
        return _HookHandle(self._hooks, key)

    def _call_hooks(self, hidden_states: torch.Tensor, logits: torch.Tensor) -> None:
        for hook, with_kwargs in list(self._hooks.values()):
            if with_kwargs:
                hook(self, (hidden_states,), {}, logits)
            else:
                hook(self, (hidden_states,), logits)


class ORTModelForCausalLMWithHiddenStates(ORTModelForCausalLM):
    """``ORTModelForCausalLM`` for graphs exported by ``deco export-lm``: the hidden state reaches the heads.

    Load with :meth:`from_pretrained` on the export folder (``export=False``). Everything else is
    Optimum's: ``generate()``, pipelines, ``use_io_binding``, providers and session options.

    >>> model = ORTModelForCausalLMWithHiddenStates.from_pretrained("exports/smollm2")  # doctest: +SKIP
    >>> with LearnedDecoding("smollm2-135m-instruct").attach(model) as session:  # doctest: +SKIP
    ...     out = session.generate(**inputs, max_new_tokens=32)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if HIDDEN_STATE_OUTPUT not in self.output_names:
            raise MissingHiddenStateOutputError(missing_hidden_state_message(self.path, list(self.output_names)))
        self._lm_head = OnnxLMHead(self.path)
        self._pending_hidden: Any = None

    @classmethod
    def from_pretrained(cls, model_id: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Optimum's loader, with the provider checked first so an unknown one lists the available ones."""
        if kwargs.get("export"):
            raise ValueError(
                "`export=True` would run Optimum's plain export, which lacks the hidden-state output. Export with "
                "`deco export-lm MODEL OUT` (or `deco_middleware.ort.export_lm`) and load the OUT folder."
            )
        providers: Sequence[Any] | None = kwargs.get("providers")
        check_providers(providers if providers is not None else [kwargs.get("provider", DEFAULT_PROVIDER)])
        return super().from_pretrained(model_id, *args, **kwargs)

    def get_output_embeddings(self) -> OnnxLMHead:
        return self._lm_head

    # Optimum's forward keeps only logits and the cache; these two overrides catch the hidden state
    # on its way through (a bound output buffer with IO binding, a session output without).
    def _prepare_io_binding(self, model_inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        output_shapes, output_buffers = super()._prepare_io_binding(model_inputs, *args, **kwargs)
        # filled in place by run_with_iobinding, right after this returns
        self._pending_hidden = output_buffers[HIDDEN_STATE_OUTPUT].view(output_shapes[HIDDEN_STATE_OUTPUT])
        return output_shapes, output_buffers

    def _prepare_onnx_outputs(self, use_torch: bool, onnx_outputs: Any) -> Any:
        model_outputs = super()._prepare_onnx_outputs(use_torch, onnx_outputs)
        self._pending_hidden = model_outputs[HIDDEN_STATE_OUTPUT]
        return model_outputs

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        past_key_values: Any = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        # The explicit signature matters: generate() validates its keyword arguments against it.
        self._pending_hidden = None
        outputs = super().forward(
            input_ids, attention_mask=attention_mask, past_key_values=past_key_values, position_ids=position_ids,
            use_cache=use_cache, **kwargs,
        )
        hidden, self._pending_hidden = self._pending_hidden, None
        if hidden is None:  # a future Optimum that bypasses both hooks: fail loudly, never silently
            raise MissingHiddenStateOutputError(
                "The ONNX Runtime forward pass returned no hidden state; this Optimum version is not supported "
                "(tested with optimum-onnx 0.1.0)."
            )
        if not isinstance(hidden, torch.Tensor):
            hidden = torch.from_numpy(hidden)
        self._lm_head._call_hooks(hidden, outputs.logits)
        return outputs
