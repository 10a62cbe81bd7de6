"""What every generation loop records per row, and the one end-of-sequence rule they share.

The EOS rule: a row ends when it draws one of its stop ids (the model's and the tokenizer's
end-of-sequence ids, see :func:`stop_token_ids`). That token **is kept** in the row's
``token_ids`` (as in ``generate()``'s sequences and the streamed tokens); its text is dropped by
decoding with ``skip_special_tokens=True``. The applied temperature and top-p are recorded for
every kept token, so ``len(temperature) == len(token_ids)``.

A row whose logits were not finite (see :mod:`deco_middleware.sampling`) ends there with the
first stop id, finish reason ``"eos"``, and is counted in ``nonfinite_rows`` (with no stop id
known, it ends without a token, finish reason ``"nonfinite"``). The other rows go on unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sampling import NO_TOKEN, StepOutput


def stop_token_ids(*sources: Any) -> frozenset[int]:
    """Every end-of-sequence id found on ``sources`` (a generation config, a tokenizer, an id or ids)."""
    ids: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", source)
        if value is None or isinstance(value, str):
            continue
        if hasattr(value, "tolist"):
            value = value.tolist()
        ids.update(int(i) for i in (value if isinstance(value, (list, tuple, set, frozenset)) else [value]) if i is not None)
    return frozenset(ids)


def cut_at_stop(token_ids: Sequence[int], stop_ids: Iterable[int]) -> list[int]:
    """``token_ids`` up to and including the first stop id (the EOS rule, for loops we do not drive)."""
    stop = set(stop_ids)
    for position, token in enumerate(token_ids):
        if token in stop:
            return list(token_ids[: position + 1])
    return list(token_ids)


@dataclass
class RowRecords:
    """The per-row record of one batch, filled step by step by the loop that drives the LM.

    ``finish_reason`` per row: ``"eos"`` (a stop id was drawn, or the logits were not finite),
    ``"stop"`` (a stop string, set by the loop), ``"length"`` (``max_new_tokens`` reached),
    ``"nonfinite"`` (non-finite logits and no stop id to end with).
    """

    stop_ids: frozenset[int]
    token_ids: list[list[int]] = field(default_factory=list)
    temperature: list[list[float]] = field(default_factory=list)
    top_p: list[list[float]] = field(default_factory=list)
    finish_reason: list[str] = field(default_factory=list)
    fallback_rows: int = 0  # row-steps that used the fallback T/P or had non-finite logits
    nonfinite_rows: int = 0  # rows ended because their logits were not finite

    @classmethod
    def empty(cls, rows: int, stop_ids: Iterable[int]) -> RowRecords:
        return cls(
            frozenset(stop_ids), [[] for _ in range(rows)], [[] for _ in range(rows)], [[] for _ in range(rows)],
            ["length"] * rows,
        )

    def add(
        self, rows: Sequence[int], chosen: np.ndarray, step: StepOutput[Any], at: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Record one step for ``rows``; returns ``(tokens, ended)`` for those rows.

        ``chosen`` holds one drawn token per row of ``rows``; ``at`` says which rows of ``step``
        they are (default: the same positions). A row without a token (non-finite logits:
        ``chosen`` is ``NO_TOKEN``) gets the first stop id, or, when there is none, ends without a
        token (finish reason ``"nonfinite"``).
        """
        at = np.arange(len(rows)) if at is None else np.asarray(at)
        chosen = np.asarray(chosen, dtype=np.int64)
        broken = chosen == NO_TOKEN
        if broken.any():
            self.nonfinite_rows += int(broken.sum())
            if self.stop_ids:
                chosen = np.where(broken, min(self.stop_ids), chosen)
        self.fallback_rows += int(np.asarray(step.fallback)[at].sum())
        ended = broken | np.fromiter((int(t) in self.stop_ids for t in chosen), dtype=bool, count=len(chosen))
        temperatures, top_ps = step.temperature[at].tolist(), step.top_p[at].tolist()
        for position, row in enumerate(rows):
            if chosen[position] == NO_TOKEN:
                self.finish_reason[row] = "nonfinite"
                continue
            self.token_ids[row].append(int(chosen[position]))
            self.temperature[row].append(temperatures[position])
            self.top_p[row].append(top_ps[position])
            if ended[position]:
                self.finish_reason[row] = "eos"
        return np.where(chosen == NO_TOKEN, 0, chosen), ended


def generation_result(
    *, token_ids: list[int], decode: Any, temperature: list[float], top_p: list[float], strategy: Any,
    model: str, heads: str | None, seed: int, **extra: Any,
) -> dict[str, Any]:
    """The one result dict of ``generate_text`` on every backend (``extra``: backend-specific keys)."""
    return {
        "text": decode(token_ids, skip_special_tokens=True),
        "tokens": [decode([i]) for i in token_ids],
        "token_ids": token_ids,
        "temperature": [float(t) for t in temperature[: len(token_ids)]],
        "top_p": [float(p) for p in top_p[: len(token_ids)]],
        "strategy": strategy.name,  # the canonical name (deco_middleware.strategies)
        "model": model,
        "heads": heads,
        "seed": seed,
        **extra,
    }


__all__ = ["RowRecords", "cut_at_stop", "generation_result", "stop_token_ids"]
