"""Tokens/s of the torch and ONNX Runtime backends on the default model, measured interleaved.

Not a test. Every round runs each configuration once, in the same order, at batch 1 and batch 8,
so a machine whose load changes during the run slows all configurations alike. Every run decodes
exactly ``--tokens`` new tokens per row with learned decoding (the heads run every step).

    DECO_MODEL_CACHE=... python benchmarks/bench_ort.py --rounds 2 --tokens 16

Configurations: torch-bf16 / torch-fp32 (transformers generate, eager), ort-generate /
ort-generate-iobinding (Optimum's generate on the export), ort-loop (the torch-free numpy loop),
ort-loop:LEVEL (the loop with another graph optimisation level).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from deco_middleware import DecodingHeads, export_heads
from deco_middleware.default_model import ensure_default_model
from deco_middleware.errors import DecoError
from deco_middleware.generation import chat_inputs
from deco_middleware.hf import LearnedDecoding, model_identity
from deco_middleware.ort import OnnxCausalLM, OnnxGenerator, ORTModelForCausalLMWithHiddenStates, ensure_default_onnx
from deco_middleware.ort.backend import heads_for_identity
from deco_middleware.ort.compat import load_causal_lm, load_tokenizer

PROMPTS = [
    "What is 7 times 8?",
    "Name three colours.",
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Explain what a prime number is in one sentence.",
    "Add 12 and 30.",
    "Say hello.",
    "List two fruits that are yellow and one that is red.",
]
ALL_CONFIGS = ["torch-bf16", "torch-fp32", "ort-generate", "ort-generate-iobinding", "ort-loop"]
# the torch-free loop at another graph optimisation level than --opt-level, e.g. `ort-loop:basic`
LEVEL_CONFIGS = [f"ort-loop:{level}" for level in ("disable", "basic", "extended", "all")]


def session_options(threads: int, level: str) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = {
        "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--configs", nargs="+", default=ALL_CONFIGS, choices=ALL_CONFIGS + LEVEL_CONFIGS)
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--opt-level", default="all", choices=["disable", "basic", "extended", "all"])
    parser.add_argument("--onnx", default=None, help="an export folder (default: the default model's cached export)")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    source = ensure_default_model()
    export = args.onnx or str(ensure_default_onnx())
    tokenizer = load_tokenizer(source)
    models: dict[str, Any] = {}
    if "torch-bf16" in args.configs:
        models["torch-bf16"] = load_causal_lm(source, torch.bfloat16)
    if "torch-fp32" in args.configs or not models:
        models["torch-fp32"] = load_causal_lm(source, torch.float32)
    reference = next(iter(models.values()))
    identity = model_identity(reference)
    try:
        heads = heads_for_identity("default", identity)
    except DecoError:  # no shipped heads yet: speed does not depend on the head weights
        import tempfile

        from deco_middleware.heads.modules import AutoDecoHeads

        torch.manual_seed(0)
        directory = tempfile.mkdtemp(prefix="bench-heads-")
        export_heads(AutoDecoHeads(identity.hidden_size).numpy_weights(), directory, base_model=identity)
        heads = DecodingHeads.from_pretrained(directory)
    options = session_options(args.threads, args.opt_level)
    if "ort-generate" in args.configs:
        models["ort-generate"] = ORTModelForCausalLMWithHiddenStates.from_pretrained(export, session_options=options)
    if "ort-generate-iobinding" in args.configs:
        models["ort-generate-iobinding"] = ORTModelForCausalLMWithHiddenStates.from_pretrained(
            export, session_options=session_options(args.threads, args.opt_level), use_io_binding=True)
    if "ort-loop" in args.configs:
        models["ort-loop"] = OnnxGenerator(OnnxCausalLM(export, session_options=session_options(args.threads, args.opt_level)), heads)

    for name in args.configs:
        if name.startswith("ort-loop:"):
            level = name.split(":", 1)[1]
            models[name] = OnnxGenerator(OnnxCausalLM(export, session_options=session_options(args.threads, level)), heads)

    timings: dict[tuple[str, int], list[float]] = {}
    for round_index in range(args.rounds):
        for batch in args.batches:
            inputs = chat_inputs(tokenizer, PROMPTS[:batch])
            inputs.pop("token_type_ids", None)
            prompts = [row[mask.bool()].tolist() for row, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
            for name in args.configs:
                model = models[name]
                torch.manual_seed(round_index)
                start = time.perf_counter()
                if name.startswith("ort-loop"):
                    # no EOS id given: every row decodes exactly --tokens tokens, like min_new_tokens below
                    result = model.generate(prompts, max_new_tokens=args.tokens, seed=round_index,
                                            pad_token_id=tokenizer.pad_token_id)
                    produced = sum(len(row) for row in result.token_ids)
                else:
                    with LearnedDecoding(heads).attach(model) as session:
                        out = session.generate(**inputs, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                               pad_token_id=tokenizer.pad_token_id)
                    produced = (out.shape[1] - inputs["input_ids"].shape[1]) * batch
                elapsed = time.perf_counter() - start
                timings.setdefault((name, batch), []).append(produced / elapsed)
                print(f"round {round_index} batch {batch} {name}: {produced / elapsed:.2f} tok/s ({elapsed:.1f} s)",
                      flush=True)

    rows = []
    for batch in args.batches:
        base = statistics.median(timings[(args.configs[0], batch)])
        for name in args.configs:
            values = timings[(name, batch)]
            rows.append({"batch": batch, "config": name, "median_tok_s": round(statistics.median(values), 2),
                         "runs": [round(v, 2) for v in values],
                         f"vs_{args.configs[0]}": round(statistics.median(values) / base, 2)})
    for row in rows:
        print(json.dumps(row))
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump({"args": vars(args), "results": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
