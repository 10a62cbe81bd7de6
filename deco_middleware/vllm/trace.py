"""Per-token temperature and top-p of traced requests, written by the engine, read by the caller.

vLLM's outputs have no field for them, and the logits processor runs in the engine process, so
the engine appends one JSON line per traced request and step to the file named by
``DECO_VLLM_TRACE`` (set it before the engine starts; the operator chooses the path, a request
only chooses its ``trace_id``). :func:`read_trace` gives them back per trace id, in step order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRACE_ENV = "DECO_VLLM_TRACE"


@dataclass
class RequestTrace:
    """One request's decisions, step by step (step ``i`` chose output token ``i``)."""

    tokens: list[int] = field(default_factory=list)
    temperature: list[float] = field(default_factory=list)
    top_p: list[float] = field(default_factory=list)
    fallback: list[bool] = field(default_factory=list)
    nucleus_size: list[int] = field(default_factory=list)


class TraceWriter:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def from_env(cls) -> TraceWriter | None:
        value = os.environ.get(TRACE_ENV)
        return cls(value) if value else None

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        # One write per step, appended: a reader never sees half a line of a finished step.
        text = "".join(json.dumps(dict(r), separators=(",", ":")) + "\n" for r in records)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)


def read_trace(path: str | os.PathLike[str]) -> dict[str, RequestTrace]:
    """The traces in ``path`` by trace id. Two requests that share a trace id are refused."""
    traces: dict[str, RequestTrace] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            trace = traces.setdefault(record["trace_id"], RequestTrace())
            if record["step"] != len(trace.tokens):
                raise ValueError(
                    f"{path}:{number}: trace id {record['trace_id']!r} has step {record['step']} after "
                    f"{len(trace.tokens)} steps: two requests used the same trace id. Give each request its own."
                )
            trace.tokens.append(int(record["token"]))
            trace.temperature.append(float(record["temperature"]))
            trace.top_p.append(float(record["top_p"]))
            trace.fallback.append(bool(record["fallback"]))
            trace.nucleus_size.append(int(record["nucleus_size"]))
    return traces


__all__ = ["TRACE_ENV", "RequestTrace", "TraceWriter", "read_trace"]
