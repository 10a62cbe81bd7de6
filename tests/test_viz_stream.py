"""Streaming with the learned pair: TextIteratorStreamer in a background thread, and TraceStreamer."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from deco_middleware import LearnedDecoding  # noqa: E402
from deco_middleware.viz import TraceStreamer, TraceStreamerError  # noqa: E402

MAX_NEW = 8


@pytest.fixture
def one_prompt(tiny_tokenizer):
    return dict(tiny_tokenizer(["w1 w2 w3 w4 w5"], return_tensors="pt"))


def generate_in_thread(session, inputs, streamer, seed=0):
    result = {}

    def run():
        torch.manual_seed(seed)
        result["out"] = session.generate(**inputs, max_new_tokens=MAX_NEW, pad_token_id=3, streamer=streamer)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_text_iterator_streamer_sees_the_same_reply_and_trace(tiny_model, tiny_tokenizer, tiny_heads, one_prompt):
    with LearnedDecoding(tiny_heads, record_trace=True).attach(tiny_model) as reference:
        torch.manual_seed(0)
        expected = reference.generate(**one_prompt, max_new_tokens=MAX_NEW, pad_token_id=3)
    with LearnedDecoding(tiny_heads, record_trace=True).attach(tiny_model) as session:
        streamer = transformers.TextIteratorStreamer(tiny_tokenizer, skip_prompt=True, timeout=60, skip_special_tokens=True)
        thread, result = generate_in_thread(session, one_prompt, streamer)
        chunks = list(streamer)  # the processors run in the generate thread, the tap is keyed by it
        thread.join(timeout=60)
    assert not thread.is_alive()
    new_ids = result["out"][0, one_prompt["input_ids"].shape[1] :]
    assert torch.equal(result["out"], expected)  # streaming changes nothing about the decisions
    assert "".join(chunks).strip() == tiny_tokenizer.decode(new_ids, skip_special_tokens=True).strip()
    assert [s.temperature for s in session.trace.steps] == [s.temperature for s in reference.trace.steps]
    assert session.trace.complete and len(session.trace) == len(new_ids)


def test_trace_streamer_pairs_each_token_with_its_decision(tiny_model, tiny_tokenizer, tiny_heads, one_prompt):
    with LearnedDecoding(tiny_heads, record_trace=True).attach(tiny_model) as session:
        streamer = TraceStreamer(tiny_tokenizer, session, timeout=60)
        thread, result = generate_in_thread(session, one_prompt, streamer)
        streamed = list(streamer)
        thread.join(timeout=60)
    new_ids = result["out"][0, one_prompt["input_ids"].shape[1] :].tolist()
    assert [t.token_id for t in streamed] == new_ids
    assert [t.index for t in streamed] == list(range(len(new_ids)))
    steps = session.trace.steps
    assert [t.temperature for t in streamed] == [s.temperature[0] for s in steps]
    assert [t.top_p for t in streamed] == [s.top_p[0] for s in steps]
    assert [t.nucleus_size for t in streamed] == [s.nucleus_size[0] for s in steps]
    assert all(t.temperature > 0 for t in streamed)
    assert "".join(t.text for t in streamed) == tiny_tokenizer.decode(new_ids, skip_special_tokens=True)


def test_trace_streamer_needs_a_recorded_trace_and_one_row(tiny_model, tiny_tokenizer, tiny_heads):
    with LearnedDecoding(tiny_heads).attach(tiny_model) as session:
        with pytest.raises(TraceStreamerError, match="record_trace=True"):
            TraceStreamer(tiny_tokenizer, session)
    with LearnedDecoding(tiny_heads, record_trace=True).attach(tiny_model) as session:
        streamer = TraceStreamer(tiny_tokenizer, session)
        with pytest.raises(TraceStreamerError, match="batch of 2"):
            streamer.put(torch.ones(2, 3, dtype=torch.long))
