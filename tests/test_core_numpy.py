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
