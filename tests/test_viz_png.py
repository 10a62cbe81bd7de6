"""The PNG chart: a valid image of the expected size, whatever the token text."""

from __future__ import annotations

import io

import pytest
from _viz_samples import hostile_document, static_document

from deco_middleware.viz import TraceDocument, png_size, render_png, write_png
from deco_middleware.viz.png import MAX_WIDTH_PX, MIN_WIDTH_PX, PANEL_HEIGHT_PX, token_label

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")


def image_of(data: bytes):
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_png_is_a_valid_image_of_the_default_size(tmp_path):
    doc = hostile_document()  # emoji, "$x^2$", control characters: no mathtext error, no glyph warning
    path = write_png(doc, tmp_path / "trace.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with image_of(data) as image:
        assert image.format == "PNG"
        assert image.size == png_size(doc) == (MIN_WIDTH_PX, PANEL_HEIGHT_PX)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # lines, labels and text were drawn


def test_png_size_grows_with_tokens_and_compare_adds_a_panel():
    long_doc = static_document(n=100)
    width, height = png_size(long_doc, hostile_document())
    assert width == 120 + 16 * 100 and height == 2 * PANEL_HEIGHT_PX
    with image_of(render_png(long_doc, hostile_document())) as image:
        assert image.size == (width, height)
    huge = static_document(n=2000)
    assert png_size(huge)[0] == MAX_WIDTH_PX


def test_explicit_size_is_honoured_and_too_small_is_refused():
    with image_of(render_png(hostile_document(), width_px=640, height_px=360)) as image:
        assert image.size == (640, 360)
    with pytest.raises(ValueError, match="too small"):
        render_png(hostile_document(), width_px=50, height_px=50)


def test_empty_reply_still_draws():
    empty = TraceDocument(prompt="", tokens=[], token_ids=[], temperature=[], top_p=[])
    with image_of(render_png(empty)) as image:
        assert image.size == png_size(empty)


def test_token_labels_make_whitespace_and_missing_glyphs_visible():
    assert token_label("\n", "<0x0A>") == "\u21b5"
    assert token_label("  ", "  ") == "\u2423\u2423"
    assert token_label("", "<0xF0>") == "<0xF0>"
    assert token_label("\x00", "<0x00>") == "U+0000"
    assert token_label("x" * 40, "x").endswith("\u2026") and len(token_label("x" * 40, "x")) == 18
