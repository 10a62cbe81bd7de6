"""``--backend ort``: the default model's ONNX export (cached on first use) and one-call generation."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._deps import require
from ..heads.artifact import DEFAULT_PROVIDER, DecodingHeads, heads_for_identity
from ..progress import report
from .graph import EXPORT_INFO_NAME, ONNX_MODEL_NAME
from .loop import OnnxGenerator, TokenEvent
from .runtime import OnnxCausalLM
from .text import ChatTokenizer

DEFAULT_ONNX_SUFFIX = "-onnx"


def default_onnx_path() -> Path:
    from ..default_model import DEFAULT_MODEL_NAME, cache_root

    return cache_root() / f"{DEFAULT_MODEL_NAME}{DEFAULT_ONNX_SUFFIX}"


def ensure_default_onnx() -> Path:
    """The default model's ONNX export, created once (needs torch and ``optimum-onnx``) and cached.

    It lives next to the converted default model (``$DECO_MODEL_CACHE``). A folder counts as complete
    only when ``deco_export.json`` exists, which the exporter writes last.
    """
    path = default_onnx_path()
    if (path / EXPORT_INFO_NAME).is_file():
        return path
    from ..default_model import DEFAULT_MODEL_NAME, cache_lock, ensure_default_model
    from .export import export_lm

    # Check what the export needs before minutes of provisioning and converting the default model.
    require("optimum.exporters.onnx", purpose=f"Exporting {DEFAULT_MODEL_NAME} to ONNX once (`--backend ort`)")
    require("torch", purpose=f"Exporting {DEFAULT_MODEL_NAME} to ONNX once (`--backend ort`)", extra="ort")
    source = ensure_default_model()
    with cache_lock(path.name):  # a second process waits, then finds the finished export
        if (path / EXPORT_INFO_NAME).is_file():
            return path
        report(f"exporting {DEFAULT_MODEL_NAME} to ONNX once, into {path} (a few minutes)")
        export = export_lm(source, path, name=DEFAULT_MODEL_NAME, overwrite=True, on_stage=lambda stage: report(stage))
    report(f"ONNX export ready: max |logits - torch| = {export.max_abs_diff_logits:.2e}")
    return path


def resolve_onnx_model(model: str | os.PathLike[str]) -> Path:
    """``default`` (exported and cached on first use) or a folder written by ``deco export-lm``."""
    if str(model) == "default":
        return ensure_default_onnx()
    path = Path(model)
    if (path / ONNX_MODEL_NAME).is_file() or (path.is_file() and path.suffix == ".onnx"):
        return path
    if (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is a transformers model folder, not an ONNX export. Export it once with "
            f"`deco export-lm {path} {path}{DEFAULT_ONNX_SUFFIX}` and pass that folder."
        )
    raise FileNotFoundError(f"No ONNX LM at {str(path)!r}; pass `default` or a folder written by `deco export-lm`.")


def load_model_ort(
    name_or_path: str | os.PathLike[str] = "default",
    *,
    provider: str = DEFAULT_PROVIDER,
    use_io_binding: bool = False,
    session_options: Any = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` like :func:`deco_middleware.default_model.load_model`, on ONNX Runtime.

    The model is an :class:`~deco_middleware.ort.ORTModelForCausalLMWithHiddenStates` (Optimum),
    usable wherever the torch model is: ``generate()``, pipelines and ``LearnedDecoding.attach``.
    ``default`` exports the default model once and caches it. Needs ``deco-middleware[ort]``.
    """
    from .compat import load_tokenizer
    from .optimum_model import ORTModelForCausalLMWithHiddenStates  # checks for the `ort` extra first

    path = resolve_onnx_model(name_or_path)
    directory = path if path.is_dir() else path.parent
    model = ORTModelForCausalLMWithHiddenStates.from_pretrained(
        directory, provider=provider, use_io_binding=use_io_binding, session_options=session_options
    )
    return model, load_tokenizer(directory)


def generate_text_ort(
    prompt: str,
    *,
    model: str | os.PathLike[str] | OnnxCausalLM = "default",
    heads: str | DecodingHeads = "default",
    strategy: Any = "autodeco",
    max_new_tokens: int = 128,
    seed: int = 0,
    temperature_scale: float = 1.0,
    top_p_scale: float = 1.0,
    provider: str = DEFAULT_PROVIDER,
    stop_strings: tuple[str, ...] = (),
    on_token: Callable[[TokenEvent], None] | None = None,
) -> dict[str, Any]:
    """:func:`deco_middleware.generation.generate_text` on ONNX Runtime, torch-free once exported.

    Returns the same keys (``text``, ``tokens``, ``token_ids``, ``temperature``, ``top_p``,
    ``strategy``, ``model``, ``heads``, ``seed``) plus ``backend="ort"`` and ``finish_reason``.
    The decoding step and the per-row seeded draw are the torch backend's, so the same seed gives
    the same tokens (up to the float rounding of the two runtimes' logits).
    """
    from ..rows import generation_result
    from ..strategies import parse_strategy
    from ..generation import check_prompt_fits, model_context

    chosen = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    # an already loaded LM (an OnnxCausalLM or the onnxruntime-genai adapter) is used as it is
    loaded_lm = not isinstance(model, (str, os.PathLike))
    lm = model if loaded_lm else OnnxCausalLM(resolve_onnx_model(model), provider=provider)
    tokenizer = ChatTokenizer(lm.directory)
    heads_name = None
    if chosen.learned:
        loaded = heads_for_identity(heads, lm.identity())
        heads_name = str(loaded.directory)
        loaded.check_compatible(lm.identity())
        predictor = chosen.predictor(
            loaded, temperature_scale=chosen.temperature_scale * temperature_scale, top_p_scale=top_p_scale
        )
    else:
        predictor = chosen.predictor()
    generator = OnnxGenerator(lm, predictor=predictor)
    prompt_ids = tokenizer.encode_chat(prompt)
    check_prompt_fits(len(prompt_ids), max_new_tokens, model_context(lm.config))
    result = generator.generate(
        [prompt_ids], max_new_tokens=max_new_tokens, seed=seed,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        stop_strings=stop_strings, decode=tokenizer.decode, on_token=on_token,
    )
    return generation_result(
        token_ids=result.token_ids[0], decode=tokenizer.decode, temperature=result.temperature[0],
        top_p=result.top_p[0], strategy=chosen,
        model=str(lm.directory) if loaded_lm else str(model),
        heads=heads_name, seed=seed, backend="ort", finish_reason=result.finish_reason[0],
    )
