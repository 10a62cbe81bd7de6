"""``deco eval``: pass@1 / pass@k of learned decoding and every baseline, with a resumable cache."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .._deps import require
from ..errors import DecoError
from .app import MAX_SEED, _fail, app, console

_STRATEGY_HELP = (
    "Repeatable. greedy | default | static:T,P | oracle | mean-static[@S] | edt[:T0,N,theta] | min-p:X[,T] | autodeco | "
    "autodeco@S | autodeco-t | autodeco-p | confidence:TAU,T_HIGH | entropy-adaptive:THRESHOLD,T_LOW,T_HIGH | "
    "entropy-continuous:T_MIN,T_MAX | top-n-sigma:N,T | p-less:T | dev-static | dev:FAMILY | tuned-baselines "
    "(dev-static and every dev:FAMILY, tuned on the dev split of the training tasks)"
)
_TASK_HELP = (
    "Repeatable. rg:NAME[?key=value&...] (a reasoning-gym dataset; `seed` and `size` pick the problems) or a "
    "JSONL file of {\"prompt\", \"answer\", \"match\": number|exact|contains} lines."
)


class _RichProgress:
    """Rich progress bars: one per (task, decoding), with the generation speed."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Column

        self.display = Progress(
            # Task specs and file names can be long: wrap them, never cut them at the terminal width.
            TextColumn("{task.description}", markup=False, table_column=Column(overflow="fold")), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[speed]}", markup=False), console=console,
        )
        self._tokens: dict[Any, tuple[int, float]] = {}

    def start(self, label: str, total: int, done: int) -> Any:
        handle = self.display.add_task(label, total=total, completed=done, speed="")
        self._tokens[handle] = (0, time.perf_counter())
        return handle

    def advance(self, handle: Any, tokens: int) -> None:
        count, started = self._tokens[handle]
        count += tokens
        self._tokens[handle] = (count, started)
        speed = f"{count / max(time.perf_counter() - started, 1e-9):.0f} tok/s"
        self.display.update(handle, advance=1, speed=speed)

    def finish(self, handle: Any) -> None:
        pass


def _parse_groups(texts: list[str], specs: list[str]) -> dict[str, list[str]]:
    """``NAME=SHORT,SHORT`` -> ``{NAME: [task spec, ...]}``; short names are the tables' (``products``)."""
    from ..evaluation.report import short_task_names

    by_short = {short: spec for spec, short in short_task_names(specs).items()}
    groups: dict[str, list[str]] = {}
    for text in texts:
        name, _, members = text.partition("=")
        shorts = [m.strip() for m in members.split(",") if m.strip()]
        unknown = [m for m in shorts if m not in by_short]
        if not name.strip() or not shorts or unknown:
            raise ValueError(f"--group {text!r}: write NAME=TASK,TASK with this run's task names "
                             f"({', '.join(by_short)}){'; unknown: ' + ', '.join(unknown) if unknown else ''}.")
        groups[name.strip()] = [by_short[m] for m in shorts]
    return groups


