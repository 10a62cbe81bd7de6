"""``deco export-lm``: a causal LM to ONNX (with KV cache and its hidden state) for ONNX Runtime."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from ..errors import DecoError
from .app import _fail, app, console


@app.command("export-lm")
def export_lm_command(
    model: Annotated[str, typer.Argument(help="`default` (embedded SmolLM2-135M-Instruct) or a local model folder.")],
    out: Annotated[str, typer.Argument(help="Folder to write (model.onnx, model.onnx_data, tokenizer, deco_export.json).")],
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    atol: Annotated[float, typer.Option(help="Largest accepted max |logits - torch| of the fp32 export.")] = 1e-3,
    format: Annotated[
        str, typer.Option("--format", help="onnx (Optimum, for --backend ort/optimum) | genai (onnxruntime-genai's builder).")
    ] = "onnx",
) -> None:
    """Export MODEL through Optimum with KV cache and a `last_hidden_state` output, validated against torch.

    With --format genai: build MODEL for onnxruntime-genai (fp32, cpu, with its `hidden_states` output) and
    record its measured parity with torch in deco_genai.json.
    """
    if format not in ("onnx", "genai"):
        _fail(f"--format takes `onnx` or `genai`, got {format!r}.")
    try:
        from .._deps import require

        # Before the default model is provisioned (minutes), not after.
        if format == "genai":
            from ..genai.export import check_build_dependencies

            check_build_dependencies()
        else:
            require("optimum.exporters.onnx", purpose="`deco export-lm`")
        name = None
        if model == "default":
            from ..default_model import DEFAULT_MODEL_NAME, ensure_default_model

            name, model = DEFAULT_MODEL_NAME, str(ensure_default_model())
        if format == "genai":
            _export_genai(model, out, name=name, atol=atol, overwrite=overwrite)
            return
        from ..ort.export import export_lm

        with console.status("exporting") as status:

            def stage(message: str) -> None:
                console.log(message, highlight=False)
                status.update(Text(message, style="bold"))

            report = export_lm(model, out, name=name, atol=atol, overwrite=overwrite, on_stage=stage)
    except (DecoError, ValueError, FileNotFoundError, FileExistsError) as error:
        _fail(str(error))
        return
    from rich.table import Table

    table = Table(title=f"ONNX export of {report.base_model['name']}", show_header=False)
    table.add_row("folder", report.directory)
    table.add_row("hidden / vocab", f"{report.base_model['hidden_size']} / {report.base_model['vocab_size']}")
    table.add_row("max |logits - torch|", f"{report.max_abs_diff_logits:.3e}")
    table.add_row("max |hidden state - torch|", f"{report.max_abs_diff_hidden_state:.3e}")
    table.add_row("validated on", report.validation_inputs)
    console.print(table)
    typer.echo(report.directory)


def _export_genai(model: str, out: str, *, name: str | None, atol: float, overwrite: bool) -> None:
    from ..genai.export import export_genai

    with console.status("building") as status:

        def stage(message: str) -> None:
            console.log(message, highlight=False)
            status.update(Text(message, style="bold"))

        report = export_genai(model, out, name=name, atol=atol, overwrite=overwrite, on_stage=stage)
    from rich.table import Table

    parity = report.parity
    table = Table(title=f"onnxruntime-genai build of {report.base_model['name']}", show_header=False)
    table.add_row("folder", report.directory)
    table.add_row("hidden / vocab", f"{report.base_model['hidden_size']} / {report.base_model['vocab_size']}")
    table.add_row("max |logits - torch|", f"{parity['max_abs_diff_logits']:.3e}")
    table.add_row("max |hidden state - torch|", f"{parity['max_abs_diff_hidden_state']:.3e}")
    table.add_row("max |logits - h @ W^T|", f"{parity['max_abs_diff_logits_vs_lm_head']:.3e}")
    table.add_row("validated on", parity["inputs"])
    console.print(table)
    typer.echo(report.directory)
