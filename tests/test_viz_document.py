"""The trace document: built from a DecodingTrace, token texts that join to the reply, JSON round trip."""

from __future__ import annotations

import json

import pytest
from _viz_samples import hostile_document

from deco_middleware.trace import DecodingTrace, TraceStep
from deco_middleware.viz import TraceDocument, TraceDocumentError, render_trace, token_texts

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["\u2581Hello", "\u2581world", "\u2581", "!", "\u2581<script>"]


@pytest.fixture(scope="module")
def byte_fallback_tokenizer():
    """A Llama-style SentencePiece tokenizer: '\u2581' for spaces, <0xNN> byte-fallback pieces."""
    from tokenizers import Tokenizer, decoders, models

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for word in WORDS:
        vocab[word] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def ids(tokenizer, pieces):
    return tokenizer.convert_tokens_to_ids(pieces)


def test_token_texts_keep_leading_spaces_and_join_multibyte_characters(byte_fallback_tokenizer):
    pieces = ["\u2581Hello", "\u2581world", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "<0x0A>", "\u2581<script>", "!"]
    token_ids = ids(byte_fallback_tokenizer, pieces)
    texts, spelled = token_texts(byte_fallback_tokenizer, token_ids)
    # Decoded alone, " world" would lose its space and each emoji byte would be U+FFFD.
    assert texts == ["Hello", " world", "", "", "", "\U0001f600", "\n", " <script>", "!"]
    assert spelled == pieces
    assert "".join(texts) == byte_fallback_tokenizer.decode(token_ids, skip_special_tokens=True)


def test_token_texts_give_special_tokens_no_text(byte_fallback_tokenizer):
    token_ids = ids(byte_fallback_tokenizer, ["\u2581Hello", "</s>"])
    texts, spelled = token_texts(byte_fallback_tokenizer, token_ids)
    assert texts == ["Hello", ""]
    assert spelled == ["\u2581Hello", "</s>"]


def test_an_unfinished_character_at_the_end_is_kept_as_replacement(byte_fallback_tokenizer):
    token_ids = ids(byte_fallback_tokenizer, ["\u2581Hello", "<0xF0>", "<0x9F>"])
    texts, _ = token_texts(byte_fallback_tokenizer, token_ids)
    assert texts[:2] == ["Hello", ""]
    assert texts[2].endswith("\ufffd")


def make_trace(byte_fallback_tokenizer, *, finalize: bool = True):
    token_ids = ids(byte_fallback_tokenizer, ["\u2581Hello", "\u2581world", "</s>", "<unk>"])
    prompt_length = 5
    trace = DecodingTrace()
    for step, token in enumerate(token_ids):
        trace.steps.append(
            TraceStep(
                position=prompt_length + step,
                temperature=[0.5 + step / 10, 1.0],
                top_p=[0.9 - step / 10, 1.0],
                fallback=[False, step == 1],
                nucleus_size=[step + 1, 7],
                token_id=[token, 0] if finalize or step < 3 else None,
                token_prob=[0.5, 0.25] if step < 3 else None,
            )
        )
    return trace, token_ids


def test_document_from_trace_stops_after_eos_and_keeps_every_field(byte_fallback_tokenizer):
    trace, token_ids = make_trace(byte_fallback_tokenizer)
    doc = TraceDocument.from_trace(trace, byte_fallback_tokenizer, prompt="hi", metadata={"seed": 3})
    assert doc.token_ids == token_ids[:3]  # the step after </s> is padding
    assert doc.tokens == ["Hello", " world", ""]
    assert doc.temperature == pytest.approx([0.5, 0.6, 0.7])
    assert doc.top_p == pytest.approx([0.9, 0.8, 0.7])
    assert doc.nucleus_size == [1, 2, 3]
    assert doc.token_prob == [0.5, 0.5, 0.5]
    assert doc.metadata == {"seed": 3}
    second_row = TraceDocument.from_trace(trace, byte_fallback_tokenizer, row=1, stop_at_eos=False)
    assert second_row.fallback == [False, True, False, False]
    with pytest.raises(TraceDocumentError, match="row=2"):
        TraceDocument.from_trace(trace, byte_fallback_tokenizer, row=2)