@app.command("eval")
def evaluate(
    task: Annotated[list[str], typer.Option("--task", help=_TASK_HELP)],
    strategy: Annotated[Optional[list[str]], typer.Option("--strategy", help=_STRATEGY_HELP)] = None,
    sweep: Annotated[bool, typer.Option(
        "--sweep", help="Add greedy, static T in {0.1,0.2,0.3,0.5,0.7,1.0} at P=1 and autodeco@S for S in "
        "{0.25,0.5,0.75,1,1.5,2}: the static curve the frontier gain is measured against.")] = False,
    samples: Annotated[int, typer.Option(min=1, help="K samples per problem (greedy uses one).")] = 4,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Problems per task (rg tasks: default 100).")] = None,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Run seed; every sample has its own generator derived from it.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows (problem x sample) decoded together (prompts are prefilled once per problem).")] = 256,
    model: Annotated[str, typer.Option(help="`default` (embedded SmolLM2-135M-Instruct) or a local model folder.")] = "default",
    heads: Annotated[str, typer.Option(help="`default` (shipped heads for the model), a shipped name, or a path.")] = "default",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results document here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write the markdown tables here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a bar chart (PNG) with error bars here.")] = None,
    pareto: Annotated[Optional[Path], typer.Option(
        help="Write a Pareto chart (PNG) here: pass@1 against pass@k, the static-T curve and the heads' scale curve.")] = None,
    cache: Annotated[Path, typer.Option(help="JSONL of finished problems; rerun the same command to resume.")] = Path(
        "deco-eval-cache.jsonl"
    ),
    dtype: Annotated[str, typer.Option(
        help="Model weights: float32 (load_model's default, exact) or bfloat16 (faster only on CPUs with native "
        "bf16; see benchmarks/dtype_forward.py).")] = "float32",
    oracle_temperatures: Annotated[Optional[str], typer.Option(
        help="Comma-separated T grid of `oracle` (default 0.1,0.2,...,1.5).")] = None,
    oracle_top_ps: Annotated[Optional[str], typer.Option(
        help="Comma-separated P grid of `oracle` at its best T (default 0.5,0.55,...,1.0).")] = None,
    oracle_samples: Annotated[Optional[int], typer.Option(
        min=1, help="Samples per problem while `oracle` searches its grid (default: --samples); with fewer, the "
        "chosen (T, P) is generated again with --samples and that run is reported.")] = None,
    dev_samples: Annotated[Optional[int], typer.Option(
        min=1, help="Samples per dev problem while dev-static / dev:FAMILY tune (default 2).")] = None,
    dev_problems: Annotated[Optional[int], typer.Option(
        min=1, help="Problems per dev task (products, basic_arithmetic, chain_sum at seed 5151; default 40).")] = None,
    compare_to: Annotated[Optional[list[str]], typer.Option(
        "--compare-to", help="Repeatable: a strategy of this run; every other strategy's pass@1 and pass@k minus "
        "its, with 95% paired bootstrap intervals over problems (tables and JSON `differences`).")] = None,
    group: Annotated[Optional[list[str]], typer.Option(
        "--group", help="Repeatable: NAME=TASK,TASK (short task names as in the tables, e.g. in=products,chain_sum): "
        "the frontier gain and --compare-to tables also report the mean over the group's tasks. One run, one "
        "dev split, so every group's tuned baselines are the same.")] = None,
) -> None:
    """Compare learned decoding with greedy, static, oracle, mean-static, EDT and min-p baselines.

    Answers: the text inside <answer>...</answer> when present, else the whole completion; numeric
    answers are the LAST number in it; text answers compare case- and whitespace-insensitively.
    """
    from ..evaluation import load_task, parse_eval_strategy

    from ..evaluation.strategies import ORACLE_TEMPERATURES, ORACLE_TOP_PS, expand_strategy_names

    started = time.perf_counter()
    try:
        temperature_grid = _grid("--oracle-temperatures", oracle_temperatures, ORACLE_TEMPERATURES, high=None)
        top_p_grid = _grid("--oracle-top-ps", oracle_top_ps, ORACLE_TOP_PS, high=1.0)
        if dtype not in ("bfloat16", "float32"):
            raise ValueError(f"--dtype {dtype!r}: use bfloat16 or float32.")
        if plot is not None or pareto is not None:  # before the whole evaluation runs, not after
            require("matplotlib", purpose="`deco eval --plot` / `--pareto`")
        names = expand_strategy_names(list(strategy or []), sweep=sweep)
        if not names:
            raise ValueError("Name at least one --strategy, or pass --sweep.")
        strategies = [parse_eval_strategy(name) for name in names]
        run_names = [s.name for s in strategies]
        for baseline in compare_to or []:
            if baseline not in run_names:
                raise ValueError(f"--compare-to {baseline!r} is not a strategy of this run; name one of: "
                                 f"{', '.join(run_names)} (or add it with --strategy).")
        tasks = [load_task(spec, limit=limit) for spec in task]
        groups = _parse_groups(group or [], [t.spec for t in tasks])
        from ..evaluation.cache import ResultCache

        result_cache = ResultCache(cache)  # a folder or unwritable path fails here, before the model loads
    except (DecoError, ValueError) as error:
        _fail(str(error))
        return
    try:
        from ..default_model import load_model
        from ..evaluation.runner import EvaluationRunner

        import torch

        loaded_model, tokenizer = load_model(model, dtype=getattr(torch, dtype))
        from ..generation import check_prompts_fit

        for loaded_task in tasks:  # before any generation: one long prompt would otherwise degrade silently
            check_prompts_fit(loaded_model, tokenizer, [p.prompt for p in loaded_task.problems], max_new_tokens,
                              [f"Task {loaded_task.spec!r}, problem {p.id}" for p in loaded_task.problems])
        loaded_heads = None
        if any(s.needs_heads for s in strategies):
            from .app import heads_for_model

            loaded_heads = heads_for_model(heads, loaded_model)
        progress = _RichProgress()
        runner = EvaluationRunner(
            loaded_model, tokenizer, heads=loaded_heads, samples=samples, seed=seed, max_new_tokens=max_new_tokens,
            batch_size=batch_size, cache=result_cache, progress=progress, oracle_temperatures=temperature_grid,
            oracle_top_ps=top_p_grid, oracle_samples=oracle_samples, dev_samples=dev_samples,
            dev_problems=dev_problems,
        )
        with progress.display:
            results = runner.evaluate(tasks, strategies)
    except KeyboardInterrupt:
        console.print(f"interrupted: finished problems are kept in {cache}; rerun the same command to resume.")
        raise typer.Exit(130) from None
    except (DecoError, ValueError, FileNotFoundError) as error:
        _fail(str(error))
        return
    config = _config(
        tasks, names, runner, model=model, heads=loaded_heads, limit=limit, elapsed=time.perf_counter() - started
    )
    from ..evaluation.report import (
        markdown_table,
        results_document,
        write_json,
        write_markdown,
        write_pareto,
        write_plot,
    )

    document = results_document(results, config, compare_to=compare_to, groups=groups)
    typer.echo(markdown_table(document), nl=False)
    if json_out:
        write_json(document, json_out)
    if markdown:
        write_markdown(document, markdown)
    for target, write in ((plot, write_plot), (pareto, write_pareto)):
        if target:
            try:
                write(document, target)
            except DecoError as error:
                _fail(str(error))


