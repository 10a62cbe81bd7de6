"""Per-token agreement of the torch and ONNX Runtime backends on the default model (not a test).

Same prompt, same heads, same torch seed, 32 sampled tokens through transformers' generate() with
the processor pair, for torch fp32, torch bf16 (the torch backend's default dtype) and ORT fp32.
Prints where the tokens first differ and the largest |dT| and |dP| up to that point.

    DECO_MODEL_CACHE=... python benchmarks/parity_ort.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from deco_middleware import DecodingHeads, export_heads
from deco_middleware.default_model import ensure_default_model
from deco_middleware.errors import DecoError
from deco_middleware.generation import chat_inputs
from deco_middleware.heads.modules import AutoDecoHeads
from deco_middleware.hf import LearnedDecoding, model_identity
from deco_middleware.ort import ORTModelForCausalLMWithHiddenStates, ensure_default_onnx, heads_for_identity
from deco_middleware.ort.compat import load_causal_lm, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt", default="What is 7 times 8?")
    args = parser.parse_args()

    source = ensure_default_model()
    tokenizer = load_tokenizer(source)
    models = {
        "torch-fp32": load_causal_lm(source, torch.float32),
        "ort-fp32": ORTModelForCausalLMWithHiddenStates.from_pretrained(ensure_default_onnx()),
        "torch-bf16": load_causal_lm(source, torch.bfloat16),
    }
    identity = model_identity(models["torch-fp32"])
    try:
        heads = heads_for_identity("default", identity)
    except DecoError:  # no shipped heads yet: fixed random heads (seeded) are enough for a backend comparison
        torch.manual_seed(5)
        directory = tempfile.mkdtemp(prefix="parity-heads-")
        export_heads(AutoDecoHeads(identity.hidden_size).numpy_weights(), directory, base_model=identity)
        heads = DecodingHeads.from_pretrained(directory)
    print(f"heads: {heads.directory}")
    inputs = chat_inputs(tokenizer, [args.prompt])
    inputs.pop("token_type_ids", None)
    runs = {}
    for seed in args.seeds:
        for name, model in models.items():
            torch.manual_seed(seed)
            with LearnedDecoding(heads, record_trace=True).attach(model) as session:
                out = session.generate(**inputs, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                       pad_token_id=tokenizer.pad_token_id)
            steps = session.trace.steps
            runs[name, seed] = (out[0, inputs["input_ids"].shape[1] :].tolist(),
                                np.array([s.temperature[0] for s in steps]), np.array([s.top_p[0] for s in steps]))
        reference = runs["torch-fp32", seed]
        for name in ("ort-fp32", "torch-bf16"):
            other = runs[name, seed]
            diverge = next((i for i, (a, b) in enumerate(zip(reference[0], other[0])) if a != b), len(reference[0]))
            upto = diverge + 1  # the step that chose differently still saw the same prefix
            print(f"seed {seed} torch-fp32 vs {name}: identical tokens={reference[0] == other[0]} "
                  f"first difference at token {diverge}; up to there max|dT|={np.abs(reference[1][:upto] - other[1][:upto]).max():.2e} "
                  f"max|dP|={np.abs(reference[2][:upto] - other[2][:upto]).max():.2e}", flush=True)


if __name__ == "__main__":
    main()
