"""Regenerate tests/assets/ort_tiny: a tiny Llama exported by `export_lm`, heads for it, and what torch
produced on it (the torch-free tests compare against these numbers without importing torch).

Run from the repository root with transformers 4.57 and optimum-onnx installed:
    python tests/assets/make_ort_tiny.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import make_tiny_model, make_tiny_tokenizer, random_heads_weights  # noqa: E402

from deco_middleware import DecodingHeads, export_heads  # noqa: E402
from deco_middleware.hf import HiddenStateTap, model_identity  # noqa: E402
from deco_middleware.ort import export_lm  # noqa: E402

ROOT = Path("tests/assets/ort_tiny")
PROMPTS = ["w1 w2 w3 w4 w5", "w7 w8"]


def main() -> None:
    if ROOT.exists():
        shutil.rmtree(ROOT)
    model, tokenizer = make_tiny_model(seed=4), make_tiny_tokenizer()
    export_lm(model, ROOT / "lm", tokenizer=tokenizer, name="tiny-llama")
    export_heads(random_heads_weights(model.config.hidden_size, seed=4), ROOT / "heads",
                 base_model=model_identity(model), description="random heads for the ort_tiny test asset")
    heads = DecodingHeads.from_pretrained(ROOT / "heads")
    inputs = dict(tokenizer(PROMPTS, return_tensors="pt", padding=True, return_token_type_ids=False))
    with torch.no_grad():
        greedy = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=3, eos_token_id=None,
                                temperature=None, top_p=None, top_k=None)
        with HiddenStateTap(model) as tap:
            model(**inputs)
            hidden, logits = tap.pop()
    temperature, top_p = heads.run(hidden.numpy(), logits.numpy())
    expected = {
        "prompts": PROMPTS,
        "prompt_ids": [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])],
        "torch_greedy_new_ids": greedy[:, inputs["input_ids"].shape[1] :].tolist(),
        "torch_first_step_temperature": temperature.tolist(),
        "torch_first_step_top_p": top_p.tolist(),
        "pad_token_id": 3,
    }
    (ROOT / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")


if __name__ == "__main__":
    main()
