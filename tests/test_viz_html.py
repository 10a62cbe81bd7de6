"""The HTML page as text: self-contained, escaped, its data block and CSP consistent (no browser)."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from html.parser import HTMLParser

from _viz_samples import HOSTILE_TOKENS, hostile_document, static_document

from deco_middleware.viz import render_html
from deco_middleware.viz.colors import hex_color, temperature_rgb, top_p_rgb


class PageParser(HTMLParser):
    """Collects what a browser's parser would see: elements, token spans, script blocks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tokens: list[dict[str, object]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._in_token: dict[str, object] | None = None
        self._in_script: dict[str, str | None] | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "span" and "tok" in (attributes.get("class") or "").split():
            self._in_token = {"attrs": attributes, "text": ""}
            self.tokens.append(self._in_token)
        if tag == "script":
            self._in_script = attributes
            self.scripts.append((attributes, ""))

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_token = None
        if tag == "script":
            self._in_script = None

    def handle_data(self, data):
        if self._in_token is not None:
            self._in_token["text"] += data
        if self._in_script is not None:
            attributes, text = self.scripts[-1]
            self.scripts[-1] = (attributes, text + data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def test_page_fetches_nothing():
    page = render_html(hostile_document(), static_document())
    parser = parse(page)
    for tag, attributes in parser.tags:
        assert tag not in ("iframe", "object", "embed", "img", "audio", "video"), tag
        for name in ("src", "href"):
            value = attributes.get(name)
            assert value is None or value.startswith("data:"), (tag, name, value)
    assert "http://" not in page.split("<body", 1)[1].replace("http://www.w3.org/", "")
    assert "https://" not in page
    assert "@import" not in page and "url(" not in page


def test_every_token_is_one_escaped_span_with_its_values():
    doc = hostile_document()
    parser = parse(render_html(doc))
    assert len(parser.tokens) == len(doc)
    for index, token in enumerate(parser.tokens):
        attributes = token["attrs"]
        assert attributes["data-i"] == str(index)
        assert float(attributes["data-t"]) == doc.temperature[index]
        assert float(attributes["data-p"]) == doc.top_p[index]
        assert int(attributes["data-n"]) == doc.nucleus_size[index]
        assert float(attributes["data-prob"]) == doc.token_prob[index]
        assert f"--ct:{hex_color(temperature_rgb(doc.temperature[index]))}" in attributes["style"]
        assert f"--cp:{hex_color(top_p_rgb(doc.top_p[index]))}" in attributes["style"]
    # The parser saw exactly the token text (control characters shown as control pictures) and no
    # element came out of model output.
    texts = [token["text"] for token in parser.tokens]
    assert texts[4] == "<script>window.__pwned = 1</script>"
    assert texts[5] == ' <img src=x onerror="window.__pwned = 2">'
    assert texts[7] == " &amp; &lt;"
    assert texts[11] == "" and parser.tokens[11]["attrs"]["data-piece"] == "<0xF0>"
    assert texts[14] == "\u2400\u241b[31m"
    assert [t for t in texts if t not in ("\u2400\u241b[31m",)] == [t for t in HOSTILE_TOKENS if "\x00" not in t]
    assert not any(tag == "img" for tag, _ in parser.tags)


def test_only_the_page_script_runs_and_the_csp_pins_it_by_hash():
    parser = parse(render_html(hostile_document()))
    executable = [text for attributes, text in parser.scripts if attributes.get("type") != "application/json"]
    assert len(executable) == 1
    digest = base64.b64encode(hashlib.sha256(executable[0].encode("utf-8")).digest()).decode()
    csp = next(a["content"] for tag, a in parser.tags if tag == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert f"script-src 'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp
    assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";")[0]


def test_data_block_cannot_close_its_script_and_round_trips():
    doc, other = hostile_document(), static_document()
    page = render_html(doc, other)
    block = re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page, re.DOTALL).group(1)
    assert "<" not in block and ">" not in block and "&" not in block
    data = json.loads(block)
    assert data["runs"] == [json.loads(json.dumps(doc.to_dict())), json.loads(json.dumps(other.to_dict()))]


def test_compare_renders_two_runs_with_labels():
    page = render_html(hostile_document(), static_document())
    parser = parse(page)
    sections = [a for tag, a in parser.tags if tag == "section"]
    assert [s["data-label"] for s in sections] == ["autodeco", "static T=0.7, P=0.9"]
    assert len(parser.tokens) == len(hostile_document()) + len(static_document())
    assert page.count('<svg class="chart"') == 2


def test_prompt_and_labels_are_escaped():
    doc = hostile_document(label='<b onmouseover="x()">run</b>')
    page = render_html(doc, title="<i>t</i>")
    assert html.escape('Say <b>hi</b> & "bye" </script>') in page
    assert "<b onmouseover" not in page and "<i>t</i>" not in page
