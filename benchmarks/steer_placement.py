"""What does a steering sentence cost the default model's accuracy, by where it sits? (issue #13,
docs/training.md "Sixth session")

Every steering run measured "low" pass@1 16-17 points below neutral, with or without steering training:
the 135M model answers worse with an extra sentence in the prompt, whatever the temperature. This
separates the model's part from the heads': **greedy** decoding (no temperature, no heads) of the same
problems under each instruction and each placement, graded by the task's own scorer:

* ``user``: appended to the user turn (``place_instruction(..., placement="user")``: where training puts it,
  ``LearnedDecoding(steer=...)``'s default);
* ``system``: the chat template's own system message (SmolLM2's default "You are a helpful AI
  assistant ...") with the instruction appended (``placement="system"``, ``LearnedDecoding(steer=...,
  steer_placement="system")``);

for no instruction, a neutral sentence (``steering.NEUTRAL_PHRASINGS``: asks nothing of the decoding),
and the "low" / "high" sentences ``LearnedDecoding(steer=...)`` inserts. Dev split of the training tasks
(dataset seed 4242, the configurations of docs/training.md's dev protocol): never an evaluation set.
Prints JSON (accuracy, paired differences against no instruction and, for the system placement, against
the user placement, each with its standard error, per task and overall) on stdout; progress on stderr.

    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/steer_placement.py --limit 100 > placement.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from deco_middleware.default_model import load_model
from deco_middleware.evaluation.metrics import mean_and_stderr
from deco_middleware.evaluation.tasks import load_task
from deco_middleware.hf.chat import chat_texts, template_system_message
from deco_middleware.steering import DEFAULT_INSTRUCTION, NEUTRAL_PHRASINGS, place_instruction

DEV_TASKS = {  # products is left out: its small problem set overlaps the steering evaluation's prompts
    "chain_sum": "rg:chain_sum?min_terms=2&max_terms=3&min_digits=1&max_digits=1&seed=4242",
    "chain_sum#2": "rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=2&seed=4242",
    "basic_arithmetic": "rg:basic_arithmetic?min_terms=2&max_terms=2&min_digits=1&max_digits=2&operators=+,-,*"
                        "&allow_parentheses=false&allow_negation=false&seed=4242",
}
INSTRUCTIONS = {"neutral": NEUTRAL_PHRASINGS[0], "low": DEFAULT_INSTRUCTION["low"], "high": DEFAULT_INSTRUCTION["high"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=100, help="problems per task")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model, tokenizer = load_model("default")
    model.eval()
    tokenizer.padding_side = "left"
    # SmolLM2's template inserts its own system message when none is given: the system placement keeps it.
    system = template_system_message(tokenizer)

    def chat(question: str, placement: str, instruction: str | None) -> str:
        prompt = question if instruction is None else place_instruction(question, instruction, placement=placement,
                                                                         system=system)
        return chat_texts(tokenizer, [prompt])[0][0]

    @torch.no_grad()
    def greedy(texts: list[str]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(texts), args.batch_size):
            batch = tokenizer(texts[start:start + args.batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False)
            ids = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            out += tokenizer.batch_decode(ids[:, batch.input_ids.shape[1]:], skip_special_tokens=True)
        return out

    conditions = [("none", "-", None)] + [(name, placement, sentence) for name, sentence in INSTRUCTIONS.items()
                                          for placement in ("user", "system")]
    scores: dict[str, dict[str, list[float]]] = {}
    for name, spec in DEV_TASKS.items():
        task = load_task(spec, limit=args.limit)
        scores[name] = {}
        for label, placement, sentence in conditions:
            key = label if sentence is None else f"{label}/{placement}"
            texts = greedy([chat(p.prompt, placement, sentence) for p in task.problems])
            scores[name][key] = [p.grade(t) for p, t in zip(task.problems, texts)]
            print(f"{name} {key}: {100 * sum(scores[name][key]) / len(task.problems):.1f}", file=sys.stderr)

    def block(rows: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        out = {}
        for key, values in rows.items():
            mean, se = mean_and_stderr(values)
            diff, diff_se = mean_and_stderr([a - b for a, b in zip(values, rows["none"])])
            out[key] = {"pass@1": round(100 * mean, 1), "se": round(100 * se, 1),
                        "minus_none": round(100 * diff, 1), "minus_none_se": round(100 * diff_se, 1)}
            if key.endswith("/system"):  # the placements against each other, paired over the same problems
                user = rows[key.replace("/system", "/user")]
                gap, gap_se = mean_and_stderr([a - b for a, b in zip(values, user)])
                out[key].update(minus_user=round(100 * gap, 1), minus_user_se=round(100 * gap_se, 1))
        return out

    pooled = {key: [v for rows in scores.values() for v in rows[key]] for key in next(iter(scores.values()))}
    report = {"settings": {"tasks": DEV_TASKS, "limit": args.limit, "max_new_tokens": args.max_new_tokens,
                           "decoding": "greedy", "instructions": INSTRUCTIONS, "system": system},
              "tasks": {name: block(rows) for name, rows in scores.items()}, "overall": block(pooled)}
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
