"""The core without torch: a committed tiny ONNX heads asset, run with numpy and ONNX Runtime only.

This module imports neither torch nor onnx, so the `core` tox env (numpy, onnxruntime, pydantic and
pytest only) runs it to prove the light install works.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deco_middleware import DecodingHeads, DecodingSettings, IncompatibleHeadsError, nucleus_filter, resolve_decoding, warp_temperature
from deco_middleware.fingerprint import METHOD, fingerprint_from_matrix
from deco_middleware.manifest import BaseModelIdentity, LMHeadFingerprint

ASSET = Path(__file__).parent / "assets" / "tiny_heads"
EXPECTED = json.loads((ASSET / "expected.json").read_text())


def identity(lm_head: np.ndarray, name: str = "tiny-asset-lm") -> BaseModelIdentity:
    return BaseModelIdentity(
        name=name, architecture="SyntheticForCausalLM", hidden_size=lm_head.shape[1], vocab_size=lm_head.shape[0],
        lm_head_fingerprint=LMHeadFingerprint(method=METHOD, values=fingerprint_from_matrix(lm_head)),
    )


def test_asset_heads_reproduce_the_torch_reference_outputs():
    heads = DecodingHeads.from_pretrained(ASSET)
    t, p = heads.run(np.array(EXPECTED["hidden_states"]), np.array(EXPECTED["logits"]))
    np.testing.assert_allclose(t, EXPECTED["temperature"], atol=1e-5)
    np.testing.assert_allclose(p, EXPECTED["top_p"], atol=1e-5)


def test_numpy_decoding_step_end_to_end():
    heads = DecodingHeads.from_pretrained(ASSET)
    logits = np.array(EXPECTED["logits"], dtype=np.float32)
    t, p = heads.run(np.array(EXPECTED["hidden_states"]), logits)
    resolved = resolve_decoding(t, p, np.ones(3, dtype=bool), DecodingSettings(temperature_scale=0.5))
    np.testing.assert_allclose(resolved.temperature, np.array(EXPECTED["temperature"]) * 0.5, rtol=1e-6)
    filtered, sizes = nucleus_filter(warp_temperature(logits, resolved.temperature), resolved.top_p)
    assert filtered.shape == logits.shape and (sizes >= 1).all()
    np.testing.assert_array_equal(np.argmax(filtered, axis=-1), np.argmax(logits, axis=-1))


def test_fingerprint_check_without_torch():
    heads = DecodingHeads.from_pretrained(ASSET)
    lm_head = np.array(EXPECTED["lm_head"])
    heads.check_compatible(identity(lm_head.astype(np.float32)))  # dtype change: still the same model
    with pytest.raises(IncompatibleHeadsError, match="fingerprint differs"):
        heads.check_compatible(identity(lm_head + np.random.default_rng(9).normal(size=lm_head.shape), "other"))


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_missing_torch_extra_gives_an_install_hint():
    # Hide torch even where it is installed, as on a core-only install.
    result = run_python(
        "import sys; sys.modules['torch'] = None\n"
        "import deco_middleware\n"
        "try:\n    deco_middleware.LearnedDecoding\n"
        "except deco_middleware.MissingDependencyError as e:\n    print(e)\n"
    )
    assert "pip install torch==2.13.0 && pip install 'deco-middleware[torch]'" in result.stdout, result.stderr


def test_missing_cli_extra_gives_a_one_line_hint():
    result = run_python("import sys; sys.modules['typer'] = None\nfrom deco_middleware.cli import main\nmain()")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "pip install" in result.stderr and "deco-middleware[cli" in result.stderr


def test_fingerprint_covers_the_whole_lm_head_without_torch():
    # lm-head-sketch-v2: a 1.1% scale and a change to a single row are refused; a float32 -> bfloat16 ->
    # float32 round trip (what a bf16 copy of the model holds) is accepted.
    heads = DecodingHeads.from_pretrained(ASSET)
    lm_head = np.array(EXPECTED["lm_head"], dtype=np.float32)
    with pytest.raises(IncompatibleHeadsError, match="fingerprint differs by 0.011 .*tolerance is 0.002"):
        heads.check_compatible(identity(lm_head * np.float32(1.011)))
    changed = lm_head.copy()
    changed[5] *= 1.5
    with pytest.raises(IncompatibleHeadsError, match="fingerprint differs"):
        heads.check_compatible(identity(changed))
    bits = lm_head.view(np.uint32)
    bf16_round_trip = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)
    heads.check_compatible(identity(bf16_round_trip))


def test_a_manifest_with_the_retired_fingerprint_asks_for_a_restamp(tmp_path):
    import shutil

    target = tmp_path / "old"
    shutil.copytree(ASSET, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["base_model"]["lm_head_fingerprint"] = {"method": "lm-head-rows-v1", "values": [1.0] * 32}
    (target / "manifest.json").write_text(json.dumps(manifest))
    heads = DecodingHeads.from_pretrained(target)  # still loads: only attaching needs the identity
    with pytest.raises(IncompatibleHeadsError, match="retired fingerprint `lm-head-rows-v1`.*python -m deco_middleware.heads.restamp"):
        heads.check_compatible(identity(np.array(EXPECTED["lm_head"], dtype=np.float32)))


def test_restamp_without_torch_checks_the_old_fingerprint_first(tmp_path):
    import shutil

    from deco_middleware.fingerprint import fingerprint_from_matrix as values_of
    from deco_middleware.heads.restamp import restamp

    lm_head = np.array(EXPECTED["lm_head"], dtype=np.float32)
    target = tmp_path / "old"
    shutil.copytree(ASSET, target)
    onnx_before = (target / "heads.onnx").read_bytes()
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["base_model"]["lm_head_fingerprint"] = {"method": "lm-head-rows-v1",
                                                     "values": values_of(lm_head, method="lm-head-rows-v1")}
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(IncompatibleHeadsError, match="does not fit this model by its own fingerprint"):
        restamp(target, lm_head[::-1].copy())  # another LM head: refused, nothing written
    assert json.loads((target / "manifest.json").read_text()) == manifest
    assert restamp(target, lm_head) is True
    assert restamp(target, lm_head) is False  # already current
    after = json.loads((target / "manifest.json").read_text())
    assert after["base_model"]["lm_head_fingerprint"]["method"] == METHOD
    del after["base_model"]["lm_head_fingerprint"], manifest["base_model"]["lm_head_fingerprint"]
    assert after == manifest and (target / "heads.onnx").read_bytes() == onnx_before
    DecodingHeads.from_pretrained(target).check_compatible(identity(lm_head))