def _grid(option: str, text: str | None, default: tuple[float, ...], *, high: float | None) -> tuple[float, ...]:
    if text is None:
        return default
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{option} {text!r}: write comma-separated numbers, e.g. 0.1,0.5,1.0.") from None
    if not all(v > 0 and (high is None or v <= high) for v in values):
        bound = f"in (0, {high}]" if high else "> 0"
        raise ValueError(f"{option} {text!r}: every value must be {bound}.")
    return values


def _dev_config(runner: Any) -> dict[str, Any] | None:
    from ..evaluation.tuning import DEV_SEED, DEV_TASKS, GRID_BUDGET

    if runner.dev_split is None:  # no tuned strategy in this run
        return None
    return {"tasks": list(DEV_TASKS), "seed": DEV_SEED, "problems": {t.spec: len(t) for t in runner.dev_split},
            "samples": runner.dev_samples, "grid_budget": GRID_BUDGET,
            "excluded": "every prompt of the run's evaluation tasks", "objective": "pooled dev pass@1"}


def _config(tasks: list[Any], strategy_names: list[str], runner: Any, *, model: str, heads: Any, limit: int | None,
            elapsed: float) -> dict[str, Any]:
    import torch
    import transformers

    from .._version import __version__
    from ..strategies import EDT_DEFAULTS

    seconds = runner.generation_seconds
    return {
        "model": model,
        "dtype": str(getattr(runner.model, "dtype", "")),
        "heads": None if heads is None else {"path": str(heads.directory), "sha256": heads.manifest.onnx.sha256},
        "tasks": {t.spec: {"description": t.description, "problems": len(t)} for t in tasks},
        "strategies": list(strategy_names),
        "samples": runner.samples,
        "limit": limit,
        "seed": runner.seed,
        "max_new_tokens": runner.max_new_tokens,
        "batch_size": runner.batch_size,
        "edt": EDT_DEFAULTS,
        "dev_split": _dev_config(runner),
        "oracle_grid": {"temperature": list(runner.oracle_temperatures),
                        "top_p_at_best_temperature": list(runner.oracle_top_ps),
                        "samples_while_searching": runner.oracle_samples},
        "answer_extraction": "text in <answer></answer> if present else the completion; numbers: last number; "
        "text: case-folded, whitespace-collapsed exact match; reasoning-gym: that answer to the task's own "
        "score_answer; solved = grade >= 1; maj@k votes on the same extracted answer (ties: first occurrence)",
        "generated_tokens": runner.generated_tokens,
        "generation_seconds": round(seconds, 2),
        "tokens_per_second": round(runner.generated_tokens / seconds, 1) if seconds else None,
        "wall_seconds": round(elapsed, 1),
        "versions": {"deco_middleware": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "command": " ".join(["deco", *sys.argv[1:]]),
    }
