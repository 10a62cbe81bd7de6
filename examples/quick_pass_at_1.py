"""pass@1 of one decoding strategy on a few reasoning-gym tasks, every row in one batch per call.

A small stand-in for ``deco eval`` when the CPU budget is a few minutes: rows of all tasks share
``generate()`` calls (one per batch), which matters on a loaded 2-core machine. Problems and
grading come from ``deco_middleware.evaluation.tasks`` (held-out seed 90210 unless the spec sets
one), so the numbers are graded exactly as ``deco eval`` grades them.

    python examples/quick_pass_at_1.py --strategy greedy --task 'rg:products?min_terms=2&max_terms=2&max_digits=1' \
        --limit 12 --out greedy.json
    python examples/quick_pass_at_1.py --strategy heads:onnx/smollm2-135m-instruct ...
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from deco_middleware.default_model import load_model
from deco_middleware.evaluation.tasks import load_task
from deco_middleware.generation import chat_inputs
from deco_middleware.hf import LearnedDecoding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", required=True, help="greedy | static:T,P | heads:PATH")
    parser.add_argument("--task", action="append", required=True)
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model("default", dtype=getattr(torch, args.dtype))
    tasks = [load_task(spec, limit=args.limit) for spec in args.task]
    rows = [(t, p) for t in tasks for p in t.problems for _ in range(args.samples)]
    started = time.perf_counter()
    completions: list[str] = []
    temperatures: list[float] = []
    top_ps: list[float] = []
    for offset in range(0, len(rows), args.batch_size):
        batch = rows[offset : offset + args.batch_size]
        inputs = chat_inputs(tokenizer, [p.prompt for _, p in batch])
        common = {"max_new_tokens": args.max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
        torch.manual_seed(args.seed * 1000 + offset)
        with torch.no_grad():
            if args.strategy == "greedy":
                out = model.generate(**inputs, **common, do_sample=False, temperature=None, top_p=None, top_k=None)
            elif args.strategy.startswith("static:"):
                t, p = (float(x) for x in args.strategy[len("static:"):].split(","))
                out = model.generate(**inputs, **common, do_sample=True, temperature=t, top_p=p, top_k=0)
            elif args.strategy.startswith("heads:"):
                decoding = LearnedDecoding(args.strategy[len("heads:"):], record_trace=True)
                with decoding.attach(model) as session:
                    out = session.generate(**inputs, **common)
                for step in session.trace.steps:
                    temperatures += step.temperature
                    top_ps += step.top_p
            else:
                raise SystemExit(f"unknown strategy {args.strategy!r}: greedy | static:T,P | heads:PATH")
        new = out[:, inputs["input_ids"].shape[1]:]
        completions += tokenizer.batch_decode(new, skip_special_tokens=True)
    wall = time.perf_counter() - started
    results = {}
    for task in tasks:
        scores = [float(p.grade(c) >= 1.0) for (t, p), c in zip(rows, completions) if t is task]
        results[task.spec] = {"pass@1": round(100 * sum(scores) / len(scores), 1), "rows": len(scores),
                              "description": task.description}
    report = {"strategy": args.strategy, "dtype": args.dtype, "threads": args.threads, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
              "seed": args.seed, "wall_seconds": round(wall, 1), "results": results,
              "completions": [{"task": t.spec, "id": p.id, "answer": p.answer, "completion": c}
                              for (t, p), c in zip(rows, completions)]}
    if temperatures:
        report["mean_temperature"] = round(sum(temperatures) / len(temperatures), 4)
        report["mean_top_p"] = round(sum(top_ps) / len(top_ps), 4)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "completions"}, indent=1))


if __name__ == "__main__":
    main()
