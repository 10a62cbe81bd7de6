"""The trace document every view renders: one generated reply with the decision behind each token.

A :class:`TraceDocument` is plain data (lists of numbers and strings), so the HTML page, the PNG,
the terminal view and the JSON file all read the same thing, and tests build one by hand without
a model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TraceDocumentError
from ..manifest import atomic_write_bytes
from ..trace import DecodingTrace

TRACE_FORMAT_VERSION = 1

# Shown in place of a token that is only part of a UTF-8 character (byte-level or <0x..> pieces):
# its text is empty because the character appears, whole, on the token that completes it.
_REPLACEMENT = "\ufffd"


# C0 control characters other than tab and newline are invisible, rewritten by HTML parsers (NUL
# becomes U+FFFD, CR becomes LF) or, in a terminal, executed (ESC starts an escape sequence): views
# show them as their Unicode "control picture" instead.
_CONTROL_PICTURES = {code: chr(0x2400 + code) for code in range(32) if chr(code) not in "\t\n"}
_CONTROL_PICTURES[0x7F] = "\u2421"


def visible_control_characters(text: str) -> str:
    """``text`` with control characters (except tab and newline) replaced by their control pictures."""
    return text.translate(_CONTROL_PICTURES)



@dataclass
class TraceDocument:
    """One reply and, per generated token, the temperature and top-p that produced it.

    Attributes:
        prompt: the user's prompt (as typed, before any chat template).
        tokens: the text each token adds to the reply; ``"".join(tokens)`` is the reply. A token
            that is only part of a multi-byte character has ``""`` here, see ``pieces``.
        token_ids: the vocabulary id of each token.
        temperature / top_p: the applied values (``T_final``, ``P_final``; 0 temperature = greedy).
        nucleus_size: how many tokens the nucleus kept at each step (``None`` when unknown).
        token_prob: probability of the chosen token under the final distribution (``None`` when unknown).
        pieces: the tokenizer's own spelling of each token (``<0x0A>``, ``Ġthe``), for tooltips.
        fallback: steps where the heads produced NaN/inf and the fallback T/P was used.
        label: a short name for the run (``autodeco``, ``static:0.7,0.9``), shown as a title.
        metadata: model, heads, seed, strategy and anything else worth keeping with the run.
    """

    prompt: str
    tokens: list[str]
    token_ids: list[int]
    temperature: list[float]
    top_p: list[float]
    nucleus_size: list[int | None] = field(default_factory=list)
    token_prob: list[float | None] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    fallback: list[bool] = field(default_factory=list)
    label: str = "autodeco"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("tokens", "token_ids", "temperature", "top_p", "nucleus_size", "token_prob", "pieces", "fallback"):
            setattr(self, name, list(getattr(self, name)))  # arrays and tuples become lists
        n = len(self.tokens)
        if not self.nucleus_size:
            self.nucleus_size = [None] * n
        if not self.token_prob:
            self.token_prob = [None] * n
        if not self.pieces:
            self.pieces = list(self.tokens)
        if not self.fallback:
            self.fallback = [False] * n
        lengths = {
            name: len(getattr(self, name))
            for name in ("token_ids", "temperature", "top_p", "nucleus_size", "token_prob", "pieces", "fallback")
        }
        wrong = {name: length for name, length in lengths.items() if length != n}
        if wrong:
            raise TraceDocumentError(
                f"A trace document needs one value per token ({n} tokens), but got {wrong}. Build it with "
                "`TraceDocument.from_trace(...)` or pass lists of equal length."
            )
        for name in ("temperature", "top_p"):
            values = getattr(self, name)
            bad = [v for v in values if not (_is_number(v) and math.isfinite(float(v)) and float(v) >= 0)]
            if bad:
                raise TraceDocumentError(f"`{name}` must hold finite numbers >= 0; got {bad[:3]}.")
            # numpy / torch scalars become plain floats, so that JSON and the views see one type.
            setattr(self, name, [float(v) for v in values])
        self.token_ids = [int(t) for t in self.token_ids]
        self.nucleus_size = [None if v is None else int(v) for v in self.nucleus_size]
        self.token_prob = [None if v is None else float(v) for v in self.token_prob]
        self.fallback = [bool(v) for v in self.fallback]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        """The reply, exactly as the tokens spell it."""
        return "".join(self.tokens)

    @classmethod
    def from_trace(
        cls,
        trace: DecodingTrace,
        tokenizer: Any,
        *,
        prompt: str = "",
        row: int = 0,
        stop_at_eos: bool = True,
        label: str = "autodeco",
        metadata: dict[str, Any] | None = None,
    ) -> TraceDocument:
        """Build the document for one row of a finished :class:`DecodingTrace`.

        Call ``trace.finalize(sequences)`` first (``session.generate`` does it) so the last step
        knows its token. Steps after the row's first end-of-sequence token are padding and are dropped.
        """
        steps = [step for step in trace.steps if step.token_id is not None]
        if trace.steps and not steps:
            raise TraceDocumentError(
                "The trace has no chosen tokens yet: call `trace.finalize(output_sequences)` after generate() "
                "(`session.generate(...)` does it for you)."
            )
        batch = len(steps[0].temperature) if steps else 1
        if not 0 <= row < batch:
            raise TraceDocumentError(f"`row={row}` is out of range: the trace has {batch} row(s).")
        eos_ids = _eos_ids(tokenizer) if stop_at_eos else set()
        rows = []
        for step in steps:
            token_id = int(step.token_id[row])  # type: ignore[index]
            rows.append(step)
            if token_id in eos_ids:
                break
        token_ids = [int(step.token_id[row]) for step in rows]  # type: ignore[index]
        tokens, pieces = token_texts(tokenizer, token_ids)
        return cls(
            prompt=prompt,
            tokens=tokens,
            token_ids=token_ids,
            temperature=[float(step.temperature[row]) for step in rows],
            top_p=[float(step.top_p[row]) for step in rows],
            nucleus_size=[int(step.nucleus_size[row]) if step.nucleus_size else None for step in rows],
            token_prob=[float(step.token_prob[row]) if step.token_prob is not None else None for step in rows],
            pieces=pieces,
            fallback=[bool(step.fallback[row]) for step in rows],
            label=label,
            metadata=dict(metadata or {}),
        )

    @classmethod
    def from_generation(cls, result: dict[str, Any], *, prompt: str = "") -> TraceDocument:
        """From the dict :func:`deco_middleware.generation.generate_text` returns."""
        n = len(result["tokens"])
        return cls(
            prompt=prompt,
            tokens=list(result["tokens"]),
            token_ids=list(result.get("token_ids") or [0] * n),
            temperature=list(result["temperature"]),
            top_p=list(result["top_p"]),
            label=str(result.get("strategy", "autodeco")),
            metadata={k: result[k] for k in ("model", "heads", "seed", "strategy") if k in result},
        )

    # -- serialisation ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["format_version"] = TRACE_FORMAT_VERSION
        data["text"] = self.text
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TraceDocument:
        version = data.get("format_version", TRACE_FORMAT_VERSION)
        if version > TRACE_FORMAT_VERSION:
            raise TraceDocumentError(
                f"This trace was written with format version {version}; this version of deco-middleware reads "
                f"up to {TRACE_FORMAT_VERSION}. Upgrade deco-middleware."
            )
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        atomic_write_bytes(path, (self.to_json() + "\n").encode("utf-8"))
        return path

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> TraceDocument:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    # -- statistics -------------------------------------------------------------------------------

    def summary(self) -> dict[str, float | int | None]:
        """Counts and means the views show next to the text."""
        n = len(self)
        sizes = [s for s in self.nucleus_size if s is not None]
        probs = [p for p in self.token_prob if p is not None]
        return {
            "tokens": n,
            "temperature_mean": _mean(self.temperature),
            "temperature_std": _std(self.temperature),
            "temperature_min": float(min(self.temperature)) if n else None,
            "temperature_max": float(max(self.temperature)) if n else None,
            "top_p_mean": _mean(self.top_p),
            "top_p_std": _std(self.top_p),
            "top_p_min": float(min(self.top_p)) if n else None,
            "top_p_max": float(max(self.top_p)) if n else None,
            "nucleus_size_median": _median(sizes),
            "single_token_steps": sum(1 for s in sizes if s == 1) if sizes else None,
            "token_prob_mean": _mean(probs),
            "fallback_steps": sum(self.fallback),
        }


def token_texts(tokenizer: Any, token_ids: list[int]) -> tuple[list[str], list[str]]:
    """The text each token adds to the decoded reply, and the tokenizer's spelling of each token.

    Each token's text is the growth of the decoded prefix, not the token decoded alone: alone, a
    SentencePiece word loses its leading space and a character split over several byte tokens
    (emoji, CJK, ``<0xF0><0x9F>...``) decodes to U+FFFD. Partial-character tokens and special tokens
    get ``""`` (the completing token carries the whole character), so the texts join to
    ``tokenizer.decode(token_ids, skip_special_tokens=True)``.
    """
    texts: list[str] = []
    previous = ""
    group_start = 0  # first token of a character still being completed
    for index in range(len(token_ids)):
        full = tokenizer.decode(token_ids[: index + 1], skip_special_tokens=True)
        if full.endswith(_REPLACEMENT) and index + 1 < len(token_ids):
            texts.append("")  # waits for the rest of the character
            continue
        if full.startswith(previous):
            piece = full[len(previous) :]
        else:
            # Decoding clean-ups (e.g. " ." -> ".") rewrote earlier text; fall back to this group alone.
            piece = tokenizer.decode(token_ids[group_start : index + 1], skip_special_tokens=True)
        texts.append(piece)
        previous = full
        group_start = index + 1
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        pieces = [str(p) for p in tokenizer.convert_ids_to_tokens(list(token_ids))]
    else:
        pieces = list(texts)
    return texts, pieces


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (str, bytes, bool))


def _eos_ids(tokenizer: Any) -> set[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple, set)) else {int(eos)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _std(values: list[float]) -> float | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _median(values: list[int]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    return float(ordered[middle]) if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
