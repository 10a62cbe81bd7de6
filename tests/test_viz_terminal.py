"""Coloured terminal output: each token on the background of its temperature, a legend, no markup."""

from __future__ import annotations

import pytest
from _viz_samples import hostile_document

from deco_middleware.viz import TraceDocument, legend_text, print_trace, trace_text
from deco_middleware.viz.colors import temperature_rgb, top_p_rgb

rich_console = pytest.importorskip("rich.console")
from rich.style import Style  # noqa: E402


def span_colours(text):
    return [(text.plain[s.start : s.end], Style.parse(str(s.style)).bgcolor.triplet) for s in text.spans]


def test_each_token_gets_its_temperature_colour():
    doc = hostile_document()
    text = trace_text(doc)
    spans = span_colours(text)
    assert len(spans) == len(doc)
    for (shown, colour), token, temperature in zip(spans, doc.tokens, doc.temperature):
        assert tuple(colour) == temperature_rgb(temperature)
        expected = token.replace("\n", "\u21b5\n").replace("\x00", "\u2400").replace("\x1b", "\u241b")
        assert expected == shown or (not token and shown == "\u27e8<0xF0>\u27e9")


def test_colour_by_top_p_and_unknown_mode():
    doc = hostile_document()
    spans = span_colours(trace_text(doc, color_by="top_p"))
    assert [tuple(colour) for _, colour in spans] == [top_p_rgb(p) for p in doc.top_p]
    with pytest.raises(ValueError, match="color_by"):
        trace_text(doc, color_by="entropy")


def test_printed_output_keeps_markup_literal_and_has_legend_and_summary():
    doc = hostile_document()
    console = rich_console.Console(record=True, width=100, force_terminal=True, color_system="truecolor")
    print_trace(doc, console)
    plain = console.export_text(clear=False)
    assert "[bold]markup[/bold]" in plain  # token text is never read as rich markup
    assert "<script>window.__pwned = 1</script>" in plain
    assert "temperature: 0 greedy" in plain
    assert f"{len(doc)} tokens" in plain
    coloured = console.export_text(styles=True)
    r, g, b = temperature_rgb(doc.temperature[0])
    assert f"48;2;{r};{g};{b}m" in coloured  # a truecolor background escape for the first token
    # The token "\x00\x1b[31m" must not switch the terminal to red: ESC is shown as a picture.
    assert "\x1b[31m" not in coloured and "\u2400\u241b[31m" in plain


def test_legend_spans_the_scale():
    legend = legend_text()
    styles = [Style.parse(str(s.style)) for s in legend.spans]
    colours = [style.bgcolor.triplet for style in styles if style.bgcolor is not None]
    assert len(colours) == 9
    assert tuple(colours[0]) == temperature_rgb(0.0) and tuple(colours[-1]) == temperature_rgb(2.0)


def test_generation_result_converts_for_generate_show():
    result = {"tokens": ["a", " b"], "token_ids": [5, 6], "temperature": [0.5, 1.5], "top_p": [0.9, 1.0],
              "strategy": "autodeco", "model": "m", "heads": "h", "seed": 1}
    doc = TraceDocument.from_generation(result, prompt="q")
    assert (doc.tokens, doc.temperature, doc.label, doc.metadata["seed"]) == (["a", " b"], [0.5, 1.5], "autodeco", 1)


def test_render_trace_accepts_a_generate_text_result(tmp_path):
    from deco_middleware.viz import render_trace

    result = {"tokens": ["a", " b"], "token_ids": [5, 6], "temperature": [0.5, 1.5], "top_p": [0.9, 1.0]}
    console = rich_console.Console(record=True, width=80)
    doc = render_trace(result, prompt="q", show=True, console=console, json=tmp_path / "t.json")
    assert doc.text == "a b" and doc.prompt == "q"
    assert "a b" in console.export_text() and (tmp_path / "t.json").is_file()
