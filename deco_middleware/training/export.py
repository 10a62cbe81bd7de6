"""Write trained heads as ``heads.onnx`` + manifest, with the full training record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..heads.artifact import export_heads
from ..manifest import HeadArchitecture
from .cache import FeatureCache
from .trainer import FitResult, TrainConfig


def training_record(result: FitResult, cache: FeatureCache, config: TrainConfig, *, command: Any,
                    stages: dict[str, Any] | None = None, recipe: str | None = None) -> dict[str, Any]:
    """The manifest's ``training`` section: data, hyperparameters, validation, timings, command."""
    meta = cache.meta
    data_summary = meta.get("data_summary") or {}
    stage_times = dict(stages or {})
    if "wall_seconds" in data_summary:
        stage_times.setdefault("data", {"wall_seconds": data_summary["wall_seconds"],
                                        "generated_tokens": data_summary.get("generated_tokens"),
                                        "tokens_per_second": data_summary.get("tokens_per_second")})
    stage_times.setdefault("cache", {"wall_seconds": meta["wall_seconds"], "forwarded_tokens": meta["forwarded_tokens"],
                                     "tokens_per_second": meta["tokens_per_second"]})
    stage_times.setdefault("fit", {"wall_seconds": result.wall_seconds, "steps": result.steps,
                                   "tokens_per_second": result.tokens_per_second})
    return {
        "method": "AutoDeco (Wang et al., ICLR 2026): frozen LM, heads trained on the model's own correct samples",
        "recipe": recipe,
        "data": {
            **data_summary,
            "cache": {k: meta[k] for k in ("records", "records_used", "records_skipped_too_long", "completion_tokens",
                                           "hidden_dtype", "verify")},
            "train_tokens": result.train_tokens,
            "validation_tokens": result.validation_tokens,
        },
        "hyperparameters": {**config.as_dict(), "optimizer": "AdamW"},
        "validation_before_training": result.validation_before,
        "validation": result.validation,
        "final_train_loss": result.history[-1]["loss"] if result.history else None,
        "stages": stage_times,
        "command": command,
    }


def export_trained_heads(result: FitResult, cache: FeatureCache, config: TrainConfig,
                         directory: str | os.PathLike[str], *, command: Any = None,
                         stages: dict[str, Any] | None = None, description: str = "", recipe: str | None = None) -> Path:
    """Export ``result.heads`` for the cache's base model into ``directory`` (heads.onnx + manifest.json)."""
    architecture = HeadArchitecture(
        temperature_hidden_size=config.inner_size,
        top_p_hidden_size=config.inner_size,
        trained=config.loss.trained_names,
        temperature_features=config.temperature_features,
    )
    description = description or (
        f"AutoDeco heads ({', '.join(config.loss.trained_names)}) for {cache.base_model.name}, trained with "
        f"`deco train` on {result.train_tokens} completion tokens of the model's own correct samples."
    )
    return export_heads(
        result.heads.numpy_weights(),
        directory,
        base_model=cache.base_model,
        architecture=architecture,
        description=description,
        training=training_record(result, cache, config, command=command, stages=stages, recipe=recipe),
    )
