"""What the model wrapper and the logits processor share inside one vLLM worker process.

The model wrapper (:mod:`.models`) and the logits processor (:mod:`.processor`) are built by the
same model runner in the same worker process, so one module-level :data:`STEP` joins them. With
the V1 model runner:

1. ``update_state`` (the processor, before each forward pass) publishes the batch size and the
   batch rows that opted in (:meth:`StepBuffer.expect`).
2. ``compute_logits`` (the wrapper, on the final-norm hidden states of the rows being sampled)
   runs the torch heads on those rows, on the raw LM-head logits, and keeps their outputs
   (:meth:`StepBuffer.capture`). The call that matches is the first one with exactly the published
   number of rows after step 1; later calls in the step (prompt logprobs, which come after sampling)
   find nothing pending and pass through.
3. ``apply`` (the processor, inside vLLM's sampler) takes them (:meth:`StepBuffer.take`).

With Model Runner V2 (upstream's default on GPU) there is no batch update before the forward pass:
``apply_staged_writes`` (once per step, before it) calls :meth:`StepBuffer.expect_all`, the heads
run on every row of the sampled ``compute_logits`` call, and ``apply`` maps each logits row to its
request slot with ``ctx.expanded_idx_mapping`` and keeps the opted-in ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("deco_middleware.vllm")


@dataclass
class CapturedRows:
    rows: tuple[int, ...]  # batch rows, in the processor's order
    hidden: Any  # torch float32 [n, H] final-norm hidden states of those rows
    temperature: Any  # torch float32 [n] raw temperature-head outputs
    top_p: Any  # torch float32 [n] raw top-p-head outputs


class StepBuffer:
    """Heads loaded by the model wrapper, and the hand-over of one step's head outputs."""

    def __init__(self) -> None:
        self.heads: Any = None  # DecodingHeads (manifest, trained heads) once the wrapper loaded them
        self.module: Any = None  # torch AutoDecoHeads on the model's device
        self.unavailable_reason: str | None = "the model was not loaded through a deco_middleware.vllm wrapper"
        self._expected: tuple[int, tuple[int, ...]] | None = None
        self._captured: CapturedRows | None = None
        # Row-steps of opted-in requests: decoded by the learned step / left to vLLM's sampler (an error was
        # logged). `deco bench --backend vllm` reads them to prove its learned runs went through the heads.
        self.decoded_rows = 0
        self.missed_rows = 0

    def install(self, heads: Any, module: Any) -> None:
        self.heads, self.module, self.unavailable_reason = heads, module, None

    def disable(self, reason: str) -> None:
        self.heads, self.module, self.unavailable_reason = None, None, reason

    @property
    def top_p_trained(self) -> bool:
        """An untrained top-p head is never applied (DecodingSettings.for_trained_heads): ``capture`` then
        skips its vocabulary-wide statistics (~26 ms per step at 64 rows on a 2-core CPU)."""
        return "top_p" in getattr(self.heads, "trained_heads", ("temperature", "top_p"))

    @property
    def available(self) -> bool:
        return self.module is not None

    def expect(self, batch_size: int, rows: tuple[int, ...]) -> None:
        """V1 runner: the next ``compute_logits`` call with ``batch_size`` rows is the sampled one; run
        the heads on ``rows`` of it."""
        self._captured = None
        self._expected = (batch_size, rows) if rows and self.available else None

    def expect_all(self, any_learned: bool) -> None:
        """Model Runner V2: the rows are known only in ``apply`` (they are reordered every step), so the
        heads run on every row of the next ``compute_logits`` call while any request slot opted in."""
        self._captured = None
        self._expected = (-1, ()) if any_learned and self.available else None

    def capture(self, hidden_states: Any, logits: Any) -> None:
        if self._expected is None or logits is None:
            return
        batch_size, rows = self._expected
        if batch_size == -1:
            rows = tuple(range(hidden_states.shape[0]))
        elif hidden_states.shape[0] != batch_size:
            return  # not the sampled rows (speculative decoding is refused elsewhere)
        self._expected = None
        import torch

        with torch.no_grad():
            if batch_size == -1:
                hidden, selected = hidden_states.float(), logits.float()
            else:
                index = torch.as_tensor(rows, device=hidden_states.device)
                hidden, selected = hidden_states.index_select(0, index).float(), logits.index_select(0, index).float()
            if self.top_p_trained:
                temperature, top_p = self.module(hidden, selected)
            else:
                temperature = self.module.temp_head(hidden, selected)
                top_p = torch.ones_like(temperature)
        self._captured = CapturedRows(rows, hidden, temperature, top_p)

    def take(self) -> CapturedRows | None:
        captured, self._captured = self._captured, None
        return captured


STEP = StepBuffer()

__all__ = ["STEP", "CapturedRows", "StepBuffer", "logger"]
