"""``deco`` commands. Each one is a thin shell over the Python API."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import DecoError
from ..heads.artifact import DecodingHeads, heads_for_identity, list_shipped_heads, resolve_heads_path
from ..manifest import MANIFEST_NAME, HeadManifest
from .strategies import parse_strategy

app = typer.Typer(help="Learned per-token temperature and top-p for Hugging Face generation.", no_args_is_help=True)
console = Console(stderr=True)


# Options shared by every command that loads a model and heads: one definition, one help text.
PromptArgument = Annotated[str, typer.Argument(help="The user message (the chat template is applied when the model has one).")]
ModelOption = Annotated[str, typer.Option(help="`default` (embedded SmolLM2-135M-Instruct) or a local model folder.")]
HeadsOption = Annotated[str, typer.Option(help="`default` (shipped heads for the model), a shipped name, or a path.")]
TemperatureScaleOption = Annotated[float, typer.Option(help="T_final = T_pred * scale; 0 = greedy.")]
TopPScaleOption = Annotated[float, typer.Option(help="P_final = clamp(P_pred * scale, 0, 1).")]


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def heads_for_model(heads: str, model) -> DecodingHeads:
    """``default`` picks the shipped heads whose base model matches ``model``; else a name or path."""
    from ..hf.identity import model_identity

    return heads_for_identity(heads, model_identity(model))


@app.command()
def generate(
    prompt: PromptArgument,
    model: ModelOption = "default",
    heads: HeadsOption = "default",
    strategy: Annotated[str, typer.Option(help="autodeco | greedy | static:T,P")] = "autodeco",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    seed: Annotated[int, typer.Option()] = 0,
    temperature_scale: TemperatureScaleOption = 1.0,
    top_p_scale: TopPScaleOption = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with per-token T and P.")] = False,
    show: Annotated[bool, typer.Option("--show", help="Print the tokens coloured by temperature, with a legend.")] = False,
    backend: Annotated[str, typer.Option(help="torch | ort (ONNX Runtime; the default model is exported once and cached) | vllm (the vLLM plugin; `pip install deco-middleware[vllm]`).")] = "torch",
) -> None:
    """Generate a reply with learned (or a baseline) decoding."""
    try:
        chosen = parse_strategy(strategy)
        if backend == "ort":
            from ..ort import generate_text_ort as generate_fn
        elif backend == "torch":
            from ..generation import generate_text as generate_fn
        elif backend == "vllm":
            from ..vllm.generate import generate_text_vllm as generate_fn
        else:
            raise ValueError(f"Unknown backend {backend!r}; valid: torch, ort, vllm.")
        result = generate_fn(
            prompt,
            model=model,
            heads=heads,
            strategy=chosen,
            max_new_tokens=max_new_tokens,
            seed=seed,
            temperature_scale=temperature_scale,
            top_p_scale=top_p_scale,
        )
    except (DecoError, ValueError, FileNotFoundError) as error:
        _fail(str(error))
        return
    if as_json:
        typer.echo(json.dumps(result))
    elif show:
        from ..viz import TraceDocument, print_trace

        print_trace(TraceDocument.from_generation(result, prompt=prompt), Console())
    else:
        typer.echo(result["text"])


@app.command()
def info(heads: Annotated[str, typer.Argument(help="A shipped name or a heads folder.")] = "") -> None:
    """Print the manifest of HEADS (or list the shipped heads)."""
    if not heads:
        names = list_shipped_heads()
        typer.echo("\n".join(names) if names else "No heads are shipped with this version.")
        return
    try:
        manifest = HeadManifest.load(resolve_heads_path(heads) / MANIFEST_NAME)
    except DecoError as error:
        _fail(str(error))
        return
    typer.echo(manifest.to_json_text(), nl=False)


def _version_callback(value: bool) -> None:
    if value:
        from .._version import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version_callback, is_eager=True)] = None,
) -> None:
    """deco: learned decoding middleware."""




# Further commands live in their own modules (``cli/cmd_<name>.py``), each registering itself on
# ``app`` with ``@app.command()``; a module whose optional dependencies are missing is skipped here
# and its command then fails with the install hint when called.
_COMMAND_MODULES = ("cmd_train", "cmd_eval", "cmd_trace", "cmd_bench", "cmd_export_lm")


def _register_commands() -> None:
    import importlib
    import importlib.util

    for name in _COMMAND_MODULES:
        if importlib.util.find_spec(f"{__package__}.{name}") is not None:
            importlib.import_module(f"{__package__}.{name}")


_register_commands()
