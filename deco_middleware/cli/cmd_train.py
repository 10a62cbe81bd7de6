"""``deco train data|cache|fit|all``: build data, cache features, fit and export heads."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import DecoError
from .app import SeedOption, _fail, app, console

train_app = typer.Typer(help="Train decoding heads for a causal LM on this machine (each stage runs alone too).",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(train_app, name="train")

ModelOption = Annotated[str, typer.Option(help="`default` (embedded SmolLM2-135M-Instruct) or a local model folder.")]


_OPTION_NAMES = {"learning_rate": "--lr", "train_top_p": "--top-p"}  # parameters whose option has another name
# Who draws the samples of `deco train data`: the torch engine (deco_middleware.engine) or vLLM's sampler.
DATA_ENGINES = ("torch", "vllm")


def _command_line(stage: str, arguments: dict[str, Any]) -> str:
    """``deco train STAGE`` with every option spelled out (defaults included), rebuilt from the
    parsed arguments so the record replays the run even if defaults change later."""
    words = ["deco", "train", stage]
    for name, value in arguments.items():
        if value is None or callable(value) or isinstance(value, type(shlex)):
            continue  # not an option: a name imported inside the command before locals() was taken
        option = _OPTION_NAMES.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, bool):
            words.append(option if value else "--no-" + option[2:])
        elif isinstance(value, (list, tuple)):
            for item in value:
                words += [option, str(item)]
        else:
            words += [option, str(value)]
    return shlex.join(words)


def _summary_path(data: Path) -> Path:
    return data.with_name(data.stem + ".summary.json")


def _wrong_path(data: Path) -> Path:
    return data.with_name(data.stem + ".wrong.jsonl")


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"`{name}` must be comma-separated numbers, got {text!r}.") from None


def _run_data(out: Path, model: str, tasks: str, prompts_per_task: int, temperatures: str,
              samples_per_temperature: int, max_new_tokens: int, batch_size: int, seed: int, unsolved: str,
              loaded: Any = None, command: str = "", dtype: str = "float32", threads: Optional[int] = None,
              engine: str = "torch") -> tuple[Path, dict[str, Any], Any]:
    from .._deps import require
    from ..training import SamplingConfig, rejection_sample, write_jsonl

    if engine not in DATA_ENGINES:
        raise typer.BadParameter(f"`--engine` must be one of {', '.join(DATA_ENGINES)}, got {engine!r}.")
    require("reasoning_gym", purpose="`deco train data` (training prompts)")  # before the model loads
    config = SamplingConfig(
        tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()), prompts_per_task=prompts_per_task,
        temperatures=_floats(temperatures, "--temperatures"), samples_per_temperature=samples_per_temperature,
        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, unsolved=unsolved,  # type: ignore[arg-type]
    )
    # Without a terminal (CI, nohup) the progress bar is silent: log one line per batch instead.
    log = None if console.is_terminal else console.log
    wrong: list[dict[str, Any]] = []
    if engine == "vllm":
        if dtype != "float32":
            raise typer.BadParameter("`--dtype` applies to the torch engine; with --engine vllm the engine runs float32.")
        require("vllm", purpose="`deco train data --engine vllm`", extra="vllm")
        from ..vllm.data import VllmSampler, data_engine

        sampler = VllmSampler(data_engine(model, batch_size=batch_size))
        records, summary = rejection_sample(None, None, config, progress=console.is_terminal, log=log,
                                            wrong_out=wrong, sampler=sampler)
    else:
        loaded = loaded or _load(model, dtype, threads)
        records, summary = rejection_sample(*loaded, config, progress=console.is_terminal, log=log, wrong_out=wrong)
    summary["engine"] = engine
    summary["model"] = model
    summary["command"] = command
    write_jsonl(records, out)
    # The wrong samples go to a sidecar file: `deco train cache --data` can add them for that variant.
    write_jsonl(wrong, _wrong_path(out))
    _summary_path(out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _print_yield(summary)
    return out, summary, loaded


def _print_yield(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"rejection sampling: {summary['records']} records, {summary['wall_seconds']} s, "
                        f"{summary['tokens_per_second']} tok/s")
    for column in ("task", "prompts", "samples", "correct", "sample acc.", "solved prompts", "kept", "reference"):
        table.add_column(column, justify="right" if column != "task" else "left")
    for task, y in summary["tasks"].items():
        table.add_row(task, str(y["prompts"]), str(y["samples"]), str(y["correct_samples"]),
                      f"{y['sample_accuracy']:.1%}", str(y["solved_prompts"]), str(y["kept"]), str(y["reference_added"]))
    console.print(table)


def _load(model: str, dtype: str, threads: Optional[int]) -> Any:
    import torch

    from ..default_model import load_model

    if dtype not in ("bfloat16", "float32"):
        raise typer.BadParameter(f"`--dtype` must be bfloat16 or float32, got {dtype!r}.")
    if threads:
        # On a shared, oversubscribed CPU one thread measured ~3x faster than two (no spin-waiting).
        torch.set_num_threads(threads)
    return load_model(model, dtype=getattr(torch, dtype))


def _parse_caps(text: Optional[str]) -> dict[str, int]:
    """``"3"`` (every source) or ``"sample-wrong=1,sample=2"`` -> {source or "*": cap}."""
    caps: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        source, _, number = part.rpartition("=")
        try:
            caps[source or "*"] = int(number)
        except ValueError:
            raise typer.BadParameter(f"`--max-per-prompt` takes N or SOURCE=N[,SOURCE=N], got {text!r}.") from None
        if caps[source or "*"] < 1:
            raise typer.BadParameter(f"`--max-per-prompt` caps must be >= 1, got {text!r}.")
    return caps


def _select_sources(records: list[dict[str, Any]], sources: Optional[str],
                    max_per_prompt: Optional[str] = None) -> list[dict[str, Any]]:
    """Keep the records whose ``source`` is listed (records without one, user data, always stay),
    and at most N of each (prompt, source) as capped by ``max_per_prompt``, the first in file order."""
    if sources:
        wanted = {s.strip() for s in sources.split(",") if s.strip()}
        records = [r for r in records if r.get("source") is None or r["source"] in wanted]
    caps = _parse_caps(max_per_prompt)
    if caps:
        seen: dict[tuple[str, str], int] = {}
        kept = []
        for record in records:
            source = str(record.get("source"))
            cap = caps.get(source, caps.get("*"))
            prompt = record["prompt"]  # a user message, or chat messages (a system-placed steering copy)
            key = (prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True), source)
            seen[key] = seen.get(key, 0) + 1
            if cap is None or seen[key] <= cap:
                kept.append(record)
        records = kept
    return records


def _run_cache(data: Path | list[Path], out: Path, model: str, hidden_dtype: str, batch_size: int, max_length: int,
               loaded: Any = None, command: str = "", dtype: str = "float32", threads: Optional[int] = None,
               sources: Optional[str] = None, max_per_prompt: Optional[str] = None) -> Any:
    from ..jsonl import read_json_object
    from ..training import TrainingDataError, build_cache, read_jsonl

    files = [data] if isinstance(data, Path) else list(data)
    records: list[dict[str, Any]] = []
    for file in files:
        records += read_jsonl(file)
    read = len(records)
    records = _select_sources(records, sources, max_per_prompt)
    if not records:
        raise TrainingDataError(f"No record of {', '.join(map(str, files))} has a source in {sources!r}; "
                                "nothing to cache. Check --sources (e.g. sample,reference).")
    summary_path = _summary_path(files[0])
    summary = read_json_object(summary_path, error=TrainingDataError, fix=f"Delete it or fix it; it describes {files[0]}."
                               ) if summary_path.is_file() else {"source": f"user JSONL {files[0]}", "records": read}
    summary["files"] = [str(f) for f in files]
    summary["sources_kept"] = sources or "all"
    summary["max_per_prompt"] = max_per_prompt
    summary["records_selected"] = len(records)
    summary["records_by_source"] = {
        key: sum(1 for r in records if r.get("source", "user") == key)
        for key in sorted({r.get("source", "user") for r in records})
    }
    loaded = loaded or _load(model, dtype, threads)
    cache = build_cache(*loaded, records, out, hidden_dtype=hidden_dtype, batch_size=batch_size,
                        max_length=max_length, data_summary=summary)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["command"] = command
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    cache.meta = meta
    console.print(f"cached {meta['completion_tokens']} completion tokens of {meta['records_used']} records in "
                  f"{meta['wall_seconds']} s ({meta['tokens_per_second']} tok/s) -> {out}")
    return cache


def _run_fit(cache_dir: Path, out: Path, work_dir: Optional[Path], resume: bool, command: str,
             recipe: Optional[str] = None, **options: Any) -> Path:
    from ..training import FeatureCache, LossConfig, TrainConfig, export_trained_heads, fit

    cache = FeatureCache.open(cache_dir)
    window = options.pop("soft_top_p_window")
    loss = LossConfig(heads=options.pop("heads"), top_p_steepness=options.pop("steepness"),
                      weight_by_label_probability=options.pop("weighting"),
                      easy_token_drop=options.pop("easy_token_drop"),
                      top_p_grad_to_temperature=options.pop("top_p_grad_to_temperature"),
                      soft_top_p_window=window or None)
    sources = options.pop("sources", None)
    config = TrainConfig(loss=loss, sources=tuple(x.strip() for x in sources.split(",") if x.strip()) if sources else None,
                         **options)
    result = fit(cache, config, work_dir=work_dir or cache_dir / "fit", resume=resume)
    commands = {"data": (cache.meta.get("data_summary") or {}).get("command"), "cache": cache.meta.get("command"),
                "fit": command}
    # Every stage's command is recorded, so the whole pipeline can be replayed from the manifest.
    export_trained_heads(result, cache, config, out, command=commands, recipe=recipe)
    v0, v1 = result.validation_before, result.validation
    if v1:
        console.print(f"validation loss {v0.get('loss')} -> {v1.get('loss')}; T {v1['temperature_mean']}±"
                      f"{v1['temperature_std']}, P {v1['top_p_mean']}±{v1['top_p_std']}, label in nucleus "
                      f"{v1['label_in_nucleus']:.1%}, nucleus size {v1['nucleus_size_mean']}")
    console.print(f"{result.steps} steps in {result.wall_seconds} s ({result.tokens_per_second} tok/s) -> {out}")
    return out


_TASKS_HELP = "Comma-separated reasoning-gym training tasks (easy configurations built in)."
_SOURCES_HELP = ("Comma-separated record sources to keep: sample (own correct), reference (answers added for "
                 "never-solved prompts), sample-wrong (own wrong samples). Default: all; user records without "
                 "`source` are always kept.")
_HIDDEN_HELP = ("Cached hidden-state dtype: float32 (exact for the float32 model) or float16 (half the disk; "
                "logits within 1e-2 of the largest logit, checked on the first batch).")


@train_app.command("data")
def data_command(
    out: Annotated[Path, typer.Option(help="JSONL file to write (a .summary.json is written next to it).")],
    model: ModelOption = "default",
    tasks: Annotated[str, typer.Option(help=_TASKS_HELP)] = ("basic_arithmetic,chain_sum,products,leg_counting,"
                                                             "letter_counting,simple_equations,spell_backward,word_sorting"),
    prompts_per_task: Annotated[int, typer.Option(min=1)] = 32,
    temperatures: Annotated[str, typer.Option(help="Sampling temperatures, comma-separated.")] = "0.6,1.0",
    samples_per_temperature: Annotated[int, typer.Option(min=1)] = 2,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 40,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows (prompts x samples) decoded together.")] = 128,
    seed: SeedOption = 0,
    unsolved: Annotated[str, typer.Option(help="Never-solved prompts: `drop` them or add the `reference` answer.")] = "reference",
    dtype: Annotated[str, typer.Option(help="Model dtype: float32 (load_model's default) or bfloat16.")] = "float32",
    threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads (default: torch's choice).")] = None,
    engine: Annotated[str, typer.Option(help="Who draws the samples: `torch` (this package's engine) or `vllm` "
                                             "(vLLM's own sampler, batched by vLLM; needs deco-middleware[vllm]). "
                                             "Same prompts, seeds, grader and record format.")] = "torch",
) -> None:
    """Rejection sampling: sample, grade with each task's scorer, keep the correct completions."""
    command = _command_line("data", dict(locals()))
    try:
        _run_data(out, model, tasks, prompts_per_task, temperatures, samples_per_temperature, max_new_tokens,
                  batch_size, seed, unsolved, command=command, dtype=dtype, threads=threads, engine=engine)
    except (DecoError, ValueError, FileNotFoundError) as error:
        _fail(str(error))


