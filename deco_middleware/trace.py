"""Per-step record of what learned decoding decided: token, temperature, top-p, nucleus size."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TraceStep:
    """One generation step for every row of the batch."""

    position: int  # index, in the output sequences, of the token chosen at this step
    temperature: list[float]  # applied temperature per row (0 = greedy)
    top_p: list[float]  # applied nucleus mass per row
    fallback: list[bool]  # rows that used the fallback T/P (non-finite hidden state or head output)
    nucleus_size: list[int] = field(default_factory=list)  # tokens kept by the nucleus filter per row
    token_id: list[int] | None = None  # filled when the next step runs, or by `finalize`
    token_prob: list[float] | None = None  # probability of the chosen token under the final distribution


@dataclass
class DecodingTrace:
    """Everything the learned pair decided during one generation, step by step."""

    steps: list[TraceStep] = field(default_factory=list)
    # Final scores of the newest step, kept until its chosen token is known (next step or finalize).
    _pending_scores: Any = field(default=None, repr=False, compare=False)

    def set_final_scores(self, scores: Any) -> None:
        """Remember the distribution the newest step samples from (numpy array or torch tensor)."""
        self._pending_scores = scores

    def record_chosen(self, position: int, token_ids: Any) -> None:
        """The tokens at ``position`` were chosen: fill them, and their probability, into that step."""
        pending, self._pending_scores = self._pending_scores, None
        if not self.steps or self.steps[-1].position != position or self.steps[-1].token_id is not None:
            return
        step = self.steps[-1]
        step.token_id = [int(t) for t in token_ids]
        if pending is not None:
            from .sampling import ops_for

            ops = ops_for(pending)
            probs = ops.softmax(pending.float() if hasattr(pending, "float") else pending)
            chosen = ops.take_last(probs, ops.as_index(step.token_id, probs))
            step.token_prob = [float(p) for p in chosen.reshape(-1).tolist()]

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def complete(self) -> bool:
        return all(step.token_id is not None for step in self.steps)

    def finalize(self, sequences: Any) -> DecodingTrace:
        """Fill the tokens chosen at each step from the generated ``sequences`` [batch, length]."""
        if self.steps and self.steps[-1].position < sequences.shape[1]:
            self.record_chosen(self.steps[-1].position, sequences[:, self.steps[-1].position])
        for step in self.steps:
            if step.token_id is None and step.position < sequences.shape[1]:
                step.token_id = [int(t) for t in sequences[:, step.position]]
        return self

    def row(self, index: int) -> list[dict[str, Any]]:
        """The decisions for one row: ``[{"token_id", "temperature", "top_p", ...}, ...]``."""
        out = []
        for step in self.steps:
            out.append(
                {
                    "token_id": None if step.token_id is None else step.token_id[index],
                    "temperature": step.temperature[index],
                    "top_p": step.top_p[index],
                    "nucleus_size": step.nucleus_size[index] if step.nucleus_size else None,
                    "token_prob": None if step.token_prob is None else step.token_prob[index],
                    "fallback": step.fallback[index],
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [asdict(step) for step in self.steps]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())
