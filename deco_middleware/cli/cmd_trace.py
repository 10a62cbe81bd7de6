"""``deco trace``: generate one reply and show the temperature and top-p behind every token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .._deps import require
from ..errors import DecoError
from .app import (
    HeadsOption,
    ModelOption,
    PromptArgument,
    SeedOption,
    TemperatureScaleOption,
    TopPScaleOption,
    _fail,
    app,
    heads_for_model,
)


@app.command()
def trace(
    prompt: PromptArgument,
    model: ModelOption = "default",
    heads: HeadsOption = "default",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    seed: SeedOption = 0,
    temperature_scale: TemperatureScaleOption = 1.0,
    top_p_scale: TopPScaleOption = 1.0,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML page here.")] = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="Write the T/P chart as a PNG here.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the trace as JSON here.")] = None,
    compare: Annotated[
        Optional[str],
        typer.Option(
            help="A second run shown side by side, same prompt and seed: `static:T,P` (fixed T and P), "
            "`greedy`, `scale:X` (the heads with temperature scale X) or `autodeco`."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Do not print the coloured tokens.")] = False,
    backend: Annotated[str, typer.Option(help="torch | ort (ONNX Runtime) | genai (onnxruntime-genai).")] = "torch",
) -> None:
    """Generate a reply with learned decoding and show the T and P chosen for every token.

    The coloured tokens are printed (unless --quiet); --html, --png and --json also write files.
    With --compare, the JSON file holds {"runs": [main, compare]}.
    """
    out = Console(markup=False)
    try:
        from ..default_model import load_model
        from ..viz import print_trace, write_html, write_png
        from ..viz.runs import parse_run_strategy, trace_generation

        if png is not None:  # before the model is loaded and a reply generated, not after
            require("matplotlib", purpose="`deco trace --png`")
        main_spec = parse_run_strategy("autodeco", temperature_scale=temperature_scale, top_p_scale=top_p_scale)
        compare_spec = parse_run_strategy(compare) if compare is not None else None
        if backend in ("ort", "genai"):
            from ..heads.artifact import heads_for_identity
            from ..viz.runs import trace_generation_onnx as run

            lm = _onnx_lm(backend, model)
            loaded_heads = heads_for_identity(heads, lm.identity())
            common = {"lm": lm, "heads": loaded_heads}
        elif backend == "torch":
            loaded_model, tokenizer = load_model(model)
            loaded_heads = heads_for_model(heads, loaded_model)
            common, run = {"model": loaded_model, "tokenizer": tokenizer, "heads": loaded_heads}, trace_generation
        else:
            raise ValueError(f"Unknown backend {backend!r}; valid: torch, ort, genai.")
        metadata = {"model": model, "heads": str(loaded_heads.directory), "backend": backend}
        common.update(max_new_tokens=max_new_tokens, seed=seed, metadata=metadata)
        doc = run(prompt, spec=main_spec, **common)
        other = run(prompt, spec=compare_spec, **common) if compare_spec is not None else None
        if json_path is not None:
            if other is None:
                doc.save_json(json_path)
            else:
                import json

                from ..manifest import atomic_write_bytes

                runs = {"runs": [doc.to_dict(), other.to_dict()]}
                atomic_write_bytes(json_path, (json.dumps(runs, indent=2, ensure_ascii=False) + "\n").encode())
        if html is not None:
            write_html(doc, html, compare=other)
        if png is not None:
            write_png(doc, png, compare=other)
    except (DecoError, ValueError, FileNotFoundError) as error:
        _fail(str(error))
        return
    if not quiet:
        for run in (doc, other):
            if run is not None:
                out.rule(run.label)
                print_trace(run, out)
    for label, path in (("HTML", html), ("PNG", png), ("JSON", json_path)):
        if path is not None:
            Console(stderr=True, markup=False).print(f"{label}: {path}", highlight=False)


def _onnx_lm(backend: str, model: str):
    """The torch-free LM of ``backend``: the ONNX export (ort) or the onnxruntime-genai build (genai)."""
    if backend == "genai":
        from ..genai import GenaiCausalLM, resolve_genai_model

        return GenaiCausalLM(resolve_genai_model(model))
    from ..ort import OnnxCausalLM, resolve_onnx_model

    return OnnxCausalLM(resolve_onnx_model(model))
