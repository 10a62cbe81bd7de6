"""The T/P-over-steps chart as a PNG, with each step labelled by its token (matplotlib, no display)."""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from .._deps import require
from ..manifest import atomic_write_bytes
from .document import TraceDocument

DPI = 100
PANEL_HEIGHT_PX = 420
MIN_WIDTH_PX, MAX_WIDTH_PX = 800, 8000
PX_PER_TOKEN = 16  # room for one rotated 7 pt label per step
_T_COLOR, _P_COLOR = "#d6402b", "#6a51a3"


def png_size(doc: TraceDocument, compare: TraceDocument | None = None) -> tuple[int, int]:
    """The default (width, height) in pixels: wide enough for one label per token, one panel per run."""
    steps = max(len(doc), len(compare) if compare is not None else 0)
    width = min(MAX_WIDTH_PX, max(MIN_WIDTH_PX, 120 + PX_PER_TOKEN * steps))
    return width, PANEL_HEIGHT_PX * (1 if compare is None else 2)


@lru_cache(maxsize=1)
def _font_has_glyph() -> Any:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    font = FT2Font(font_manager.findfont(font_manager.FontProperties()))
    return lambda char: font.get_char_index(ord(char)) != 0


def token_label(text: str, piece: str) -> str:
    """A short, visible label: whitespace drawn as symbols, glyphs the font lacks as ``U+XXXX``."""
    if not text:
        text = piece  # part of a character, or a special token: show the tokenizer's spelling
    label = text.replace("\n", "\u21b5").replace("\t", "\u2192").replace("\r", "\u240d")
    if not label.strip():
        label = label.replace(" ", "\u2423")
    has_glyph = _font_has_glyph()
    label = "".join(c if c.isprintable() and has_glyph(c) else f"U+{ord(c):04X}" for c in label)
    return label if len(label) <= 18 else label[:17] + "\u2026"


def _label_every(steps: int, width_px: int) -> int:
    # Keep at least PX_PER_TOKEN pixels per label; past that, label every k-th step.
    usable = max(width_px - 120, 1)
    return max(1, -(-steps * PX_PER_TOKEN // usable))


def y_axis_top(runs: list[TraceDocument]) -> float:
    """The top of the shared y-axis: just above the largest T or P drawn, and never below 1 (the
    reference line), so a run that never exceeds 1 is not squeezed into the lower half."""
    largest = max((max([*run.temperature, *run.top_p], default=0.0) for run in runs), default=0.0)
    return max(1.0, largest) * 1.05


def _draw_panel(ax: Any, doc: TraceDocument, width_px: int, y_top: float) -> None:
    steps = list(range(len(doc)))
    ax.plot(steps, doc.temperature, color=_T_COLOR, linewidth=1.5, marker="o", markersize=2.5, label="temperature")
    ax.plot(steps, doc.top_p, color=_P_COLOR, linewidth=1.5, marker="o", markersize=2.5, label="top-p")
    ax.axhline(1.0, color="#9aa1ad", linewidth=0.8, linestyle=":")
    ax.set_ylim(0, y_top)
    ax.set_xlim(-0.5, max(len(doc) - 0.5, 0.5))
    ax.set_ylabel("value")
    ax.set_title(f"{doc.label}: temperature and top-p per token", fontsize=10, loc="left")
    every = _label_every(len(doc), width_px)
    shown = steps[::every]
    ax.set_xticks(shown)
    # parse_math=False: a token such as "$x$" is text, not a formula to typeset.
    ax.set_xticklabels(
        [token_label(doc.tokens[i], doc.pieces[i]) for i in shown], rotation=90, fontsize=7, parse_math=False
    )
    ax.grid(axis="y", color="#eceef2")
    ax.legend(loc="upper right", fontsize=8, frameon=False, ncols=2)


def render_png(
    doc: TraceDocument,
    compare: TraceDocument | None = None,
    *,
    width_px: int | None = None,
    height_px: int | None = None,
) -> bytes:
    """The chart as PNG bytes; one panel per run, of :func:`png_size` unless sizes are given."""
    require("matplotlib", purpose="Drawing the trace as a PNG")
    from matplotlib.figure import Figure

    default_w, default_h = png_size(doc, compare)
    width_px, height_px = width_px or default_w, height_px or default_h
    if width_px < 200 or height_px < 150:
        raise ValueError(f"A PNG of {width_px}x{height_px} px is too small for the chart; use at least 200x150.")
    runs = [doc] if compare is None else [doc, compare]
    y_top = y_axis_top(runs)
    # A bare Figure (no pyplot) draws with Agg, needs no display and keeps no global state.
    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")
    axes = figure.subplots(len(runs), 1, squeeze=False)[:, 0]
    for ax, run in zip(axes, runs):
        _draw_panel(ax, run, width_px, y_top)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_png(
    doc: TraceDocument, path: str | os.PathLike[str], compare: TraceDocument | None = None, **kwargs: Any
) -> Path:
    """Write :func:`render_png` to ``path`` (atomically) and return the path."""
    path = Path(path)
    atomic_write_bytes(path, render_png(doc, compare, **kwargs))
    return path
