"""Torch heads built from the shipped ONNX artifact give ONNX Runtime's outputs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from deco_middleware.heads import DecodingHeads  # noqa: E402
from deco_middleware.heads.torch_artifact import torch_heads_from_artifact  # noqa: E402


@pytest.fixture(scope="module")
def heads() -> DecodingHeads:
    return DecodingHeads.from_pretrained("smollm2-135m-instruct")


def test_torch_heads_equal_onnx_runtime(heads: DecodingHeads) -> None:
    module = torch_heads_from_artifact(heads)
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((7, heads.hidden_size)).astype(np.float32) * 2
    logits = rng.standard_normal((7, heads.vocab_size)).astype(np.float32) * 6
    logits[0, 17] = 40.0  # one peaked row: near-greedy statistics
    ort_t, ort_p = heads.run(hidden, logits)
    with torch.no_grad():
        t, p = module(torch.from_numpy(hidden), torch.from_numpy(logits))
    np.testing.assert_allclose(t.numpy(), ort_t, rtol=0, atol=1e-5)
    np.testing.assert_allclose(p.numpy(), ort_p, rtol=0, atol=1e-5)
    assert float(np.abs(ort_t - ort_t.mean()).max()) > 1e-3  # the rows differ: a real comparison


def test_weights_are_buffers_not_parameters(heads: DecodingHeads) -> None:
    module = torch_heads_from_artifact(heads)
    assert list(module.parameters()) == []
    assert module.state_dict() == {}  # non-persistent: never mistaken for checkpoint weights
    assert {name for name, _ in module.named_buffers()} >= {"temp_head.mlp.0.weight", "top_p_head.mlp.2.bias"}
