"""``deco import-reference`` / ``deco export-reference``: the reference's (AutoDeco) checkpoints <-> our heads."""

from __future__ import annotations

import json
import warnings
from typing import Annotated

import typer

from ..errors import DecoError
from .app import ModelOption, _fail, app, console


@app.command("import-reference")
def import_reference_command(
    checkpoint: Annotated[str, typer.Argument(help="Reference checkpoint folder (config.json + heads-only or merged safetensors).")],
    out: Annotated[str, typer.Option(help="Heads folder to write (heads.onnx + manifest.json), e.g. onnx/NAME.")],
    model: ModelOption = "default",
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object describing the import.")] = False,
) -> None:
    """Turn a reference AutoDeco checkpoint into ONNX heads for MODEL, checked against MODEL first."""
    from ..reference import import_reference

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = import_reference(checkpoint, out, model=model, overwrite=overwrite)
    except (DecoError, ValueError, FileNotFoundError, FileExistsError) as error:
        _fail(str(error))
        return
    for warning in caught:
        console.print(f"[bold yellow]warning:[/] {warning.message}", highlight=False)
    summary = {
        "directory": str(report.directory), "layout": report.layout, "format_version": report.format_version,
        "source_dtype": report.source_dtype, "trained": report.trained, "enhanced_features": report.enhanced_features,
        "base_model": report.base_model, "unknown_keys": report.unknown_keys,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console.print(
        f"imported {report.layout} {report.source_dtype} reference heads ({', '.join(report.trained)}) for "
        f"{report.base_model}", highlight=False,
    )
    typer.echo(str(report.directory))


@app.command("export-reference")
def export_reference_command(
    heads: Annotated[str, typer.Argument(help="A shipped name or a heads folder (reference architecture).")],
    out: Annotated[str, typer.Option(help="Folder to write (config.json + model.safetensors, the reference's heads-only layout).")],
    model: ModelOption = "default",
    base_model_name_or_path: Annotated[str, typer.Option(help="What the reference loads as base LM (default: MODEL's folder), e.g. a hub id.")] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Write HEADS as a reference (AutoDeco) heads-only checkpoint; merge it with `merge_autodeco.py merge`."""
    from ..reference import export_reference

    try:
        report = export_reference(heads, out, model=model, base_model_name_or_path=base_model_name_or_path or None,
                                  overwrite=overwrite)
    except (DecoError, ValueError, FileNotFoundError, FileExistsError) as error:
        _fail(str(error))
        return
    console.print(f"exported heads ({', '.join(report.trained)}) for a `{report.base_model_type}` base model",
                  highlight=False)
    typer.echo(str(report.directory))
