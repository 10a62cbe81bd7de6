"""Measure the LM-head fingerprint on the default model: cost at attach and the distance per change.

    PYTHONPATH=. python benchmarks/fingerprint_identity.py

Prints, for the identity check that runs when heads attach (``model_identity``): its wall time on the
float32 and bfloat16 model, and the fingerprint distance (relative, see ``fingerprint.py``) between the
model and each changed copy of its LM head, next to the tolerance ``RTOL``.
"""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import torch

from deco_middleware.default_model import load_model
from deco_middleware.fingerprint import RTOL, fingerprint_distance, fingerprint_from_matrix
from deco_middleware.hf.identity import model_identity


def timed(fn, repeat: int = 5) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times)), out


def main() -> None:
    model, _ = load_model("default")
    weight = model.get_output_embeddings().weight.detach().float().numpy()
    seconds_fp32, identity = timed(lambda: model_identity(model, use_cache=False))
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    seconds_bf16, identity_bf16 = timed(lambda: model_identity(bf16, use_cache=False))
    seconds_cached, _ = timed(lambda: model_identity(model))
    base = identity.lm_head_fingerprint.values
    rng = np.random.default_rng(0)
    rms = float(np.sqrt((weight.astype(np.float64) ** 2).mean()))
    changed = {
        "bfloat16 copy (torch cast)": identity_bf16.lm_head_fingerprint.values,
        "float16 copy": fingerprint_from_matrix(weight.astype(np.float16)),
        "scaled by 1.001": fingerprint_from_matrix(weight * np.float32(1.001)),
        "scaled by 1.011": fingerprint_from_matrix(weight * np.float32(1.011)),
        "noise, RMS 0.1% of the weights": fingerprint_from_matrix(weight + rng.normal(0, 0.001 * rms, weight.shape).astype(np.float32)),
        "noise, RMS 0.3% of the weights": fingerprint_from_matrix(weight + rng.normal(0, 0.003 * rms, weight.shape).astype(np.float32)),
        "noise, RMS 1% of the weights": fingerprint_from_matrix(weight + rng.normal(0, 0.01 * rms, weight.shape).astype(np.float32)),
        "one row replaced": fingerprint_from_matrix(np.concatenate([weight[:1] * 0 + weight[1:2], weight[1:]])),
        "rows 0-999 shuffled": fingerprint_from_matrix(np.concatenate([weight[:1000][rng.permutation(1000)], weight[1000:]])),
        "another model (rows permuted)": fingerprint_from_matrix(weight[rng.permutation(weight.shape[0])]),
    }
    # SmolLM2's weights (dequantized from GGUF) sit on the bf16 grid; a float32 matrix that does not:
    off_grid = weight + rng.normal(0, 1e-3 * rms, weight.shape).astype(np.float32)
    off_base = fingerprint_from_matrix(off_grid)
    off_grid_distance = fingerprint_distance(off_base, fingerprint_from_matrix(off_grid.astype(np.float16)))
    # A real (tiny) fine-tune: AdamW at lr 1e-5 on one sentence, the whole model (the LM head is tied to the
    # input embeddings in SmolLM2), measured after 1 and 10 steps.
    from deco_middleware.default_model import load_model as _load

    tuned, tokenizer = _load("default")
    batch = tokenizer(["The capital of France is Paris, and the capital of Italy is Rome."], return_tensors="pt")
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=1e-5)
    for step in range(1, 11):
        loss = tuned(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step in (1, 10):
            changed[f"fine-tuned, AdamW lr 1e-5, {step} step(s)"] = model_identity(tuned).lm_head_fingerprint.values
    report = {
        "model": "SmolLM2-135M-Instruct, float32, LM head [49152, 576]",
        "rtol": RTOL,
        "identity_seconds_float32": round(seconds_fp32, 4),
        "identity_seconds_bfloat16": round(seconds_bf16, 4),
        "identity_seconds_cached": round(seconds_cached, 6),
        "distance": {name: float(f"{fingerprint_distance(base, values):.3g}") for name, values in changed.items()},
        "distance_float16_copy_of_off_grid_float32": float(f"{off_grid_distance:.3g}"),
        "accepted": {name: fingerprint_distance(base, values) <= RTOL for name, values in changed.items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
