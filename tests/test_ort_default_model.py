"""Torch vs ONNX Runtime parity on the real default model (marked `model`; needs `deco-middleware[ort]`).

The ONNX export of the default model is created on first use (a few minutes) and cached in
$DECO_MODEL_CACHE. Parity is measured against the torch model in float32, the dtype of the
export; the torch backend's default bf16 differs from fp32 itself (see the README's ORT section).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("optimum.onnxruntime")
torch = pytest.importorskip("torch")

from conftest import random_heads_weights  # noqa: E402

from deco_middleware import DecodingHeads, export_heads  # noqa: E402
from deco_middleware.errors import DecoError  # noqa: E402
from deco_middleware.hf import LearnedDecoding, model_identity  # noqa: E402
from deco_middleware.ort import (  # noqa: E402
    OnnxCausalLM,
    OnnxGenerator,
    ORTModelForCausalLMWithHiddenStates,
    ensure_default_onnx,
    heads_for_identity,
)

pytestmark = pytest.mark.model
PROMPT = "What is 7 times 8?"


@pytest.fixture(scope="module")
def default_fp32():
    if os.environ.get("DECO_SKIP_MODEL_TESTS"):
        pytest.skip("DECO_SKIP_MODEL_TESTS is set")
    from deco_middleware.default_model import ensure_default_model
    from deco_middleware.ort.compat import load_causal_lm, load_tokenizer

    path = ensure_default_model()
    return load_causal_lm(path, torch.float32), load_tokenizer(path)


@pytest.fixture(scope="module")
def default_export(default_fp32):
    return ensure_default_onnx()


@pytest.fixture(scope="module")
def default_heads(default_fp32, tmp_path_factory):
    model, _ = default_fp32
    identity = model_identity(model)
    try:
        return heads_for_identity("default", identity)
    except DecoError:  # no shipped heads yet: parity is about the backends, any fixed heads will do
        directory = tmp_path_factory.mktemp("default_heads")
        export_heads(random_heads_weights(identity.hidden_size, seed=5), directory, base_model=identity)
        return DecodingHeads.from_pretrained(directory)


@pytest.fixture(scope="module")
def chat_batch(default_fp32):
    from deco_middleware.generation import chat_inputs

    _, tokenizer = default_fp32
    inputs = chat_inputs(tokenizer, [PROMPT])
    inputs.pop("token_type_ids", None)  # transformers 4.57's fast tokenizer adds them; Llama takes none
    return inputs


def test_torch_and_ort_generate_identical_tokens_and_decisions(default_fp32, default_export, default_heads, chat_batch):
    model, tokenizer = default_fp32
    ort_model = ORTModelForCausalLMWithHiddenStates.from_pretrained(default_export)
    runs = {}
    for name, candidate in (("torch", model), ("ort", ort_model)):
        torch.manual_seed(0)
        with LearnedDecoding(default_heads, record_trace=True).attach(candidate) as session:
            sequences = session.generate(**chat_batch, max_new_tokens=32, min_new_tokens=32,
                                         pad_token_id=tokenizer.pad_token_id)
        runs[name] = sequences, session.trace.steps
    assert runs["torch"][0].tolist() == runs["ort"][0].tolist()
    torch_steps, ort_steps = runs["torch"][1], runs["ort"][1]
    assert len(torch_steps) == len(ort_steps) == 32
    np.testing.assert_allclose([s.temperature for s in ort_steps], [s.temperature for s in torch_steps], atol=1e-3)
    np.testing.assert_allclose([s.top_p for s in ort_steps], [s.top_p for s in torch_steps], atol=1e-3)


def test_torch_free_loop_greedy_equals_ort_generate_greedy(default_fp32, default_export, default_heads, chat_batch):
    _, tokenizer = default_fp32
    ort_model = ORTModelForCausalLMWithHiddenStates.from_pretrained(default_export)
    with LearnedDecoding(default_heads, temperature_scale=0.0).attach(ort_model) as session:
        sequences = session.generate(**chat_batch, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id)
    expected = sequences[0, chat_batch["input_ids"].shape[1] :].tolist()
    generator = OnnxGenerator(OnnxCausalLM(default_export), default_heads, temperature_scale=0.0)
    result = generator.generate([chat_batch["input_ids"][0].tolist()], max_new_tokens=8,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert result.token_ids[0] == expected[: len(result.token_ids[0])]
    assert len(result.token_ids[0]) == 8 or result.finish_reason[0] == "eos"