@train_app.command("cache")
def cache_command(
    data: Annotated[list[Path], typer.Option(help='JSONL of {"prompt", "completion"} records; repeat to combine '
                                             "files (e.g. DATA.wrong.jsonl for the wrong-samples variant).")],
    out: Annotated[Path, typer.Option(help="Cache folder to write.")],
    sources: Annotated[Optional[str], typer.Option(help=_SOURCES_HELP)] = None,
    max_per_prompt: Annotated[Optional[str], typer.Option(help="Keep at most N records per (prompt, source), the "
                                                              "first in file order: N, or SOURCE=N[,SOURCE=N] "
                                                              "(e.g. sample-wrong=1).")] = None,
    model: ModelOption = "default",
    hidden_dtype: Annotated[str, typer.Option(help=_HIDDEN_HELP)] = "float32",
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_length: Annotated[int, typer.Option(min=2)] = 1024,
    dtype: Annotated[str, typer.Option(help="Model dtype for the forward pass: float32 (load_model's default) or bfloat16.")] = "float32",
    threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Run the frozen model once; store hidden states and labels of the completion tokens."""
    command = _command_line("cache", dict(locals()))
    try:
        _run_cache(data, out, model, hidden_dtype, batch_size, max_length, command=command, dtype=dtype,
                   threads=threads, sources=sources, max_per_prompt=max_per_prompt)
    except (DecoError, ValueError, FileNotFoundError) as error:
        _fail(str(error))


def _fit_options(heads: str, learning_rate: float, weight_decay: float, batch_tokens: int, epochs: int,
                 max_steps: Optional[int], seed: int, validation_fraction: float, checkpoint_every: int,
                 steepness: float, weighting: bool, easy_token_drop: float, top_p_grad_to_temperature: bool,
                 soft_top_p_window: int, temperature_features: str = "hidden") -> dict[str, Any]:
    return dict(heads=heads, learning_rate=learning_rate, weight_decay=weight_decay, batch_tokens=batch_tokens,
                epochs=epochs, max_steps=max_steps, seed=seed, validation_fraction=validation_fraction,
                checkpoint_every=checkpoint_every, steepness=steepness, weighting=weighting,
                easy_token_drop=easy_token_drop, top_p_grad_to_temperature=top_p_grad_to_temperature,
                soft_top_p_window=soft_top_p_window, temperature_features=temperature_features)


HeadsOpt = Annotated[str, typer.Option("--heads", help="both | temperature | top_p")]
LrOpt = Annotated[float, typer.Option("--lr", help="AdamW learning rate (reference 5e-6 on 7B+ models).")]
WdOpt = Annotated[float, typer.Option()]
BatchOpt = Annotated[int, typer.Option(min=1, help="Completion tokens per step.")]
EpochsOpt = Annotated[int, typer.Option(min=1)]
MaxStepsOpt = Annotated[Optional[int], typer.Option(min=1)]
ValOpt = Annotated[float, typer.Option(min=0.0, max=0.9)]
CkptOpt = Annotated[int, typer.Option(min=1)]
SteepOpt = Annotated[float, typer.Option(help="alpha of the soft top-p mask (reference 30).")]
WeightOpt = Annotated[bool, typer.Option("--weighting/--no-weighting", help="Weight tokens by the model's p(label).")]
DropOpt = Annotated[float, typer.Option(min=0.0, max=0.99, help="Easy-token drop probability (reference 0.6; 0 = off).")]
GradOpt = Annotated[bool, typer.Option("--top-p-grad-to-temperature/--no-top-p-grad-to-temperature")]
WindowOpt = Annotated[int, typer.Option(min=0, help="Tokens whose cumulative mass the soft top-p loss sorts exactly; "
                                                    "the tail is integrated. 0 = full sort (exact, ~2x slower).")]
TempFeaturesOpt = Annotated[str, typer.Option(
    "--temperature-features",
    help="What the temperature head reads: hidden (the final-norm hidden state, the reference) or hidden+logit-stats "
         "(that and max probability and entropy of softmax(raw logits); manifest heads.temperature_features).")]
ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the checkpoint in the work dir.")]


@train_app.command("fit")
def fit_command(
    cache: Annotated[Path, typer.Option(help="Cache folder from `deco train cache`.")],
    out: Annotated[Path, typer.Option(help="Heads folder to write (heads.onnx + manifest.json).")],
    work_dir: Annotated[Optional[Path], typer.Option(help="Checkpoint folder (default: CACHE/fit).")] = None,
    sources: Annotated[Optional[str], typer.Option(help="Comma-separated record sources to train on (see `deco train "
                                                        "cache --help`); default: every cached record.")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="A name for this recipe, kept in the manifest's training record.")
                      ] = None,
    resume: ResumeOpt = True,
    heads: HeadsOpt = "both",
    learning_rate: LrOpt = 1e-3,
    weight_decay: WdOpt = 0.0,
    batch_tokens: BatchOpt = 128,
    epochs: EpochsOpt = 4,
    max_steps: MaxStepsOpt = None,
    seed: SeedOption = 0,
    validation_fraction: ValOpt = 0.1,
    checkpoint_every: CkptOpt = 50,
    steepness: SteepOpt = 30.0,
    weighting: WeightOpt = True,
    easy_token_drop: DropOpt = 0.6,
    top_p_grad_to_temperature: GradOpt = True,
    soft_top_p_window: WindowOpt = 1024,
    temperature_features: TempFeaturesOpt = "hidden",
) -> None:
    """Train the heads on a cache (AdamW, seeded, resumable) and export them."""
    command = _command_line("fit", dict(locals()))
    try:
        _run_fit(cache, out, work_dir, resume, command, sources=sources, recipe=recipe, **_fit_options(
            heads, learning_rate, weight_decay, batch_tokens, epochs, max_steps, seed, validation_fraction,
            checkpoint_every, steepness, weighting, easy_token_drop, top_p_grad_to_temperature, soft_top_p_window,
            temperature_features))
    except (DecoError, ValueError, FileNotFoundError) as error:
        _fail(str(error))


@train_app.command("all")
def all_command(
    work: Annotated[Path, typer.Option(help="Folder for data.jsonl, the cache and checkpoints.")],
    out: Annotated[Path, typer.Option(help="Heads folder to write (heads.onnx + manifest.json).")],
    model: ModelOption = "default",
    tasks: Annotated[str, typer.Option(help=_TASKS_HELP)] = ("basic_arithmetic,chain_sum,products,leg_counting,"
                                                             "letter_counting,simple_equations,spell_backward,word_sorting"),
    prompts_per_task: Annotated[int, typer.Option(min=1)] = 32,
    temperatures: Annotated[str, typer.Option()] = "0.6,1.0",
    samples_per_temperature: Annotated[int, typer.Option(min=1)] = 2,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 40,
    sample_batch_size: Annotated[int, typer.Option(min=1)] = 128,
    unsolved: Annotated[str, typer.Option(help="Never-solved prompts: `drop` them or add the `reference` answer.")] = "reference",
    hidden_dtype: Annotated[str, typer.Option(help=_HIDDEN_HELP)] = "float32",
    sources: Annotated[Optional[str], typer.Option(help=_SOURCES_HELP)] = None,
    cache_batch_size: Annotated[int, typer.Option(min=1)] = 8,
    dtype: Annotated[str, typer.Option(help="Model dtype: float32 (load_model's default) or bfloat16.")] = "float32",
    threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads (default: torch's choice).")] = None,
    resume: ResumeOpt = True,
    heads: HeadsOpt = "both",
    learning_rate: LrOpt = 1e-3,
    weight_decay: WdOpt = 0.0,
    batch_tokens: BatchOpt = 128,
    epochs: EpochsOpt = 4,
    max_steps: MaxStepsOpt = None,
    seed: SeedOption = 0,
    validation_fraction: ValOpt = 0.1,
    checkpoint_every: CkptOpt = 50,
    steepness: SteepOpt = 30.0,
    weighting: WeightOpt = True,
    easy_token_drop: DropOpt = 0.6,
    top_p_grad_to_temperature: GradOpt = True,
    soft_top_p_window: WindowOpt = 1024,
    temperature_features: TempFeaturesOpt = "hidden",
) -> None:
    """data -> cache -> fit -> export, with the model loaded once."""
    command = _command_line("all", dict(locals()))
    try:
        work.mkdir(parents=True, exist_ok=True)
        data = work / "data.jsonl"
        _, _, loaded = _run_data(data, model, tasks, prompts_per_task, temperatures, samples_per_temperature,
                                 max_new_tokens, sample_batch_size, seed, unsolved, command=command, dtype=dtype,
                                 threads=threads)
        _run_cache(data, work / "cache", model, hidden_dtype, cache_batch_size, 1024, loaded=loaded, command=command,
                   sources=sources)
        _run_fit(work / "cache", out, work / "fit", resume, command, **_fit_options(
            heads, learning_rate, weight_decay, batch_tokens, epochs, max_steps, seed, validation_fraction,
            checkpoint_every, steepness, weighting, easy_token_drop, top_p_grad_to_temperature, soft_top_p_window,
            temperature_features))
    except (DecoError, ValueError, FileNotFoundError) as error:
        _fail(str(error))
