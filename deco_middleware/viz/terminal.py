"""Tokens coloured by temperature (or top-p) in the terminal, with a legend (rich)."""

from __future__ import annotations

from typing import Any

from .._deps import require
from .colors import TEMPERATURE_STOPS, TOP_P_STOPS, hex_color, temperature_rgb, top_p_rgb
from .document import TraceDocument, visible_control_characters

_LEGEND_STEPS = 9
# rich's "standard" and legacy "windows" colour systems have 8/16 colours: every light tint maps to
# white, so the reply would be black on white with nothing to read from it. (None, no colour at
# all, drops every style anyway and keeps the plain legend.)
_FEW_COLOURS = ("standard", "windows")


def _few_colour_style(value: float, color_by: str) -> str:
    """A foreground colour by band, for terminals with 8 or 16 colours (no background tints)."""
    if color_by == "temperature":
        if value < 0.75:
            return "bold blue" if value < 0.25 else "blue"
        if value > 1.25:
            return "bold red" if value > 1.75 else "red"
        return ""
    return "bold magenta" if value < 0.5 else ("magenta" if value < 0.9 else "")


def _visible_token(text: str, piece: str) -> str:
    # Model output must not drive the terminal: ESC and other controls are shown, never sent.
    if not text:
        # Part of a character or a special token: show its spelling, dimmed.
        return f"\u27e8{visible_control_characters(piece)}\u27e9"
    # A newline token keeps its line break but also gets a mark, so its colour can be seen.
    return visible_control_characters(text).replace("\n", "\u21b5\n")


def trace_text(doc: TraceDocument, *, color_by: str = "temperature", color_system: str | None = "truecolor") -> Any:
    """A ``rich.text.Text`` of the reply, each token on a background of its T (or P) colour.

    ``color_system`` is the console's (``console.color_system``): with 8 or 16 colours the tokens get
    a coloured foreground by band instead (blue: T < 0.75, red: T > 1.25, bold at the extremes).
    """
    rich_text = require("rich.text", purpose="Coloured terminal output")
    if color_by not in ("temperature", "top_p"):
        raise ValueError(f"`color_by` must be 'temperature' or 'top_p', not {color_by!r}.")
    values = doc.temperature if color_by == "temperature" else doc.top_p
    to_rgb = temperature_rgb if color_by == "temperature" else top_p_rgb
    text = rich_text.Text()
    for token, piece, value, fallback in zip(doc.tokens, doc.pieces, values, doc.fallback):
        if color_system in _FEW_COLOURS:
            style = _few_colour_style(value, color_by)
        else:
            style = f"black on {hex_color(to_rgb(value))}"
        if not token:
            style += " dim"
        if fallback:
            style += " underline"
        text.append(_visible_token(token, piece), style=style)
    return text


def legend_text(*, color_by: str = "temperature", color_system: str | None = "truecolor") -> Any:
    """One line: the colour scale with its end values."""
    rich_text = require("rich.text", purpose="Coloured terminal output")
    if color_by == "temperature":
        stops, to_rgb, title, low, high = TEMPERATURE_STOPS, temperature_rgb, "temperature", "0 greedy", "2"
    else:
        stops, to_rgb, title, low, high = TOP_P_STOPS, top_p_rgb, "top-p", "0", "1"
    start, end = stops[0][0], stops[-1][0]
    if color_system in _FEW_COLOURS:
        if color_by == "temperature":
            bands = (("< 0.25", 0.0), ("< 0.75", 0.5), ("about 1", 1.0), ("> 1.25", 1.5), ("> 1.75", 2.0))
        else:
            bands = (("< 0.5", 0.0), ("< 0.9", 0.7), (">= 0.9", 1.0))
        legend = rich_text.Text(f"{title}:")
        for label, value in bands:
            legend.append(f" {label}", style=_few_colour_style(value, color_by))
        return legend
    legend = rich_text.Text(f"{title}: {low} ")
    for k in range(_LEGEND_STEPS):
        value = start + (end - start) * k / (_LEGEND_STEPS - 1)
        legend.append("  ", style=f"on {hex_color(to_rgb(value))}")
    legend.append(f" {high}")
    if color_by == "temperature":
        legend.append("   (white = 1: the model's own distribution)", style="dim")
    return legend


def summary_line(doc: TraceDocument) -> str:
    s = doc.summary()
    if not s["tokens"]:
        return "0 tokens"
    parts = [
        f"{s['tokens']} tokens",
        f"T mean {s['temperature_mean']:.3f} (min {s['temperature_min']:.3f}, max {s['temperature_max']:.3f})",
        f"P mean {s['top_p_mean']:.3f} (min {s['top_p_min']:.3f}, max {s['top_p_max']:.3f})",
    ]
    if s["nucleus_size_median"] is not None:
        parts.append(f"median nucleus {s['nucleus_size_median']:g}")
    if s["fallback_steps"]:
        parts.append(f"{s['fallback_steps']} fallback steps")
    return ", ".join(parts)


def print_trace(doc: TraceDocument, console: Any = None, *, color_by: str = "temperature", legend: bool = True) -> None:
    """Print the coloured reply, then the legend and a one-line summary."""
    rich_console = require("rich.console", purpose="Coloured terminal output")
    console = console or rich_console.Console()
    colors = console.color_system
    console.print(trace_text(doc, color_by=color_by, color_system=colors), soft_wrap=True, highlight=False)
    if legend:
        console.print(legend_text(color_by=color_by, color_system=colors), highlight=False)
        console.print(summary_line(doc), style="dim", highlight=False)
