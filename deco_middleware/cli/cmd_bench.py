"""``deco bench``: cost of learned decoding against plain sampling, per backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text

from ..bench import BACKENDS as BACKEND_CHOICES
from ..errors import DecoError
from .app import _fail, app, console, heads_for_model


def _load_ort(model: str) -> tuple[Any, Any]:
    """The ONNX export of ``model`` (``default``: the cached export) and its tokenizer."""
    from ..ort import ChatTokenizer, OnnxCausalLM, resolve_onnx_model

    path = resolve_onnx_model(model)
    lm = OnnxCausalLM(path)
    return lm, ChatTokenizer(lm.directory)


def _genai_unavailable(model: str) -> str | None:
    """Why the onnxruntime-genai backend cannot run for ``model`` without building anything, or ``None``."""
    from .._deps import is_available

    if not is_available("onnxruntime_genai"):
        return "onnxruntime-genai is not installed (pip install 'deco-middleware[genai]')"
    from ..genai import GENAI_EXPORT_INFO_NAME, default_genai_path, is_genai_model

    if model == "default":
        if not (default_genai_path() / GENAI_EXPORT_INFO_NAME).is_file():
            return "the default model has no genai build yet; run `deco bench --backend genai` once to create it"
        return None
    if not is_genai_model(model):
        return f"{model} is not an onnxruntime-genai model; build it with `deco export-lm {model} OUT --format genai`"
    return None


def _optimum_unavailable(model: str) -> str | None:
    """Why the Optimum backend cannot run for ``model`` without exporting anything, or ``None``."""
    from .._deps import is_available

    if not is_available("optimum.onnxruntime"):
        return "optimum-onnx is not installed (pip install 'deco-middleware[ort]'; it needs transformers < 4.58)"
    return _ort_unavailable(model)


def _ort_unavailable(model: str) -> str | None:
    """Why the ORT backend cannot run for ``model`` without exporting anything, or ``None``."""
    from .._deps import is_available

    if not is_available("onnxruntime") or not is_available("tokenizers"):
        return "onnxruntime / tokenizers are not installed (pip install 'deco-middleware[ort-app]')"
    from ..ort import default_onnx_path
    from ..ort.graph import EXPORT_INFO_NAME, ONNX_MODEL_NAME

    if model == "default":
        if not (default_onnx_path() / EXPORT_INFO_NAME).is_file():
            return "the default model has no ONNX export yet; run `deco bench --backend optimum` once to create it"
        return None
    if not (Path(model) / ONNX_MODEL_NAME).is_file():
        return f"{model} is not an ONNX export; export it with `deco export-lm {model} OUT`"
    return None


def _vllm_unavailable(model: str) -> str | None:
    """Why the vLLM backend cannot run here, or ``None``."""
    from .._deps import is_available

    if not is_available("vllm"):
        return "vllm is not installed (pip install torch==2.13.0 && pip install 'deco-middleware[vllm]'; see README, vLLM)"
    return None


@app.command()
def bench(
    model: Annotated[str, typer.Option(help="`default` or a local model folder.")] = "default",
    heads: Annotated[str, typer.Option(help="`default`, a shipped name, or a path.")] = "default",
    backend: Annotated[
        str, typer.Option(help="Comma-separated: torch, optimum, ort, genai, vllm; or `all` (every available backend).")
    ] = "all",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,16",
    new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the result as JSON.")] = None,
    markdown_out: Annotated[Optional[Path], typer.Option("--markdown", help="Write a markdown table.")] = None,
) -> None:
    """Time plain sampling (T=0.7, P=0.9) against the learned pair per backend, interleaved; medians and ratios.

    torch: Hugging Face generate() with its built-in warpers vs LearnedDecoding. optimum: the same on
    Optimum's ONNX Runtime model. ort: the torch-free ONNX Runtime loop with a static T/P vs the same
    loop with the heads. genai: the same loop inside onnxruntime-genai's Generator (static vs heads), with its
    tokens/s set against the ort loop's. vllm: one offline vLLM engine with the plugin, vLLM's own sampler
    vs the same requests opted in to the heads.
    """
    from ..bench import run_bench, to_markdown

    chosen = list(BACKEND_CHOICES) if backend == "all" else [b.strip() for b in backend.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BACKEND_CHOICES]
    if unknown or not chosen:
        _fail(f"--backend takes `all` or a comma-separated list of {', '.join(BACKEND_CHOICES)}; got {backend!r}.")
    try:
        sizes = [int(x) for x in batch_sizes.split(",") if x.strip()]
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        _fail(f"--batch-sizes must be positive integers separated by commas, got {batch_sizes!r}.")
        return
    skipped: dict[str, str] = {}
    if backend == "all":  # skip what cannot run here; a backend asked for by name fails loudly instead
        for name, check in (("optimum", _optimum_unavailable), ("ort", _ort_unavailable), ("genai", _genai_unavailable),
                            ("vllm", _vllm_unavailable)):
            reason = check(model)
            if reason:
                skipped[name] = reason
                chosen.remove(name)
                console.print(Text.assemble((f"skipping the {name} backend:", "yellow"), " ", reason), highlight=False)
    try:
        lm = tokenizer = ort_lm = ort_tokenizer = optimum_model = optimum_tokenizer = loaded = None
        genai_lm = genai_tokenizer = None
        if "torch" in chosen:
            from ..default_model import load_model

            lm, tokenizer = load_model(model)
            loaded = heads_for_model(heads, lm)
        if "optimum" in chosen:
            from ..ort import load_model_ort

            optimum_model, optimum_tokenizer = load_model_ort(model)
            if loaded is None:
                loaded = heads_for_model(heads, optimum_model)
        if "ort" in chosen:
            from ..heads.artifact import heads_for_identity

            ort_lm, ort_tokenizer = _load_ort(model)
            if loaded is None:
                loaded = heads_for_identity(heads, ort_lm.identity())
        if "genai" in chosen:
            from ..genai import GenaiCausalLM, resolve_genai_model
            from ..heads.artifact import heads_for_identity
            from ..ort import ChatTokenizer

            genai_lm = GenaiCausalLM(resolve_genai_model(model))
            genai_tokenizer = ChatTokenizer(genai_lm.directory)
            if loaded is None:
                loaded = heads_for_identity(heads, genai_lm.identity())
        vllm_llm = None
        if "vllm" in chosen:
            reason = _vllm_unavailable(model)
            if reason:
                raise DecoError(f"The vllm backend cannot run: {reason}.")
            from ..vllm.generate import offline_engine

            # The plugin picks and checks the heads itself, on the weights vLLM loaded (DECO_VLLM_HEADS).
            vllm_llm = offline_engine(model, heads, max_num_seqs=max(sizes))
        result = run_bench(lm, tokenizer, loaded, batch_sizes=sizes, new_tokens=new_tokens, repeats=repeats,
                           ort_lm=ort_lm, ort_tokenizer=ort_tokenizer, optimum_model=optimum_model,
                           optimum_tokenizer=optimum_tokenizer, skipped=skipped,
                           genai_lm=genai_lm, genai_tokenizer=genai_tokenizer, vllm_llm=vllm_llm,
                           progress=lambda message: console.print(message, style="dim"))
    except (DecoError, FileNotFoundError) as error:
        _fail(str(error))
        return
    table = to_markdown(result)
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))
    if markdown_out:
        markdown_out.write_text(table)
    typer.echo(table)
