"""One self-contained HTML page for a trace: coloured tokens, tooltips, a T/P chart, statistics.

Everything is inline (CSS, one script, SVG charts); the page fetches nothing. Model output is
untrusted text: every token is written with :func:`html.escape` (text and attributes), the data
block is JSON with ``<``, ``>`` and ``&`` escaped, and a Content-Security-Policy allows only the
page's own script (by its sha256), so even a token that slipped through could not run code.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from pathlib import Path
from typing import Any

from ..manifest import atomic_write_bytes
from .colors import TEMPERATURE_STOPS, TOP_P_STOPS, css_gradient, hex_color, temperature_rgb, top_p_rgb
from .document import TraceDocument, visible_control_characters

CHART_WIDTH = 720
CHART_HEIGHT = 220
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 44, 16, 14, 30

_CSS = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5b6576; --line: #d9dde5; --t-line: #d6402b; --p-line: #6a51a3; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif;
       color: var(--ink); background: #f4f5f8; }
main { max-width: 1400px; margin: 0 auto; padding: 20px 24px 48px; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 17px; margin: 0 0 10px; }
.meta { color: var(--muted); font-size: 13px; margin: 0 0 12px; }
.prompt { white-space: pre-wrap; background: #fff; border-left: 4px solid var(--line); padding: 8px 12px;
          margin: 0 0 16px; border-radius: 4px; overflow-wrap: anywhere; }
.controls { display: flex; flex-wrap: wrap; gap: 16px; align-items: center; margin: 0 0 16px; }
.toggle button { font: inherit; padding: 4px 12px; border: 1px solid #aab1bf; background: #fff; cursor: pointer; }
.toggle button:first-of-type { border-radius: 6px 0 0 6px; }
.toggle button:last-of-type { border-radius: 0 6px 6px 0; border-left: none; }
.toggle button[aria-pressed="true"] { background: var(--ink); color: #fff; border-color: var(--ink); }
.legend { display: flex; align-items: center; gap: 8px; font-size: 13px; color: var(--muted); }
.legend[hidden] { display: none; }
.legend .bar { width: 220px; height: 12px; border-radius: 3px; border: 1px solid #c8ccd6; }
.runs { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 20px; }
.run { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px; min-width: 0; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.95; font-size: 16px; margin: 0 0 14px; }
.tok { border-radius: 3px; padding: 2px 0; box-shadow: inset -1px 0 0 rgba(255, 255, 255, 0.95); cursor: default; }
.by-t .tok { background: var(--ct); }
.by-p .tok { background: var(--cp); }
.tok:hover, .tok:focus { outline: 2px solid var(--ink); outline-offset: 0; }
.tok.nl::before { content: "\\21B5"; color: var(--muted); font-size: 12px; padding: 0 2px; }
.tok.ws { min-width: 0.5em; }
.tok.empty::before { content: attr(data-piece); font: 11px ui-monospace, monospace; color: var(--muted); padding: 0 2px; }
.tok.fb { text-decoration: underline wavy #b00020; }
svg.chart { width: 100%; height: auto; display: block; margin: 4px 0 12px; }
svg.chart .axis { stroke: #8b93a3; stroke-width: 1; }
svg.chart .grid { stroke: #eceef2; stroke-width: 1; }
svg.chart text { font: 11px system-ui, sans-serif; fill: var(--muted); }
svg.chart .t-line { fill: none; stroke: var(--t-line); stroke-width: 1.8; }
svg.chart .p-line { fill: none; stroke: var(--p-line); stroke-width: 1.8; }
svg.chart .t-dot { fill: var(--t-line); }
svg.chart .p-dot { fill: var(--p-line); }
svg.chart .cursor { stroke: var(--ink); stroke-width: 1; stroke-dasharray: 3 3; }
table.stats { border-collapse: collapse; font-size: 13px; }
table.stats th { text-align: left; font-weight: 500; color: var(--muted); padding: 2px 12px 2px 0; }
table.stats td { font-variant-numeric: tabular-nums; padding: 2px 0; }
#tooltip { position: absolute; z-index: 10; pointer-events: none; background: #1d2330; color: #fff; font-size: 13px;
           padding: 8px 10px; border-radius: 6px; box-shadow: 0 4px 14px rgba(0, 0, 0, 0.25); max-width: 360px; }
#tooltip[hidden] { display: none; }
#tooltip .k { color: #aeb6c6; padding-right: 10px; }
#tooltip .v { font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
#tooltip table { border-collapse: collapse; }
footer { margin-top: 24px; font-size: 12px; color: var(--muted); }
"""

