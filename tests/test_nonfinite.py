"""A NaN/inf hidden state in the REAL default model: one row ends with EOS, the others go on (issue #18 item 1).

A forward pre-hook on the LM head overwrites one row's hidden state at one step, exactly what a
numerical fault upstream of the head would produce: that row's logits become NaN too. The
documented outcome (deco_middleware.rows): the row ends there with its end-of-sequence token, the
event is counted, and every other row draws exactly the tokens of a clean run with the same seeds.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deco_middleware.engine import EngineStats, Learned, Static, sample  # noqa: E402
from deco_middleware.hf import LearnedDecoding, NonFiniteHiddenStateWarning, PredictorDecoding  # noqa: E402
from deco_middleware.hf.chat import chat_inputs  # noqa: E402
from deco_middleware.sampling import StaticPredictor  # noqa: E402

pytestmark = pytest.mark.model
PROMPTS = ["Count from one to twenty in words.", "Count from one to twenty in words."]  # one length: rows keep order
NEW_TOKENS = 6
BAD_STEP = 3  # the fourth forward pass: prefill is 0


class PoisonRow:
    """Forward pre-hook on the LM head: row ``row`` of the hidden state becomes ``value`` at forward ``at``."""

    def __init__(self, model, row: int = 1, at: int = BAD_STEP, value: float = math.nan) -> None:
        self.row, self.at, self.value, self.calls = row, at, value, 0
        self.handle = model.get_output_embeddings().register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        call, self.calls = self.calls, self.calls + 1
        if call != self.at:
            return None
        hidden = args[0].clone()
        hidden[self.row] = self.value
        return (hidden, *args[1:])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def model_and_tokenizer(default_model):
    return default_model


@pytest.fixture(scope="module")
def heads(model_and_tokenizer):
    from deco_middleware.heads.select import heads_for_model

    return heads_for_model("default", model_and_tokenizer[0])


def _eos(model):
    eos = model.generation_config.eos_token_id
    return eos[0] if isinstance(eos, list) else eos


def _generate(model, tokenizer, decoding, poison=None):
    inputs = chat_inputs(tokenizer, PROMPTS)
    with decoding.attach(model) as session:
        if poison is not None:
            with PoisonRow(model, value=poison), pytest.warns(NonFiniteHiddenStateWarning, match="end with EOS"):
                out = session.generate(**inputs, max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                out = session.generate(**inputs, max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_token_id)
    return out[:, inputs["input_ids"].shape[1]:].tolist(), session


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("kind", ["learned", "static"])
def test_generate_ends_the_bad_row_with_eos_and_leaves_the_other_alone(model_and_tokenizer, heads, kind, value):
    model, tokenizer = model_and_tokenizer
    make = (lambda: LearnedDecoding(heads, record_trace=True, seed=4)) if kind == "learned" else (
        lambda: PredictorDecoding(StaticPredictor(0.7, 0.9), record_trace=True, seed=4))
    clean, _ = _generate(model, tokenizer, make())
    poisoned, session = _generate(model, tokenizer, make(), poison=value)
    eos = _eos(model)
    assert poisoned[0] == clean[0]  # the healthy row draws exactly what it draws alone
    assert poisoned[1][:BAD_STEP] == clean[1][:BAD_STEP]
    assert poisoned[1][BAD_STEP] == eos  # then ends with EOS (the rest is generate()'s padding)
    assert session.nonfinite_rows == 1 and session.fallback_rows >= 1
    assert session.trace.steps[BAD_STEP].fallback == [False, True]
    assert session.trace.steps[BAD_STEP].nucleus_size[1] == 0


@pytest.mark.parametrize("policy_kind", ["learned", "static"])
def test_engine_ends_the_bad_row_with_eos_and_counts_it(model_and_tokenizer, heads, policy_kind):
    model, tokenizer = model_and_tokenizer
    policy = Learned(heads) if policy_kind == "learned" else Static(0.7, 0.9)
    clean = sample(model, tokenizer, PROMPTS, policy=policy, seed=2, max_new_tokens=NEW_TOKENS)
    stats = EngineStats()
    with PoisonRow(model):
        poisoned = sample(model, tokenizer, PROMPTS, policy=policy, seed=2, max_new_tokens=NEW_TOKENS, stats=stats)
    eos = _eos(model)
    assert poisoned[0][0].token_ids == clean[0][0].token_ids
    bad = poisoned[1][0]
    assert bad.token_ids == [*clean[1][0].token_ids[:BAD_STEP], eos] and bad.finished
    assert len(bad.temperatures) == len(bad.token_ids)  # the EOS step is recorded like any other
    assert stats.nonfinite_rows == 1 and stats.fallback_rows == 1


def test_ort_loop_ends_a_row_with_nan_logits_with_eos():
    """The torch-free loop on the committed tiny export: row 1's outputs turn NaN at one step."""
    from pathlib import Path

    from deco_middleware.ort import OnnxCausalLM, OnnxGenerator

    asset = Path(__file__).parent / "assets" / "ort_tiny" / "lm"
    lm = OnnxCausalLM(asset)
    clean = OnnxGenerator(lm).generate([[5, 6, 7], [5, 6, 7]], max_new_tokens=NEW_TOKENS, seed=3, eos_token_id=2)
    real_step, calls = lm.step, []

    def step(cache, next_ids):
        outputs, cache = real_step(cache, next_ids)
        calls.append(1)
        if len(calls) == BAD_STEP:
            outputs.hidden_states[1] = np.nan
            outputs.logits[1] = np.nan
        return outputs, cache

    lm.step = step
    result = OnnxGenerator(lm).generate([[5, 6, 7], [5, 6, 7]], max_new_tokens=NEW_TOKENS, seed=3, eos_token_id=2)
    assert result.token_ids[0] == clean.token_ids[0]
    assert result.token_ids[1] == [*clean.token_ids[1][:BAD_STEP], 2] and result.finish_reason[1] == "eos"
    assert result.nonfinite_rows == 1
