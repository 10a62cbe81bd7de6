"""``deco train rollouts``, ``deco train outcome`` (issue #12/#13) and ``deco steer`` (the steering report).

``deco train fit`` keeps the reference recipe (AutoDeco loss on correct samples); ``outcome`` trains
on graded rollouts with the off-policy policy-gradient objective and, when the cache holds
instruction pairs, the steering ranking loss (training/outcome.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import DecoError
from .app import _fail, app, console
from .cmd_train import TempFeaturesOpt, _command_line, _floats, _load, train_app


@train_app.command("rollouts")
def rollouts_command(
    out: Annotated[Path, typer.Option(help="JSONL of graded draws to write (a .summary.json next to it).")],
    model: Annotated[str, typer.Option()] = "default",
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated rollout tasks (training/rollouts.py; "
                                                      "default: all of ROLLOUT_TASKS).")] = None,
    prompts_per_task: Annotated[int, typer.Option(min=1)] = 24,
    prompts_for: Annotated[Optional[str], typer.Option(help="Per-task prompt counts, e.g. products=48,chain_sum=48.")] = None,
    temperatures: Annotated[str, typer.Option(help="Behaviour temperatures (P = 1), comma-separated.")] = "0.3,0.6,1.0",
    samples_per_temperature: Annotated[int, typer.Option(min=1)] = 2,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 40,
    batch_size: Annotated[int, typer.Option(min=1)] = 192,
    seed: Annotated[int, typer.Option()] = 21,
    steer_pairs: Annotated[int, typer.Option(min=0, help="Per prompt group, how many draws also get a 'low' and a "
                                                        "'high' instruction copy (0: no steering data).")] = 0,
    steer_neutral: Annotated[bool, typer.Option(help="With --steer-pairs: also a copy under a sentence that asks "
                                                     "nothing of the decoding (steering.NEUTRAL_PHRASINGS), for the "
                                                     "outcome fit's hold term.")] = False,
    steer_phrasings: Annotated[str, typer.Option(help="Training phrasings of the copies: 'hand' (steering.TRAIN_PHRASINGS) "
                                                     "or 'generated' (adds steering.generated_phrasings()).")] = "hand",
    steer_placement: Annotated[str, typer.Option(help="Where the copies' instruction goes: user (the end of the user "
                                                     "message) or system (the end of the chat template's system "
                                                     "message; LearnedDecoding(steer_placement=...)).")] = "user",
    heads: Annotated[Optional[str], typer.Option(help="On-policy draws: heads (shipped name or folder) that also "
                                                     "sample every prompt, at each --head-scales value.")] = None,
    head_scales: Annotated[Optional[str], typer.Option(help="Comma-separated autodeco@S scales for --heads, e.g. 0.5,1.")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1)] = None,
) -> None:
    """Sample every prompt at every temperature (and with --heads, by the heads themselves) and keep every
    draw, graded, with its behaviour policy."""
    command = _command_line("rollouts", dict(locals()))  # before any import adds names to locals()
    from ..steering import NEUTRAL_PHRASINGS, check_placement, placement_system, training_phrasings
    from ..training.data import read_jsonl, write_jsonl
    from ..training.rollouts import ROLLOUT_TASKS, RolloutConfig, add_steer_pairs, generate_rollouts

    try:
        phrasings = training_phrasings(steer_phrasings)  # refused before any draw
        check_placement(steer_placement)
        counts = {k: int(v) for k, v in (p.split("=") for p in prompts_for.split(","))} if prompts_for else None
        config = RolloutConfig(tasks=tuple(t.strip() for t in tasks.split(",")) if tasks else tuple(ROLLOUT_TASKS),
                               prompts_per_task=prompts_per_task, prompts_for=counts,
                               temperatures=_floats(temperatures, "temperatures"),
                               samples_per_temperature=samples_per_temperature, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, seed=seed, heads=heads,
                               head_scales=_floats(head_scales, "head-scales") if head_scales else ())
        loaded_model, tokenizer = _load(model, "float32", threads)
        summary = generate_rollouts(loaded_model, tokenizer, config, out, log=lambda m: console.print(m))
        if steer_pairs:
            records = add_steer_pairs(read_jsonl(out), per_group=steer_pairs, seed=seed, phrasings=phrasings,
                                      neutral=NEUTRAL_PHRASINGS if steer_neutral else None, placement=steer_placement,
                                      system=placement_system(steer_placement, tokenizer))
            write_jsonl(records, out)
            summary["steer_copies"] = sum(1 for r in records if r.get("steer"))
            summary["steer_phrasings"] = steer_phrasings
            summary["steer_placement"] = steer_placement
    except (DecoError, ValueError) as error:
        _fail(str(error))
    summary["command"] = command
    out.with_name(out.stem + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for task, t in summary["tasks"].items():
        console.print(f"{task}: {t['accuracy']:.1%} correct of {t['draws']} draws, {t['mixed_prompts']}/{t['prompts']} "
                      f"prompts mixed, by T {t['by_temperature']}")
    console.print(f"{summary['records']} records, {summary['completion_tokens']} completion tokens -> {out}")


@train_app.command("outcome")
def outcome_command(
    cache: Annotated[Path, typer.Option(help="Cache built from rollouts (`deco train cache --data ROLLOUTS`).")],
    out: Annotated[Path, typer.Option(help="Heads folder to write (heads.onnx + manifest.json).")],
    objective: Annotated[str, typer.Option(help="ppo (off-policy clipped policy gradient).")] = "ppo",
    learning_rate: Annotated[float, typer.Option("--lr")] = 1e-3,
    epochs: Annotated[int, typer.Option(min=1)] = 4,
    groups_per_step: Annotated[int, typer.Option(min=1)] = 4,
    clip: Annotated[float, typer.Option()] = 0.2,
    dual_clip: Annotated[float, typer.Option(help="Cap of a negative-advantage token's loss, c * |A| (dual-clip PPO; 0 = off).")] = 3.0,
    rare_bonus: Annotated[float, typer.Option(help="Extra reward for solving a rarely solved prompt (pass@k).")] = 0.0,
    reference_weight: Annotated[float, typer.Option(help="Weight of the AutoDeco loss on correct draws (anchor).")] = 0.0,
    train_top_p: Annotated[bool, typer.Option("--top-p/--no-top-p", help="Train the top-p head too.")] = True,
    steer_weight: Annotated[float, typer.Option()] = 1.0,
    steer_margin: Annotated[float, typer.Option()] = 0.25,
    steer_margin_top_p: Annotated[float, typer.Option()] = 0.0,
    steer_hold_weight: Annotated[float, typer.Option(help="Weight of the hold term on neutral-sentence copies.")] = 1.0,
    steer_hold_tolerance: Annotated[float, typer.Option(help="|dT| the hold term allows before it costs.")] = 0.02,
    pairs_per_step: Annotated[int, typer.Option(min=1)] = 4,
    validation_fraction: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    max_steps: Annotated[Optional[int], typer.Option(min=1)] = None,
    validate_every: Annotated[Optional[int], typer.Option(min=1, help="Validate every N steps (held-out prompt "
                                                                      "groups of the cache).")] = None,
    keep_best: Annotated[bool, typer.Option(help="Keep the heads of the lowest validation PPO loss (with "
                                                 "--validate-every; the untrained start counts).")] = False,
    recipe: Annotated[Optional[str], typer.Option(help="A name for this recipe, kept in the manifest.")] = None,
    temperature_features: TempFeaturesOpt = "hidden",
) -> None:
    """Fit heads on graded rollouts with the outcome objective (and steering pairs when cached)."""
    command = _command_line("outcome", dict(locals()))  # before any import adds names to locals()
    from ..training import FeatureCache
    from ..training.outcome import OutcomeConfig, export_outcome_heads, fit_outcome

    try:
        features = FeatureCache.open(cache)
        config = OutcomeConfig(objective=objective, learning_rate=learning_rate, epochs=epochs,  # type: ignore[arg-type]
                               groups_per_step=groups_per_step, clip=clip, dual_clip=dual_clip, rare_bonus=rare_bonus,
                               reference_weight=reference_weight, train_top_p=train_top_p, steer_weight=steer_weight,
                               steer_margin=steer_margin, steer_margin_top_p=steer_margin_top_p,
                               steer_hold_weight=steer_hold_weight, steer_hold_tolerance=steer_hold_tolerance,
                               pairs_per_step=pairs_per_step, validation_fraction=validation_fraction, seed=seed,
                               max_steps=max_steps, temperature_features=temperature_features,
                               validate_every=validate_every, keep_best=keep_best)
        result = fit_outcome(features, config)
        export_outcome_heads(result, features, config, out, command=command, recipe=recipe)
    except (DecoError, ValueError) as error:
        _fail(str(error))
    console.print(f"validation {result.validation_before} -> {result.validation}")
    if result.best_step is not None:
        console.print(f"kept the heads of step {result.best_step} (lowest validation PPO loss of "
                      f"{len(result.checkpoints)} checkpoints)")
    console.print(f"{result.steps} steps ({result.train_groups} groups, {result.train_pairs} pairs) in "
                  f"{result.wall_seconds} s -> {out}")


@train_app.command("top-p")
def top_p_command(
    heads: Annotated[str, typer.Option(help="Heads (shipped name or folder) whose temperature head is kept as it is.")],
    cache: Annotated[Path, typer.Option(help="Feature cache of the heads' base model (any: the target needs no grades).")],
    out: Annotated[Path, typer.Option(help="Heads folder to write (heads.onnx + manifest.json).")],
    target: Annotated[str, typer.Option(help="The rule whose nucleus the top-p head learns: p-less (keep p >= "
                                             "sum p^2 of softmax(l / T) at the heads' own T).")] = "p-less",
    learning_rate: Annotated[float, typer.Option("--lr")] = 1e-3,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=1, help="Tokens per step.")] = 256,
    validation_fraction: Annotated[float, typer.Option(min=0.0, max=0.9)] = 0.1,
    seed: Annotated[int, typer.Option()] = 0,
    max_steps: Annotated[Optional[int], typer.Option(min=1)] = None,
    branch_weight: Annotated[float, typer.Option(help="Loss weight of the tokens where the rule keeps several "
                                                      "tokens (the others weigh 1).")] = 1.0,
    temperature_scale: Annotated[float, typer.Option(help="Fold this scale into the temperature head first "
                                                          "(T = T_source * S), so P is distilled at the T the new "
                                                          "heads apply.")] = 1.0,
) -> None:
    """Train the top-p head of existing heads to a rule's per-token nucleus (the temperature head frozen)."""
    command = _command_line("top-p", dict(locals()))  # before any import adds names to locals()
    from ..training import FeatureCache
    from ..training.nucleus import (
        TopPTargetConfig,
        export_top_p_target_heads,
        fit_top_p_target,
        heads_from_artifact_for_training,
    )

    try:
        config = TopPTargetConfig(target=target, learning_rate=learning_rate, epochs=epochs,  # type: ignore[arg-type]
                                  batch_size=batch_size, validation_fraction=validation_fraction, seed=seed,
                                  max_steps=max_steps, temperature_scale=temperature_scale,
                                  branch_weight=branch_weight)
        features = FeatureCache.open(cache)
        module, artifact = heads_from_artifact_for_training(heads)
        artifact.check_compatible(features.base_model)  # the cache's model is the heads' base model, or a clear error
        result = fit_top_p_target(module, features, config)
        export_top_p_target_heads(result, artifact, features, config, out, command=command)
    except (DecoError, ValueError) as error:
        _fail(str(error))
    console.print(f"validation {result.validation_before} -> {result.validation}")
    console.print(f"{result.steps} steps in {result.wall_seconds} s -> {out}")


