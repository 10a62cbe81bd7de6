"""The tap and the processor pair inside real transformers generation, on tiny in-memory models."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from deco_middleware import (  # noqa: E402
    HiddenStateUnavailableError,
    LearnedDecoding,
    UnsupportedGenerationModeError,
)
from deco_middleware.hf import HiddenStateTap, NonFiniteHiddenStateWarning, StackedWarpersWarning  # noqa: E402
from deco_middleware.hf.processors import LearnedTemperatureProcessor, _StepState  # noqa: E402
from deco_middleware.sampling import DecodingSettings, batch_seeds  # noqa: E402

# do_sample=False: generate()'s argmax then picks the token the learned pair drew itself.
GREEDY_KWARGS = {"do_sample": False, "max_new_tokens": 6, "pad_token_id": 3}


def test_tap_equals_last_hidden_state_after_final_norm(tiny_model, tiny_inputs):
    with HiddenStateTap(tiny_model) as tap, torch.no_grad():
        out = tiny_model(**tiny_inputs, output_hidden_states=True)
        hidden, logits = tap.pop()
    torch.testing.assert_close(hidden, out.hidden_states[-1][:, -1, :], rtol=0, atol=0)
    torch.testing.assert_close(logits, out.logits[:, -1, :], rtol=0, atol=0)
    # The captured vector is exactly what the LM head multiplies.
    torch.testing.assert_close(tiny_model.lm_head(hidden), logits)


def test_tap_is_removed_on_exit_and_on_exception(tiny_model, tiny_heads, tiny_inputs):
    lm_head = tiny_model.get_output_embeddings()
    assert not lm_head._forward_hooks
    decoding = LearnedDecoding(tiny_heads)
    with pytest.raises(RuntimeError, match="boom"):
        with decoding.attach(tiny_model):
            assert len(lm_head._forward_hooks) == 1
            raise RuntimeError("boom")
    assert not lm_head._forward_hooks
    with decoding.attach(tiny_model) as session:
        session.generate(**tiny_inputs, max_new_tokens=2)
    assert not lm_head._forward_hooks


def test_processor_does_not_change_scores_in_place(tiny_model, tiny_heads, tiny_inputs):
    with LearnedDecoding(tiny_heads).attach(tiny_model) as session, torch.no_grad():
        scores = tiny_model(**tiny_inputs).logits[:, -1, :].float()
        before = scores.clone()
        out = session.logits_processor(tiny_inputs["input_ids"], scores)
    torch.testing.assert_close(scores, before, rtol=0, atol=0)
    assert out.data_ptr() != scores.data_ptr()


def run_trace(model, heads, inputs, row_seeds=None, **kwargs):
    decoding = LearnedDecoding(heads, record_trace=True, seed=0)
    with decoding.attach(model, row_seeds=row_seeds) as session:
        out = session.generate(**inputs, **{**GREEDY_KWARGS, **kwargs})
    return out, session.trace


def test_left_padded_batch_rows_match_running_each_row_alone(tiny_model, tiny_heads, tiny_tokenizer):
    prompts = ["w1 w2 w3 w4 w5 w6 w7", "w9", "w3 w4"]
    batch = dict(tiny_tokenizer(prompts, return_tensors="pt", padding=True))
    seeds = batch_seeds(0, len(prompts))  # each row keeps its own random stream when run alone
    _, batch_trace = run_trace(tiny_model, tiny_heads, batch, row_seeds=seeds)
    for row, prompt in enumerate(prompts):
        single = dict(tiny_tokenizer([prompt], return_tensors="pt"))
        _, single_trace = run_trace(tiny_model, tiny_heads, single, row_seeds=[seeds[row]])
        batch_t = [step.temperature[row] for step in batch_trace.steps]
        batch_p = [step.top_p[row] for step in batch_trace.steps]
        np.testing.assert_allclose(batch_t, [s.temperature[0] for s in single_trace.steps], atol=1e-4)
        np.testing.assert_allclose(batch_p, [s.top_p[0] for s in single_trace.steps], atol=1e-4)


def test_trace_records_tokens_and_applied_values(tiny_model, tiny_heads, tiny_inputs):
    out, trace = run_trace(tiny_model, tiny_heads, tiny_inputs)
    prompt_len = tiny_inputs["input_ids"].shape[1]
    assert len(trace) == out.shape[1] - prompt_len == 6
    assert trace.complete
    for i, step in enumerate(trace.steps):
        assert step.position == prompt_len + i
        assert step.token_id == out[:, prompt_len + i].tolist()
        assert all(0 < t < 2 for t in step.temperature) and all(0 < p < 1 for p in step.top_p)
        assert all(n >= 1 for n in step.nucleus_size)
    # The chosen token's probability under the final distribution, the last step's included.
    assert all(0 < p <= 1 for step in trace.steps for p in step.token_prob)


def test_greedy_scale_matches_plain_greedy(tiny_model, tiny_heads, tiny_inputs):
    plain = tiny_model.generate(**tiny_inputs, **GREEDY_KWARGS)
    torch.manual_seed(0)
    learned = LearnedDecoding(tiny_heads, temperature_scale=0.0).generate(
        tiny_model, **tiny_inputs, max_new_tokens=6, pad_token_id=3
    )
    torch.testing.assert_close(learned, plain)


def test_sampling_is_seeded_and_applies_learned_values(tiny_model, tiny_heads, tiny_inputs):
    def sample(seed):
        torch.manual_seed(seed)
        return LearnedDecoding(tiny_heads).generate(tiny_model, **tiny_inputs, max_new_tokens=8, pad_token_id=3)

    torch.testing.assert_close(sample(1), sample(1))


def test_heads_read_raw_logits_even_with_repetition_penalty(tiny_model, tiny_heads, tiny_inputs):
    _, plain = run_trace(tiny_model, tiny_heads, tiny_inputs, max_new_tokens=1)
    _, penalised = run_trace(tiny_model, tiny_heads, tiny_inputs, max_new_tokens=1, repetition_penalty=5.0)
    assert plain.steps[0].top_p == penalised.steps[0].top_p  # statistics come from the raw LM-head logits


def test_top_k_and_min_p_settings_run_in_method_order(tiny_model, tiny_heads, tiny_inputs):
    decoding = LearnedDecoding(tiny_heads, record_trace=True, top_k=2, min_p=0.05)
    with decoding.attach(tiny_model) as session:
        session.generate(**tiny_inputs, max_new_tokens=4, pad_token_id=3)
    assert all(size <= 2 for step in session.trace.steps for size in step.nucleus_size)


def test_text_generation_pipeline(tiny_model, tiny_tokenizer, tiny_heads):
    pipe = transformers.pipeline("text-generation", model=tiny_model, tokenizer=tiny_tokenizer)
    with LearnedDecoding(tiny_heads, record_trace=True).attach(pipe) as session:
        result = session.pipeline("w1 w2 w3", max_new_tokens=5)
    assert isinstance(result[0]["generated_text"], str)
    assert len(session.trace) == 5
    # The raw HF way works too: the pair is an ordinary logits_processor list.
    with LearnedDecoding(tiny_heads, record_trace=True).attach(pipe) as raw:
        pipe("w4 w5", max_new_tokens=3, **raw.generate_kwargs)
    assert len(raw.trace) == 3


def test_pipeline_default_temperature_is_reported_as_stacking(tiny_model, tiny_tokenizer, tiny_heads):
    from deco_middleware.hf import check_generate_kwargs

    pipe = transformers.pipeline("text-generation", model=tiny_model, tokenizer=tiny_tokenizer)
    with pytest.warns(StackedWarpersWarning, match="temperature=0.7"):
        stacked = check_generate_kwargs(pipe, {"max_new_tokens": 3})
    assert stacked["temperature"] == 0.7  # (and top_k=50 on transformers 4.57, whose library default it is)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_generate_kwargs(pipe, {"temperature": 1.0, "top_p": 1.0, "top_k": 0}) == {}


def test_model_generation_config_stacking_warns(tiny_heads, tiny_inputs):
    from conftest import make_tiny_model

    model = make_tiny_model()
    model.generation_config.temperature = 0.6
    model.generation_config.top_p = 0.9
    model.generation_config.do_sample = True
    with LearnedDecoding(tiny_heads).attach(model) as session:
        with pytest.warns(StackedWarpersWarning, match="temperature=0.6, top_p=0.9"):
            session.generate(**tiny_inputs, max_new_tokens=2, temperature=0.6, top_p=0.9)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            session.generate(**tiny_inputs, max_new_tokens=2)  # neutralised by the session's arguments


def test_two_threads_on_one_model_never_mix_state(tiny_model, tiny_heads, tiny_tokenizer):
    prompts = {"a": "w1 w2 w3 w4 w5 w6", "b": "w90 w91"}
    expected = {}
    for key, prompt in prompts.items():
        _, trace = run_trace(tiny_model, tiny_heads, dict(tiny_tokenizer([prompt], return_tensors="pt")), max_new_tokens=12)
        expected[key] = [s.temperature for s in trace.steps]
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def worker(key):
        try:
            inputs = dict(tiny_tokenizer([prompts[key]], return_tensors="pt"))
            barrier.wait()
            for _ in range(3):
                _, trace = run_trace(tiny_model, tiny_heads, inputs, max_new_tokens=12)
                results.setdefault(key, []).append([s.temperature for s in trace.steps])
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(k,)) for k in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for key in prompts:
        for run in results[key]:
            np.testing.assert_allclose(run, expected[key], atol=1e-6)


def test_beam_search_is_refused(tiny_model, tiny_heads, tiny_inputs):
    with LearnedDecoding(tiny_heads).attach(tiny_model) as session:
        with pytest.raises(UnsupportedGenerationModeError, match="num_beams"):
            session.generate(**tiny_inputs, num_beams=2, max_new_tokens=2)
        # Calling generate directly with beam search is caught from the log-softmax scores.
        with pytest.raises(UnsupportedGenerationModeError, match="beam search"):
            tiny_model.generate(**tiny_inputs, num_beams=2, do_sample=False, max_new_tokens=2, pad_token_id=3,
                                logits_processor=session.logits_processor)


def test_assisted_decoding_is_refused(tiny_model, tiny_heads, tiny_inputs):
    from conftest import make_tiny_model

    assistant = make_tiny_model(seed=5)
    with LearnedDecoding(tiny_heads).attach(tiny_model) as session:
        with pytest.raises(UnsupportedGenerationModeError, match="assistant_model"):
            session.generate(**tiny_inputs, assistant_model=assistant, max_new_tokens=2)
        single = {k: v[:1] for k, v in tiny_inputs.items()}
        with pytest.raises(HiddenStateUnavailableError, match="assisted"):
            tiny_model.generate(**single, assistant_model=assistant, do_sample=False, max_new_tokens=4,
                                pad_token_id=3, logits_processor=session.logits_processor)


def test_processors_without_attached_tap_fail_clearly(tiny_model, tiny_heads, tiny_inputs):
    session = LearnedDecoding(tiny_heads).attach(tiny_model)  # not entered
    with pytest.raises(HiddenStateUnavailableError, match="not attached"):
        tiny_model.generate(**tiny_inputs, max_new_tokens=1, pad_token_id=3, **session.generate_kwargs)


def test_non_finite_head_output_falls_back_and_warns_once(tiny_model, tiny_heads, tiny_inputs, monkeypatch):
    real_run = tiny_heads.run

    def run_with_nan_row(hidden, logits):
        t, p = real_run(hidden, logits)
        t, p = t.copy(), p.copy()
        t[0], p[0] = np.nan, np.inf
        return t, p

    monkeypatch.setattr(tiny_heads, "run", run_with_nan_row)
    decoding = LearnedDecoding(tiny_heads, record_trace=True, fallback_temperature=0.8, fallback_top_p=0.5)
    with decoding.attach(tiny_model) as session:
        with pytest.warns(NonFiniteHiddenStateWarning) as caught:
            session.generate(**tiny_inputs, max_new_tokens=4, pad_token_id=3)
    assert len(caught) == 1
    assert session.fallback_rows == 4
    assert all(step.temperature[0] == pytest.approx(0.8) and step.fallback == [True, False] for step in session.trace.steps)
    assert all(step.top_p[0] == pytest.approx(0.5) for step in session.trace.steps)


def test_nan_hidden_state_row_falls_back(tiny_heads):
    class FakeTap:
        def pop(self):
            hidden = torch.randn(2, tiny_heads.hidden_size)
            hidden[1, 3] = float("nan")
            return hidden, torch.randn(2, tiny_heads.vocab_size)

    processor = LearnedTemperatureProcessor(tiny_heads, FakeTap(), DecodingSettings(fallback_temperature=0.5), _StepState(None))
    scores = torch.randn(2, tiny_heads.vocab_size)
    with pytest.warns(NonFiniteHiddenStateWarning, match="1 row"):
        out = processor(torch.zeros(2, 3, dtype=torch.long), scores)
    torch.testing.assert_close(out[1], scores[1] / 0.5)
    assert torch.isfinite(out).all()


def test_incompatible_model_is_refused_at_attach(tiny_heads):
    from conftest import make_tiny_model

    from deco_middleware import IncompatibleHeadsError

    with pytest.raises(IncompatibleHeadsError, match="hidden size 64 vs 32"):
        LearnedDecoding(tiny_heads).attach(make_tiny_model(hidden_size=64))


def test_settings_and_keyword_settings_are_exclusive(tiny_heads):
    with pytest.raises(ValueError, match="either `settings` or keyword settings"):
        LearnedDecoding(tiny_heads, DecodingSettings(), temperature_scale=0.5)