_SCRIPT = """
(function () {
  "use strict";
  var body = document.body;
  var buttons = Array.prototype.slice.call(document.querySelectorAll("[data-color-by]"));
  function setMode(mode) {
    body.classList.toggle("by-t", mode === "t");
    body.classList.toggle("by-p", mode === "p");
    buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.dataset.colorBy === mode)); });
    document.querySelectorAll(".legend").forEach(function (l) { l.hidden = l.dataset.for !== mode; });
  }
  buttons.forEach(function (b) { b.addEventListener("click", function () { setMode(b.dataset.colorBy); }); });

  var tip = document.getElementById("tooltip");
  function fixed(value, digits) { return value === undefined || value === "" ? "n/a" : Number(value).toFixed(digits); }
  function addRow(table, key, value) {
    var tr = document.createElement("tr");
    var k = document.createElement("td"); k.className = "k"; k.textContent = key;
    var v = document.createElement("td"); v.className = "v"; v.textContent = value;
    tr.appendChild(k); tr.appendChild(v); table.appendChild(tr);
  }
  function cursorFor(token, show) {
    var run = token.closest(".run");
    var svg = run && run.querySelector("svg.chart");
    if (!svg) { return; }
    var line = svg.querySelector(".cursor");
    if (!show) { line.setAttribute("visibility", "hidden"); return; }
    var x = Number(svg.dataset.x0) + Number(token.dataset.i) * Number(svg.dataset.dx);
    line.setAttribute("x1", x); line.setAttribute("x2", x); line.setAttribute("visibility", "visible");
  }
  function show(token) {
    var table = document.createElement("table");
    var text = token.textContent;
    addRow(table, "token", text === "" ? "(part of a character or special)" : JSON.stringify(text));
    addRow(table, "piece", token.dataset.piece + "  (id " + token.dataset.id + ")");
    addRow(table, "step", token.dataset.i);
    addRow(table, "temperature", fixed(token.dataset.t, 3) + (Number(token.dataset.t) === 0 ? " (greedy)" : ""));
    addRow(table, "top-p", fixed(token.dataset.p, 3));
    addRow(table, "nucleus size", token.dataset.n === undefined ? "n/a" : token.dataset.n + " tokens");
    addRow(table, "p(chosen)", fixed(token.dataset.prob, 4));
    if (token.classList.contains("fb")) { addRow(table, "note", "fallback T/P (non-finite head output)"); }
    tip.replaceChildren(table);
    tip.hidden = false;
    var r = token.getBoundingClientRect();
    var left = Math.min(r.left + window.scrollX, window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 8);
    tip.style.left = Math.max(window.scrollX + 4, left) + "px";
    tip.style.top = (r.bottom + window.scrollY + 6) + "px";
    cursorFor(token, true);
  }
  function hide(token) { tip.hidden = true; cursorFor(token, false); }
  document.querySelectorAll(".text").forEach(function (container) {
    container.addEventListener("mouseover", function (e) { var t = e.target.closest(".tok"); if (t) { show(t); } });
    container.addEventListener("mouseout", function (e) { var t = e.target.closest(".tok"); if (t) { hide(t); } });
    container.addEventListener("focusin", function (e) { var t = e.target.closest(".tok"); if (t) { show(t); } });
    container.addEventListener("focusout", function (e) { var t = e.target.closest(".tok"); if (t) { hide(t); } });
  });
  setMode("t");
})();
"""


def _visible(text: str) -> str:
    return visible_control_characters(text)


