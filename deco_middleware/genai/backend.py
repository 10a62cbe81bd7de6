"""``--backend genai``: the default model built for onnxruntime-genai (once, cached) and one-call generation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..progress import report
from .model import GENAI_CONFIG_NAME, GENAI_EXPORT_INFO_NAME, GenaiCausalLM, fix_command

DEFAULT_GENAI_SUFFIX = "-genai"


def default_genai_path() -> Path:
    from ..default_model import DEFAULT_MODEL_NAME, cache_root

    return cache_root() / f"{DEFAULT_MODEL_NAME}{DEFAULT_GENAI_SUFFIX}"


def ensure_default_genai() -> Path:
    """The default model's genai build, created once (needs torch and transformers 5.x) and cached.

    It lives next to the converted default model (``$DECO_MODEL_CACHE``). A folder counts as complete
    only when ``deco_genai.json`` exists, which the exporter writes last, after the parity checks passed.
    Progress goes through :func:`deco_middleware.progress.report`.
    """
    path = default_genai_path()
    if (path / GENAI_EXPORT_INFO_NAME).is_file():
        return path
    from ..default_model import DEFAULT_MODEL_NAME, cache_lock, ensure_default_model
    from .export import check_build_dependencies, export_genai

    check_build_dependencies()  # before minutes of provisioning and converting the default model
    source = ensure_default_model()
    with cache_lock(path.name):  # a second process waits, then finds the finished build
        if (path / GENAI_EXPORT_INFO_NAME).is_file():
            return path
        report(f"building {DEFAULT_MODEL_NAME} for onnxruntime-genai once, into {path} (about a minute)")
        built = export_genai(source, path, name=DEFAULT_MODEL_NAME, overwrite=True, on_stage=lambda stage: report(stage))
    report(f"genai model ready: max |logits - torch| = {built.parity['max_abs_diff_logits']:.2e}")
    return path


def resolve_genai_model(model: str | os.PathLike[str]) -> Path:
    """``default`` (built and cached on first use) or a folder written by ``deco export-lm --format genai``."""
    if str(model) == "default":
        return ensure_default_genai()
    path = Path(model)
    if (path / GENAI_CONFIG_NAME).is_file():
        return path
    if (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is a transformers model folder, not an onnxruntime-genai model. Build it once with "
            f"`{fix_command(path, str(path) + DEFAULT_GENAI_SUFFIX)}` and pass that folder."
        )
    raise FileNotFoundError(
        f"No onnxruntime-genai model at {str(path)!r}; pass `default` or a folder written by `{fix_command()}`."
    )


def generate_text_genai(prompt: str, *, model: str | os.PathLike[str] | GenaiCausalLM = "default", **kwargs: Any) -> dict[str, Any]:
    """:func:`deco_middleware.generation.generate_text` in the onnxruntime-genai loop, torch-free once built.

    Same keyword arguments and keys as :func:`deco_middleware.ort.generate_text_ort` (it runs that function's
    loop on the genai model), with ``backend="genai"``. The same seed gives the same tokens as ``--backend ort``.
    """
    from ..ort.backend import generate_text_ort

    lm = model if isinstance(model, GenaiCausalLM) else GenaiCausalLM(resolve_genai_model(model))
    result = generate_text_ort(prompt, model=lm, **kwargs)
    result["backend"] = "genai"
    result["model"] = str(model) if not isinstance(model, GenaiCausalLM) else str(lm.directory)
    return result
