"""``deco`` commands. Each one is a thin shell over the Python API."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

from ..errors import DecoError
from ..heads.artifact import list_shipped_heads, resolve_heads_path
from ..heads.select import heads_for_model  # noqa: F401  (the cmd_* modules import it from here)
from ..manifest import MANIFEST_NAME, HeadManifest
from ..strategies import parse_strategy

# rich_markup_mode=None: click's plain help wraps long option names; rich's panels cut them at 80
# columns ("--validation-f…") and read brackets in help texts as markup.
app = typer.Typer(help="Learned per-token temperature and top-p for Hugging Face generation.", no_args_is_help=True,
                  rich_markup_mode=None)
# markup=False: messages carry library and user text such as `pip install 'deco-middleware[ort]'`,
# whose brackets rich would read as markup and drop. Styling is applied with Text, never markup.
console = Console(stderr=True, markup=False)


# Options shared by every command that loads a model and heads: one definition, one help text.
PromptArgument = Annotated[str, typer.Argument(help="The user message (the chat template is applied when the model has one).")]
ModelOption = Annotated[str, typer.Option(help="`default` (embedded SmolLM2-135M-Instruct) or a local model folder.")]
HeadsOption = Annotated[str, typer.Option(help="`default` (shipped heads for the model), a shipped name, or a path.")]
TemperatureScaleOption = Annotated[float, typer.Option(help="T_final = T_pred * scale; 0 = greedy.")]
TopPScaleOption = Annotated[float, typer.Option(help="P_final = clamp(P_pred * scale, 0, 1).")]
# One range for every command: torch seeds take at most 64 bits, and the fit derives per-epoch
# seeds as seed * 1_000_003 + epoch; 2**70 used to overflow with a raw traceback.
MAX_SEED = 2**32 - 1
SeedOption = Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Random seed, 0 to 4294967295.")]


def _fail(message: str) -> None:
    # soft_wrap: one line, never hard-wrapped at the console width, which split long paths mid-word
    # ("checkpoint.p t") once the temporary folder's name grew past 80 columns.
    console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def generate(
    prompt: PromptArgument,
    model: ModelOption = "default",
    heads: HeadsOption = "default",
    strategy: Annotated[str, typer.Option(help="autodeco | greedy | static:T,P | default | edt[:T0,N,theta] | min-p:X | autodeco-t | autodeco-p | autodeco@S")] = "autodeco",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    seed: SeedOption = 0,
    temperature_scale: TemperatureScaleOption = 1.0,
    top_p_scale: TopPScaleOption = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with per-token T and P.")] = False,
    show: Annotated[bool, typer.Option("--show", help="Print the tokens coloured by temperature, with a legend.")] = False,
    backend: Annotated[
        str, typer.Option(help="torch | ort (ONNX Runtime) | genai (onnxruntime-genai); the default model is exported once and cached | vllm (the vLLM plugin; `pip install deco-middleware[vllm]`).")
    ] = "torch",
) -> None:
    """Generate a reply with learned (or a baseline) decoding."""
    try:
        chosen = parse_strategy(strategy)
        if backend == "ort":
            from ..ort import generate_text_ort as generate_fn
        elif backend == "genai":
            from ..genai import generate_text_genai as generate_fn
        elif backend == "torch":
            from ..generation import generate_text as generate_fn
        elif backend == "vllm":
            from ..vllm.generate import generate_text_vllm as generate_fn
        else:
            raise ValueError(f"Unknown backend {backend!r}; valid: torch, ort, genai, vllm.")
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

        print_trace(TraceDocument.from_generation(result, prompt=prompt), Console(markup=False))
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
    ctx: typer.Context,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version_callback, is_eager=True)] = None,
) -> None:
    """deco: learned decoding middleware."""
    from ..progress import reporting
    from .progress import RichProgress

    # Library progress (provisioning, export, sampling, caching, fitting) is drawn on stderr for the
    # whole command, so stdout carries only the command's output (`--json` stays parseable).
    ctx.with_resource(reporting(ctx.with_resource(RichProgress(console))))




# Further commands live in their own modules (``cli/cmd_<name>.py``), each registering itself on
# ``app`` with ``@app.command()``; a module whose optional dependencies are missing is skipped here
# and its command then fails with the install hint when called.
_COMMAND_MODULES = ("cmd_train", "cmd_eval", "cmd_trace", "cmd_bench", "cmd_export_lm", "cmd_reference", "cmd_outcome")


def _register_commands() -> None:
    import importlib
    import importlib.util

    for name in _COMMAND_MODULES:
        if importlib.util.find_spec(f"{__package__}.{name}") is not None:
            importlib.import_module(f"{__package__}.{name}")


_register_commands()
