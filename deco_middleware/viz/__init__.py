"""See what the heads decided: a trace document and its views (HTML page, PNG, terminal, stream).

>>> with LearnedDecoding(heads, record_trace=True).attach(model) as session:  # doctest: +SKIP
...     session.generate(**inputs, max_new_tokens=64)
>>> render_trace(session, tokenizer, prompt=prompt, html="trace.html", png="trace.png", show=True)  # doctest: +SKIP

The document, HTML and terminal views need no torch; the PNG needs matplotlib (the ``viz`` extra);
:class:`TraceStreamer` and :func:`trace_generation` need the ``torch`` extra and are imported on use.
"""

from __future__ import annotations

import os
from typing import Any

from .._deps import lazy_attributes
from ..trace import DecodingTrace
from .document import TraceDocument, TraceDocumentError, token_texts
from .html import render_html, write_html
from .png import png_size, render_png, write_png
from .terminal import legend_text, print_trace, trace_text

_LAZY = {
    "StreamedToken": "deco_middleware.viz.stream",
    "TraceStreamer": "deco_middleware.viz.stream",
    "TraceStreamerError": "deco_middleware.viz.stream",
    "RunSpec": "deco_middleware.viz.runs",
    "parse_run_strategy": "deco_middleware.viz.runs",
    "trace_generation": "deco_middleware.viz.runs",
}

__all__ = [
    "RunSpec",
    "StreamedToken",
    "TraceDocument",
    "TraceDocumentError",
    "TraceStreamer",
    "TraceStreamerError",
    "legend_text",
    "parse_run_strategy",
    "png_size",
    "print_trace",
    "render_html",
    "render_png",
    "render_trace",
    "token_texts",
    "trace_generation",
    "trace_text",
    "write_html",
    "write_png",
]


def render_trace(
    source: Any,
    tokenizer: Any = None,
    *,
    prompt: str = "",
    row: int = 0,
    sequences: Any = None,
    html: str | os.PathLike[str] | None = None,
    png: str | os.PathLike[str] | None = None,
    json: str | os.PathLike[str] | None = None,
    show: bool = False,
    compare: TraceDocument | None = None,
    console: Any = None,
) -> TraceDocument:
    """Turn what a generate call recorded into a :class:`TraceDocument` and write the views asked for.

    Args:
        source: a :class:`~deco_middleware.hf.DecodingSession` (its ``.trace``), a :class:`DecodingTrace`,
            a :class:`TraceDocument`, or the dict :func:`deco_middleware.generation.generate_text` returns.
        tokenizer: needed unless ``source`` is already a document.
        prompt: shown above the reply.
        row: which row of a batched generation.
        sequences: the ``generate()`` output, when it was not run through ``session.generate``
            (which finalizes the trace itself): fills the last step's token.
        html / png / json: paths to write; ``show`` prints the coloured tokens to the terminal.
        compare: a second document shown side by side (HTML) or below (PNG).
    """
    if isinstance(source, TraceDocument):
        doc = source
    elif isinstance(source, dict) and "tokens" in source and "temperature" in source:
        doc = TraceDocument.from_generation(source, prompt=prompt)
    else:
        trace = source if isinstance(source, DecodingTrace) else getattr(source, "trace", None)
        if not isinstance(trace, DecodingTrace):
            raise TraceDocumentError(
                f"Cannot render a {type(source).__name__}: pass a DecodingSession created with "
                "`LearnedDecoding(..., record_trace=True)`, its `.trace`, or a TraceDocument."
            )
        if tokenizer is None:
            raise TraceDocumentError("Rendering a trace needs the tokenizer, to turn token ids into text.")
        if sequences is not None:
            trace.finalize(getattr(sequences, "sequences", sequences))
        doc = TraceDocument.from_trace(trace, tokenizer, prompt=prompt, row=row)
    if json is not None:
        doc.save_json(json)
    if html is not None:
        write_html(doc, html, compare=compare)
    if png is not None:
        write_png(doc, png, compare=compare)
    if show:
        print_trace(doc, console)
    return doc


__getattr__ = lazy_attributes(__name__, _LAZY)
