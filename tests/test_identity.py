"""The base-model identity (lm-head-sketch-v2) on real torch models: what it accepts and refuses.

Every identity producer (the Hugging Face model, the exported ONNX LM) goes through one function in
``fingerprint.py``; these tests pin that they agree, and that the whole LM head is covered.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from deco_middleware import DecodingHeads, IncompatibleHeadsError
from deco_middleware.fingerprint import METHOD, fingerprint_distance, fingerprint_from_matrix

torch = pytest.importorskip("torch")


def test_numpy_bfloat16_rounding_equals_torch():
    from deco_middleware.fingerprint import _round_to_bfloat16

    values = torch.randn(10000) * torch.logspace(-30, 30, 10000)
    values[:4] = torch.tensor([0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8])  # exact ties round to even
    expected = values.to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(_round_to_bfloat16(values.numpy()), expected)


def test_bfloat16_copy_has_the_same_fingerprint_exactly(tiny_model):
    from deco_middleware.hf import model_identity

    ours = model_identity(tiny_model, use_cache=False).lm_head_fingerprint
    theirs = model_identity(copy.deepcopy(tiny_model).to(torch.bfloat16), use_cache=False).lm_head_fingerprint
    assert ours.method == theirs.method == METHOD
    assert fingerprint_distance(ours.values, theirs.values) < 1e-12


def test_scaled_and_fine_tuned_heads_are_refused(tiny_heads, tiny_model):
    from deco_middleware.hf import model_identity

    scaled = copy.deepcopy(tiny_model)
    with torch.no_grad():
        scaled.get_output_embeddings().weight.mul_(1.011)
    with pytest.raises(IncompatibleHeadsError, match="fingerprint differs by 0.01[12] "):
        tiny_heads.check_compatible(model_identity(scaled))

    tuned = copy.deepcopy(tiny_model)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=1e-3)
    for _ in range(5):
        tuned(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with pytest.raises(IncompatibleHeadsError, match="a different model or a fine-tune"):
        tiny_heads.check_compatible(model_identity(tuned))


def test_the_cached_fingerprint_follows_in_place_changes(tiny_model):
    from deco_middleware.hf import model_identity

    model = copy.deepcopy(tiny_model)
    before = model_identity(model).lm_head_fingerprint.values
    assert model_identity(model).lm_head_fingerprint.values == before  # served from the cache
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(1.1)  # bumps the tensor's version counter
    after = model_identity(model).lm_head_fingerprint.values
    assert after == model_identity(model, use_cache=False).lm_head_fingerprint.values
    assert fingerprint_distance(before, after) > 0.05


def test_hf_and_numpy_producers_agree(tiny_model):
    from deco_middleware.hf import model_identity

    weight = tiny_model.get_output_embeddings().weight.detach().numpy()
    assert model_identity(tiny_model, use_cache=False).lm_head_fingerprint.values == fingerprint_from_matrix(weight)


def test_ort_export_identity_uses_the_same_function(tmp_path):
    from deco_middleware.ort.export import exported_identity
    from deco_middleware.ort.graph import lm_head_weight

    from pathlib import Path

    lm = Path(__file__).parent / "assets" / "ort_tiny" / "lm"
    identity = exported_identity(lm, name="tiny", architecture="LlamaForCausalLM")
    weight = lm_head_weight(lm / "model.onnx")
    assert identity.lm_head_fingerprint.method == METHOD
    assert identity.lm_head_fingerprint.values == fingerprint_from_matrix(np.asarray(weight))
    recorded = json.loads((lm / "deco_export.json").read_text())["base_model"]["lm_head_fingerprint"]
    assert recorded == identity.lm_head_fingerprint.model_dump(mode="json")


def test_restamp_a_legacy_manifest_for_a_torch_model(tiny_heads_dir, tiny_model, tmp_path):
    import shutil

    from deco_middleware.heads.restamp import restamp
    from deco_middleware.hf import model_identity
    from deco_middleware.hf.identity import legacy_lm_head_values

    target = tmp_path / "legacy"
    shutil.copytree(tiny_heads_dir, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["base_model"]["lm_head_fingerprint"] = {"method": "lm-head-rows-v1", "values": legacy_lm_head_values(tiny_model)}
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleHeadsError, match="retired fingerprint"):
        DecodingHeads.from_pretrained(target).check_compatible(model_identity(tiny_model))
    assert restamp(target, tiny_model) is True
    DecodingHeads.from_pretrained(target).check_compatible(model_identity(tiny_model))


def test_shipped_manifest_is_stamped_with_the_current_method():
    heads = DecodingHeads.from_pretrained("smollm2-135m-instruct")
    assert heads.manifest.base_model.lm_head_fingerprint.method == METHOD
    assert heads.manifest.onnx.sha256 == "e2f925e6c968f3e010eb48200dae0c5f35f8a46d5fe260d38d260bdf53df5675"


@pytest.mark.model
def test_shipped_heads_fit_the_default_model_in_float32_and_bfloat16(default_model):
    from deco_middleware.hf import model_identity

    model = default_model[0]
    heads = DecodingHeads.from_pretrained("smollm2-135m-instruct")
    heads.check_compatible(model_identity(model))
    heads.check_compatible(model_identity(copy.deepcopy(model).to(torch.bfloat16)))
