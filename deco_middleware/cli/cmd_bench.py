"""``deco bench``: cost of learned decoding against plain Hugging Face sampling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import DecoError
from .app import _fail, app, console, heads_for_model


@app.command()
def bench(
    model: Annotated[str, typer.Option(help="`default` or a local model folder.")] = "default",
    heads: Annotated[str, typer.Option(help="`default`, a shipped name, or a path.")] = "default",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,16",
    new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the result as JSON.")] = None,
    markdown_out: Annotated[Optional[Path], typer.Option("--markdown", help="Write a markdown table.")] = None,
) -> None:
    """Time plain sampling (T=0.7, P=0.9) against the learned pair, interleaved; medians and ratios."""
    from ..bench import run_bench, to_markdown
    from ..default_model import load_model

    try:
        sizes = [int(x) for x in batch_sizes.split(",") if x.strip()]
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        _fail(f"--batch-sizes must be positive integers separated by commas, got {batch_sizes!r}.")
        return
    try:
        lm, tokenizer = load_model(model)
        loaded = heads_for_model(heads, lm)
        result = run_bench(lm, tokenizer, loaded, batch_sizes=sizes, new_tokens=new_tokens, repeats=repeats,
                           progress=lambda message: console.print(f"[dim]{message}[/]"))
    except DecoError as error:
        _fail(str(error))
        return
    table = to_markdown(result)
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))
    if markdown_out:
        markdown_out.write_text(table)
    typer.echo(table)
