"""`deco import-reference` without torch: numpy, onnx and onnxruntime only (the ort-app install).

The checkpoint files are written byte by byte here (8-byte header length, JSON header, raw bytes;
bf16 as the high half of float32), and the reference heads are re-implemented in numpy from the
formulas, so nothing in this file shares code with the importer it checks.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")

from deco_middleware.heads.artifact import DecodingHeads  # noqa: E402
from deco_middleware.reference import export_reference, import_reference  # noqa: E402

HIDDEN, VOCAB, INNER = 24, 200, 256


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], *, bf16: bool) -> None:
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array, dtype=np.float32)
        raw = (array.view(np.uint32) >> 16).astype("<u2") if bf16 else array.astype("<f4")  # bf16: truncate
        data = raw.tobytes()
        header[name] = {"dtype": "BF16" if bf16 else "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))


def as_stored(array: np.ndarray, bf16: bool) -> np.ndarray:
    array = np.asarray(array, np.float32)
    return ((array.view(np.uint32) >> 16) << 16).view(np.float32) if bf16 else array


def random_weights(seed: int, enhanced: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    top_p_inputs = HIDDEN + (5 if enhanced else 1)
    return {
        "temp_head.mlp.0.weight": rng.normal(0, 0.2, (INNER, HIDDEN)), "temp_head.mlp.0.bias": rng.normal(0, 0.1, INNER),
        "temp_head.mlp.2.weight": rng.normal(0, 0.5, (1, INNER)), "temp_head.mlp.2.bias": rng.normal(0, 0.1, 1),
        "top_p_head.mlp.0.weight": rng.normal(0, 0.2, (INNER, top_p_inputs)),
        "top_p_head.mlp.0.bias": rng.normal(0, 0.1, INNER),
        "top_p_head.mlp.2.weight": rng.normal(0, 0.5, (1, INNER)), "top_p_head.mlp.2.bias": rng.normal(0, 0.1, 1),
    }


def reference_formula(w: dict[str, np.ndarray], h: np.ndarray, logits: np.ndarray, enhanced: bool):
    """T = 2 sigmoid(MLP(h)); P = sigmoid(MLP([h, T, max_prob, entropy, var, top5])) on softmax(logits/(T+1e-8))."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    mlp = lambda p, x: np.maximum(x @ w[f"{p}.mlp.0.weight"].T + w[f"{p}.mlp.0.bias"], 0) @ w[f"{p}.mlp.2.weight"].T \
        + w[f"{p}.mlp.2.bias"]  # noqa: E731
    t = 2 * sigmoid(mlp("temp_head", h))
    features = [h, t]
    if enhanced:
        scaled = logits / (t + 1e-8)
        probs = np.exp(scaled - scaled.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        entropy = -(probs * np.log(probs + 1e-8)).sum(-1, keepdims=True)
        top5 = np.sort(probs, -1)[:, -5:].sum(-1, keepdims=True)
        features += [probs.max(-1, keepdims=True), entropy, probs.var(-1, ddof=1, keepdims=True), top5]
    return t[:, 0], sigmoid(mlp("top_p_head", np.concatenate(features, -1)))[:, 0]


def make_base(folder: Path) -> Path:
    folder.mkdir()
    lm_head = np.random.default_rng(99).normal(0, 1, (VOCAB, HIDDEN))
    write_safetensors(folder / "model.safetensors", {"lm_head.weight": lm_head}, bf16=False)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                                                    "hidden_size": HIDDEN, "vocab_size": VOCAB,
                                                    "tie_word_embeddings": False}))
    return folder


def make_checkpoint(folder: Path, base: Path, weights, *, bf16: bool, enhanced: bool) -> Path:
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", weights, bf16=bf16)
    config = {**json.loads((base / "config.json").read_text()), "model_type": "autodeco",
              "architectures": ["AutoDecoModelForCausalLM"], "base_model_type": "qwen2",
              "base_model_name_or_path": "Qwen/Qwen2-tiny", "enable_temperature_head": True, "enable_top_p_head": True,
              "use_enhanced_features": enhanced, "temperature_hidden_size": HIDDEN, "top_p_hidden_size": HIDDEN}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("enhanced", [True, False])
def test_import_matches_the_formula_and_round_trips(tmp_path, bf16, enhanced):
    base = make_base(tmp_path / "base")
    weights = random_weights(3, enhanced)
    checkpoint = make_checkpoint(tmp_path / "ckpt", base, weights, bf16=bf16, enhanced=enhanced)
    first = import_reference(checkpoint, tmp_path / "first", model=str(base)).directory
    heads = DecodingHeads.from_pretrained(first)
    rng = np.random.default_rng(4)
    h, logits = rng.normal(0, 2, (5, HIDDEN)), rng.normal(0, 6, (5, VOCAB))
    t, p = heads.run(h, logits)
    t_ref, p_ref = reference_formula({k: as_stored(v, bf16) for k, v in weights.items()}, h.astype(np.float32),
                                     logits.astype(np.float32), enhanced)
    np.testing.assert_allclose(t, t_ref, atol=1e-5, rtol=0)  # bf16 widens exactly, so the bound holds for both
    np.testing.assert_allclose(p, p_ref, atol=1e-5, rtol=0)
    assert t.std() > 0.01 and p.std() > 0.01
    exported = export_reference(first, tmp_path / "exported", model=str(base)).directory
    second = import_reference(exported, tmp_path / "second", model=str(base)).directory
    assert (first / "heads.onnx").read_bytes() == (second / "heads.onnx").read_bytes()


def test_runs_with_torch_and_transformers_blocked(tmp_path):
    base = make_base(tmp_path / "base")
    checkpoint = make_checkpoint(tmp_path / "ckpt", base, random_weights(5, True), bf16=True, enhanced=True)
    script = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['transformers'] = None\n"  # any import of them now fails
        "from deco_middleware.reference import import_reference, export_reference\n"
        f"r = import_reference({str(checkpoint)!r}, {str(tmp_path / 'heads')!r}, model={str(base)!r})\n"
        f"export_reference(r.directory, {str(tmp_path / 'ref')!r}, model={str(base)!r})\n"
        "print(r.layout, r.source_dtype)\n"
    )
    # The child imports deco_middleware from wherever this process does (installed wheel or PYTHONPATH).
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ),
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["heads-only", "BF16"]
    assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == ["config.json", "model.safetensors"]
