"""Heads as an ONNX artifact: parity with torch, manifest validation, integrity and compatibility."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from deco_middleware import (
    DecodingHeads,
    HeadManifest,
    HeadsNotFoundError,
    IncompatibleHeadsError,
    IntegrityError,
    ManifestError,
    ManifestVersionError,
    UnknownKeysWarning,
    export_heads,
)
from deco_middleware.manifest import FORMAT_VERSION, MANIFEST_NAME, ONNX_NAME

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


def copy_heads(src, tmp_path):
    target = tmp_path / "heads"
    shutil.copytree(src, target)
    return target


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnx_matches_torch_modules_within_1e5(tmp_path, batch):
    from deco_middleware.heads.modules import AutoDecoHeads
    from deco_middleware.manifest import BaseModelIdentity, LMHeadFingerprint

    hidden, vocab = 48, 300
    torch.manual_seed(3)
    module = AutoDecoHeads(hidden)
    identity = BaseModelIdentity(name="synthetic", architecture="X", hidden_size=hidden, vocab_size=vocab,
                                 lm_head_fingerprint=LMHeadFingerprint(method="lm-head-rows-v1", values=[1.0]))
    export_heads(module.numpy_weights(), tmp_path, base_model=identity)
    onnx.checker.check_model(str(tmp_path / ONNX_NAME), full_check=True)
    heads = DecodingHeads.from_pretrained(tmp_path)
    h = torch.randn(batch, hidden) * 2
    logits = torch.randn(batch, vocab) * 6
    with torch.no_grad():
        t_ref, p_ref = module(h, logits)
    t, p = heads.run(h.numpy(), logits.numpy())
    assert t.shape == p.shape == (batch,)
    np.testing.assert_allclose(t, t_ref.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(p, p_ref.numpy(), atol=1e-5, rtol=0)
    assert ((t > 0) & (t < 2)).all() and ((p > 0) & (p < 1)).all()


def test_save_and_load_round_trip(tiny_heads, tmp_path):
    saved = tiny_heads.save_pretrained(tmp_path / "copy")
    again = DecodingHeads.from_pretrained(saved)
    assert again.manifest == tiny_heads.manifest
    h = np.random.default_rng(0).normal(size=(2, tiny_heads.hidden_size)).astype(np.float32)
    logits = np.random.default_rng(1).normal(size=(2, tiny_heads.vocab_size)).astype(np.float32)
    np.testing.assert_array_equal(again.run(h, logits)[0], tiny_heads.run(h, logits)[0])


def test_truncated_onnx_is_refused(tiny_heads_dir, tmp_path):
    target = copy_heads(tiny_heads_dir, tmp_path)
    data = (target / ONNX_NAME).read_bytes()
    (target / ONNX_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="sha256 .* but its manifest says .*truncated, tampered"):
        DecodingHeads.from_pretrained(target)


def test_tampered_onnx_with_matching_sha_still_fails_to_load_cleanly(tiny_heads_dir, tmp_path):
    target = copy_heads(tiny_heads_dir, tmp_path)
    (target / ONNX_NAME).write_bytes(b"not an onnx file")
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    from deco_middleware.manifest import sha256_file

    manifest["onnx"]["sha256"] = sha256_file(target / ONNX_NAME)
    (target / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="is not a valid ONNX file"):  # refused before ONNX Runtime reads it
        DecodingHeads.from_pretrained(target)


def test_newer_manifest_version_is_a_clear_error(tiny_heads_dir, tmp_path):
    target = copy_heads(tiny_heads_dir, tmp_path)
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    manifest["format_version"] = 99
    (target / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ManifestVersionError, match=f"format_version 99.*reads up to {FORMAT_VERSION}.*pip install -U deco-middleware"):
        DecodingHeads.from_pretrained(target)


def test_unknown_optional_keys_warn_but_load(tiny_heads_dir, tmp_path):
    target = copy_heads(tiny_heads_dir, tmp_path)
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    manifest["future_field"] = {"x": 1}
    manifest["heads"]["new_knob"] = 3
    (target / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.warns(UnknownKeysWarning, match="future_field, heads.new_knob"):
        heads = DecodingHeads.from_pretrained(target)
    assert heads.manifest.model_extra == {"future_field": {"x": 1}}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["base_model"].update(hidden_size=-5), "hidden_size"),
        (lambda m: m["onnx"].update(sha256="xyz"), "sha256"),
        (lambda m: m["onnx"].update(file="../../etc/passwd"), "plain file name"),
        (lambda m: m.pop("base_model"), "base_model"),
    ],
)
def test_broken_required_values_fail(tiny_heads_dir, tmp_path, edit, message):
    target = copy_heads(tiny_heads_dir, tmp_path)
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    edit(manifest)
    (target / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=message):
        DecodingHeads.from_pretrained(target)


def test_manifest_not_json_or_missing(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        HeadManifest.load(tmp_path / MANIFEST_NAME)
    with pytest.raises(ManifestError, match="No manifest at"):
        HeadManifest.load(tmp_path / "nope" / MANIFEST_NAME)


def test_unknown_name_lists_shipped(tmp_path):
    with pytest.raises(HeadsNotFoundError, match="not a shipped name \\(shipped: "):
        DecodingHeads.from_pretrained("no-such-heads")


def test_heads_refuse_a_model_with_other_sizes(tiny_heads):
    from conftest import make_tiny_model

    from deco_middleware.hf import model_identity

    other = make_tiny_model(hidden_size=64)
    with pytest.raises(IncompatibleHeadsError) as error:
        tiny_heads.check_compatible(model_identity(other))
    assert "hidden size 64 vs 32" in str(error.value)


def test_heads_refuse_a_model_with_other_weights(tiny_heads):
    from conftest import make_tiny_model

    from deco_middleware.hf import model_identity

    same_shape_other_weights = make_tiny_model(seed=1)
    with pytest.raises(IncompatibleHeadsError, match="fingerprint differs"):
        tiny_heads.check_compatible(model_identity(same_shape_other_weights))


def test_fingerprint_survives_a_dtype_change(tiny_heads, tiny_model):
    import copy

    from deco_middleware.hf import model_identity

    tiny_heads.check_compatible(model_identity(copy.deepcopy(tiny_model).to(torch.bfloat16)))


def test_unknown_provider_lists_available(tiny_heads_dir):
    with pytest.raises(ValueError, match="`NoSuchExecutionProvider` is not available.*Available: .*CPUExecutionProvider"):
        DecodingHeads.from_pretrained(tiny_heads_dir, provider="NoSuchExecutionProvider")


def test_bad_shapes_name_the_argument(tiny_heads):
    with pytest.raises(ValueError, match="`hidden_states` must have shape \\[batch, 32\\], got \\[2, 5\\]"):
        tiny_heads.run(np.zeros((2, 5)), np.zeros((2, tiny_heads.vocab_size)))


def test_core_import_does_not_need_torch():
    import subprocess
    import sys

    code = "import sys, deco_middleware; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_public_names_are_sorted_and_importable():
    import deco_middleware

    assert deco_middleware.__all__ == sorted(deco_middleware.__all__)
    for name in deco_middleware.__all__:
        assert getattr(deco_middleware, name) is not None, name


def test_installed_wheel_carries_the_shipped_heads():
    from pathlib import Path

    import deco_middleware
    from deco_middleware import list_shipped_heads

    package = Path(deco_middleware.__file__).resolve().parent
    if (package.parent / "pyproject.toml").is_file():
        pytest.skip("imported from a source checkout; tox installs the built package and runs this check")
    checkout_heads = Path(__file__).resolve().parent.parent / "onnx"
    expected = sorted(p.name for p in checkout_heads.iterdir() if (p / MANIFEST_NAME).is_file())
    assert (package / "_shipped_heads" / "README.md").is_file()
    assert list_shipped_heads() == expected
    for name in expected:
        DecodingHeads.from_pretrained(name)  # sha256 verified, loads in ONNX Runtime