def _attr(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _token_span(doc: TraceDocument, index: int) -> str:
    text = doc.tokens[index]
    classes = ["tok"]
    if "\n" in text:
        classes.append("nl")
    if text and not text.strip():
        classes.append("ws")
    if not text:
        classes.append("empty")
    if doc.fallback[index]:
        classes.append("fb")
    temperature, top_p = doc.temperature[index], doc.top_p[index]
    attributes = [
        f'class="{" ".join(classes)}"',
        'tabindex="0"',
        f'data-i="{index}"',
        f'data-id="{doc.token_ids[index]}"',
        f'data-t="{temperature:.6g}"',
        f'data-p="{top_p:.6g}"',
        f'data-piece="{_attr(_visible(doc.pieces[index]))}"',
        f'style="--ct:{hex_color(temperature_rgb(temperature))};--cp:{hex_color(top_p_rgb(top_p))}"',
    ]
    if doc.nucleus_size[index] is not None:
        attributes.append(f'data-n="{doc.nucleus_size[index]}"')
    if doc.token_prob[index] is not None:
        attributes.append(f'data-prob="{doc.token_prob[index]:.6g}"')
    return f"<span {' '.join(attributes)}>{html.escape(_visible(text), quote=True)}</span>"


def chart_svg(doc: TraceDocument, *, y_max: float = 2.0) -> str:
    """Inline SVG line chart of T and P per step (a shared 0..``y_max`` axis)."""
    n = len(doc)
    plot_w = CHART_WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = CHART_HEIGHT - _MARGIN_TOP - _MARGIN_BOTTOM
    dx = plot_w / max(n - 1, 1)
    x0 = _MARGIN_LEFT if n > 1 else _MARGIN_LEFT + plot_w / 2

    def x(i: int) -> float:
        return x0 + i * dx

    def y(v: float) -> float:
        return _MARGIN_TOP + plot_h * (1 - min(v, y_max) / y_max)

    parts = [
        (
            f'<svg class="chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
            f'aria-label="Temperature and top-p per step" data-x0="{x0:.3f}" data-dx="{dx:.3f}" data-steps="{n}">'
        )
    ]
    ticks = [0.0, 0.5, 1.0, 1.5, 2.0] if y_max <= 2.0 else [round(y_max * k / 4, 2) for k in range(5)]
    for tick in ticks:
        parts.append(f'<line class="grid" x1="{_MARGIN_LEFT}" x2="{CHART_WIDTH - _MARGIN_RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>')
        parts.append(f'<text x="{_MARGIN_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    bottom = _MARGIN_TOP + plot_h
    parts.append(f'<line class="axis" x1="{_MARGIN_LEFT}" x2="{CHART_WIDTH - _MARGIN_RIGHT}" y1="{bottom}" y2="{bottom}"/>')
    parts.append(f'<line class="axis" x1="{_MARGIN_LEFT}" x2="{_MARGIN_LEFT}" y1="{_MARGIN_TOP}" y2="{bottom}"/>')
    tick_every = _nice_step(n)
    step_ticks = list(range(0, n, tick_every))
    if n and (n - 1) - step_ticks[-1] >= tick_every / 2:  # label the last step unless it would overlap
        step_ticks.append(n - 1)
    for i in step_ticks:
        parts.append(f'<text x="{x(i):.1f}" y="{bottom + 16}" text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{CHART_WIDTH - _MARGIN_RIGHT}" y="{CHART_HEIGHT - 2}" text-anchor="end">step</text>')
    for name, values in (("t", doc.temperature), ("p", doc.top_p)):
        if n:
            points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
            parts.append(f'<polyline class="{name}-line" points="{points}"/>')
        if n <= 300:  # dots (with native SVG tooltips) stay readable up to a few hundred steps
            label = "T" if name == "t" else "P"
            for i, v in enumerate(values):
                parts.append(
                    f'<circle class="{name}-dot" cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.2">'
                    f"<title>step {i}: {label} = {v:.3f}</title></circle>"
                )
    legend_x = CHART_WIDTH - _MARGIN_RIGHT - 190
    parts.append(f'<line x1="{legend_x}" x2="{legend_x + 18}" y1="8" y2="8" class="t-line"/>')
    parts.append(f'<text x="{legend_x + 22}" y="12">temperature</text>')
    parts.append(f'<line x1="{legend_x + 100}" x2="{legend_x + 118}" y1="8" y2="8" class="p-line"/>')
    parts.append(f'<text x="{legend_x + 122}" y="12">top-p</text>')
    parts.append(f'<line class="cursor" x1="0" x2="0" y1="{_MARGIN_TOP}" y2="{bottom}" visibility="hidden"/>')
    parts.append("</svg>")
    return "".join(parts)


def _nice_step(n: int) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        if n / step <= 12:
            return step
    return max(1, n // 10)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _stats_table(doc: TraceDocument) -> str:
    s = doc.summary()
    rows = [
        ("tokens", _fmt(s["tokens"])),
        ("temperature mean ± sd", f"{_fmt(s['temperature_mean'])} ± {_fmt(s['temperature_std'])}"),
        ("temperature range", f"{_fmt(s['temperature_min'])} – {_fmt(s['temperature_max'])}"),
        ("top-p mean ± sd", f"{_fmt(s['top_p_mean'])} ± {_fmt(s['top_p_std'])}"),
        ("top-p range", f"{_fmt(s['top_p_min'])} – {_fmt(s['top_p_max'])}"),
        ("median nucleus size", _fmt(s["nucleus_size_median"], 1)),
        ("single-token nucleus steps", _fmt(s["single_token_steps"])),
        ("mean p(chosen token)", _fmt(s["token_prob_mean"])),
        ("fallback steps", _fmt(s["fallback_steps"])),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="stats">{body}</table>'


def _run_section(doc: TraceDocument, index: int, y_max: float) -> str:
    spans = "".join(_token_span(doc, i) for i in range(len(doc)))
    meta = ", ".join(f"{k}: {v}" for k, v in doc.metadata.items() if v is not None and k not in ("strategy", "settings"))
    return (
        f'<section class="run" data-run="{index}" data-label="{_attr(doc.label)}">'
        f"<h2>{html.escape(doc.label)}</h2>"
        + (f'<p class="meta">{html.escape(meta)}</p>' if meta else "")
        + f'<div class="text" lang="">{spans}</div>'
        + chart_svg(doc, y_max=y_max)
        + _stats_table(doc)
        + "</section>"
    )


def _legend(mode: str, title: str, stops: Any, low: str, high: str, note: str) -> str:
    hidden = "" if mode == "t" else " hidden"
    return (
        f'<div class="legend" data-for="{mode}"{hidden}><strong>{html.escape(title)}</strong>'
        f'<span>{html.escape(low)}</span><span class="bar" style="background:{css_gradient(stops)}"></span>'
        f"<span>{html.escape(high)}</span><span>{html.escape(note)}</span></div>"
    )


def _json_block(data: Any) -> str:
    # ensure_ascii keeps lone surrogates and exotic characters out of the page; escaping <, > and &
    # means no token text can close the <script> element or open a comment.
    text = json.dumps(data, ensure_ascii=True)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_html(doc: TraceDocument, compare: TraceDocument | None = None, *, title: str = "Learned decoding trace") -> str:
    """The page as a string; ``compare`` adds a second run side by side."""
    runs = [doc] if compare is None else [doc, compare]
    y_max = max(2.0, *(max(run.temperature, default=0.0) for run in runs))
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    csp = (
        "default-src 'none'; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{script_hash}'; img-src data:; base-uri 'none'; form-action 'none'"
    )
    legends = _legend(
        "t", "Temperature", TEMPERATURE_STOPS, "0 (greedy)", "2", "white = 1, the model's own distribution"
    ) + _legend("p", "Top-p", TOP_P_STOPS, "0 (narrow)", "1 (all tokens)", "the nucleus mass kept")
    data = {"runs": [run.to_dict() for run in runs]}
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_attr(csp)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # An empty data: icon stops the browser from asking for /favicon.ico.
        '<link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        '<body class="by-t"><main>'
        f"<h1>{html.escape(title)}</h1>"
        '<p class="meta">Each token is coloured by the temperature (or top-p) the heads chose for it; '
        "hover or focus a token for details.</p>"
        f'<div class="prompt" aria-label="prompt">{html.escape(_visible(doc.prompt))}</div>'
        '<div class="controls"><div class="toggle" role="group" aria-label="Colour tokens by">'
        '<button type="button" data-color-by="t" aria-pressed="true">Temperature</button>'
        '<button type="button" data-color-by="p" aria-pressed="false">Top-p</button></div>'
        f"{legends}</div>"
        f'<div class="runs">{"".join(_run_section(run, i, y_max) for i, run in enumerate(runs))}</div>'
        "<footer>Written by deco-middleware. The page embeds the trace as JSON in the "
        "<code>#trace-data</code> script block.</footer>"
        '</main><div id="tooltip" role="tooltip" hidden></div>'
        f'<script type="application/json" id="trace-data">{_json_block(data)}</script>'
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_html(
    doc: TraceDocument, path: str | os.PathLike[str], compare: TraceDocument | None = None, **kwargs: Any
) -> Path:
    """Write :func:`render_html` to ``path`` (atomically) and return the path."""
    path = Path(path)
    atomic_write_bytes(path, render_html(doc, compare, **kwargs).encode("utf-8", errors="replace"))
    return path
