"""One prompt, one seed, every installed backend: the same tokens, T and P (issue #17).

Every backend runs the same decoding step (``sampling.decode_step``) and the same per-row seeded
draw (``RowRandom(row_seeds(seed, 1, 0))``): Hugging Face ``generate()`` on the torch float32
model (through ``generate_text``), the batched engine, the torch-free ONNX Runtime loop on the
default model's export (when it is cached), and Optimum's ONNX Runtime model (when installed).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.model
PROMPT = "Name three colours of the rainbow."
SEED = 11
NEW_TOKENS = 16
STRATEGIES = ("greedy", "static:0.7,0.9", "autodeco")


@pytest.fixture(scope="module")
def setup(default_model):
    from deco_middleware.heads.select import heads_for_model

    model, tokenizer = default_model
    assert next(model.parameters()).dtype == torch.float32
    return model, tokenizer, heads_for_model("default", model)


def _hf(setup, strategy):
    from deco_middleware.generation import generate_text

    model, tokenizer, heads = setup
    result = generate_text(PROMPT, model=model, tokenizer=tokenizer, heads=heads, strategy=strategy, seed=SEED,
                           max_new_tokens=NEW_TOKENS)
    return result["token_ids"], result["temperature"], result["top_p"]


def _engine(setup, strategy):
    from deco_middleware.engine import sample
    from deco_middleware.strategies import parse_strategy

    model, tokenizer, heads = setup
    parsed = parse_strategy(strategy)
    predictor = parsed.predictor(heads if parsed.learned else None)
    (completion,) = sample(model, tokenizer, [PROMPT], policy=predictor, seed=SEED, max_new_tokens=NEW_TOKENS)[0]
    return completion.token_ids, completion.temperatures, completion.top_ps


def _ort(setup, strategy):
    from deco_middleware.ort.backend import default_onnx_path, generate_text_ort
    from deco_middleware.ort.graph import EXPORT_INFO_NAME

    path = default_onnx_path()
    if not (path / EXPORT_INFO_NAME).is_file():
        pytest.skip(f"no cached ONNX export of the default model at {path} (`deco export-lm` needs optimum-onnx)")
    result = generate_text_ort(PROMPT, model=path, heads=setup[2], strategy=strategy, seed=SEED,
                               max_new_tokens=NEW_TOKENS)
    return result["token_ids"], result["temperature"], result["top_p"]


def _optimum(setup, strategy):
    if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.onnxruntime") is None:
        pytest.skip("optimum-onnx is not installed")
    from deco_middleware.generation import generate_text
    from deco_middleware.ort import load_model_ort

    model, tokenizer = load_model_ort("default")
    result = generate_text(PROMPT, model=model, tokenizer=tokenizer, heads=setup[2], strategy=strategy, seed=SEED,
                           max_new_tokens=NEW_TOKENS)
    return result["token_ids"], result["temperature"], result["top_p"]


BACKENDS = {"engine": _engine, "ort": _ort, "optimum": _optimum}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_backend_agrees_with_generate(setup, strategy, backend):
    expected_ids, expected_t, expected_p = _hf(setup, strategy)
    assert len(expected_ids) >= 4 and len(expected_t) == len(expected_ids)
    ids, temperature, top_p = BACKENDS[backend](setup, strategy)
    assert ids == expected_ids
    np.testing.assert_allclose(temperature, expected_t, rtol=0, atol=1e-5)
    np.testing.assert_allclose(top_p, expected_p, rtol=0, atol=1e-5)
    if strategy == "greedy":
        assert set(temperature) == {0.0}
    elif strategy.startswith("static"):
        assert set(temperature) == {0.7} and set(top_p) == {0.9}
    else:
        assert len(set(temperature)) > 1  # the heads really decided per token


def test_the_same_seed_samples_a_different_reply_than_another_seed(setup):
    """The agreement above is about the seed, not about sampling being switched off."""
    from deco_middleware.generation import generate_text

    model, tokenizer, heads = setup
    replies = {tuple(generate_text(PROMPT, model=model, tokenizer=tokenizer, heads=heads, strategy="static:1.0,1.0",
                                   seed=seed, max_new_tokens=NEW_TOKENS)["token_ids"]) for seed in (1, 2, 3)}
    assert len(replies) > 1