def test_unfinalized_trace_says_to_finalize(byte_fallback_tokenizer):
    trace, _ = make_trace(byte_fallback_tokenizer)
    for step in trace.steps:
        step.token_id = None
    with pytest.raises(TraceDocumentError, match="finalize"):
        TraceDocument.from_trace(trace, byte_fallback_tokenizer)


def test_lists_of_different_lengths_are_refused_naming_them():
    with pytest.raises(TraceDocumentError, match="top_p"):
        TraceDocument(prompt="", tokens=["a", "b"], token_ids=[1, 2], temperature=[1.0, 1.0], top_p=[1.0])
    with pytest.raises(TraceDocumentError, match="temperature"):
        TraceDocument(prompt="", tokens=["a"], token_ids=[1], temperature=[float("nan")], top_p=[1.0])


def test_numpy_values_become_plain_numbers():
    np = pytest.importorskip("numpy")
    doc = TraceDocument(
        prompt="", tokens=["a"], token_ids=[np.int64(4)], temperature=[np.float32(0.5)], top_p=np.array([0.25]),
        nucleus_size=np.array([3]),
    )
    assert doc.temperature == [0.5] and type(doc.temperature[0]) is float
    assert doc.top_p == [0.25] and type(doc.token_ids[0]) is int
    json.dumps(doc.to_dict())
    with pytest.raises(TraceDocumentError, match="top_p"):
        TraceDocument(prompt="", tokens=["a"], token_ids=[1], temperature=[1.0], top_p=["high"])


def test_json_round_trip_keeps_hostile_text(tmp_path):
    doc = hostile_document()
    path = doc.save_json(tmp_path / "trace.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in ("prompt", "tokens", "token_ids", "temperature", "top_p", "nucleus_size", "token_prob"):
        assert data[key] == getattr(doc, key)
    assert data["text"] == doc.text
    assert TraceDocument.load_json(path) == doc


def test_newer_format_is_refused_with_upgrade_hint():
    data = hostile_document().to_dict()
    data["format_version"] = 99
    with pytest.raises(TraceDocumentError, match="Upgrade"):
        TraceDocument.from_dict(data)


def test_summary_statistics():
    doc = TraceDocument(
        prompt="",
        tokens=["a", "b", "c", "d"],
        token_ids=[1, 2, 3, 4],
        temperature=[0.0, 0.5, 1.0, 1.5],
        top_p=[1.0, 0.5, 0.5, 1.0],
        nucleus_size=[1, 1, 4, 10],
        token_prob=[1.0, 0.5, None, 0.0],
    )
    s = doc.summary()
    assert s["tokens"] == 4
    assert s["temperature_mean"] == pytest.approx(0.75)
    assert s["temperature_std"] == pytest.approx(0.5590, abs=1e-4)
    assert (s["temperature_min"], s["temperature_max"]) == (0.0, 1.5)
    assert s["top_p_mean"] == pytest.approx(0.75)
    assert s["nucleus_size_median"] == 2.5
    assert s["single_token_steps"] == 2
    assert s["token_prob_mean"] == pytest.approx(0.5)


def test_render_trace_from_a_trace_writes_every_view(byte_fallback_tokenizer, tmp_path):
    trace, _ = make_trace(byte_fallback_tokenizer)
    doc = render_trace(
        trace,
        byte_fallback_tokenizer,
        prompt="hi",
        html=tmp_path / "t.html",
        png=tmp_path / "t.png",
        json=tmp_path / "t.json",
    )
    assert doc.tokens == ["Hello", " world", ""]
    assert (tmp_path / "t.html").read_text(encoding="utf-8").count('class="tok') == 3
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))["tokens"] == doc.tokens


def test_render_trace_refuses_what_it_cannot_render(byte_fallback_tokenizer):
    with pytest.raises(TraceDocumentError, match="record_trace=True"):
        render_trace(object(), byte_fallback_tokenizer)
    trace, _ = make_trace(byte_fallback_tokenizer)
    with pytest.raises(TraceDocumentError, match="tokenizer"):
        render_trace(trace)


def test_viz_public_names_are_sorted_and_resolve():
    import deco_middleware.viz as viz

    assert viz.__all__ == sorted(viz.__all__)
    for name in viz.__all__:
        assert getattr(viz, name) is not None, name
