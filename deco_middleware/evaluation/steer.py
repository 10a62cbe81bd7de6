"""The steering report (issue #13): do the heads move T and P when the prompt asks them to?

Every problem is sampled three times with the heads: with no instruction, with a "low" and with a
"high" instruction from the *held-out* phrasings (:data:`deco_middleware.steering.EVAL_PHRASINGS`,
never seen in training), inserted where training puts it (:func:`~deco_middleware.steering.steer_prompt`; ``placement="system"``: in
the system message instead).
Problem ``i`` gets phrasing ``i mod n`` of each direction, so every phrasing is measured.
(``phrasings=steer_phrasings("api")``: the one training sentence ``LearnedDecoding(steer=...)`` inserts.)

Per task and overall: mean T and P with each instruction and with none (per problem, the mean over
all generated tokens of its samples; then the mean over problems), dT / dP against none with a
standard error over problems, consistency (share of problems whose shift has the instructed
sign), pass@1 / pass@k / maj@k (the effect on accuracy) and distinct-2 (distinct word bigrams over
all words bigrams of a problem's k samples: the effect on diversity), with the issue's output effects
(:data:`OUTCOME_DIFFERENCES`) also as paired differences with a standard error. Per phrasing: dT and
consistency, so a failing phrasing or language is named.

The free-running dT mixes two effects: the heads reading the instruction, and the model writing other
completions under it (which the heads answer too). ``dT_fixed_*`` separates them: the heads'
temperature on the *neutral* completions, teacher-forced under each prompt (one forward pass per
prompt and completion), instructed minus neutral; the neutral forced T equals the T applied while
generating (checked by the tests).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import atomic_write_bytes
from ..messages import Prompt
from ..steering import DEFAULT_INSTRUCTION, EVAL_PHRASINGS, placement_system, steer_prompt
from .extraction import candidate_answer
from .metrics import mean_and_stderr
from .tasks import Task

CONDITIONS = ("none", "low", "high")
# The effect on the output the issue asks for, as paired differences (instructed minus none, per problem):
# accuracy for "low", diversity and pass@k for "high".
OUTCOME_DIFFERENCES = (("low", "pass@1"), ("low", "maj@k"), ("high", "distinct-2"), ("high", "pass@k"))
PHRASING_SOURCES = ("held-out", "api")


def steer_phrasings(source: str) -> dict[str, list[str]]:
    """The instructions ``deco steer`` measures with: ``held-out`` (:data:`EVAL_PHRASINGS`, never trained
    on: the issue's benchmark) or ``api`` (the one sentence ``LearnedDecoding(steer=...)`` inserts, a
    training phrasing: what the API promises on prompts training never saw)."""
    if source == "held-out":
        return {direction: list(p) for direction, p in EVAL_PHRASINGS.items()}
    if source == "api":
        return {direction: [sentence] for direction, sentence in DEFAULT_INSTRUCTION.items()}
    raise ValueError(f"unknown phrasing source {source!r}: use one of {', '.join(PHRASING_SOURCES)}")


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams over ``texts`` (0 when there are none)."""
    grams = [tuple(words[i:i + n]) for text in texts for words in [text.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def majority_correct(texts: Sequence[str], scores: Sequence[float], reference: str) -> bool:
    """maj@k: the most common normalised answer (ties: first seen) is a correct one."""
    answers = [candidate_answer(t, reference) for t in texts]
    counts = Counter(answers)
    best = max(counts.values())
    winner = next(a for a in answers if counts[a] == best)
    return any(s >= 1.0 for a, s in zip(answers, scores) if a == winner)


def _problem_row(completions: Sequence[Any], grade: Any, reference: str) -> dict[str, Any]:
    temps = [t for c in completions for t in c.temperatures]
    tops = [p for c in completions for p in c.top_ps]
    texts = [c.text for c in completions]
    scores = [float(grade(t)) for t in texts]
    return {"T": math.fsum(temps) / len(temps) if temps else float("nan"),
            "P": math.fsum(tops) / len(tops) if tops else float("nan"),
            "pass@1": sum(s >= 1.0 for s in scores) / len(scores), "pass@k": float(any(s >= 1.0 for s in scores)),
            "maj@k": float(majority_correct(texts, scores, reference)), "distinct-2": distinct_n(texts, 2)}


def forced_temperatures(model: Any, tokenizer: Any, heads: Any, prompt: Prompt, completions: Sequence[Sequence[int]]
                        ) -> list[float]:
    """The mean applied temperature of the heads (default settings) over each completion's tokens,
    teacher-forced after ``prompt`` (chat template applied): what generation would have applied had it
    drawn exactly these tokens. One forward pass per completion."""
    import torch

    from ..hf.chat import chat_prompt_ids
    from ..sampling import DecodingSettings, LearnedPredictor, decode_step

    prefix = chat_prompt_ids(tokenizer, [prompt])[0]
    predictor = LearnedPredictor(heads, DecodingSettings().for_trained_heads(heads.trained_heads))
    lm_head = model.get_output_embeddings()
    means = []
    with torch.inference_mode():
        for completion in completions:
            ids = torch.tensor([prefix + list(completion)])
            # The final-norm hidden state (the LM head's input) at the positions that predict the completion.
            hidden = model.base_model(input_ids=ids).last_hidden_state[0, len(prefix) - 1 : len(prefix) - 1 + len(completion)]
            logits = lm_head(hidden)
            step = decode_step(predictor, logits.float().numpy(), hidden=hidden.float().numpy(), nucleus=False)
            means.append(float(np.mean(step.temperature)) if len(completion) else float("nan"))
    return means


def run_steer(model: Any, tokenizer: Any, heads: Any, tasks: Sequence[Task], *, samples: int = 4,
              max_new_tokens: int = 32, seed: int = 7, batch_size: int = 192,
              phrasings: dict[str, Sequence[str]] | None = None, placement: str = "user") -> dict[str, Any]:
    """Sample every problem of ``tasks`` under each condition with the heads; the report (JSON-able).
    ``placement``: where the instruction goes (:func:`~deco_middleware.steering.steer_prompt`)."""
    from ..engine import Learned, iter_sample
    from .runner import sample_seed

    phrasings = phrasings or EVAL_PHRASINGS
    system = placement_system(placement, tokenizer)
    rows: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        prompts, meta = [], []
        for i, problem in enumerate(task.problems):
            for condition in CONDITIONS:
                phrasing = None if condition == "none" else phrasings[condition][i % len(phrasings[condition])]
                prompts.append(steer_prompt(problem.prompt, None if condition == "none" else condition, phrasing,
                                            placement=placement, system=system))
                meta.append((i, condition, phrasing))
        # The same sample seeds for the three conditions of a problem: differences come from the prompt.
        seeds = [[sample_seed(seed, task.spec, task.problems[i].id, k) for k in range(samples)] for i, _, _ in meta]
        per_problem: dict[int, dict[str, Any]] = {}
        neutral: dict[int, list[list[int]]] = {}
        for index, completions in iter_sample(model, tokenizer, prompts, policy=Learned(heads), samples=samples,
                                              seeds=seeds, max_new_tokens=max_new_tokens, max_rows=batch_size):
            i, condition, phrasing = meta[index]
            problem = task.problems[i]
            row = _problem_row(completions, problem.grade, problem.answer)
            row["phrasing"] = phrasing
            row["prompt"] = prompts[index]
            per_problem.setdefault(i, {})[condition] = row
            if condition == "none":
                neutral[i] = [c.token_ids for c in completions]
        for i, conditions in per_problem.items():  # the neutral completions under every prompt
            for condition, row in conditions.items():
                forced = [t for t in forced_temperatures(model, tokenizer, heads, row.pop("prompt"), neutral[i])
                          if not math.isnan(t)]
                row["T_fixed"] = math.fsum(forced) / len(forced) if forced else float("nan")
        rows[task.spec] = [per_problem[i] for i in sorted(per_problem)]
    return summarize_steer(rows, samples=samples, max_new_tokens=max_new_tokens, seed=seed, placement=placement)


def _summary(problems: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"problems": len(problems)}
    for condition in CONDITIONS:
        block = {}
        for metric in ("T", "P", "pass@1", "pass@k", "maj@k", "distinct-2"):
            mean, se = mean_and_stderr([p[condition][metric] for p in problems])
            block[metric] = round(mean, 4)
            block[f"{metric}_se"] = round(se, 4)
        out[condition] = block
    for direction, metric in OUTCOME_DIFFERENCES:  # paired over problems: instructed minus none
        mean, se = mean_and_stderr([p[direction][metric] - p["none"][metric] for p in problems])
        out[f"d{metric}_{direction}"], out[f"d{metric}_{direction}_se"] = round(mean, 4), round(se, 4)
    for direction, sign in (("low", -1.0), ("high", 1.0)):
        for metric in ("T", "P"):
            shifts = [p[direction][metric] - p["none"][metric] for p in problems]
            mean, se = mean_and_stderr(shifts)
            out[f"d{metric}_{direction}"] = round(mean, 4)
            out[f"d{metric}_{direction}_se"] = round(se, 4)
        shifts = [p[direction]["T"] - p["none"]["T"] for p in problems]
        out[f"consistency_{direction}"] = round(sum(sign * s > 0 for s in shifts) / len(shifts), 4) if shifts else 0.0
        fixed = [p[direction]["T_fixed"] - p["none"]["T_fixed"] for p in problems if "T_fixed" in p[direction]]
        if fixed:
            mean, se = mean_and_stderr(fixed)
            out[f"dT_fixed_{direction}"], out[f"dT_fixed_{direction}_se"] = round(mean, 4), round(se, 4)
            out[f"consistency_fixed_{direction}"] = round(sum(sign * s > 0 for s in fixed) / len(fixed), 4)
    return out


def summarize_steer(rows: dict[str, list[dict[str, Any]]], **settings: Any) -> dict[str, Any]:
    """Per task, overall (problems of every task pooled) and per held-out phrasing."""
    every = [p for problems in rows.values() for p in problems]
    by_phrasing: dict[str, dict[str, Any]] = {}
    for direction, sign in (("low", -1.0), ("high", 1.0)):
        phrased: dict[str, list[dict[str, Any]]] = {}
        for p in every:
            phrased.setdefault(p[direction]["phrasing"], []).append(p)
        for phrasing, problems in phrased.items():
            shifts = [p[direction]["T"] - p["none"]["T"] for p in problems]
            mean, se = mean_and_stderr(shifts)
            by_phrasing[phrasing] = {"direction": direction, "problems": len(shifts), "dT": round(mean, 4),
                                     "dT_se": round(se, 4),
                                     "consistency": round(sum(sign * s > 0 for s in shifts) / len(shifts), 4)}
            fixed = [p[direction]["T_fixed"] - p["none"]["T_fixed"] for p in problems if "T_fixed" in p[direction]]
            if fixed:
                fixed_mean, fixed_se = mean_and_stderr(fixed)
                by_phrasing[phrasing].update(dT_fixed=round(fixed_mean, 4), dT_fixed_se=round(fixed_se, 4),
                                             consistency_fixed=round(sum(sign * s > 0 for s in fixed) / len(fixed), 4))
    return {"settings": settings, "tasks": {task: _summary(problems) for task, problems in rows.items()},
            "overall": _summary(every), "phrasings": by_phrasing}


def steer_markdown(report: dict[str, Any]) -> str:
    lines = ["| task | T none | T low | T high | dT low | dT high | cons. low | cons. high | P none | dP low | dP high |"
             " pass@1 none / low | maj@k none / low | distinct-2 none / high | pass@k none / high |",
             "|---|" + "---|" * 14]
    def row(name: str, s: dict[str, Any]) -> str:
        pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
        return (f"| {name} | {s['none']['T']:.3f} | {s['low']['T']:.3f} | {s['high']['T']:.3f} | "
                f"{s['dT_low']:+.3f} ± {s['dT_low_se']:.3f} | {s['dT_high']:+.3f} ± {s['dT_high_se']:.3f} | "
                f"{pct(s['consistency_low'])}% | {pct(s['consistency_high'])}% | {s['none']['P']:.3f} | "
                f"{s['dP_low']:+.4f} | {s['dP_high']:+.4f} | {pct(s['none']['pass@1'])} / {pct(s['low']['pass@1'])} | "
                f"{pct(s['none']['maj@k'])} / {pct(s['low']['maj@k'])} | {s['none']['distinct-2']:.3f} / "
                f"{s['high']['distinct-2']:.3f} | {pct(s['none']['pass@k'])} / {pct(s['high']['pass@k'])} |")
    for task, summary in report["tasks"].items():
        lines.append(row(task.split("?")[0], summary))
    lines.append(row("**overall**", report["overall"]))
    blocks = [*report["tasks"].items(), ("**overall**", report["overall"])]
    if "dT_fixed_low" in report["overall"]:
        lines += ["", "The same neutral completions teacher-forced under each prompt (the heads' reading of the "
                  "instruction alone):", "", "| task | dT low | dT high | cons. low | cons. high |", "|---|---|---|---|---|"]
        for name, s in blocks:
            lines.append(f"| {name.split('?')[0]} | {s['dT_fixed_low']:+.3f} ± {s['dT_fixed_low_se']:.3f} | "
                         f"{s['dT_fixed_high']:+.3f} ± {s['dT_fixed_high_se']:.3f} | "
                         f"{100 * s['consistency_fixed_low']:.1f}% | {100 * s['consistency_fixed_high']:.1f}% |")
    if "dpass@1_low" in report["overall"]:
        lines += ["", "The effect on the output, instructed minus none, paired over problems (± SE, in points; "
                  "distinct-2 as a fraction):", "",
                  "| task | pass@1 low - none | maj@k low - none | distinct-2 high - none | pass@k high - none |",
                  "|---|---|---|---|---|"]
        for name, s in blocks:
            cells = []
            for direction, metric in OUTCOME_DIFFERENCES:
                scale, digits = (1.0, 3) if metric == "distinct-2" else (100.0, 1)
                key = f"d{metric}_{direction}"
                cells.append(f"{scale * s[key]:+.{digits}f} ± {scale * s[key + '_se']:.{digits}f}")
            lines.append(f"| {name.split('?')[0]} | " + " | ".join(cells) + " |")
    lines += ["", "| phrasing | direction | problems | dT | consistency | dT, same completion | consistency |",
              "|---|---|---|---|---|---|---|"]
    for phrasing, s in report["phrasings"].items():
        fixed = (f"{s['dT_fixed']:+.3f} ± {s['dT_fixed_se']:.3f} | {100 * s['consistency_fixed']:.1f}%"
                 if "dT_fixed" in s else "- | -")
        lines.append(f"| {phrasing} | {s['direction']} | {s['problems']} | {s['dT']:+.3f} ± {s['dT_se']:.3f} | "
                     f"{100 * s['consistency']:.1f}% | {fixed} |")
    return "\n".join(lines) + "\n"


def write_steer_outputs(report: dict[str, Any], directory: str | os.PathLike[str]) -> dict[str, Path]:
    """``steer.json``, ``steer.md`` and ``steer.png`` (mean T per task and condition) in ``directory``."""
    import json

    from .._deps import require

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "steer.json", "markdown": directory / "steer.md", "chart": directory / "steer.png"}
    atomic_write_bytes(paths["json"], (json.dumps(report, indent=2) + "\n").encode())
    atomic_write_bytes(paths["markdown"], steer_markdown(report).encode())
    matplotlib = require("matplotlib", purpose="The steering chart")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t.split("?")[0].removeprefix("rg:") for t in report["tasks"]] + ["overall"]
    blocks = list(report["tasks"].values()) + [report["overall"]]
    figure, axes = plt.subplots(figsize=(max(6.0, 1.6 * len(names)), 4.0))
    width = 0.27
    for k, (condition, color) in enumerate(zip(CONDITIONS, ("#888888", "#1f77b4", "#d62728"))):
        xs = [i + (k - 1) * width for i in range(len(names))]
        axes.bar(xs, [b[condition]["T"] for b in blocks], width, yerr=[b[condition]["T_se"] for b in blocks],
                 capsize=2, color=color, label=f"instruction: {condition}")
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels(names, rotation=15, ha="right")
    axes.set_ylabel("mean predicted temperature ± SE")
    axes.legend(frameon=False, fontsize="small")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(paths["chart"], dpi=120)
    plt.close(figure)
    return paths
