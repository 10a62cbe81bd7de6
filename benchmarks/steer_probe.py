"""How well can a linear read-out of the default model's *final* hidden states tell a held-out "low"
instruction from a held-out "high" one? (issue #13, docs/training.md "Fifth session")

The heads read the final hidden state at each generated token. If a logistic regression on those
states, trained on the training phrasings, cannot tell the held-out phrasings apart, no head on the
same input will reach issue #13's 99% consistency. Three read-outs per (prompt, instruction):

* ``tokens``: the state at each position that predicts a completion token (what the heads see today;
  a fixed greedy completion of the plain prompt, teacher-forced under every instruction);
* ``first``: the state at the last prompt position alone (the first decoding step's input);
* ``instr``: the mean of the states over the instruction's own tokens (a prompt-level feature no
  backend exposes today).

Trained on ``--budget`` (prompt, phrasing) draws per direction from each training set ("hand":
steering.TRAIN_PHRASINGS, "generated": steering.generated_phrasings()) over 20 prompts; tested on the
held-out steering.EVAL_PHRASINGS over 20 other prompts (reasoning-gym products and chain_sum, dataset
seed 777: neither an evaluation nor a dev seed). Prints JSON (accuracy per set, read-out and L2
strength, and per held-out phrasing) on stdout; progress on stderr.

``--placement system`` puts every instruction in the chat template's system message instead of the
user turn (:func:`deco_middleware.steering.place_instruction`, docs/training.md "Sixth session").

    PYTHONPATH=. OMP_NUM_THREADS=2 python benchmarks/steer_probe.py > probe.json   # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import random
import sys

import reasoning_gym
import torch

from deco_middleware.default_model import load_model
from deco_middleware.hf.chat import chat_texts
from deco_middleware.steering import EVAL_PHRASINGS, PLACEMENTS, TRAIN_PHRASINGS, generated_phrasings, place_instruction, placement_system


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=150, help="training draws per direction and set")
    parser.add_argument("--completion-tokens", type=int, default=12)
    parser.add_argument("--placement", choices=PLACEMENTS, default="user", help="where the instruction goes")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model("default")
    model.eval()
    questions = []
    for task in ("products", "chain_sum"):
        dataset = reasoning_gym.create_dataset(task, size=20, seed=777)
        questions += [dataset[i]["question"] for i in range(20)]
    train_q, test_q = questions[0::2], questions[1::2]

    system = placement_system(args.placement, tokenizer)

    def chat(question: str, phrasing: str | None = None) -> str:
        prompt = question if phrasing is None else place_instruction(question, phrasing, placement=args.placement,
                                                                     system=system)
        return chat_texts(tokenizer, [prompt])[0][0]

    @torch.no_grad()
    def completion(question: str) -> list[int]:
        ids = tokenizer(chat(question), return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=args.completion_tokens, do_sample=False)
        return out[0, ids.shape[1]:].tolist()

    @torch.no_grad()
    def features(question: str, phrasing: str, tokens: list[int]) -> dict[str, torch.Tensor]:
        text = chat(question, phrasing)
        encoded = tokenizer(text, return_offsets_mapping=True)
        prompt_ids, offsets = encoded.input_ids, encoded.offset_mapping
        start = text.rfind(phrasing)
        end = start + len(phrasing)
        instruction = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
        hidden = model(torch.tensor([prompt_ids + tokens]), output_hidden_states=True).hidden_states[-1][0]
        n = len(prompt_ids)
        return {"instr": hidden[instruction].mean(0), "first": hidden[n - 1],
                "tokens": hidden[n - 1:n - 1 + len(tokens)]}

    completions = {q: completion(q) for q in questions}
    generated = generated_phrasings()
    rng = random.Random(0)
    sets = {"hand": TRAIN_PHRASINGS, "generated": generated}
    rows: dict[str, list] = {}
    for name, phrasings in sets.items():
        rows[name] = []
        for direction in ("low", "high"):
            for k in range(args.budget):
                # the hand set is small: every phrasing in turn; the generated one: random draws
                phrasing = phrasings[direction][k % len(phrasings[direction])] if name == "hand" else rng.choice(phrasings[direction])
                question = train_q[k % len(train_q)] if name == "hand" else rng.choice(train_q)
                rows[name].append((direction, phrasing, features(question, phrasing, completions[question])))
        print(f"{name}: features done", file=sys.stderr)
    test = [(d, p, features(q, p, completions[q])) for d in ("low", "high") for p in EVAL_PHRASINGS[d] for q in test_q]

    def fit(x: torch.Tensor, y: torch.Tensor, l2: float):
        mean, scale = x.mean(0), x.std(0) + 1e-6
        xs = (x - mean) / scale
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.LBFGS([w, b], max_iter=200)

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y) + l2 * (w ** 2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return lambda z: ((z - mean) / scale) @ w.detach() + b.detach()

    def stack(rs, kind):
        xs, ys, names = [], [], []
        for direction, phrasing, f in rs:
            v = f[kind] if f[kind].dim() == 2 else f[kind][None]
            xs.append(v)
            ys += [1.0 if direction == "high" else 0.0] * len(v)
            names += [phrasing] * len(v)
        return torch.cat(xs), torch.tensor(ys), names

    result = {}
    for name in sets:
        for kind in ("instr", "first", "tokens"):
            x_train, y_train, _ = stack(rows[name], kind)
            x_test, y_test, names = stack(test, kind)
            for l2 in (1e-2, 1e-1):
                predict = fit(x_train, y_train, l2)
                hits = ((predict(x_test) > 0).float() == y_test).float()
                per: dict[str, list[float]] = {}
                for phrasing, hit in zip(names, hits.tolist()):
                    per.setdefault(phrasing, []).append(hit)
                key = f"{name}/{kind}/l2={l2}"
                result[key] = {"train_accuracy": round(((predict(x_train) > 0).float() == y_train).float().mean().item(), 3),
                               "held_out_accuracy": round(hits.mean().item(), 3),
                               "per_held_out_phrasing": {p: round(sum(v) / len(v), 2) for p, v in per.items()}}
                print(key, result[key]["train_accuracy"], result[key]["held_out_accuracy"], file=sys.stderr)
    result["placement"] = args.placement
    json.dump(result, sys.stdout, indent=1, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
