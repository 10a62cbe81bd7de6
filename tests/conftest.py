"""Shared fixtures: a tiny in-memory causal LM with a word-level tokenizer, heads exported for it,
and (for tests marked `model`) the real embedded default model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from deco_middleware import DecodingHeads, export_heads

# torch and transformers are optional (the `core` tox env has neither): import them in fixtures.

TINY_WORDS = [f"w{i}" for i in range(120)]


def make_tiny_tokenizer():
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for word in TINY_WORDS:
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        padding_side="left", model_input_names=["input_ids", "attention_mask"],
    )


def make_tiny_model(seed: int = 0, hidden_size: int = 32, vocab_size: int = 128):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    # Random init gives near-uniform logits; sharpen the LM head so distributions look like an LM's.
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    model.generation_config.pad_token_id = 3
    return model


def random_heads_weights(hidden_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    torch = pytest.importorskip("torch")
    from deco_middleware.heads.modules import AutoDecoHeads

    torch.manual_seed(seed)
    return AutoDecoHeads(hidden_size).numpy_weights()


@pytest.fixture(scope="session")
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_heads_dir(tmp_path_factory, tiny_model) -> Path:
    from deco_middleware.hf import model_identity

    directory = tmp_path_factory.mktemp("tiny_heads")
    export_heads(random_heads_weights(tiny_model.config.hidden_size), directory, base_model=model_identity(tiny_model))
    return directory


@pytest.fixture(scope="session")
def tiny_heads(tiny_heads_dir) -> DecodingHeads:
    return DecodingHeads.from_pretrained(tiny_heads_dir)


@pytest.fixture
def tiny_inputs(tiny_tokenizer):
    return dict(tiny_tokenizer(["w1 w2 w3 w4 w5", "w7 w8"], return_tensors="pt", padding=True))


@pytest.fixture(scope="session")
def default_model():
    """The real SmolLM2-135M-Instruct, provisioned by the project's own code (cached)."""
    from deco_middleware.default_model import load_model

    if os.environ.get("DECO_SKIP_MODEL_TESTS"):
        pytest.skip("DECO_SKIP_MODEL_TESTS is set")
    return load_model("default")
