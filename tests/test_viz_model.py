"""End to end on the real default model: a traced reply and its views (random heads, a few tokens)."""

from __future__ import annotations

import threading

import pytest

torch = pytest.importorskip("torch")

from deco_middleware import LearnedDecoding, export_heads  # noqa: E402
from deco_middleware.viz import TraceStreamer, render_html, trace_generation  # noqa: E402

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def untrained_heads_dir(default_model, tmp_path_factory):
    """Randomly initialised heads for the default model: they exercise the plumbing, not the method."""
    from deco_middleware.heads.modules import AutoDecoHeads
    from deco_middleware.hf import model_identity

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("untrained_heads")
    export_heads(AutoDecoHeads(576).numpy_weights(), directory, base_model=model_identity(default_model[0]))
    return directory


def test_traced_reply_on_the_default_model(default_model, untrained_heads_dir):
    model, tokenizer = default_model
    doc = trace_generation(
        "Write the word hello.", model=model, tokenizer=tokenizer, heads=untrained_heads_dir, max_new_tokens=4
    )
    assert 1 <= len(doc) <= 4
    assert doc.text == tokenizer.decode(doc.token_ids, skip_special_tokens=True)
    assert all(isinstance(n, int) and 1 <= n <= 49152 for n in doc.nucleus_size)
    # The last step's probability is known only once a next step runs (see DecodingTrace.finalize).
    assert all(0 < p <= 1 for p in doc.token_prob)
    assert all(0 < t < 2 for t in doc.temperature) and all(0 <= p <= 1 for p in doc.top_p)
    assert render_html(doc).count('class="tok') == len(doc)


def test_streaming_on_the_default_model(default_model, untrained_heads_dir):
    model, tokenizer = default_model
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hi."}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with LearnedDecoding(untrained_heads_dir, record_trace=True).attach(model) as session:
        streamer = TraceStreamer(tokenizer, session, timeout=120)
        result = {}
        thread = threading.Thread(
            target=lambda: result.update(out=session.generate(**inputs, max_new_tokens=5, streamer=streamer))
        )
        thread.start()
        streamed = list(streamer)
        thread.join(timeout=120)
    new_ids = result["out"][0, inputs["input_ids"].shape[1] :].tolist()
    assert [t.token_id for t in streamed] == new_ids
    assert "".join(t.text for t in streamed) == tokenizer.decode(new_ids, skip_special_tokens=True)
    assert [t.temperature for t in streamed] == [s.temperature[0] for s in session.trace.steps]
