"""Stream generated tokens together with the temperature and top-p that produced them.

``generate()`` calls a streamer's ``put`` in its own thread right after each token is chosen; by
then the learned pair has already recorded that step in the session's trace (the processors run
in the same thread, before sampling), so the streamer can pair each token with its decision
without any locking. Iterate the streamer from another thread, as with ``TextIteratorStreamer``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from queue import Queue
from typing import Any

from .._deps import require
from ..errors import TraceStreamerError

transformers = require("transformers", purpose="Streaming traced tokens")

_REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class StreamedToken:
    """One generated token as it arrives."""

    index: int  # generation step, from 0
    token_id: int
    text: str  # what the token adds to the reply ("" while a multi-byte character is incomplete)
    temperature: float
    top_p: float
    nucleus_size: int | None
    fallback: bool



class TraceStreamer(transformers.generation.streamers.BaseStreamer):
    """A ``generate(streamer=...)`` streamer that yields :class:`StreamedToken` items.

    Args:
        tokenizer: decodes the tokens (incrementally, so multi-byte characters arrive whole).
        session: a :class:`~deco_middleware.hf.DecodingSession` from ``LearnedDecoding(..., record_trace=True)``.
        timeout: seconds to wait for the next token when iterating (``None`` waits forever).

    >>> streamer = TraceStreamer(tokenizer, session)  # doctest: +SKIP
    >>> Thread(target=session.generate, kwargs={**inputs, "streamer": streamer}).start()  # doctest: +SKIP
    >>> for token in streamer:  # doctest: +SKIP
    ...     print(token.text, token.temperature, token.top_p)
    """

    _END = object()

    def __init__(self, tokenizer: Any, session: Any, *, timeout: float | None = None) -> None:
        if getattr(session, "trace", None) is None:
            raise TraceStreamerError(
                "The session records no trace; create it with `LearnedDecoding(..., record_trace=True)` so the "
                "streamer can read each token's temperature and top-p."
            )
        self.tokenizer = tokenizer
        self.trace = session.trace
        self.timeout = timeout
        self.queue: Queue[Any] = Queue()
        self._prompt_seen = False
        self._first_step = len(self.trace.steps)  # a reused session keeps earlier steps
        self._token_ids: list[int] = []
        self._decoded = ""

    def put(self, value: Any) -> None:
        if value.dim() > 1:
            if value.shape[0] != 1:
                raise TraceStreamerError(
                    f"TraceStreamer streams one row; got a batch of {value.shape[0]}. Generate one prompt at a time."
                )
            value = value[0]
        if not self._prompt_seen:
            self._prompt_seen = True  # generate() first hands over the prompt itself
            return
        for token_id in value.tolist():
            index = len(self._token_ids)
            step = self.trace.steps[self._first_step + index]
            self._token_ids.append(int(token_id))
            self.queue.put(
                StreamedToken(
                    index=index,
                    token_id=int(token_id),
                    text=self._new_text(),
                    temperature=float(step.temperature[0]),
                    top_p=float(step.top_p[0]),
                    nucleus_size=int(step.nucleus_size[0]) if step.nucleus_size else None,
                    fallback=bool(step.fallback[0]),
                )
            )

    def _new_text(self) -> str:
        full = self.tokenizer.decode(self._token_ids, skip_special_tokens=True)
        if full.endswith(_REPLACEMENT):
            return ""  # an incomplete character: it arrives whole with the token that completes it
        # Decoding clean-ups can rewrite already streamed text (" ." -> "."); stream what is new by length.
        added, self._decoded = full[len(self._decoded) :], full
        return added

    def end(self) -> None:
        self.queue.put(self._END)

    def __iter__(self) -> Iterator[StreamedToken]:
        while True:
            item = self.queue.get(timeout=self.timeout)
            if item is self._END:
                return
            yield item