@app.command("steer")
def steer_command(
    task: Annotated[list[str], typer.Option(help="Task spec (rg:NAME?k=v or a JSONL file); repeat for several.")],
    out: Annotated[Path, typer.Option(help="Folder for steer.json, steer.md and steer.png.")],
    heads: Annotated[str, typer.Option(help="Shipped heads name or folder.")] = "smollm2-135m-instruct",
    model: Annotated[str, typer.Option()] = "default",
    limit: Annotated[int, typer.Option(min=1, help="Problems per task.")] = 30,
    samples: Annotated[int, typer.Option(min=1)] = 4,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    seed: Annotated[int, typer.Option()] = 7,
    batch_size: Annotated[int, typer.Option(min=1)] = 192,
    phrasings: Annotated[str, typer.Option(
        help="held-out: steering.EVAL_PHRASINGS, never trained on (the benchmark); api: the one sentence "
             "LearnedDecoding(steer=...) inserts.")] = "held-out",
    placement: Annotated[str, typer.Option(
        help="Where the instruction goes: user (the end of the user message, where training puts it) or system "
             "(the end of the chat template's system message).")] = "user",
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """The steering report: mean T / P with a held-out 'low' / 'high' instruction and with none."""
    from ..default_model import load_model
    from ..evaluation.steer import run_steer, steer_markdown, steer_phrasings, write_steer_outputs
    from ..evaluation.tasks import load_task
    from ..heads.artifact import DecodingHeads
    from ..steering import check_placement

    started = time.perf_counter()
    try:
        sentences = steer_phrasings(phrasings)  # a bad value fails before the model loads
        check_placement(placement)
        tasks = [load_task(spec, limit=limit) for spec in task]
        decoding_heads = DecodingHeads.from_pretrained(heads)
        loaded_model, tokenizer = load_model(model)
        report = run_steer(loaded_model, tokenizer, decoding_heads, tasks, samples=samples,
                           max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, phrasings=sentences,
                           placement=placement)
    except (DecoError, ValueError) as error:
        _fail(str(error))
    report["settings"].update(heads=heads, limit=limit, phrasings=phrasings, wall_seconds=round(time.perf_counter() - started, 1))
    paths = write_steer_outputs(report, out)
    if json_output:
        typer.echo(json.dumps(report))
    else:
        console.print(steer_markdown(report))
        console.print(f"-> {', '.join(str(p) for p in paths.values())}")

